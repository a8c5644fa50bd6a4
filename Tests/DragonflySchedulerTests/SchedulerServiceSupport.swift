import DragonflyCore
import DragonflyProto
import DragonflyRPC
import DragonflyScheduler
import DragonflyTelemetry
import DragonflyTestSupport
import GRPCCore
import Logging
import ServiceLifecycle
import Synchronization
import Testing

/// The scheduler role (`makeSchedulerServices`) running in-process on 127.0.0.1:0, with a real gRPC client.
struct SchedulerHarness: Sendable {
    typealias Job = @Sendable () async -> Void

    static let logger = Logger(label: "scheduler-service-test")

    let client: Dragonfly_V1_Scheduler.Client<RPCClientTransport>
    let address: String
    /// The role's metrics registry.
    let telemetry: Telemetry
    private let spawner: AsyncStream<Job>.Continuation
    private let sessions: SessionList

    /// Runs the role, hands `body` a harness, then closes every peer stream and shuts the role down.
    ///
    /// - Parameters:
    ///   - seedPeers: The scheduler's `seedPeers` (the seed roster).
    ///   - clusterSecret: The scheduler's `security.clusterSecret` (empty: a lab cluster).
    ///   - clientSecret: A cluster secret the harness's client sends with every call.
    static func run<T: Sendable>(
        seedPeers: [String] = [],
        clusterSecret: String = "",
        clientSecret: String? = nil,
        _ body: (SchedulerHarness) async throws -> T
    ) async throws -> T {
        let telemetry = Telemetry(role: "scheduler")
        let role = try makeRole(telemetry: telemetry) { config in
            config.seedPeers = seedPeers
            config.security.clusterSecret = clusterSecret
        }
        let group = ServiceGroup(configuration: ServiceGroupConfiguration(services: role.services, logger: logger))
        return try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            let result: Result<T, any Error>
            do {
                let grpc = try #require(role.listeners.first { $0.name == "grpc" })
                let address = try await grpc.value()
                result = .success(
                    try await withRPCClient(
                        target: address, options: RPCClientOptions(defaultTimeout: .seconds(60)),
                        interceptors: ClusterSecret(secret: clientSecret).map {
                            [ClusterSecretClientInterceptor(secret: $0)]
                        }
                            ?? [],
                        logger: logger
                    ) { rpc in
                        try await withHarness(client: rpc, address: address, telemetry: telemetry, body)
                    })
            } catch {
                result = .failure(error)
            }
            await group.triggerGracefulShutdown()
            try await tasks.waitForAll()
            return try result.get()
        }
    }

    /// `dragonfly scheduler` with every listener on 127.0.0.1:0.
    static func makeRole(
        telemetry: Telemetry = Telemetry(role: "scheduler"), configure: (inout SchedulerConfig) -> Void = { _ in }
    ) throws -> RoleServices {
        var config = SchedulerConfig()
        config.listen = ListenAddress(host: "127.0.0.1", port: 0)
        config.metricsListen = ListenAddress(host: "127.0.0.1", port: 0)
        configure(&config)
        let registry = PluginRegistry()
        try registerBuiltinStrategies(into: registry)
        return try makeSchedulerServices(
            config: config, registry: registry, telemetry: telemetry, logger: logger)
    }

    private static func withHarness<T: Sendable>(
        client: RPCClient, address: String, telemetry: Telemetry, _ body: (SchedulerHarness) async throws -> T
    ) async throws -> T {
        let (jobs, spawner) = AsyncStream.makeStream(of: Job.self)
        let harness = SchedulerHarness(
            client: Dragonfly_V1_Scheduler.Client(wrapping: client), address: address, telemetry: telemetry,
            spawner: spawner,
            sessions: SessionList())
        return try await withThrowingTaskGroup(of: Void.self) { calls in
            calls.addTask {
                await withDiscardingTaskGroup { group in
                    for await job in jobs { group.addTask { await job() } }
                }
            }
            let result: Result<T, any Error>
            do {
                result = .success(try await body(harness))
            } catch {
                result = .failure(error)
            }
            for session in harness.sessions.all { session.close() }
            spawner.finish()
            try await calls.waitForAll()
            return try result.get()
        }
    }

    /// Announces a host on 127.0.0.1 with 10 upload slots.
    @discardableResult
    func announceHost(
        _ id: String, type: Dragonfly_V1_HostType = .normal, port: Int = 4000
    ) async throws -> Dragonfly_V1_AnnounceHostResponse {
        try await client.announceHost(SchedulerFixture.announcement(id, type: type, port: port))
    }

    /// Opens an `AnnouncePeer` stream whose first message is `first` (normally a registration).
    func openStream(first: Dragonfly_V1_AnnouncePeerRequest, key: PeerKey, hostID: String) -> PeerSession {
        let session = PeerSession(key: key, hostID: hostID)
        sessions.append(session)
        session.send(first)
        let client = client
        spawner.yield { await session.run(client: client) }
        return session
    }

    /// Registers a peer for `task` on its own stream.
    func register(
        peer: String, host: String, task: String = SchedulerFixture.taskID, url: String = SchedulerFixture.url
    ) -> PeerSession {
        openStream(
            first: SchedulerFixture.registration(peer: peer, host: host, task: task, url: url),
            key: PeerKey(taskID: task, peerID: peer), hostID: host)
    }

    func statTask(_ taskID: String = SchedulerFixture.taskID) async throws -> Dragonfly_V1_TaskInfo {
        var request = Dragonfly_V1_StatTaskRequest()
        request.taskID = taskID
        return try await client.statTask(request)
    }
}

/// The sessions a harness opened, closed when the test body ends.
final class SessionList: Sendable {
    private let sessions = Mutex<[PeerSession]>([])

    func append(_ session: PeerSession) { sessions.withLock { $0.append(session) } }

    var all: [PeerSession] { sessions.withLock { $0 } }
}

/// One `AnnouncePeer` stream driven by a test: messages go out with ``send(_:)``; answers are collected.
final class PeerSession: Sendable {
    let key: PeerKey
    let hostID: String
    let outgoing: AsyncStream<Dragonfly_V1_AnnouncePeerRequest>
    private let continuation: AsyncStream<Dragonfly_V1_AnnouncePeerRequest>.Continuation
    private struct State {
        var responses: [Dragonfly_V1_AnnouncePeerResponse] = []
        var cursor = 0
        var end: Result<Void, RPCError>?
    }
    private let state = Mutex(State())

    init(key: PeerKey, hostID: String) {
        self.key = key
        self.hostID = hostID
        (outgoing, continuation) = AsyncStream.makeStream(of: Dragonfly_V1_AnnouncePeerRequest.self)
    }

    func send(_ message: Dragonfly_V1_AnnouncePeerRequest) { continuation.yield(message) }

    /// Sends a report on this peer's stream.
    func report(_ request: Dragonfly_V1_AnnouncePeerRequest.OneOf_Request) {
        var message = Dragonfly_V1_AnnouncePeerRequest()
        message.hostID = hostID
        message.taskID = key.taskID
        message.peerID = key.peerID
        message.request = request
        send(message)
    }

    /// Ends the request stream (the peer goes away without a final report unless it sent one).
    func close() { continuation.finish() }

    /// Runs the `AnnouncePeer` call until the server ends it (or the request stream closes).
    func run(client: Dragonfly_V1_Scheduler.Client<RPCClientTransport>) async {
        do {
            try await client.announcePeer(
                requestProducer: { writer in
                    for await message in self.outgoing { try await writer.write(message) }
                },
                onResponse: { response in
                    for try await message in response.messages { self.received(message) }
                })
            ended(with: nil)
        } catch {
            ended(with: error)
        }
    }

    private func received(_ message: Dragonfly_V1_AnnouncePeerResponse) {
        state.withLock { $0.responses.append(message) }
    }

    private func ended(with error: (any Error)?) {
        let end: Result<Void, RPCError> =
            switch error {
            case nil: .success(())
            case let error as RPCError: .failure(error)
            case let error?: .failure(RPCError(code: .unknown, message: "\(error)"))
            }
        state.withLock { $0.end = end }
    }

    var responses: [Dragonfly_V1_AnnouncePeerResponse] { state.withLock { $0.responses } }

    /// Waits for the next response (after those already matched) that `match` accepts and returns its value.
    func next<T: Sendable>(
        _ description: String, timeLimit: Duration = .seconds(10),
        _ match: @escaping @Sendable (Dragonfly_V1_AnnouncePeerResponse.OneOf_Response) -> T?
    ) async throws -> T {
        let found = Mutex<T?>(nil)
        try await poll(timeLimit: timeLimit, description: "\(key.peerID): \(description)") {
            state.withLock { state in
                for index in state.cursor..<state.responses.count {
                    guard let response = state.responses[index].response, let value = match(response) else { continue }
                    state.cursor = index + 1
                    found.withLock { $0 = value }
                    return true
                }
                return false
            }
        }
        return try #require(found.withLock { $0 })
    }

    /// Waits until the stream ended and returns how.
    func end(timeLimit: Duration = .seconds(10)) async throws -> Result<Void, RPCError> {
        try await poll(timeLimit: timeLimit, description: "\(key.peerID): end of stream") {
            state.withLock { $0.end != nil }
        }
        return try #require(state.withLock { $0.end })
    }
}

/// Shared values of the service tests.
enum SchedulerFixture {
    static let taskID = String(repeating: "ab", count: 32)
    static let url = "http://origin.test/blob"

    static func digest(_ number: Int) -> String {
        let hex = String(number, radix: 16)
        return "sha256:" + String(repeating: "0", count: 64 - hex.count) + hex
    }

    static func announcement(
        _ id: String, type: Dragonfly_V1_HostType = .normal, port: Int = 4000
    ) -> Dragonfly_V1_AnnounceHostRequest {
        var host = Dragonfly_V1_Host()
        host.id = id
        host.type = type
        host.hostname = id
        host.ip = "127.0.0.1"
        host.port = UInt32(port)
        host.pieceDataPort = UInt32(port + 5)
        host.uploadSlots = 10
        var request = Dragonfly_V1_AnnounceHostRequest()
        request.host = host
        return request
    }

    static func registration(
        peer: String, host: String, task: String = taskID, url: String = url
    ) -> Dragonfly_V1_AnnouncePeerRequest {
        var message = Dragonfly_V1_AnnouncePeerRequest()
        message.hostID = host
        message.taskID = task
        message.peerID = peer
        var register = Dragonfly_V1_RegisterPeerRequest()
        register.download.url = url
        register.download.tag = "t"
        register.download.application = "app"
        message.register = register
        return message
    }

    static func piece(_ number: UInt32, parent: String? = nil, length: UInt64 = 4 << 20) -> Dragonfly_V1_Piece {
        var piece = Dragonfly_V1_Piece()
        piece.number = number
        piece.offset = UInt64(number) * length
        piece.length = length
        piece.digest = digest(Int(number) + 1)
        if let parent { piece.parentID = parent }
        return piece
    }

    static func backToSourceStarted(contentLength: UInt64 = 3 * (4 << 20))
        -> Dragonfly_V1_AnnouncePeerRequest
        .OneOf_Request
    {
        var started = Dragonfly_V1_BackToSourceStartedRequest()
        started.contentLength = contentLength
        started.pieceLength = 4 << 20
        return .backToSourceStarted(started)
    }

    static func pieceBackToSourceFinished(_ number: UInt32) -> Dragonfly_V1_AnnouncePeerRequest.OneOf_Request {
        var finished = Dragonfly_V1_PieceBackToSourceFinishedRequest()
        finished.piece = piece(number)
        return .pieceBackToSourceFinished(finished)
    }

    static func pieceFinished(_ number: UInt32, parent: String) -> Dragonfly_V1_AnnouncePeerRequest.OneOf_Request {
        var finished = Dragonfly_V1_PieceFinishedRequest()
        finished.piece = piece(number, parent: parent)
        return .pieceFinished(finished)
    }
}

extension Dragonfly_V1_AnnouncePeerResponse.OneOf_Response {
    var normalTask: Dragonfly_V1_NormalTaskResponse? {
        if case .normalTask(let task) = self { task } else { nil }
    }
    var needBackToSource: Dragonfly_V1_NeedBackToSourceResponse? {
        if case .needBackToSource(let need) = self { need } else { nil }
    }
    var pieceDigests: Dragonfly_V1_PieceDigestsResponse? {
        if case .pieceDigests(let digests) = self { digests } else { nil }
    }
    var sourceError: Dragonfly_V1_SourceError? {
        if case .sourceError(let error) = self { error } else { nil }
    }
}

/// A seed host's Peer service that records `DownloadTask` calls and answers each with one `done` report.
final class RecordingPeerService: Dragonfly_V1_Peer.SimpleServiceProtocol {
    private let downloads = Mutex<[Dragonfly_V1_Download]>([])

    var recordedDownloads: [Dragonfly_V1_Download] { downloads.withLock { $0 } }

    func syncPieces(
        request: Dragonfly_V1_SyncPiecesRequest, response: RPCWriter<Dragonfly_V1_PieceAvailable>,
        context: ServerContext
    ) async throws {
        throw RPCError(code: .unimplemented, message: "not in this test")
    }

    func statTask(request: Dragonfly_V1_StatTaskRequest, context: ServerContext) async throws -> Dragonfly_V1_TaskInfo {
        throw RPCError(code: .unimplemented, message: "not in this test")
    }

    func downloadTask(
        request: Dragonfly_V1_DownloadTaskRequest, response: RPCWriter<Dragonfly_V1_DownloadProgress>,
        context: ServerContext
    ) async throws {
        downloads.withLock { $0.append(request.download) }
        var progress = Dragonfly_V1_DownloadProgress()
        progress.done = true
        try await response.write(progress)
    }

    func health(request: Dragonfly_V1_HealthRequest, context: ServerContext) async throws -> Dragonfly_V1_HealthResponse
    {
        Dragonfly_V1_HealthResponse()
    }
}

/// Runs `service` as a Peer gRPC server on 127.0.0.1:0 while `body` runs; passes its port.
func withPeerServer<T: Sendable>(
    _ service: RecordingPeerService, _ body: (Int) async throws -> T
) async throws -> T {
    let server = try GRPCServerService(
        address: .tcp(host: "127.0.0.1", port: 0), services: [service], logger: SchedulerHarness.logger)
    let group = ServiceGroup(
        configuration: ServiceGroupConfiguration(services: [server], logger: SchedulerHarness.logger))
    return try await withThrowingTaskGroup(of: Void.self) { tasks in
        tasks.addTask { try await group.run() }
        let result: Result<T, any Error>
        do {
            let port = try #require(try await server.listeningAddress().port)
            result = .success(try await body(port))
        } catch {
            result = .failure(error)
        }
        await group.triggerGracefulShutdown()
        try await tasks.waitForAll()
        return try result.get()
    }
}
