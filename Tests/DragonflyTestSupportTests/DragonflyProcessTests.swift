import DragonflyCore
import DragonflyTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Exercises the process machinery with small shell scripts standing in for `dragonfly` (the real binary is
/// launched by the integration tests once its roles run). The scripts are real processes, not mocks.
@Suite(.serialized) struct DragonflyProcessTests {
    /// Writes a ready file like a role does (to a temporary name, then renamed), then runs until SIGTERM.
    static let readyScript = """
        #!/bin/sh
        ready=""
        while [ $# -gt 0 ]; do
            case "$1" in
                --ready-file) ready="$2"; shift 2 ;;
                *) shift ;;
            esac
        done
        trap 'echo "got SIGTERM" >&2; exit 0' TERM
        echo "fake dragonfly starting" >&2
        echo "hello on stdout"
        printf '{"role":"daemon","pid":%d,"listeners":{"peer":"127.0.0.1:41234","proxy":"[::1]:4001"},"socket":"/x.sock"}' $$ > "$ready.tmp"
        mv "$ready.tmp" "$ready"
        while :; do sleep 0.1; done

        """

    @Test(.timeLimit(.minutes(1)))
    func awaitReadyParsesTheReadyFileAndSIGTERMGivesExitZero() async throws {
        try await withTemporaryDirectory { scripts in
            let script = try scripts.writeFile("dragonfly", text: Self.readyScript, permissions: 0o755)
            try await withDragonfly(["daemon", "--peer-listen", "127.0.0.1:0"], executablePath: script) { process in
                let ready = try await process.awaitReady(timeLimit: .seconds(20))
                #expect(ready.role == "daemon")
                #expect(ready.pid == Int(process.pid))
                #expect(ready.listeners["peer"] == "127.0.0.1:41234")
                #expect(ready.port(of: "peer") == 41234)
                #expect(ready.address(of: "proxy")?.host == "::1")
                #expect(ready.address(of: "metrics") == nil)
                #expect(ready.socket == "/x.sock")
                #expect(process.arguments.suffix(2).first == "--ready-file")
                #expect(try process.exitStatus() == nil)

                try process.signal(SIGTERM)
                let status = try await process.waitForExit(timeLimit: .seconds(20))
                #expect(status == .exited(0))
                #expect(status.exitCode == 0)
                #expect(process.stderrText().contains("fake dragonfly starting"))
                #expect(process.stderrText().contains("got SIGTERM"))
                #expect(process.stdoutText() == "hello on stdout\n")
            }
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func awaitReadyFailsEarlyWithStderrWhenTheProcessExits() async throws {
        try await withTemporaryDirectory { scripts in
            let script = try scripts.writeFile(
                "dragonfly",
                text: "#!/bin/sh\necho 'listener could not bind 127.0.0.1:4000' >&2\nexit 1\n",
                permissions: 0o755
            )
            let clock = ContinuousClock()
            let start = clock.now
            try await withDragonfly(["daemon"], executablePath: script) { process in
                let error = await #expect(throws: TestSupportError.self) {
                    try await process.awaitReady(timeLimit: .seconds(50))
                }
                #expect(error?.code == .processExitedEarly)
                #expect(error?.message.contains("listener could not bind 127.0.0.1:4000") == true)
                #expect(error?.message.contains("exited with code 1") == true)
            }
            #expect(clock.now - start < .seconds(20))
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func killedBySignalIsReportedAsSignaled() async throws {
        try await withTemporaryDirectory { scripts in
            let script = try scripts.writeFile("dragonfly", text: Self.readyScript, permissions: 0o755)
            try await withDragonfly([], executablePath: script) { process in
                _ = try await process.awaitReady(timeLimit: .seconds(20))
                try process.signal(.kill)
                let status = try await process.waitForExit(timeLimit: .seconds(20))
                #expect(status == .signaled(SIGKILL))
                #expect(status.exitCode == nil)
            }
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func theScopeEndKillsAProcessThatIgnoresSIGTERM() async throws {
        try await withTemporaryDirectory { scripts in
            let script = try scripts.writeFile(
                "dragonfly",
                text: "#!/bin/sh\ntrap '' TERM\necho started >&2\nwhile :; do sleep 0.1; done\n",
                permissions: 0o755
            )
            let pid = try await withDragonfly([], readyFile: false, executablePath: script) { process in
                try await poll(timeLimit: .seconds(20), description: "the script to start") {
                    process.stderrText().contains("started")
                }
                try process.signal(.terminate)
                #expect(try process.exitStatus() == nil)
                return process.pid
            }
            // Reaped at the end of the scope: the PID names no process (or, rarely, an unrelated new one).
            #expect(kill(pid, 0) != 0 || getpgid(pid) != pid)
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func runDragonflyCollectsExitCodeOutputAndStdin() async throws {
        try await withTemporaryDirectory { scripts in
            let script = try scripts.writeFile(
                "dragonfly",
                text:
                    "#!/bin/sh\ncat\necho \"args: $*\"\necho \"env: $DF_TEST_VALUE\"\necho 'bad flag --nope' >&2\nexit 2\n",
                permissions: 0o755
            )
            let result = try await runDragonfly(
                ["get", "--nope"],
                environment: ["DF_TEST_VALUE": "42"],
                standardInput: "from stdin\n",
                timeLimit: .seconds(30),
                executablePath: script
            )
            #expect(result.exitCode == 2)
            #expect(result.status == .exited(2))
            #expect(result.stdout == "from stdin\nargs: get --nope\nenv: 42\n")
            #expect(result.stderr == "bad flag --nope\n")
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func runDragonflyKillsAProcessThatOutlivesItsTimeLimit() async throws {
        try await withTemporaryDirectory { scripts in
            let script = try scripts.writeFile(
                "dragonfly",
                text: "#!/bin/sh\necho 'still working' >&2\nwhile :; do sleep 0.1; done\n",
                permissions: 0o755
            )
            let error = await #expect(throws: TestSupportError.self) {
                try await runDragonfly(["get"], timeLimit: .milliseconds(500), executablePath: script)
            }
            #expect(error?.code == .timedOut)
            #expect(error?.message.contains("still working") == true)
        }
    }

    @Test func aMissingBinaryInDRAGONFLY_BINGivesAClearError() throws {
        let missing = "/nonexistent/dragonfly-test/dragonfly"
        let error = #expect(throws: TestSupportError.self) {
            try DragonflyExecutable.locate(environment: ["DRAGONFLY_BIN": missing])
        }
        #expect(error?.code == .binaryNotFound)
        #expect(error?.message.contains(missing) == true)
        #expect(error?.message.contains("DRAGONFLY_BIN") == true)
        #expect(error?.message.contains("swift build") == true)
    }

    @Test func aMissingBinaryNextToTheTestsGivesAClearError() throws {
        let error = #expect(throws: TestSupportError.self) {
            try DragonflyExecutable.locate(
                environment: [:], testExecutablePath: "/nonexistent/debug/pkgPackageTests.xctest")
        }
        #expect(error?.code == .binaryNotFound)
        #expect(error?.message.contains("/nonexistent/debug/dragonfly") == true)
        #expect(error?.message.contains("swift build") == true)
    }

    @Test func theExecutableIsFoundNextToTheTestExecutable() async throws {
        try await withTemporaryDirectory { build in
            let binary = try build.writeFile("debug/dragonfly", text: "#!/bin/sh\n", permissions: 0o755)
            let found = try DragonflyExecutable.locate(
                environment: [:],
                testExecutablePath: build.appending("debug/dragonflyPackageTests.xctest")
            )
            #expect(found == binary)
            #expect(try DragonflyExecutable.locate(environment: ["DRAGONFLY_BIN": binary]) == binary)
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func withDragonflyRejectsAMissingExecutable() async throws {
        let error = await #expect(throws: TestSupportError.self) {
            try await withDragonfly(["daemon"], executablePath: "/nonexistent/dragonfly") { _ in }
        }
        #expect(error?.code == .binaryNotFound)
        #expect(error?.message.contains("swift build") == true)
    }

    @Test func readyFileDecodesTheDesignExample() throws {
        let json = #"{"role":"daemon","pid":12,"listeners":{"peer":"127.0.0.1:41234"},"socket":"/x.sock"}"#
        let ready = try ReadyFile(json: Array(json.utf8))
        #expect(ready == ReadyFile(role: "daemon", pid: 12, listeners: ["peer": "127.0.0.1:41234"], socket: "/x.sock"))
        let withoutSocket = try ReadyFile(json: Array(#"{"role":"scheduler","pid":3,"listeners":{}}"#.utf8))
        #expect(withoutSocket.socket == nil)
    }
}
