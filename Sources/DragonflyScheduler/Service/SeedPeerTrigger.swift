package import DragonflyCore
package import DragonflyProto
package import DragonflyRPC
import GRPCCore
package import Logging
package import Synchronization

/// Asks seed hosts to download tasks into their cache (Peer `DownloadTask` without an output path), in the
/// background of ``run(onFailure:)``.
///
/// One gRPC client per seed host, reused across triggers, at most ``maxClients`` (the least recently used is
/// shut down first); at most ``maxInFlight`` triggers run at once and at most ``maxQueued`` wait. A trigger
/// that cannot be queued, cannot connect or ends with an error status is reported to `onFailure`; the
/// progress stream is drained and otherwise ignored (the seed reports to the scheduler on its own stream).
package final class SeedPeerTrigger: Sendable {
    /// One trigger.
    package struct Request: Sendable {
        package var hostID: String
        package var taskID: String
        /// `<ip>:<port>` of the seed's Peer gRPC service.
        package var address: String
        package var download: Dragonfly_V1_Download

        package init(hostID: String, taskID: String, address: String, download: Dragonfly_V1_Download) {
            self.hostID = hostID
            self.taskID = taskID
            self.address = address
            self.download = download
        }
    }

    private struct CachedClient {
        var address: String
        var client: RPCClient
        var lastUsed: UInt64
    }

    private struct State {
        var isRunning = false
        var isStopped = false
        var clients: [String: CachedClient] = [:]
        var inFlight = 0
        var useCounter: UInt64 = 0
    }

    package let maxClients: Int
    package let maxInFlight: Int
    package let maxQueued: Int
    /// Deadline of one `DownloadTask` call (the seed's download of the whole task).
    package let callTimeout: Duration
    private let options: RPCClientOptions
    /// Attach the cluster secret to triggers: a seed refuses `DownloadTask` without it when it has one.
    private let interceptors: [any ClientInterceptor]
    private let logger: Logger
    private let requests: AsyncStream<Request>
    private let continuation: AsyncStream<Request>.Continuation
    private let state = Mutex(State())

    package init(
        options: RPCClientOptions = RPCClientOptions(defaultTimeout: nil),
        maxClients: Int = 64,
        maxInFlight: Int = 256,
        maxQueued: Int = 1024,
        callTimeout: Duration = .seconds(2 * 3600),
        clusterSecret: ClusterSecret? = nil,
        logger: Logger
    ) {
        self.options = options
        self.interceptors = clusterSecret.map { [ClusterSecretClientInterceptor(secret: $0)] } ?? []
        self.maxClients = max(maxClients, 1)
        self.maxInFlight = max(maxInFlight, 1)
        self.maxQueued = max(maxQueued, 1)
        self.callTimeout = callTimeout
        self.logger = logger
        (requests, continuation) = AsyncStream.makeStream(
            of: Request.self, bufferingPolicy: .bufferingOldest(self.maxQueued))
    }

    /// Queues a trigger; `false` when it cannot run (queue full, or the trigger loop stopped).
    package func submit(_ request: Request) -> Bool {
        if case .enqueued = continuation.yield(request) { return true }
        return false
    }

    /// Shuts down the client of a host that left.
    package func forget(hostID: String) {
        let client = state.withLock { $0.clients.removeValue(forKey: hostID)?.client }
        client?.beginGracefulShutdown()
    }

    /// Runs the queued triggers until cancelled, then shuts every client down. Runs once.
    package func run(onFailure: @escaping @Sendable (Request, DragonflyError) -> Void) async {
        let alreadyRunning = state.withLock { state in
            defer { state.isRunning = true }
            return state.isRunning
        }
        precondition(!alreadyRunning, "SeedPeerTrigger.run() must be called once")
        await withDiscardingTaskGroup { group in
            for await request in requests {
                let admission = admit(request)
                switch admission {
                case .rejected(let error):
                    onFailure(request, error)
                case .admitted(let client, let isNew, let evicted):
                    evicted?.beginGracefulShutdown()
                    if isNew {
                        group.addTask {
                            try? await client.runConnections()
                        }
                    }
                    group.addTask {
                        defer { self.state.withLock { $0.inFlight -= 1 } }
                        do {
                            try await self.call(client, request)
                        } catch {
                            onFailure(request, DragonflyError(converting: error))
                        }
                    }
                }
            }
            let clients = state.withLock { state in
                state.isStopped = true
                defer { state.clients = [:] }
                return state.clients.values.map(\.client)
            }
            for client in clients { client.beginGracefulShutdown() }
            group.cancelAll()
        }
        // Triggers queued after the stop are refused.
        continuation.finish()
    }

    private enum Admission {
        case admitted(RPCClient, isNew: Bool, evicted: RPCClient?)
        case rejected(DragonflyError)
    }

    private func admit(_ request: Request) -> Admission {
        let created: Result<RPCClient, DragonflyError>?
        let needsClient = state.withLock { state -> Bool in
            guard let cached = state.clients[request.hostID] else { return true }
            return cached.address != request.address
        }
        if needsClient {
            do throws(DragonflyError) {
                created = .success(
                    try makeRPCClient(
                        target: request.address, options: options, interceptors: interceptors, logger: logger))
            } catch {
                created = .failure(error)
            }
        } else {
            created = nil
        }
        if case .failure(let error) = created { return .rejected(error) }
        return state.withLock { state -> Admission in
            guard state.inFlight < maxInFlight else {
                if case .success(let client) = created { client.beginGracefulShutdown() }
                return .rejected(
                    DragonflyError(
                        code: .resourceExhausted, message: "\(maxInFlight) seed triggers are running; trigger refused"))
            }
            state.useCounter += 1
            state.inFlight += 1
            if case .success(let client) = created {
                var evicted = state.clients[request.hostID]?.client
                if evicted == nil, state.clients.count >= maxClients,
                    let oldest = state.clients.min(by: { $0.value.lastUsed < $1.value.lastUsed })
                {
                    evicted = oldest.value.client
                    state.clients[oldest.key] = nil
                }
                state.clients[request.hostID] = CachedClient(
                    address: request.address, client: client, lastUsed: state.useCounter)
                return .admitted(client, isNew: true, evicted: evicted)
            }
            // The cached client is still there (only this loop replaces clients; `forget` may have removed it).
            guard var cached = state.clients[request.hostID] else {
                state.inFlight -= 1
                return .rejected(
                    DragonflyError(code: .unavailable, message: "seed host '\(request.hostID)' left"))
            }
            cached.lastUsed = state.useCounter
            state.clients[request.hostID] = cached
            return .admitted(cached.client, isNew: false, evicted: nil)
        }
    }

    private func call(_ client: RPCClient, _ request: Request) async throws {
        let peer = Dragonfly_V1_Peer.Client(wrapping: client)
        var message = Dragonfly_V1_DownloadTaskRequest()
        message.download = request.download
        var options = CallOptions.defaults
        options.timeout = callTimeout
        logger.debug(
            "seed peer triggered",
            metadata: ["df.task.id": "\(request.taskID)", "df.host.id": "\(request.hostID)"])
        try await peer.downloadTask(message, options: options) { response in
            for try await _ in response.messages {}
        }
    }
}
