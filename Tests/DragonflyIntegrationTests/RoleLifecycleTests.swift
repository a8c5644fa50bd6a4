import AsyncHTTPClient
import DragonflyCore
import DragonflyTestSupport
import NIOCore
import NIOHTTP1
import Testing

/// Starts each long-running role as a real process on port 0 and checks the contract of DESIGN §15: the ready
/// file names every listener, `/healthy` and `/metrics` answer where they should, SIGTERM exits 0 within 5 s.
@Suite(.serialized, .timeLimit(.minutes(3)))
struct RoleLifecycleTests {
    struct RoleCase: Sendable, CustomTestStringConvertible {
        var role: String
        var arguments: @Sendable (TemporaryDirectory) -> [String]
        var listeners: Set<String>
        var metricsListener: String
        var healthListeners: [String]
        var hasSocket: Bool
        var testDescription: String { role }
    }

    static func daemonArguments(_ role: String) -> @Sendable (TemporaryDirectory) -> [String] {
        { dir in
            [
                role, "--data-dir", dir.appending("data"), "--socket", dir.appending("run/\(role).sock"),
                "--peer-listen", "127.0.0.1:0", "--proxy-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
                "--health-listen", "127.0.0.1:0", "--piece-listen", "127.0.0.1:0",
            ]
        }
    }

    static let cases: [RoleCase] = [
        RoleCase(
            role: "manager",
            arguments: { dir in
                [
                    "manager", "--data-dir", dir.appending("data"), "--listen", "127.0.0.1:0", "--grpc-listen",
                    "127.0.0.1:0",
                ]
            },
            listeners: ["http", "grpc"],
            metricsListener: "http",
            healthListeners: ["http"],
            hasSocket: false
        ),
        RoleCase(
            role: "scheduler",
            arguments: { _ in ["scheduler", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"] },
            listeners: ["grpc", "metrics"],
            metricsListener: "metrics",
            healthListeners: ["metrics"],
            hasSocket: false
        ),
        RoleCase(
            role: "cdn",
            arguments: daemonArguments("cdn"),
            listeners: ["peer", "proxy", "metrics", "health", "piece"],
            metricsListener: "metrics",
            healthListeners: ["metrics", "health"],
            hasSocket: true
        ),
        RoleCase(
            role: "daemon",
            arguments: daemonArguments("daemon"),
            listeners: ["peer", "proxy", "metrics", "health", "piece"],
            metricsListener: "metrics",
            healthListeners: ["metrics", "health"],
            hasSocket: true
        ),
    ]

    static func get(_ url: String) async throws -> (status: Int, body: String) {
        let response = try await HTTPClient.shared.execute(HTTPClientRequest(url: url), timeout: .seconds(10))
        let body = try await response.body.collect(upTo: 4 << 20)
        return (Int(response.status.code), String(buffer: body))
    }

    @Test(arguments: cases)
    func roleStartsServesAndStopsOnSIGTERM(_ roleCase: RoleCase) async throws {
        try await withTemporaryDirectory { dir in
            try await withDragonfly(roleCase.arguments(dir)) { process in
                let ready = try await process.awaitReady(timeLimit: .seconds(30))
                #expect(ready.role == roleCase.role)
                #expect(ready.pid == Int(process.pid))
                #expect(Set(ready.listeners.keys) == roleCase.listeners)
                for (name, address) in ready.listeners {
                    #expect(address.hasPrefix("127.0.0.1:"), "\(name) bound \(address)")
                    #expect(ready.port(of: name).map { $0 > 0 } == true, "\(name) has a real port")
                }
                #expect((ready.socket != nil) == roleCase.hasSocket)

                for name in roleCase.healthListeners {
                    let address = try #require(ready.listeners[name])
                    let health = try await Self.get("http://\(address)/healthy")
                    #expect(health.status == 200, "/healthy on \(name)")
                }
                let metricsAddress = try #require(ready.listeners[roleCase.metricsListener])
                let metrics = try await Self.get("http://\(metricsAddress)/metrics")
                #expect(metrics.status == 200)
                #expect(metrics.body.contains("dragonfly_\(roleCase.role)_build_info{"), "\(metrics.body)")

                try process.signal(.terminate)
                let clock = ContinuousClock()
                let start = clock.now
                let status = try await process.waitForExit(timeLimit: .seconds(5))
                #expect(status == .exited(0), "stderr: \(process.stderrText())")
                #expect(clock.now - start < .seconds(5))
            }
        }
    }

    @Test(arguments: ["daemon", "cdn"])
    func secondProcessOnTheSameDataDirExitsOneNamingTheFirst(role: String) async throws {
        try await withTemporaryDirectory { dir in
            try await withDragonfly(Self.daemonArguments(role)(dir)) { first in
                _ = try await first.awaitReady(timeLimit: .seconds(30))
                let second = try await runDragonfly(
                    Self.daemonArguments(role)(dir) + ["--socket", dir.appending("other.sock")])
                #expect(second.exitCode == 1)
                #expect(second.stderr.contains("locked by process \(first.pid)"), "\(second.stderr)")
                try first.signal(.terminate)
                #expect(try await first.waitForExit(timeLimit: .seconds(5)) == .exited(0))
            }
        }
    }

    @Test func sigintAlsoStopsGracefully() async throws {
        try await withTemporaryDirectory { dir in
            try await withDragonfly(["scheduler", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"]) {
                process in
                _ = try await process.awaitReady(timeLimit: .seconds(30))
                try process.signal(.interrupt)
                #expect(try await process.waitForExit(timeLimit: .seconds(5)) == .exited(0))
            }
        }
    }

    @Test func busyPortExitsOneNamingTheListener() async throws {
        try await withTemporaryDirectory { dir in
            try await withDragonfly(["scheduler", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"]) {
                first in
                let ready = try await first.awaitReady(timeLimit: .seconds(30))
                let taken = try #require(ready.listeners["metrics"])
                let second = try await runDragonfly(["scheduler", "--listen", "127.0.0.1:0", "--metrics-listen", taken])
                #expect(second.exitCode == 1)
                #expect(second.stderr.contains(taken), "\(second.stderr)")
                try first.signal(.terminate)
                _ = try await first.waitForExit(timeLimit: .seconds(5))
            }
        }
    }
}
