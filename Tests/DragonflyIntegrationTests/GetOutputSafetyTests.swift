import DragonflyCore
import DragonflyProto
import DragonflyRPC
import DragonflyTestSupport
import Foundation
import GRPCCore
import Logging
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Issue 13 points 1 and 2, issue 12 finding 1 (local side): `get` writes its own output as the calling user,
/// the daemon never writes a caller's path nor reads a local one. Real daemons, a real nginx origin.
@Suite(.serialized, .timeLimit(.minutes(4)))
struct GetOutputSafetyTests {
    static let logger = Logger(label: "test.get-output-safety")

    /// Runs `body` with a daemon (no scheduler: it reads the origin) whose files are under `directory`; passes
    /// its socket and its metrics address.
    static func withDaemon<Value>(
        in directory: String,
        _ body: (_ socket: String, _ metrics: String) async throws -> Value
    ) async throws -> Value {
        try await withDragonfly(RoleArguments.daemon(directory: directory, manager: nil)) { daemon in
            let ready = try await daemon.awaitReady(timeLimit: .seconds(60))
            let metrics = try #require(ready.listeners["metrics"])
            return try await body(RoleArguments.socket(in: directory), metrics)
        }
    }

    /// The file type bits of `path` (not following a symlink).
    static func fileType(_ path: String) -> mode_t? {
        var info = stat()
        return lstat(path, &info) == 0 ? info.st_mode & S_IFMT : nil
    }

    /// Starts `cat FIFO > capture`, returning the process (the test waits for it).
    static func startReader(fifo: String, capture: String) throws -> Process {
        FileManager.default.createFile(atPath: capture, contents: nil)
        let cat = Process()
        cat.executableURL = URL(fileURLWithPath: "/bin/cat")
        cat.arguments = [fifo]
        cat.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: capture))
        try cat.run()
        return cat
    }

    @Test(arguments: [true, false])
    func specialFilesAreWrittenThroughAndSymlinksFollowed(throughDaemon: Bool) async throws {
        let content = GetNoDaemonTests.bytes(6 << 20, seed: 0x0D_0001)
        try await withNginxOrigin { origin in
            try origin.writeFile("blob.bin", contents: content)
            let url = origin.url(for: "blob.bin")
            try await withTemporaryDirectory { dir in
                let run: ([String]) async throws -> DragonflyRunResult = { output in
                    try await withDaemonIfAsked(throughDaemon, dir: dir) { socket in
                        var arguments = ["get", url, "--no-progress", "--data-dir", dir.appending("get")] + output
                        arguments += socket.map { ["--socket", $0] } ?? ["--no-daemon"]
                        return try await runDragonfly(arguments)
                    }
                }
                // A FIFO read by `cat`: still a FIFO, and `cat` got every byte in order.
                let fifo = dir.appending("pipe")
                #expect(mkfifo(fifo, 0o600) == 0)
                let capture = dir.appending("captured")
                let cat = try Self.startReader(fifo: fifo, capture: capture)
                let toFIFO = try await run(["-O", fifo])
                #expect(toFIFO.exitCode == 0, "\(toFIFO.stderr)")
                try await poll(timeLimit: .seconds(30), description: "cat to finish") { !cat.isRunning }
                #expect(Self.fileType(fifo) == S_IFIFO)
                #expect(GetNoDaemonTests.read(capture) == content)

                // A symlink: it stays, pointing where it did, and its target holds the bytes.
                let target = try dir.writeFile("target.bin", text: "old\n")
                let link = dir.appending("link.bin")
                #expect(symlink("target.bin", link) == 0)
                let toLink = try await run(["-O", link])
                #expect(toLink.exitCode == 0, "\(toLink.stderr)")
                #expect(Self.fileType(link) == S_IFLNK)
                #expect((try? FileManager.default.destinationOfSymbolicLink(atPath: link)) == "target.bin")
                #expect(GetNoDaemonTests.read(target) == content)

                // A character device made here (the null device's numbers): still a device afterwards.
                if getuid() == 0 {
                    let device = dir.appending("null-device")
                    #expect(mknod(device, S_IFCHR | 0o666, dev_t(0x103)) == 0)
                    let toDevice = try await run(["-O", device])
                    #expect(toDevice.exitCode == 0, "\(toDevice.stderr)")
                    #expect(Self.fileType(device) == S_IFCHR)
                }

                // A directory stays a usage error.
                let toDirectory = try await run(["-O", try dir.makeDirectory("adir")])
                #expect(toDirectory.exitCode == 2, "\(toDirectory.stderr)")
            }
        }
    }

    /// Runs `body` with a daemon's socket when `throughDaemon`, else with nil.
    private func withDaemonIfAsked<Value>(
        _ throughDaemon: Bool, dir: TemporaryDirectory, _ body: (String?) async throws -> Value
    ) async throws -> Value {
        guard throughDaemon else { return try await body(nil) }
        return try await Self.withDaemon(in: dir.appending("daemon")) { socket, _ in try await body(socket) }
    }

    /// How a test stops a `get`.
    enum Stop: String, CaseIterable, Sendable {
        case interrupt, timeout, kill
    }

    @Test(arguments: Stop.allCases)
    func aStoppedGetNeverChangesItsDestination(stop: Stop) async throws {
        let size = 32 << 20
        let content = GetNoDaemonTests.bytes(size, seed: 0x0D_0002)
        try await withNginxOrigin { origin in
            try origin.writeFile("blob.bin", contents: content)
            // nginx limits each connection and the daemon reads 4 pieces of 4 MiB at once: its origin-bytes
            // counter moves a piece at a time, to 50 % after about 8 s and 100 % after about 16 s, so a stop sent
            // once it passes 30 % always lands in the middle (with 8 MiB both pieces finished together).
            let slow = origin.rateLimitedURL(for: "blob.bin", bytesPerSecond: 512 << 10)
            try await withTemporaryDirectory { dir in
                _ = try dir.makeDirectory("out")
                let out = try dir.writeFile("out/blob.bin", text: "old\n")
                try await Self.withDaemon(in: dir.appending("daemon")) { socket, metrics in
                    let originBytes = "dragonfly_daemon_download_bytes_total"
                    var arguments = [
                        "get", slow, "-O", out, "--socket", socket, "--no-progress", "--data-dir", dir.appending("get"),
                    ]
                    if stop == .timeout { arguments += ["--timeout", "1s"] }
                    try await withDragonfly(arguments, readyFile: false) { get in
                        switch stop {
                        case .interrupt, .kill:
                            try await poll(timeLimit: .seconds(30), description: "30 % of the download") {
                                try await metricTotal(originBytes, at: metrics) >= Double(size) * 0.3
                            }
                            try get.signal(stop == .kill ? .kill : .interrupt)
                            let status = try await get.waitForExit(timeLimit: .seconds(10))
                            #expect(
                                status == (stop == .kill ? .signaled(SIGKILL) : .exited(130)), "\(get.stderrText())")
                        case .timeout:
                            let status = try await get.waitForExit(timeLimit: .seconds(20))
                            #expect(status == .exited(1), "\(get.stderrText())")
                            #expect(get.stderrText().contains("timed out after 1s"), "\(get.stderrText())")
                        }
                    }
                    // The daemon finishes the task into its cache; the destination must not change then either.
                    try await poll(timeLimit: .seconds(60), description: "the task to finish into the cache") {
                        try await metricTotal(originBytes, at: metrics) >= Double(size)
                    }
                    let second = try await runDragonfly([
                        "get", slow, "-O", dir.appending("second.bin"), "--socket", socket, "--no-progress",
                        "--data-dir", dir.appending("get"),
                    ])
                    #expect(second.exitCode == 0, "\(second.stderr)")
                    #expect(GetNoDaemonTests.read(dir.appending("second.bin")) == content)
                }
                #expect(GetNoDaemonTests.read(out) == Array("old\n".utf8))
                #expect(try GetNoDaemonTests.entries(dir.appending("out")) == ["blob.bin"])
            }
        }
    }

    /// Calls the daemon's Local service on `socket`.
    static func withLocal<Value: Sendable>(
        socket: String, _ body: (Dragonfly_V1_Local.Client<RPCClientTransport>) async throws -> Value
    ) async throws -> Value {
        try await withRPCClient(target: RPCAddress.unixPrefix + socket, logger: logger) { client in
            try await body(Dragonfly_V1_Local.Client(wrapping: client))
        }
    }

    @Test func theDaemonNeverWritesACallersPathNorReadsALocalFile() async throws {
        let content = GetNoDaemonTests.bytes(3 << 20, seed: 0x0D_0003)
        try await withNginxOrigin { origin in
            try origin.writeFile("blob.bin", contents: content)
            try await withTemporaryDirectory { dir in
                let secret = try dir.writeFile("secret.txt", text: "root's secret\n", permissions: 0o600)
                let victim = dir.appending("victim.bin")
                try await Self.withDaemon(in: dir.appending("daemon")) { socket, _ in
                    // output_path: refused, nothing written.
                    var write = Dragonfly_V1_DownloadTaskRequest()
                    write.download.url = origin.url(for: "blob.bin")
                    write.download.outputPath = victim
                    let writeError = await #expect(throws: RPCError.self) {
                        try await Self.withLocal(socket: socket) { local in
                            try await local.downloadTask(write) { response in
                                for try await _ in response.messages {}
                            }
                        }
                    }
                    #expect(writeError?.code == .invalidArgument)
                    #expect(
                        writeError?.message.contains("never writes files") == true, "\(String(describing: writeError))")
                    #expect(!FileManager.default.fileExists(atPath: victim))

                    // file://: refused; the file never reaches the cache.
                    var read = Dragonfly_V1_DownloadTaskRequest()
                    read.download.url = "file://" + secret
                    let readError = await #expect(throws: RPCError.self) {
                        try await Self.withLocal(socket: socket) { local in
                            try await local.downloadTask(read) { response in
                                for try await _ in response.messages {}
                            }
                        }
                    }
                    #expect(readError?.code == .invalidArgument)
                    #expect(readError?.message.contains("never reads local files") == true)
                    let cached = try FileManager.default.subpathsOfDirectory(
                        atPath: RoleArguments.dataDirectory(in: dir.appending("daemon")))
                    for path in cached where path.hasSuffix("/data") {
                        let bytes = GetNoDaemonTests.read(
                            RoleArguments.dataDirectory(in: dir.appending("daemon")) + "/" + path)
                        #expect(bytes != Array("root's secret\n".utf8))
                    }

                    // ExportTask: refused.
                    var export = Dragonfly_V1_ExportTaskRequest()
                    export.download.url = origin.url(for: "blob.bin")
                    export.download.outputPath = victim
                    await #expect(throws: RPCError.self) {
                        try await Self.withLocal(socket: socket) { local in try await local.exportTask(export) }
                    }
                    #expect(!FileManager.default.fileExists(atPath: victim))

                    // A cache-only download, then ReadTask streams the bytes in order, in chunks of ≤ 1 MiB.
                    var fill = Dragonfly_V1_DownloadTaskRequest()
                    fill.download.url = origin.url(for: "blob.bin")
                    let taskID = try await Self.withLocal(socket: socket) { local in
                        try await local.downloadTask(fill) { response in
                            var id = ""
                            for try await report in response.messages { id = report.taskID }
                            return id
                        }
                    }
                    var readTask = Dragonfly_V1_ReadTaskRequest()
                    readTask.taskID = taskID
                    readTask.offset = 1000
                    let (bytes, largest) = try await Self.withLocal(socket: socket) { local in
                        try await local.readTask(readTask) { response in
                            var bytes: [UInt8] = []
                            var largest = 0
                            for try await chunk in response.messages {
                                #expect(chunk.offset == UInt64(1000 + bytes.count))
                                bytes += chunk.data
                                largest = max(largest, chunk.data.count)
                            }
                            return (bytes, largest)
                        }
                    }
                    #expect(bytes == Array(content[1000...]))
                    #expect(largest <= 1 << 20)
                }
                // `get file://` reads the file in its own process (no daemon involved, none started).
                let socket = dir.appending("none/dfdaemon.sock")
                let local = try await runDragonfly([
                    "get", "file://" + secret, "-O", dir.appending("copy.txt"), "--socket", socket,
                    "--data-dir", dir.appending("get"), "--no-progress",
                ])
                #expect(local.exitCode == 0, "\(local.stderr)")
                #expect(GetNoDaemonTests.read(dir.appending("copy.txt")) == Array("root's secret\n".utf8))
                #expect(!FileManager.default.fileExists(atPath: socket))
            }
        }
    }
}
