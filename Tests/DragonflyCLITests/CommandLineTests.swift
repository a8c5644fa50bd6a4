import DragonflyCore
import DragonflyTestSupport
import Testing

/// The command-line contract of DESIGN §15, exercised on the built `dragonfly` binary.
@Suite(.serialized, .timeLimit(.minutes(2)))
struct CommandLineTests {
    @Test(arguments: ["daemon", "cdn", "scheduler", "manager"])
    func printConfigRoundTrips(role: String) async throws {
        try await withTemporaryDirectory { dir in
            let first = try await runDragonfly([role, "--print-config"])
            #expect(first.exitCode == 0, "\(first.stderr)")
            #expect(first.stdout.contains("log:"))
            let path = try dir.writeFile("a.yaml", text: first.stdout)
            let second = try await runDragonfly([role, "--config", path, "--print-config"])
            #expect(second.exitCode == 0, "\(second.stderr)")
            #expect(second.stdout == first.stdout)
        }
    }

    @Test func flagsOverrideTheFile() async throws {
        try await withTemporaryDirectory { dir in
            let path = try dir.writeFile("s.yaml", text: "listen: 127.0.0.1:9000\ngc:\n  peerTTL: 5m\n")
            let result = try await runDragonfly([
                "scheduler", "--config", path, "--listen", "127.0.0.1:9100", "--log-level", "debug", "--print-config",
            ])
            #expect(result.exitCode == 0, "\(result.stderr)")
            let config = try ConfigLoader.load(SchedulerConfig.self, yaml: result.stdout)
            #expect(config.listen == ListenAddress(host: "127.0.0.1", port: 9100))
            #expect(config.gc.peerTTL == .minutes(5))
            #expect(config.log.level == .debug)
        }
    }

    @Test func badConfigExitsTwoNamingTheKey() async throws {
        try await withTemporaryDirectory { dir in
            let bad = try dir.writeFile("bad.yaml", text: "scheduling:\n  parentLimit: lots\n")
            let result = try await runDragonfly(["scheduler", "--config", bad])
            #expect(result.exitCode == 2)
            #expect(result.stderr.contains("scheduling.parentLimit"), "\(result.stderr)")
            let unknown = try dir.writeFile("unknown.yaml", text: "gc:\n  peerTtl: 1m\n")
            let second = try await runDragonfly(["scheduler", "--config", unknown])
            #expect(second.exitCode == 2)
            #expect(second.stderr.contains("unknown key 'gc.peerTtl'"), "\(second.stderr)")
            let broken = try dir.writeFile("broken.yaml", text: "listen: [\n")
            let third = try await runDragonfly(["manager", "--config", broken])
            #expect(third.exitCode == 2)
            #expect(third.stderr.contains("invalid YAML"), "\(third.stderr)")
        }
    }

    @Test func missingConfigFileExitsTwo() async throws {
        let result = try await runDragonfly(["daemon", "--config", "/nonexistent/dragonfly.yaml"])
        #expect(result.exitCode == 2)
        #expect(result.stderr.contains("/nonexistent/dragonfly.yaml"))
    }

    @Test(arguments: [
        ["daemon", "--no-such-flag"],
        ["scheduler", "--listen", "not-an-address"],
        ["manager", "--log-level", "loud"],
        ["daemon", "--idle-exit", "soon"],
        ["frobnicate"],
        ["stat"],
        ["stat", "https://example.com", "--piece-length", "3M"],
    ])
    func usageErrorsExitTwo(arguments: [String]) async throws {
        let result = try await runDragonfly(arguments)
        #expect(result.exitCode == 2, "\(arguments): \(result.status) \(result.stderr)")
        #expect(!result.stderr.isEmpty)
    }

    @Test func usageErrorNamesTheFlag() async throws {
        let result = try await runDragonfly(["scheduler", "--metrics-listen", "8000"])
        #expect(result.exitCode == 2)
        #expect(result.stderr.contains("--metrics-listen"), "\(result.stderr)")
    }

    @Test func versionListsTheRegisteredPlugins() async throws {
        let result = try await runDragonfly(["version"])
        #expect(result.exitCode == 0)
        #expect(result.stdout.hasPrefix("dragonfly \(DragonflyVersion.current)\n"))
        #expect(result.stdout.contains("scheduling strategies: default"))
        #expect(result.stdout.contains("source clients:"))
        #expect(result.stdout.contains("storage media:"))
    }

    @Test func statPrintsTheTaskIDFirstAndNeverStartsADaemon() async throws {
        try await withTemporaryDirectory { dir in
            let result = try await runDragonfly([
                "stat", "https://example.com", "--tag", "foo", "--application", "bar", "--socket",
                dir.appending("none.sock"),
            ])
            #expect(result.exitCode == 0, "\(result.stderr)")
            let lines = result.stdout.split(separator: "\n")
            #expect(lines.first == "task 06408fbf247ddaca478f8cb9565fe5591c28efd0994b8fea80a6a87d3203c5ca")
            #expect(lines.dropFirst().first == "daemon: not running at \(dir.appending("none.sock"))")
        }
    }

    @Test func getAndStatHelpNameTheSocket() async throws {
        for command in ["get", "stat"] {
            let result = try await runDragonfly([command, "--help"])
            #expect(result.exitCode == 0)
            #expect(result.stdout.contains("dfdaemon.sock"), "\(result.stdout)")
        }
    }

    @Test func helpExitsZero() async throws {
        let result = try await runDragonfly(["--help"])
        #expect(result.exitCode == 0)
        for role in ["manager", "scheduler", "cdn", "daemon", "get", "stat", "version"] {
            #expect(result.stdout.contains(role))
        }
    }
}
