import DragonflyCore
import DragonflyTestSupport
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Issue 13 point 9 with real processes: every role stops within 5 s of SIGTERM with streams open, and a
/// daemon finds a restarted scheduler within seconds.
@Suite(.serialized, .timeLimit(.minutes(10)))
struct ShutdownAndReconnectTests {
    static func gauge(_ name: String, at metrics: String) async -> Double {
        guard let page = try? await curlGet("http://\(metrics)/metrics"), page.status == 200,
            let parsed = try? PrometheusMetrics(parsing: page.body)
        else { return 0 }
        return parsed.samples(named: name).reduce(0) { $0 + $1.value }
    }

    /// Opens a TCP connection to the proxy at `address`, sends a GET for `url` through it and never reads the
    /// answer: a proxy stream that stays open. Returns the socket (close it when done).
    static func openProxyStream(_ address: String, url: String) throws -> Int32 {
        let parts = address.split(separator: ":")
        let port = try #require(parts.last.flatMap { UInt16($0) })
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        try #require(fd >= 0)
        var target = sockaddr_in()
        target.sin_family = sa_family_t(AF_INET)
        target.sin_port = port.bigEndian
        target.sin_addr = in_addr(s_addr: in_addr_t(0x7F00_0001).bigEndian)
        let connected = withUnsafePointer(to: &target) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        try #require(connected == 0, "cannot connect to the proxy at \(address)")
        let request = Array("GET \(url) HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".utf8)
        let sent = request.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) }
        try #require(sent == request.count)
        return fd
    }

    /// SIGTERMs every process at once and expects each to exit 0 within 5 s of its signal.
    static func terminateAll(_ processes: [(String, DragonflyProcess)], round: Int) async throws {
        for (_, process) in processes { try process.signal(.terminate) }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for (role, process) in processes {
                group.addTask {
                    let status = try await process.waitForExit(timeLimit: .seconds(5))
                    #expect(
                        status == .exited(0),
                        "round \(round): \(role) ended \(status); stderr:\n\(String(process.stderrText().suffix(2000)))"
                    )
                }
            }
            try await group.waitForAll()
        }
    }

    @Test func everyRoleExitsZeroWithinFiveSecondsOfSIGTERMWithStreamsOpenTwentyTimes() async throws {
        let content = GetNoDaemonTests.bytes(32 << 20, seed: 0x5EED_5700)
        try await withNginxOrigin { origin in
            try origin.writeFile("slow.bin", contents: content)
            try await withTemporaryDirectory { dir in
                for round in 0..<20 {
                    // A new task every round; nginx sends it at 1 MiB/s per connection, so it is in flight.
                    let url = origin.rateLimitedURL(for: "slow.bin", bytesPerSecond: 1 << 20) + "&round=\(round)"
                    let managerArguments = RoleArguments.manager(dataDirectory: dir.appending("manager"))
                    try await withDragonfly(managerArguments) { manager in
                        let managerAddress = try #require(try await manager.awaitReady().listeners["grpc"])
                        try await withDragonfly(RoleArguments.scheduler(manager: managerAddress)) { scheduler in
                            let schedulerAddress = try #require(try await scheduler.awaitReady().listeners["grpc"])
                            let cdnArguments = RoleArguments.daemon(
                                role: "cdn", directory: dir.appending("cdn"), manager: managerAddress,
                                schedulers: [schedulerAddress])
                            let daemonDirectory = dir.appending("daemon")
                            let daemonArguments = RoleArguments.daemon(
                                directory: daemonDirectory, manager: nil, schedulers: [schedulerAddress])
                            try await withDragonfly(cdnArguments) { cdn in
                                let cdnMetrics = try #require(try await cdn.awaitReady().listeners["metrics"])
                                try await withDragonfly(daemonArguments) { daemon in
                                    let ready = try await daemon.awaitReady()
                                    let daemonMetrics = try #require(ready.listeners["metrics"])
                                    let proxy = try #require(ready.listeners["proxy"])
                                    let output = dir.appending("out-\(round).bin")
                                    try await withDragonfly(
                                        RoleArguments.get(url: url, output: output, daemonDirectory: daemonDirectory),
                                        readyFile: false
                                    ) { _ in
                                        let stream = try Self.openProxyStream(proxy, url: url + "&proxy=1")
                                        defer { close(stream) }
                                        try await poll(
                                            every: .milliseconds(50), timeLimit: .seconds(30),
                                            description: "bytes of round \(round) flowing"
                                        ) {
                                            let daemonBytes = await Self.gauge(
                                                "dragonfly_daemon_download_bytes_total", at: daemonMetrics)
                                            let cdnBytes = await Self.gauge(
                                                "dragonfly_cdn_download_bytes_total", at: cdnMetrics)
                                            return daemonBytes + cdnBytes > 0
                                        }
                                        try await Self.terminateAll(
                                            [
                                                ("manager", manager), ("scheduler", scheduler), ("cdn", cdn),
                                                ("daemon", daemon),
                                            ], round: round)
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    @Test func aDaemonFindsARestartedSchedulerWithinSeconds() async throws {
        try await withTemporaryDirectory { dir in
            let port = try freeLoopbackPort()
            let schedulerArguments = [
                "scheduler", "--listen", "127.0.0.1:\(port)", "--metrics-listen", "127.0.0.1:0",
            ]
            let daemonArguments = RoleArguments.daemon(
                directory: dir.appending("daemon"), manager: nil, schedulers: ["127.0.0.1:\(port)"])
            try await withDragonfly(daemonArguments) { daemon in
                try await withDragonfly(schedulerArguments) { scheduler in
                    let metrics = try #require(try await scheduler.awaitReady().listeners["metrics"])
                    _ = try await daemon.awaitReady(timeLimit: .seconds(60))
                    try await poll(every: .milliseconds(100), timeLimit: .seconds(20), description: "the host") {
                        await Self.gauge("dragonfly_scheduler_hosts", at: metrics) >= 1
                    }
                    try scheduler.signal(SIGKILL)
                    _ = try await scheduler.waitForExit(timeLimit: .seconds(10))
                }
                // The scheduler stays away for a while (the outage under test, not a wait for an event): long
                // enough for gRPC's default reconnection backoff to grow past 15 s.
                try await Task.sleep(for: .seconds(50))
                try await withDragonfly(schedulerArguments) { scheduler in
                    let metrics = try #require(try await scheduler.awaitReady().listeners["metrics"])
                    try await poll(
                        every: .milliseconds(100), timeLimit: .seconds(8),
                        description: "the daemon to announce itself to the restarted scheduler"
                    ) {
                        await Self.gauge("dragonfly_scheduler_hosts", at: metrics) >= 1
                    }
                }
            }
        }
    }
}
