import DragonflyCore
import DragonflyTestSupport
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A daemon keeps what it verified across a crash (DESIGN §7) and runs one download per task (DESIGN §6):
/// real `dragonfly daemon` and `get` processes, a throttled nginx whose access log counts what the origin sent.
@Suite(.serialized, .timeLimit(.minutes(5)))
struct ResumeTests {
    /// TCP connections to `port` on 127.0.0.1 that are still established (from `/proc/net/tcp`).
    static func establishedConnections(toPort port: Int) -> Int {
        guard let table = try? String(contentsOfFile: "/proc/net/tcp", encoding: .utf8) else { return 0 }
        let local = String(format: ":%04X", port)
        return table.split(separator: "\n").dropFirst().filter { line in
            let fields = line.split(separator: " ")
            return fields.count > 3 && fields[1].hasSuffix(local) && fields[3] == "01"
        }.count
    }

    /// Body bytes nginx sent for `path`, once every connection to it is closed (so every request is logged).
    static func originBytes(_ origin: NginxOrigin, path: String) async throws -> Int {
        try await poll(every: .milliseconds(50), timeLimit: .seconds(30), description: "nginx's connections to close") {
            establishedConnections(toPort: origin.port) == 0
        }
        return try origin.accessLog().filter { $0.uri.contains(path) }.reduce(0) { $0 + $1.bytesSent }
    }

    static func originBytesDownloaded(metrics: String) async throws -> Double {
        let page = try await curlGet("http://\(metrics)/metrics")
        return try PrometheusMetrics(parsing: page.body).value(
            "dragonfly_daemon_download_bytes_total", labels: ["source": "origin"]) ?? 0
    }

    @Test func aHostCrashAtHalfResumesFromTheVerifiedPieces() async throws {
        let size = 128 << 20
        let content = GetNoDaemonTests.bytes(size, seed: 0x5EED_7E5E)
        try await withNginxOrigin { origin in
            try origin.writeFile("big.bin", contents: content)
            // 4 connections at 2 MiB/s: half the file after ~8 s, measured by polling, not by waiting.
            let url = origin.rateLimitedURL(for: "big.bin", bytesPerSecond: 2 << 20)
            try await withTemporaryDirectory { dir in
                let daemonDirectory = dir.appending("daemon")
                let output = dir.appending("out.bin")
                let daemonArguments = RoleArguments.daemon(directory: daemonDirectory, manager: nil)
                let getArguments = RoleArguments.get(url: url, output: output, daemonDirectory: daemonDirectory)
                var firstLog = ""
                try await withDragonfly(daemonArguments + ["--log-level", "debug"]) { daemon in
                    let ready = try await daemon.awaitReady()
                    let metrics = try #require(ready.listeners["metrics"])
                    try await withDragonfly(getArguments, readyFile: false) { get in
                        try await poll(every: .milliseconds(20), timeLimit: .seconds(120), description: "half") {
                            if try get.exitStatus() != nil { return true }
                            return try await Self.originBytesDownloaded(metrics: metrics) >= Double(size / 2)
                        }
                        #expect(try get.exitStatus() == nil, "get ended before half: \(get.stderrText())")
                        // The host crashes: both go at once.
                        try daemon.signal(SIGKILL)
                        try get.signal(SIGKILL)
                        _ = try await daemon.waitForExit(timeLimit: .seconds(10))
                        _ = try await get.waitForExit(timeLimit: .seconds(10))
                    }
                    firstLog = daemon.stderrText()
                }
                let firstRun = try await Self.originBytes(origin, path: "big.bin")
                #expect(firstRun >= size / 2, "the crash came before half: \(firstRun) bytes")

                var secondLog = ""
                try await withDragonfly(daemonArguments + ["--log-level", "debug"]) { daemon in
                    _ = try await daemon.awaitReady()
                    try await withDragonfly(getArguments, readyFile: false) { get in
                        let status = try await get.waitForExit(timeLimit: .seconds(150))
                        #expect(status == .exited(0), "\(get.stderrText())")
                    }
                    secondLog = daemon.stderrText()
                }
                // The daemon is gone, and with it its idle connections: every request is in the log.
                let total = try await Self.originBytes(origin, path: "big.bin")
                let read = GetNoDaemonTests.read(output)
                #expect(read?.count == size)
                #expect(read == content, "the resumed download has the wrong bytes")
                #expect(
                    Double(total) <= 1.15 * Double(size),
                    """
                    the origin sent \(total) bytes for a \(size)-byte file (\(firstRun) before the crash)
                    first daemon: \(String(firstLog.suffix(3000)))
                    second daemon: \(String(secondLog.suffix(3000)))
                    """)
            }
        }
    }

    @Test func twoConcurrentGetsOfOneTaskReadTheOriginOnce() async throws {
        let size = 24 << 20
        let content = GetNoDaemonTests.bytes(size, seed: 0x5EED_7E5F)
        try await withNginxOrigin { origin in
            try origin.writeFile("twice.bin", contents: content)
            let url = origin.rateLimitedURL(for: "twice.bin", bytesPerSecond: 4 << 20)
            try await withTemporaryDirectory { dir in
                let daemonDirectory = dir.appending("daemon")
                try await withDragonfly(RoleArguments.daemon(directory: daemonDirectory, manager: nil)) { daemon in
                    _ = try await daemon.awaitReady()
                    let outputs = [dir.appending("a.bin"), dir.appending("b.bin")]
                    try await withThrowingTaskGroup(of: Void.self) { group in
                        for output in outputs {
                            group.addTask {
                                let result = try await runDragonfly(
                                    RoleArguments.get(url: url, output: output, daemonDirectory: daemonDirectory),
                                    timeLimit: .seconds(60))
                                #expect(result.exitCode == 0, "\(result.stderr)")
                            }
                        }
                        try await group.waitForAll()
                    }
                    for output in outputs {
                        #expect(GetNoDaemonTests.read(output) == content, "\(output) has the wrong bytes")
                    }
                }
                let total = try await Self.originBytes(origin, path: "twice.bin")
                // One read of the object; a stat may add a byte or so.
                #expect(total <= size + 1024, "the origin sent \(total) bytes for a \(size)-byte file")
            }
        }
    }
}
