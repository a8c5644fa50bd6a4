import DragonflyCore
import DragonflyTestSupport
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// `dragonfly get` through the local daemon (DESIGN §2, §15 "Auto-started daemon"): real `dragonfly`
/// processes, a real nginx origin. Every test passes `--socket` and `--data-dir` inside its temporary
/// directory, so no system path is touched, and kills any daemon it caused to start.
///
/// These pass whether or not the daemon serves the Local service yet: without it `get` falls back to the
/// origin, with it the daemon downloads.
@Suite(.serialized, .timeLimit(.minutes(3)))
struct GetDaemonTests {
    /// PIDs of live (not zombie) processes whose command line has `daemon` and `--socket socket`.
    static func daemonProcesses(socket: String) -> [Int32] {
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return [] }
        return entries.compactMap { Int32($0) }.filter { pid in
            guard let raw = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return false }
            let argv = raw.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
            guard argv.contains("daemon"), let flag = argv.firstIndex(of: "--socket"), flag + 1 < argv.count,
                argv[flag + 1] == socket
            else { return false }
            return isAlive(pid)
        }
    }

    /// Whether `pid` exists and is not a zombie.
    static func isAlive(_ pid: Int32) -> Bool {
        guard let stat = FileManager.default.contents(atPath: "/proc/\(pid)/stat") else { return false }
        let text = String(decoding: stat, as: UTF8.self)
        guard let close = text.lastIndex(of: ")") else { return false }
        let state = text[text.index(after: close)...].split(separator: " ").first
        return state != "Z" && state != "X"
    }

    /// Kills the daemons a test started (they run detached, outside the test harness's process groups).
    static func killDaemons(socket: String) {
        for pid in daemonProcesses(socket: socket) { kill(pid, SIGKILL) }
    }

    static func getArguments(
        _ url: String, output: String, socket: String, data: String, extra: [String] = []
    ) -> [String] {
        ["get", url, "-O", output, "--socket", socket, "--data-dir", data, "--daemon-idle-exit", "3s"] + extra
    }

    /// Runs `dragonfly` to the end and returns its exit code, stderr, and stdout as bytes.
    static func run(_ arguments: [String]) async throws -> (code: Int32?, stderr: String, stdout: [UInt8]) {
        try await withDragonfly(arguments, readyFile: false) { process in
            let status = try await process.waitForExit(timeLimit: .seconds(60))
            let stdout = FileManager.default.contents(atPath: process.standardOutputPath).map(Array.init) ?? []
            return (status.exitCode, process.stderrText(), stdout)
        }
    }

    /// The local addresses (`IP:port`) of the TCP sockets `pid` listens on, read from `/proc`.
    static func listeningAddresses(pid: Int32) -> [String] {
        let fdDirectory = "/proc/\(pid)/fd"
        let inodes = Set(
            ((try? FileManager.default.contentsOfDirectory(atPath: fdDirectory)) ?? []).compactMap { fd -> String? in
                guard let target = try? FileManager.default.destinationOfSymbolicLink(atPath: "\(fdDirectory)/\(fd)"),
                    target.hasPrefix("socket:[")
                else { return nil }
                return String(target.dropFirst("socket:[".count).dropLast())
            })
        var addresses: [String] = []
        for table in ["tcp", "tcp6"] {
            guard let text = try? String(contentsOfFile: "/proc/\(pid)/net/\(table)", encoding: .utf8) else { continue }
            for line in text.split(separator: "\n").dropFirst() {
                let fields = line.split(separator: " ")
                guard fields.count > 9, fields[3] == "0A", inodes.contains(String(fields[9])) else { continue }
                let parts = fields[1].split(separator: ":")
                guard parts.count == 2, let port = Int(parts[1], radix: 16) else { continue }
                let hex = String(parts[0])
                let ip: String
                if hex.count == 8, let value = UInt32(hex, radix: 16) {
                    ip = "\(value & 0xFF).\(value >> 8 & 0xFF).\(value >> 16 & 0xFF).\(value >> 24)"
                } else if hex == "00000000000000000000000001000000" {
                    ip = "::1"
                } else {
                    ip = "[\(hex)]"
                }
                addresses.append("\(ip):\(port)")
            }
        }
        return addresses
    }

    @Test func anAutoStartedDaemonListensOnLoopbackOnlyAndItsSocketIsGroupOnly() async throws {
        try await withNginxOrigin { origin in
            try origin.writeFile("f.bin", contents: GetNoDaemonTests.bytes(1 << 20, seed: 0x5EED_0013))
            try await withTemporaryDirectory { dir in
                let socket = dir.appending("run/dfdaemon.sock")
                defer { Self.killDaemons(socket: socket) }
                let result = try await Self.run([
                    "get", origin.url(for: "f.bin"), "-O", dir.appending("f.bin"), "--socket", socket, "--data-dir",
                    dir.appending("data"), "--daemon-idle-exit", "60s", "--no-progress",
                ])
                #expect(result.code == 0, "\(result.stderr)")
                let pid = try #require(Self.daemonProcesses(socket: socket).first)
                // Peer, proxy, metrics, health and piece: with no scheduler or manager, all on loopback. Read until
                // all five show in /proc (one was once missing from a single read on a loaded machine).
                var listening: [String] = []
                try await poll(every: .milliseconds(100), timeLimit: .seconds(10), description: "five listeners") {
                    listening = Self.listeningAddresses(pid: pid)
                    return listening.count >= 5
                }
                for address in listening {
                    #expect(address.hasPrefix("127.0.0.1:") || address.hasPrefix("::1:"), "\(listening)")
                }
                var info = stat()
                #expect(lstat(socket, &info) == 0)
                #expect(info.st_mode & S_IFMT == S_IFSOCK)
                #expect(info.st_mode & 0o777 == 0o660)
            }
        }
    }

    @Test func concurrentGetsStartOneDaemonThatExitsWhenIdle() async throws {
        let content = GetNoDaemonTests.bytes(24 << 20, seed: 0x5EED_0001)
        try await withNginxOrigin { origin in
            try origin.writeFile("shared.bin", contents: content)
            let url = origin.url(for: "shared.bin")
            try await withTemporaryDirectory { dir in
                let socket = dir.appending("run/dfdaemon.sock")
                defer { Self.killDaemons(socket: socket) }
                let config = try dir.writeFile("daemon.yaml", text: "log:\n  level: debug\n")
                let data = dir.appending("daemon-data")
                let extra = ["--daemon-config", config, "--log-level", "info"]
                let toFile = Self.getArguments(
                    url, output: dir.appending("a.bin"), socket: socket, data: data, extra: extra)
                let toStdout = Self.getArguments(url, output: "-", socket: socket, data: data, extra: extra)
                #expect(Self.daemonProcesses(socket: socket).isEmpty)

                async let first = Self.run(toFile)
                async let second = Self.run(toStdout)
                let (a, b) = try await (first, second)

                #expect(a.code == 0, "\(a.stderr)")
                #expect(b.code == 0, "\(b.stderr)")
                #expect(GetNoDaemonTests.read(dir.appending("a.bin")) == content)
                #expect(b.stdout.count == content.count)
                #expect(b.stdout == content)
                // Exactly one of the two started a daemon; the other found it (or waited on the start lock).
                let starts = (a.stderr + b.stderr).components(separatedBy: "msg=\"daemon started\"").count - 1
                #expect(starts == 1, "\(a.stderr)\n\(b.stderr)")
                #expect(Self.daemonProcesses(socket: socket).count <= 1)
                let log = (try? String(contentsOfFile: data + "/daemon.log", encoding: .utf8)) ?? ""
                #expect(!log.contains("is locked by"), "\(log)")
                // The daemon read --daemon-config (its log level is debug only there).
                #expect(log.contains("level=debug"), "\(log)")

                // The daemon was started with --idle-exit 3s: it leaves by itself.
                try await poll(every: .milliseconds(100), timeLimit: .seconds(30), description: "the daemon to exit") {
                    Self.daemonProcesses(socket: socket).isEmpty
                }
            }
        }
    }

    @Test func aDaemonThatCannotStartFailsWithDisableBackSourceAndFallsBackWithout() async throws {
        let content = GetNoDaemonTests.bytes(3 << 20, seed: 0x5EED_0002)
        try await withNginxOrigin { origin in
            try origin.writeFile("f.bin", contents: content)
            let url = origin.url(for: "f.bin")
            try await withTemporaryDirectory { dir in
                let socket = dir.appending("run/dfdaemon.sock")
                defer { Self.killDaemons(socket: socket) }
                // A data dir below a regular file cannot be created, even by root: the daemon exits 1.
                let blocker = try dir.writeFile("not-a-directory", text: "x")
                let data = blocker + "/data"
                let out = dir.appending("out.bin")

                let refused = try await Self.run(
                    Self.getArguments(url, output: out, socket: socket, data: data, extra: ["--disable-back-source"]))
                #expect(refused.code == 1, "\(refused.stderr)")
                #expect(refused.stderr.contains("back-to-source is disabled"), "\(refused.stderr)")
                #expect(refused.stderr.contains("exited with status 1"), "\(refused.stderr)")
                #expect(refused.stderr.contains("Not a directory"), "\(refused.stderr)")
                #expect(!FileManager.default.fileExists(atPath: out))

                let fellBack = try await Self.run(Self.getArguments(url, output: out, socket: socket, data: data))
                #expect(fellBack.code == 0, "\(fellBack.stderr)")
                #expect(fellBack.stderr.contains("downloading from the origin"), "\(fellBack.stderr)")
                #expect(GetNoDaemonTests.read(out) == content)
                #expect(Self.daemonProcesses(socket: socket).isEmpty)
            }
        }
    }

    @Test func anOriginErrorExitsOneWithItsStatus() async throws {
        try await withNginxOrigin { origin in
            try await withTemporaryDirectory { dir in
                let socket = dir.appending("run/dfdaemon.sock")
                defer { Self.killDaemons(socket: socket) }
                let out = dir.appending("missing.bin")
                let result = try await Self.run(
                    Self.getArguments(origin.statusURL(404), output: out, socket: socket, data: dir.appending("data")))
                #expect(result.code == 1, "\(result.stderr)")
                #expect(result.stderr.contains("404"), "\(result.stderr)")
                #expect(!FileManager.default.fileExists(atPath: out))
            }
        }
    }

    @Test func statWithoutADaemonPrintsTheTaskAndNotRunning() async throws {
        try await withTemporaryDirectory { dir in
            let socket = dir.appending("nothing-here.sock")
            let url = "https://example.com/a/b.bin?X-Amz-Signature=abc"
            let result = try await runDragonfly(["stat", url, "--tag", "t", "--socket", socket])
            #expect(result.exitCode == 0, "\(result.stderr)")
            let lines = result.stdout.split(separator: "\n").map(String.init)
            let id = TaskID.make(url: url, tag: "t", application: "", pieceLength: nil, filteredQueryParams: nil)
            #expect(lines == ["task \(id)", "daemon: not running at \(socket)"])
            #expect(Self.daemonProcesses(socket: socket).isEmpty)
            #expect(!FileManager.default.fileExists(atPath: socket))
        }
    }
}
