import DragonflyTestSupport
import Foundation
import Testing

/// The small malformed-input run of issue 12: `scripts/fuzz-listeners` starts its own manager, scheduler, cdn
/// and daemon from the debug `dragonfly` the tests use, sends every listener random bytes, truncated and
/// oversized HTTP/1 heads, absurd lengths, broken HTTP/2 and TLS, and holds idle and half-open connections;
/// it exits 0 only if no process died, every `/healthy` answered 200 while the connections were held, and no
/// process's RSS grew past 1.5 × its start. The large run is the same script with more rounds and connections.
@Suite(.serialized)
struct ListenerFuzzTests {
    /// Every listener of every role (DESIGN §15), as the script names them in its report.
    static let listeners = [
        "manager/http", "manager/grpc", "scheduler/grpc", "scheduler/metrics",
        "cdn/peer", "cdn/proxy", "cdn/metrics", "cdn/health", "cdn/piece",
        "daemon/peer", "daemon/proxy", "daemon/metrics", "daemon/health", "daemon/piece",
    ]

    /// `scripts/fuzz-listeners` of the source tree this test was built from.
    static func scriptPath(filePath: String = #filePath) -> String {
        // <root>/Tests/DragonflyIntegrationTests/ListenerFuzzTests.swift
        URL(fileURLWithPath: filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("scripts/fuzz-listeners").path
    }

    @Test(.timeLimit(.minutes(5)))
    func malformedInputOnEveryListenerKillsNothingAndKeepsHealthAndMemory() async throws {
        let binary = try DragonflyExecutable.locate()
        let arguments = [
            "--binary", binary, "--seed", "1", "--rounds", "5", "--idle", "40", "--seconds", "60",
            "--health-deadline", "10",
        ]
        let output = try await runTool(Self.scriptPath(), arguments, timeLimit: .seconds(270))
        let report = "\(output.status)\n\(output.standardOutput)\n\(output.standardError)"
        #expect(output.succeeded, "\(report)")
        // The run reached every listener, sent it cases, and counted its verdicts.
        for listener in Self.listeners {
            let line = output.standardOutput.split(separator: "\n").first { $0.hasPrefix(listener + " ") }
            #expect(line?.contains(" cases ") == true, "no report line for \(listener)\n\(report)")
            #expect(line?.hasSuffix("PASS") == true, "\(listener) failed\n\(report)")
        }
        #expect(output.standardOutput.contains(", 0 failed"), "\(report)")
    }
}
