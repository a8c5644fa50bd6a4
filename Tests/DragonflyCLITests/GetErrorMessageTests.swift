import DragonflyCore
import DragonflyTestSupport
import Foundation
import Testing

/// Issue 13 point 5: `get` and `stat` fail with one line a person can act on, naming the cause, through the
/// daemon and without it; nothing internal (code names, errno dumps) and no secret reaches the terminal.
@Suite(.serialized, .timeLimit(.minutes(3)))
struct GetErrorMessageTests {
    /// The `dragonfly:` lines of `stderr` (logfmt warnings are not errors and are left out).
    static func errorLines(_ stderr: String) -> [Substring] {
        stderr.split(separator: "\n").filter { $0.hasPrefix("dragonfly:") }
    }

    /// Checks a failed `get`: `code`, exactly one error line, every one of `parts` in it, nothing internal.
    static func expectOneReadableLine(
        _ result: DragonflyRunResult, code: Int32, naming parts: [String],
        sourceLocation: SourceLocation = #_sourceLocation
    ) {
        #expect(result.exitCode == code, "\(result.stderr)", sourceLocation: sourceLocation)
        let lines = errorLines(result.stderr)
        #expect(lines.count == 1, "\(result.stderr)", sourceLocation: sourceLocation)
        let line = lines.first.map(String.init) ?? ""
        for part in parts {
            #expect(line.lowercased().contains(part.lowercased()), "\(line)", sourceLocation: sourceLocation)
        }
        for leak in [
            "invalidArgument", "originError", "unavailable:", "internalError", "(error set)", "errno", "RPCError",
            "the local daemon cannot serve",
        ] {
            #expect(!result.stderr.contains(leak), "\(result.stderr)", sourceLocation: sourceLocation)
        }
    }

    @Test(arguments: [true, false])
    func originAndRangeErrorsAreOneLineNamingTheCause(throughDaemon: Bool) async throws {
        try await withNginxOrigin { origin in
            try origin.writeFile("small.bin", contents: [UInt8](repeating: 7, count: 1000))
            try await withTemporaryDirectory { dir in
                let daemonDirectory = dir.appending("daemon")
                try await withDragonfly(RoleArguments.daemon(directory: daemonDirectory, manager: nil)) { daemon in
                    _ = try await daemon.awaitReady(timeLimit: .seconds(60))
                    let mode =
                        throughDaemon
                        ? ["--socket", RoleArguments.socket(in: daemonDirectory)] : ["--no-daemon"]
                    func get(_ url: String, _ extra: [String] = []) async throws -> DragonflyRunResult {
                        try await runDragonfly(
                            [
                                "get", url, "-O", dir.appending("out.bin"), "--no-progress", "--data-dir",
                                dir.appending("get"),
                            ]
                                + mode + extra)
                    }
                    let missing = origin.statusURL(404)
                    Self.expectOneReadableLine(try await get(missing), code: 1, naming: ["404", "Not Found", missing])

                    let refused = try await get("http://127.0.0.1:1/x.bin")
                    Self.expectOneReadableLine(
                        refused, code: 1, naming: ["cannot connect to 127.0.0.1:1", "connection refused"])

                    let beyond = try await get(origin.url(for: "small.bin"), ["--range", "5000-"])
                    Self.expectOneReadableLine(beyond, code: 1, naming: ["416"])
                    #expect(!FileManager.default.fileExists(atPath: dir.appending("out.bin")))
                }
            }
        }
    }

    @Test func aMissingSchemeSuggestsHTTPAndStatRefusesANonURL() async throws {
        let get = try await runDragonfly(["get", "127.0.0.1:8080/x", "-O", "/tmp/never-written", "--no-daemon"])
        #expect(get.exitCode == 2, "\(get.stderr)")
        #expect(get.stderr.contains("http://127.0.0.1:8080/x"), "\(get.stderr)")
        #expect(!get.stderr.contains("unsupported scheme"), "\(get.stderr)")

        let stat = try await runDragonfly(["stat", "foo"])
        #expect(stat.exitCode == 2, "\(stat.stderr)")
        #expect(stat.stderr.contains("not a URL"), "\(stat.stderr)")
        #expect(!stat.stdout.contains("task "), "\(stat.stdout)")
    }

    @Test(arguments: ["Bearer s3cr3t-t0ken", "Authorization; s3cr3t-t0ken", "X-Key:\rs3cr3t-t0ken"])
    func aMalformedHeaderIsNeverEchoed(header: String) async throws {
        try await withTemporaryDirectory { dir in
            let result = try await runDragonfly([
                "get", "http://127.0.0.1:1/x", "-O", dir.appending("x"), "--no-daemon", "-H", header,
            ])
            #expect(result.exitCode == 2, "\(result.stderr)")
            #expect(!result.stderr.contains("s3cr3t-t0ken"), "\(result.stderr)")
            let file = try dir.writeFile("headers", text: header + "\n")
            let fromFile = try await runDragonfly([
                "get", "http://127.0.0.1:1/x", "-O", dir.appending("x"), "--no-daemon", "--header-file", file,
            ])
            #expect(fromFile.exitCode == 2, "\(fromFile.stderr)")
            #expect(!fromFile.stderr.contains("s3cr3t-t0ken"), "\(fromFile.stderr)")
        }
    }
}
