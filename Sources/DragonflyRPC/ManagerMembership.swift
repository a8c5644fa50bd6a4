package import DragonflyCore
package import DragonflyProto
package import GRPCCore
package import Logging
package import ServiceLifecycle
import Synchronization

/// What the manager answered to a registration: the member's ID and cluster, and who it registered as.
package struct ManagerRegistration: Sendable, Hashable {
    package var id: UInt64
    package var clusterID: UInt64
    package var hostname: String
    package var ip: String

    package init(id: UInt64, clusterID: UInt64, hostname: String, ip: String) {
        self.id = id
        self.clusterID = clusterID
        self.hostname = hostname
        self.ip = ip
    }
}

/// Keeps a scheduler or seed peer registered with the manager (DESIGN §5, §10): registers, then holds a
/// `KeepAlive` stream with one message every `keepAliveInterval`; when the call or the stream fails (the
/// manager restarted, the row was deleted) it registers again, with exponential backoff and jitter between
/// attempts (``retryPolicy``), until the service stops.
///
/// Run it as a `Service`; it runs its own gRPC client. ``waitUntilRegistered(timeLimit:)`` is the role's
/// readiness wait (DESIGN §15: bounded, the role becomes ready anyway and keeps retrying).
package final class ManagerMembership: Service, Sendable {
    package typealias Client = Dragonfly_V1_Manager.Client<RPCClientTransport>
    /// Registers once and returns what the manager answered; called again after every failure.
    package typealias Register = @Sendable (Client, CallOptions) async throws -> ManagerRegistration

    /// Backoff between registration attempts: 500 ms doubling to 5 s (attempts never run out).
    package static let retryPolicy = RPCRetryPolicy(
        maxAttempts: .max, initialBackoff: .milliseconds(500), maxBackoff: .seconds(5))
    /// Deadline of one registration call.
    package static let callTimeout: Duration = .seconds(5)

    private let client: RPCClient
    private let sourceType: Dragonfly_V1_SourceType
    private let keepAliveInterval: Duration
    private let register: Register
    private let logger: Logger
    private let state = Mutex<(current: ManagerRegistration?, registrations: Int)>((nil, 0))

    /// - Parameters:
    ///   - target: The manager's gRPC address `host:port`.
    ///   - sourceType: `.scheduler` or `.seedPeer`.
    ///   - clusterSecret: Sent with every call (`x-dragonfly-cluster-secret`); the manager refuses
    ///     registrations and keep-alives without it when it has one.
    /// - Throws: `DragonflyError` `.invalidArgument` for a malformed target.
    package init(
        target: String,
        sourceType: Dragonfly_V1_SourceType,
        keepAliveInterval: Duration,
        clusterSecret: ClusterSecret? = nil,
        logger: Logger,
        register: @escaping Register
    ) throws(DragonflyError) {
        precondition(sourceType == .scheduler || sourceType == .seedPeer, "only schedulers and seed peers keep alive")
        // No default deadline: the keep-alive stream lives as long as the registration.
        client = try makeRPCClient(
            target: target, options: RPCClientOptions(defaultTimeout: nil, maxReconnectBackoff: .seconds(5)),
            interceptors: clusterSecret.map { [ClusterSecretClientInterceptor(secret: $0)] } ?? [], logger: logger)
        self.sourceType = sourceType
        self.keepAliveInterval = max(.milliseconds(100), keepAliveInterval)
        self.register = register
        var logger = logger
        logger[metadataKey: "df.manager"] = "\(target)"
        self.logger = logger
    }

    /// The registration in force, `nil` before the first one succeeded.
    package var current: ManagerRegistration? { state.withLock { $0.current } }

    /// How many times registration succeeded so far (a re-registration after the manager came back counts).
    package var registrationCount: Int { state.withLock { $0.registrations } }

    /// Waits until the first registration succeeded, at most `timeLimit`; returns whether it did.
    package func waitUntilRegistered(timeLimit: Duration) async -> Bool {
        let deadline = ContinuousClock.now.advanced(by: timeLimit)
        while current == nil {
            guard ContinuousClock.now < deadline, !Task.isCancelled else { return false }
            try? await Task.sleep(for: .milliseconds(50))
        }
        return true
    }

    package func run() async throws {
        try await withThrowingDiscardingTaskGroup { group in
            group.addTask { try await self.client.runConnections() }
            await cancelWhenGracefulShutdown { await self.maintain() }
            client.beginGracefulShutdown()
        }
    }

    private func maintain() async {
        let manager = Client(wrapping: client)
        var failures = 0
        while !Task.isCancelled {
            do {
                var options = CallOptions.defaults
                options.timeout = Self.callTimeout
                let registration = try await register(manager, options)
                let count = state.withLock { state in
                    state.current = registration
                    state.registrations += 1
                    return state.registrations
                }
                logger.debug(
                    "registered with the manager",
                    metadata: [
                        "df.member.id": "\(registration.id)", "df.cluster.id": "\(registration.clusterID)",
                        "df.registrations": "\(count)",
                    ])
                if failures > 0 {
                    logger.info("registered with the manager again", metadata: ["df.member.id": "\(registration.id)"])
                }
                failures = 0
                try await keepAlive(registration, manager: manager)
                // The manager ended the stream without an error (it is stopping): register again.
            } catch {
                if Task.isCancelled { return }
                failures += 1
                if failures == 1 {
                    logger.warning(
                        "manager unreachable or refused the registration; retrying", metadata: ["df.error": "\(error)"])
                } else {
                    logger.debug(
                        "manager registration attempt failed",
                        metadata: ["df.error": "\(error)", "df.attempt": "\(failures)"])
                }
            }
            try? await Task.sleep(for: Self.retryPolicy.backoff(beforeRetry: max(failures, 1)))
        }
    }

    private func keepAlive(_ registration: ManagerRegistration, manager: Client) async throws {
        var message = Dragonfly_V1_KeepAliveRequest()
        message.sourceType = sourceType
        message.hostname = registration.hostname
        message.ip = registration.ip
        message.clusterID = registration.clusterID
        message.id = registration.id
        let interval = keepAliveInterval
        let keepAlive = message
        try await manager.keepAlive(
            requestProducer: { writer in
                while !Task.isCancelled {
                    try await writer.write(keepAlive)
                    try await Task.sleep(for: interval)
                }
            },
            onResponse: { response in _ = try response.message }
        )
    }
}
