package import DragonflyCore
package import DragonflyProto
package import DragonflyRPC
import GRPCCore
package import Logging
package import ServiceLifecycle
import SwiftProtobuf
import Synchronization

/// The daemon's side of its schedulers: one gRPC client per scheduler address, the consistent-hash ring that
/// picks a task's scheduler, and the periodic `AnnounceHost` (DESIGN §5, §6 step 3, §15 readiness).
///
/// Run it as a `Service`: it runs the clients' connections, announces the host every
/// `scheduler.announceInterval` to every scheduler, and on shutdown tells them the host leaves. The addresses
/// start as `--scheduler`'s and may be replaced while it runs (``update(addresses:)``: the manager's list);
/// clients of removed schedulers finish their calls and close.
package final class SchedulerPool: Service, Sendable {
    package typealias Client = Dragonfly_V1_Scheduler.Client<RPCClientTransport>

    /// Most schedulers one daemon talks to at once; a longer list keeps its first ones.
    package static let maxSchedulers = 64

    private struct Members {
        var ring: SchedulerRing
        var clients: [String: RPCClient]
        var isStopped = false
    }

    private let members: Mutex<Members>
    private let started: AsyncStream<RPCClient>
    private let startClient: AsyncStream<RPCClient>.Continuation
    private let identity: Published<HostIdentity>
    private let announceInterval: Duration
    private let readyTimeout: Duration
    private let logger: Logger
    private let firstAcknowledged = Mutex(false)
    private let uploadSlotsUsed: @Sendable () -> Int
    /// Attach the cluster secret (`security.clusterSecret`) to every call, when configured: a seed peer's
    /// announcements count as a seed's only with it.
    private let interceptors: [any ClientInterceptor]

    /// - Parameters:
    ///   - addresses: `host:port` of every scheduler (`--scheduler`).
    ///   - uploadSlotsUsed: The piece server's busy slots, reported in each announce.
    package init(
        addresses: [String],
        identity: Published<HostIdentity>,
        config: DaemonConfig,
        uploadSlotsUsed: @escaping @Sendable () -> Int,
        logger: Logger
    ) throws(DragonflyError) {
        self.identity = identity
        announceInterval = config.scheduler.announceInterval.duration
        readyTimeout = config.scheduler.readyTimeout.duration
        self.logger = logger
        self.uploadSlotsUsed = uploadSlotsUsed
        let interceptors: [any ClientInterceptor] =
            try ClusterSecret(secret: config.security.resolvedClusterSecret()).map {
                [ClusterSecretClientInterceptor(secret: $0)]
            } ?? []
        self.interceptors = interceptors
        (started, startClient) = AsyncStream.makeStream(of: RPCClient.self)
        let ring = SchedulerRing(addresses: Array(addresses.prefix(Self.maxSchedulers)))
        var clients: [String: RPCClient] = [:]
        for address in ring.addresses {
            let client = try Self.makeClient(address, interceptors: interceptors, logger: logger)
            clients[address] = client
            startClient.yield(client)
        }
        members = Mutex(Members(ring: ring, clients: clients))
    }

    private static func makeClient(
        _ address: String, interceptors: [any ClientInterceptor], logger: Logger
    ) throws(DragonflyError) -> RPCClient {
        // A restarted scheduler is found again within seconds, not after gRPC's default backoff (up to 2 min).
        try makeRPCClient(
            target: address,
            options: RPCClientOptions(defaultTimeout: .seconds(30), maxReconnectBackoff: maximumReconnectBackoff),
            interceptors: interceptors, logger: logger)
    }

    /// Longest wait between two reconnection attempts to a scheduler that went away.
    package static let maximumReconnectBackoff: Duration = .seconds(2)

    /// The consistent-hash ring over the current schedulers.
    package var ring: SchedulerRing { members.withLock { $0.ring } }

    /// Whether no scheduler is known right now.
    package var isEmpty: Bool { ring.addresses.isEmpty }

    /// Replaces the schedulers with `addresses` (at most ``maxSchedulers``; duplicates and order do not
    /// matter) and returns whether anything changed. Addresses that fail to parse are skipped and logged.
    @discardableResult
    package func update(addresses: [String]) -> Bool {
        var valid: [String] = []
        for address in addresses where valid.count < Self.maxSchedulers {
            if (try? RPCAddress(parsing: address)) != nil {
                valid.append(address)
            } else {
                logger.warning("ignoring a malformed scheduler address", metadata: ["df.scheduler": "\(address)"])
            }
        }
        let ring = SchedulerRing(addresses: valid)
        let change: (removed: [RPCClient], added: [RPCClient])? = members.withLock { members in
            guard !members.isStopped, members.ring != ring else { return nil }
            var removed: [RPCClient] = []
            var added: [RPCClient] = []
            var clients: [String: RPCClient] = [:]
            for address in ring.addresses {
                if let client = members.clients[address] {
                    clients[address] = client
                } else if let client = try? Self.makeClient(address, interceptors: interceptors, logger: logger) {
                    clients[address] = client
                    added.append(client)
                }
            }
            for (address, client) in members.clients where clients[address] == nil { removed.append(client) }
            members.ring = SchedulerRing(addresses: Array(clients.keys))
            members.clients = clients
            return (removed, added)
        }
        guard let change else { return false }
        for client in change.added { startClient.yield(client) }
        for client in change.removed { client.beginGracefulShutdown() }
        logger.debug("scheduler list changed", metadata: ["df.schedulers": "\(ring.addresses.joined(separator: ","))"])
        return true
    }

    /// The schedulers to try for `taskID`, owner first.
    package func candidates(for taskID: TaskID) -> [(address: String, client: Client)] {
        members.withLock { members in
            members.ring.candidates(for: taskID.rawValue).compactMap { address in
                members.clients[address].map { (address, Client(wrapping: $0)) }
            }
        }
    }

    /// Waits until a scheduler acknowledged the first `AnnounceHost`, at most `scheduler.readyTimeout` (then
    /// logs a warning and returns: the role becomes ready anyway and keeps retrying).
    package func waitUntilAnnounced() async {
        let deadline = ContinuousClock.now.advanced(by: readyTimeout)
        while !firstAcknowledged.withLock({ $0 }) && !isEmptyWithoutDiscovery {
            guard ContinuousClock.now < deadline, !Task.isCancelled else {
                logger.warning(
                    "no scheduler acknowledged AnnounceHost yet; ready anyway, still retrying",
                    metadata: ["df.schedulers": "\(ring.addresses.joined(separator: ","))"])
                return
            }
            try? await Task.sleep(for: .milliseconds(50))
        }
    }

    /// Set when the schedulers come from the manager: an empty list then means "not known yet".
    private let awaitsDiscovery = Mutex(false)

    /// Tells the pool that a scheduler list is expected (the manager): ``waitUntilAnnounced()`` then waits even
    /// while the list is empty.
    package func expectDiscovery() { awaitsDiscovery.withLock { $0 = true } }

    private var isEmptyWithoutDiscovery: Bool { isEmpty && !awaitsDiscovery.withLock { $0 } }

    /// How long the clients may drain their calls at shutdown before they are cancelled.
    static let shutdownGrace: Duration = .seconds(1)

    package func run() async throws {
        let (clientsEnded, clientsEndedSink) = AsyncStream.makeStream(of: Void.self)
        try await withThrowingDiscardingTaskGroup { group in
            group.addTask { [started, logger] in
                await withDiscardingTaskGroup { clients in
                    for await client in started {
                        clients.addTask {
                            do {
                                try await client.runConnections()
                            } catch {
                                logger.debug("scheduler client stopped", metadata: ["df.error": "\(error)"])
                            }
                        }
                    }
                }
                clientsEndedSink.finish()
            }
            // Stops at once on shutdown, also mid-announce.
            group.addTask { await cancelWhenGracefulShutdown { await self.announceLoop() } }
            try? await gracefulShutdown()
            await leaveAll()
            let clients = members.withLock { members in
                members.isStopped = true
                return Array(members.clients.values)
            }
            startClient.finish()
            for client in clients { client.beginGracefulShutdown() }
            // A graceful close waits for every open call (a download's AnnouncePeer stream lasts as long as the
            // download): the clients get a short grace, then are cancelled, so the daemon stops within its
            // shutdown budget (DESIGN §15).
            await withTaskGroup(of: Void.self) { race in
                race.addTask { for await _ in clientsEnded {} }
                race.addTask { try? await Task.sleep(for: Self.shutdownGrace) }
                await race.next()
                race.cancelAll()
            }
            group.cancelAll()
        }
    }

    private func announceLoop() async {
        guard let identity = try? await identity.value() else { return }
        var acknowledged: Set<String> = []
        var lastFullRound: ContinuousClock.Instant?
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            let clients = members.withLock { $0.clients }
            acknowledged.formIntersection(clients.keys)
            // Every announce interval to every scheduler; in between, every second to those that have not
            // answered yet (new ones from the manager, or ones that are down: DESIGN §15 "retry every second").
            let now = ContinuousClock.now
            let isFullRound = lastFullRound.map { $0.duration(to: now) >= announceInterval } ?? true
            if isFullRound { lastFullRound = now }
            let due = clients.filter { isFullRound || !acknowledged.contains($0.key) }
            await withTaskGroup(of: (String, Bool).self) { group in
                for (address, client) in due {
                    group.addTask { [self] in
                        var request = Dragonfly_V1_AnnounceHostRequest()
                        request.host = identity.hostMessage(uploadSlotsUsed: uploadSlotsUsed(), maxTxBandwidth: 0)
                        request.interval = Google_Protobuf_Duration(rounding: announceInterval)
                        do {
                            var options = CallOptions.defaults
                            options.timeout = .seconds(5)
                            _ = try await Client(wrapping: client).announceHost(request, options: options)
                            return (address, true)
                        } catch {
                            return (address, false)
                        }
                    }
                }
                for await (address, ok) in group {
                    if ok {
                        if acknowledged.insert(address).inserted {
                            logger.debug(
                                "scheduler acknowledged AnnounceHost", metadata: ["df.scheduler": "\(address)"])
                        }
                        firstAcknowledged.withLock { $0 = true }
                    } else if acknowledged.remove(address) != nil || acknowledged.isEmpty {
                        logger.debug("AnnounceHost failed", metadata: ["df.scheduler": "\(address)"])
                    }
                }
            }
            try? await Task.sleep(for: min(.seconds(1), announceInterval))
        }
    }

    private func leaveAll() async {
        guard let identity = identity.current else { return }
        let clients = members.withLock { $0.clients }
        await withTaskGroup(of: Void.self) { group in
            for client in clients.values {
                group.addTask {
                    var request = Dragonfly_V1_LeaveHostRequest()
                    request.hostID = identity.hostID
                    var options = CallOptions.defaults
                    options.timeout = .seconds(1)
                    _ = try? await Client(wrapping: client).leaveHost(request, options: options)
                }
            }
        }
    }
}
