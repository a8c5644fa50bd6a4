import DragonflyCore
import DragonflyProto
import DragonflyRPC
import GRPCCore
import Logging
import ServiceLifecycle

/// A small real Peer service: knows a fixed set of tasks, streams their pieces, maps misses to `notFound`.
struct TestPeerService: Dragonfly_V1_Peer.SimpleServiceProtocol {
    var tasks: [String: Dragonfly_V1_TaskInfo]

    func syncPieces(
        request: Dragonfly_V1_SyncPiecesRequest,
        response: RPCWriter<Dragonfly_V1_PieceAvailable>,
        context: ServerContext
    ) async throws {
        let task = try lookUp(request.taskID)
        let wanted = Set(request.interestedPieceNumbers)
        let pieces = task.pieces.filter { wanted.isEmpty || wanted.contains($0.number) }
        for (index, piece) in pieces.enumerated() {
            var available = Dragonfly_V1_PieceAvailable()
            available.number = piece.number
            available.offset = piece.offset
            available.length = piece.length
            available.digest = piece.digest
            available.isLast = index == pieces.count - 1
            try await response.write(available)
        }
    }

    func statTask(
        request: Dragonfly_V1_StatTaskRequest,
        context: ServerContext
    ) async throws -> Dragonfly_V1_TaskInfo {
        try lookUp(request.taskID)
    }

    func downloadTask(
        request: Dragonfly_V1_DownloadTaskRequest,
        response: RPCWriter<Dragonfly_V1_DownloadProgress>,
        context: ServerContext
    ) async throws {
        throw DragonflyError(code: .unimplemented, message: "the test service does not download")
    }

    func health(request: Dragonfly_V1_HealthRequest, context: ServerContext) async throws -> Dragonfly_V1_HealthResponse
    {
        var health = Dragonfly_V1_HealthResponse()
        health.hostID = "127.0.0.1-test-0"
        health.isReady = true
        return health
    }

    private func lookUp(_ taskID: String) throws -> Dragonfly_V1_TaskInfo {
        guard let task = tasks[taskID] else {
            throw DragonflyError(code: .notFound, message: "task \(taskID) is not in this host's cache")
        }
        return task
    }
}

enum Fixtures {
    static let knownTaskID = String(repeating: "a", count: 64)
    static let unknownTaskID = String(repeating: "b", count: 64)
    static let pieceLength: UInt64 = 4 << 20

    static let logger = Logger(label: "df.test.rpc") { _ in SwiftLogNoOpLogHandler() }

    /// A task of three pieces (the last one short).
    static var knownTask: Dragonfly_V1_TaskInfo {
        var task = Dragonfly_V1_TaskInfo()
        task.id = knownTaskID
        task.url = "http://127.0.0.1/blob.bin"
        task.contentLength = 2 * pieceLength + 10
        task.pieceLength = pieceLength
        task.pieceCount = 3
        task.state = .succeeded
        task.pieces = (0..<3).map { number in
            var piece = Dragonfly_V1_Piece()
            piece.number = UInt32(number)
            piece.offset = UInt64(number) * pieceLength
            piece.length = number == 2 ? 10 : pieceLength
            piece.digest = "sha256:" + String(repeating: String(number), count: 64)
            return piece
        }
        return task
    }

    static var peerService: TestPeerService {
        TestPeerService(tasks: [knownTaskID: knownTask])
    }
}

/// Runs `server` in a `ServiceGroup` while `body` runs with its bound address, then shuts the group down
/// gracefully and waits for it to finish.
func withRunningServer<Value: Sendable>(
    _ server: GRPCServerService,
    _ body: (RPCAddress) async throws -> Value
) async throws -> Value {
    let group = ServiceGroup(
        configuration: ServiceGroupConfiguration(
            services: [ServiceGroupConfiguration.ServiceConfiguration(service: server)],
            logger: Fixtures.logger
        )
    )
    return try await withThrowingTaskGroup(of: Void.self) { tasks in
        tasks.addTask { try await group.run() }
        do {
            let address = try await server.listeningAddress()
            let value = try await body(address)
            await group.triggerGracefulShutdown()
            try await tasks.waitForAll()
            return value
        } catch {
            tasks.cancelAll()
            throw error
        }
    }
}
