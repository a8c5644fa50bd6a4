import Crypto
import DragonflyClient
import DragonflyCore
import DragonflyProto
import DragonflyRPC
import DragonflyTestSupport
import Foundation
import GRPCCore
import Logging
import ServiceLifecycle
import SwiftProtobuf
import Synchronization
import Testing

/// A scripted Local service on a real unix socket: stands in for the daemon so that the client side of
/// `get` (request mapping, progress, error mapping, `-O -` streaming) is tested without a daemon.
struct ScriptedLocalService: Dragonfly_V1_Local.SimpleServiceProtocol {
    enum Behaviour: Sendable {
        /// Writes `content` into `<dataDirectory>/tasks/…/data` piece by piece in `order`, reporting each piece;
        /// writes the requested output (range applied) when the download names one.
        case serve(content: [UInt8], pieceLength: Int, dataDirectory: String, order: [Int])
        /// Fails every download with this error.
        case fail(DragonflyError)
    }

    /// Every `Download` received, in order.
    final class Received: Sendable {
        let downloads = Mutex<[Dragonfly_V1_Download]>([])
        func withLock<Value>(_ body: (inout [Dragonfly_V1_Download]) -> Value) -> Value {
            downloads.withLock { body(&$0) }
        }
    }

    let behaviour: Behaviour
    let received = Received()
    /// `ReadTask` calls received.
    let readRequests = Counter()

    /// A shared count.
    final class Counter: Sendable {
        let value = Mutex(0)
        func withLock<Value>(_ body: (inout Int) -> Value) -> Value { value.withLock { body(&$0) } }
    }

    func downloadTask(
        request: Dragonfly_V1_DownloadTaskRequest,
        response: RPCWriter<Dragonfly_V1_DownloadProgress>,
        context: ServerContext
    ) async throws {
        received.withLock { $0.append(request.download) }
        switch behaviour {
        case .fail(let error):
            throw error
        case .serve(let content, let pieceLength, let dataDirectory, let order):
            let download = request.download
            let id = TaskID.make(
                url: download.url, tag: download.tag, application: download.application,
                pieceLength: download.hasPieceLength ? Int64(download.pieceLength) : nil,
                filteredQueryParams: download.filteredQueryParams.isEmpty ? nil : download.filteredQueryParams
            ).rawValue
            let directory = "\(dataDirectory)/tasks/\(id.prefix(3))/\(id)"
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            let dataPath = directory + "/data"
            if !FileManager.default.fileExists(atPath: dataPath) {
                FileManager.default.createFile(atPath: dataPath, contents: nil)
            }
            let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: dataPath))
            defer { try? handle.close() }
            var progress = Dragonfly_V1_DownloadProgress()
            progress.taskID = id
            progress.contentLength = UInt64(content.count)
            progress.pieceLength = UInt64(pieceLength)
            var held: UInt64 = 0
            for number in order {
                let start = number * pieceLength
                let bytes = Array(content[start..<min(start + pieceLength, content.count)])
                try handle.seek(toOffset: UInt64(start))
                try handle.write(contentsOf: bytes)
                try handle.synchronize()
                held += UInt64(bytes.count)
                var piece = Dragonfly_V1_Piece()
                piece.number = UInt32(number)
                piece.offset = UInt64(start)
                piece.length = UInt64(bytes.count)
                piece.digest = "sha256:" + SHA256.hash(data: bytes).map { String(format: "%02x", $0) }.joined()
                progress.piece = piece
                progress.bytesDownloaded = held
                progress.bytesFromPeers = held
                try await response.write(progress)
            }
            if download.hasOutputPath {
                var wanted = content[...]
                if download.hasRange {
                    let start = Int(download.range.start)
                    let end = download.range.hasLength ? start + Int(download.range.length) : content.count
                    wanted = content[start..<min(end, content.count)]
                }
                guard FileManager.default.createFile(atPath: download.outputPath, contents: Data(wanted)) else {
                    throw DragonflyError(code: .internalError, message: "cannot write \(download.outputPath)")
                }
            }
            progress.clearPiece()
            progress.done = true
            try await response.write(progress)
        }
    }

    func statTask(
        request: Dragonfly_V1_StatLocalTaskRequest,
        context: ServerContext
    ) async throws -> Dragonfly_V1_StatLocalTaskResponse {
        var answer = Dragonfly_V1_StatLocalTaskResponse()
        var local = Dragonfly_V1_TaskInfo()
        local.id = request.taskID
        local.state = .succeeded
        local.contentLength = 10
        local.pieceLength = 4 << 20
        local.pieceCount = 1
        local.pieces = [Dragonfly_V1_Piece()]
        answer.local = local
        answer.schedulerError = request.askScheduler ? "no scheduler configured" : ""
        return answer
    }

    func deleteTask(
        request: Dragonfly_V1_DeleteTaskRequest, context: ServerContext
    ) async throws -> Google_Protobuf_Empty {
        throw RPCError(code: .unimplemented, message: "not scripted")
    }

    func importTask(
        request: Dragonfly_V1_ImportTaskRequest, context: ServerContext
    ) async throws -> Dragonfly_V1_ImportTaskResponse {
        throw RPCError(code: .unimplemented, message: "not scripted")
    }

    func exportTask(
        request: Dragonfly_V1_ExportTaskRequest, context: ServerContext
    ) async throws -> Dragonfly_V1_ExportTaskResponse {
        throw RPCError(code: .unimplemented, message: "not scripted")
    }

    func listTaskEntries(
        request: Dragonfly_V1_ListTaskEntriesRequest, context: ServerContext
    ) async throws -> Dragonfly_V1_ListTaskEntriesResponse {
        throw RPCError(code: .unimplemented, message: "not scripted")
    }

    func readTask(
        request: Dragonfly_V1_ReadTaskRequest, response: RPCWriter<Dragonfly_V1_ReadTaskChunk>,
        context: ServerContext
    ) async throws {
        readRequests.withLock { $0 += 1 }
        guard case .serve(let content, _, _, _) = behaviour else {
            throw RPCError(code: .unimplemented, message: "not scripted")
        }
        let start = Int(request.offset)
        let end = request.hasLength ? min(start + Int(request.length), content.count) : content.count
        var position = start
        while position < end {
            var chunk = Dragonfly_V1_ReadTaskChunk()
            chunk.offset = UInt64(position)
            chunk.data = Data(content[position..<min(position + (1 << 20), end)])
            try await response.write(chunk)
            position += chunk.data.count
        }
    }
}

@Suite(.timeLimit(.minutes(1)))
struct DaemonClientTests {
    static let logger = Logger(label: "df.test.client") { _ in SwiftLogNoOpLogHandler() }

    static func bytes(_ count: Int) -> [UInt8] {
        (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 2_654_435_761 >> 13) }
    }

    /// Serves `service` on `<dir>/local.sock` while `body` runs with a client of it.
    static func withLocalService<Value: Sendable>(
        _ service: ScriptedLocalService,
        in dir: TemporaryDirectory,
        _ body: (DaemonClient) async throws -> Value
    ) async throws -> Value {
        let socket = dir.appending("local.sock")
        let server = try GRPCServerService(
            address: .unixDomainSocket(path: socket), services: [service], listenerName: "local", logger: logger)
        let group = ServiceGroup(
            configuration: ServiceGroupConfiguration(services: [.init(service: server)], logger: logger))
        return try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            do {
                _ = try await server.listeningAddress()
                let value = try await body(DaemonClient(socketPath: socket, logger: logger))
                await group.triggerGracefulShutdown()
                try await tasks.waitForAll()
                return value
            } catch {
                tasks.cancelAll()
                throw error
            }
        }
    }

    /// Runs `download` with its `-O -` bytes going to a file, and returns the result and those bytes.
    static func captureOutput(
        _ download: (Int32) -> DaemonDownload, in dir: TemporaryDirectory
    ) async throws -> (DaemonGetResult, [UInt8]) {
        let path = dir.appending("stdout-\(UInt32.random(in: 0...UInt32.max))")
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        #expect(fd >= 0)
        let result: DaemonGetResult
        do {
            result = try await download(fd).run { _ in }
        } catch {
            close(fd)
            throw error
        }
        close(fd)
        return (result, FileManager.default.contents(atPath: path).map(Array.init) ?? [])
    }

    @Test func makeDownloadMapsEveryField() throws {
        let request = GetRequest(
            url: "https://example.com/x.bin",
            output: "relative/out.bin",
            digest: try FileDigest(parsing: "sha256:" + String(repeating: "ab", count: 32)),
            headers: [
                HeaderField(name: "Accept", value: "a"), HeaderField(name: "Accept", value: "b"),
                HeaderField(name: "X-Token", value: "t"),
            ],
            tag: "t",
            application: "app",
            filteredQueryParams: ["sig"],
            range: ByteRange(start: 10, length: 20),
            timeout: nil,
            rateLimit: 1 << 20,
            pieceLength: 8 << 20,
            disableBackToSource: true
        )
        let download = try DaemonClient.makeDownload(request, priority: 3)
        #expect(download.url == request.url)
        // The daemon never writes a caller's file: the output is not sent.
        #expect(!download.hasOutputPath)
        #expect(download.digest == "sha256:" + String(repeating: "ab", count: 32))
        #expect(download.range.start == 10 && download.range.length == 20)
        #expect(download.tag == "t" && download.application == "app")
        #expect(download.priority == .level3)
        #expect(download.filteredQueryParams == ["sig"])
        #expect(download.requestHeader == ["Accept": "a, b", "X-Token": "t"])
        #expect(download.pieceLength == 8 << 20)
        #expect(download.hasTimeout && download.timeout.seconds == 0 && download.timeout.nanos == 0)
        #expect(download.disableBackToSource)
        #expect(download.rateLimit == 1 << 20)

        let minimal = try DaemonClient.makeDownload(
            GetRequest(url: "https://example.com/y", output: nil, timeout: .seconds(90)))
        #expect(!minimal.hasOutputPath && !minimal.hasDigest && !minimal.hasRange && !minimal.hasPieceLength)
        #expect(minimal.timeout.seconds == 90)
        #expect(minimal.filteredQueryParams.isEmpty && minimal.priority == .level0 && !minimal.hasRateLimit)
        #expect(throws: DragonflyError.self) { try DaemonClient.makeDownload(request, priority: 7) }
    }

    @Test func downloadReportsProgressAndTheClientWritesTheOutput() async throws {
        try await withTemporaryDirectory { dir in
            let content = Self.bytes(10 << 20)
            let service = ScriptedLocalService(
                behaviour: .serve(
                    content: content, pieceLength: 4 << 20, dataDirectory: dir.appending("data"), order: [0, 1, 2]))
            let reports = Mutex<[DaemonDownloadProgress]>([])
            let out = dir.appending("out.bin")
            let result = try await Self.withLocalService(service, in: dir) { client in
                try await DaemonDownload(
                    request: GetRequest(url: "http://origin/f.bin", output: out), client: client,
                    dataDirectory: dir.appending("data")
                ).run { report in
                    reports.withLock { $0.append(report) }
                }
            }
            #expect(result.summary.contentLength == Int64(content.count))
            #expect(result.peerBytes == Int64(content.count))
            #expect(reports.withLock { $0.compactMap(\.piece?.number) } == [0, 1, 2])
            #expect(reports.withLock { $0.last?.isDone } == true)
            #expect(FileManager.default.contents(atPath: out).map(Array.init) == content)
            // The daemon was asked only to fill its cache; the file came from its data file, not from ReadTask.
            #expect(service.received.withLock { $0.map(\.hasOutputPath) } == [false])
            #expect(service.readRequests.withLock { $0 } == 0)
        }
    }

    @Test func errorsKeepTheDaemonsCodeAndTellUnavailabilityApart() async throws {
        try await withTemporaryDirectory { dir in
            let origin = ScriptedLocalService(
                behaviour: .fail(DragonflyError(code: .originError, message: "the origin answered 404 Not Found")))
            let refused = await #expect(throws: DragonflyError.self) {
                try await Self.withLocalService(origin, in: dir) { client in
                    try await client.download(GetRequest(url: "http://origin/missing", output: nil))
                }
            }
            #expect(refused?.code == .originError)
            #expect(refused?.message.contains("404") == true)
            #expect(refused.map(DaemonClient.isDaemonUnavailable) == false)

            let older = ScriptedLocalService(behaviour: .fail(DragonflyError(code: .unimplemented, message: "no")))
            let unimplemented = await #expect(throws: DragonflyError.self) {
                try await Self.withLocalService(older, in: dir) { client in
                    try await client.download(GetRequest(url: "http://origin/f", output: nil))
                }
            }
            #expect(unimplemented.map(DaemonClient.isDaemonUnavailable) == true)

            let nobody = DaemonClient(socketPath: dir.appending("nobody.sock"), logger: Self.logger)
            let absent = await #expect(throws: DragonflyError.self) {
                try await nobody.download(GetRequest(url: "http://origin/f", output: nil))
            }
            #expect(absent?.code == .unavailable)
            let stat = await #expect(throws: DragonflyError.self) {
                try await nobody.stat(taskID: TaskID.make(url: "http://origin/f"))
            }
            #expect(stat?.code == .unavailable)
        }
    }

    @Test func statReportsTheLocalTask() async throws {
        try await withTemporaryDirectory { dir in
            let service = ScriptedLocalService(behaviour: .fail(DragonflyError(code: .internalError, message: "")))
            let id = TaskID.make(url: "http://origin/f")
            let stat = try await Self.withLocalService(service, in: dir) { client in
                // The test runs beside suites that start real processes: a deadline here measures the machine.
                try await client.stat(taskID: id, timeout: .seconds(30))
            }
            #expect(stat.local?.id == id.rawValue)
            #expect(stat.local?.state == "succeeded")
            #expect(stat.local?.heldPieces == 1 && stat.local?.pieceCount == 1 && stat.local?.contentLength == 10)
            #expect(stat.scheduler == nil)
            #expect(stat.schedulerError == "no scheduler configured")
        }
    }

    @Test(arguments: [nil, ByteRange(start: 5_000_000, length: 4_500_000), ByteRange(start: 9_000_000, length: nil)])
    func standardOutputStreamsLandedPiecesFromTheDataFileInOrder(range: ByteRange?) async throws {
        try await withTemporaryDirectory { dir in
            let content = Self.bytes(14 << 20)
            let data = dir.appending("data")
            // Pieces land out of order: the stream must still be in order.
            let service = ScriptedLocalService(
                behaviour: .serve(content: content, pieceLength: 4 << 20, dataDirectory: data, order: [2, 0, 3, 1]))
            let request = GetRequest(url: "http://origin/big.bin", output: nil, range: range)
            let (result, written) = try await Self.withLocalService(service, in: dir) { client in
                try await Self.captureOutput(
                    { fd in
                        DaemonDownload(request: request, client: client, dataDirectory: data, outputDescriptor: fd)
                    }, in: dir)
            }
            let start = Int(range?.start ?? 0)
            let end = range?.length.map { start + Int($0) } ?? content.count
            #expect(written == Array(content[start..<end]))
            #expect(result.summary.outputBytes == Int64(end - start))
            #expect(result.peerBytes == Int64(content.count))
            // Only the cache was filled: the bytes came from the data file, not from an exported output.
            #expect(service.received.withLock { $0.map(\.hasOutputPath) } == [false])
        }
    }

    @Test func standardOutputFallsBackToReadTaskWhenTheDataFileIsUnreadable() async throws {
        try await withTemporaryDirectory { dir in
            let content = Self.bytes(6 << 20)
            let service = ScriptedLocalService(
                behaviour: .serve(
                    content: content, pieceLength: 4 << 20, dataDirectory: dir.appending("daemon-data"), order: [0, 1]))
            let request = GetRequest(url: "http://origin/f.bin", output: nil)
            let (result, written) = try await Self.withLocalService(service, in: dir) { client in
                try await Self.captureOutput(
                    { fd in
                        // The data dir `get` believes in is not the daemon's.
                        DaemonDownload(
                            request: request, client: client, dataDirectory: dir.appending("elsewhere"),
                            outputDescriptor: fd)
                    }, in: dir)
            }
            #expect(written == content)
            #expect(result.summary.outputBytes == Int64(content.count))
            // The daemon only filled its cache; the bytes came through ReadTask and no file was asked for.
            #expect(service.received.withLock { $0.map(\.hasOutputPath) } == [false])
            #expect(service.readRequests.withLock { $0 } == 1)
        }
    }

    @Test func standardOutputWithADigestStreamsOnlyWhatTheDaemonVerified() async throws {
        try await withTemporaryDirectory { dir in
            let content = Self.bytes(5 << 20)
            let data = dir.appending("data")
            let service = ScriptedLocalService(
                behaviour: .serve(content: content, pieceLength: 4 << 20, dataDirectory: data, order: [1, 0]))
            let digest = "sha256:" + SHA256.hash(data: content).map { String(format: "%02x", $0) }.joined()
            let request = GetRequest(url: "http://origin/f.bin", output: nil, digest: try FileDigest(parsing: digest))
            let (_, written) = try await Self.withLocalService(service, in: dir) { client in
                try await Self.captureOutput(
                    { fd in
                        DaemonDownload(request: request, client: client, dataDirectory: data, outputDescriptor: fd)
                    }, in: dir)
            }
            #expect(written == content)
            let received = service.received.withLock { $0 }
            #expect(received.count == 1 && received.first?.hasOutputPath == false && received.first?.digest == digest)
        }
    }
}
