package import DragonflyCore
package import DragonflyProto
package import DragonflyRPC
package import DragonflyTelemetry
package import GRPCCore
package import Logging
import Prometheus
package import SwiftProtobuf
import Synchronization

/// The gRPC `dragonfly.v1.Scheduler` service (DESIGN §5): hosts, one `AnnouncePeer` stream per download, and
/// the host command channels.
///
/// The scheduling state is one ``PeerScheduler`` behind a `Mutex`; every call mutates it in one short critical
/// section and performs the returned ``SchedulerAction``s outside it. Actions are performed in the order their
/// critical sections ran (a ticket taken under the lock), so a peer never gets a `PieceDigests` push ahead of
/// the `NormalTask` it follows. Each registered peer has a bounded outbound queue; a peer that does not read
/// its stream fast enough is failed instead of buffered. Background work (digest pushes, GC, seed triggers)
/// runs in ``makeMaintenanceService()``.
package final class SchedulerService: Dragonfly_V1_Scheduler.SimpleServiceProtocol, Sendable {
    /// Bounds and intervals of the service.
    package struct Options: Sendable {
        /// Messages queued per peer stream before the peer is failed as a slow consumer.
        package var peerQueueCapacity: Int = 512
        /// Messages queued per host command channel.
        package var hostQueueCapacity: Int = 64
        /// Open `SyncHost` streams at most.
        package var maxHostChannels: Int = 10_000
        /// Registrants' `Download` messages kept for seed triggers (oldest dropped first).
        package var maxStoredDownloads: Int = 10_000
        /// Hosts returned by `ListHosts` at most (sorted by ID).
        package var maxListedHosts: Int = 10_000
        /// Pieces listed by `StatPeer` at most.
        package var maxListedPieces: Int = 10_000
        /// Announce interval asked of hosts that do not announce one.
        package var announceInterval: Duration = .seconds(30)
        /// How often pending digests are pushed (DESIGN §5: at most every 100 ms).
        package var digestInterval: Duration = .milliseconds(100)
        /// `scheduler_id` in `AnnounceHost` answers; `nil` uses the local address of the call.
        package var schedulerID: String?

        package init() {}
    }

    private struct LockedState: Sendable {
        var core: PeerScheduler<SystemRandomNumberGenerator>
        /// Tickets handed out so far; actions are performed in ticket order.
        var ticket: UInt64 = 0
    }

    /// Actions of one critical section with what performing them needs from the registry.
    private struct Batch: Sendable {
        var actions: [SchedulerAction]
        var hosts: [String: PeerHost]
    }

    private struct Sequencer: Sendable {
        var next: UInt64 = 1
        var parked: [UInt64: Batch] = [:]
    }

    /// Work that delivering a batch asks for after the delivery lock is released.
    private enum FollowUp: Sendable {
        case failSlowConsumer(PeerKey)
        case seedTriggerFailed(hostID: String, taskID: String)
    }

    package let options: Options
    package let config: SchedulerConfig
    let metrics: SchedulerMetrics
    let logger: Logger
    let seedTrigger: SeedPeerTrigger
    private let state: Mutex<LockedState>
    private let sequencer = Mutex(Sequencer())
    private let peerStreams = Mutex<[PeerKey: AnnounceStream]>([:])
    private let hostChannels = Mutex<[String: StreamOutbox<Dragonfly_V1_SyncHostResponse>]>([:])
    private let downloads: Mutex<DownloadStore>
    /// The cluster secret (`security.clusterSecret`); `nil` in a lab cluster.
    package let clusterSecret: ClusterSecret?
    /// Derives the per-task transfer grants handed to the task's peers.
    package let grantKey: TransferGrantKey
    /// The seed hosts the cluster vouches for (`seedPeers`, the manager's seed peers).
    package let seedRoster: SeedRoster

    /// Scheduler methods refused without the cluster secret when one is configured: `ListHosts` discloses
    /// every host's address.
    package static let protectedMethods: Set<String> = ["dragonfly.v1.Scheduler/ListHosts"]

    /// Creates the service from the role configuration; nothing runs until it is registered with a gRPC server
    /// and ``makeMaintenanceService()`` runs in the same `ServiceGroup`.
    package init(
        config: SchedulerConfig,
        strategy: any SchedulingStrategy,
        telemetry: Telemetry,
        options: Options = Options(),
        clusterSecret: ClusterSecret? = nil,
        logger: Logger
    ) {
        self.config = config
        self.clusterSecret = clusterSecret
        self.grantKey = TransferGrantKey(secret: clusterSecret)
        self.seedRoster = SeedRoster(configured: config.seedPeers)
        self.options = options
        self.logger = logger
        self.metrics = SchedulerMetrics(telemetry: telemetry)
        self.seedTrigger = SeedPeerTrigger(clusterSecret: clusterSecret, logger: logger)
        self.state = Mutex(
            LockedState(core: PeerScheduler(config: config, strategy: strategy, random: SystemRandomNumberGenerator())))
        self.downloads = Mutex(DownloadStore(capacity: options.maxStoredDownloads))
    }

    /// The background loop: digest pushes, GC and seed triggers.
    package func makeMaintenanceService() -> SchedulerMaintenanceService {
        SchedulerMaintenanceService(scheduler: self)
    }

    // MARK: Hosts

    package func announceHost(
        request: Dragonfly_V1_AnnounceHostRequest, context: ServerContext
    ) async throws -> Dragonfly_V1_AnnounceHostResponse {
        try announce(request.host, context: context)
        metrics.hostAnnouncements.increment()
        var response = Dragonfly_V1_AnnounceHostResponse()
        response.schedulerID = options.schedulerID ?? Self.address(ofPeer: context.localPeer)
        let asked = request.hasInterval ? SchedulerConversions.duration(request.interval) : options.announceInterval
        // Hosts must announce well within the host TTL, and not more than once a second.
        let ceiling = max(config.gc.hostTTL.duration / 3, .seconds(1))
        response.interval = SchedulerConversions.protoDuration(min(max(asked, .seconds(1)), ceiling))
        return response
    }

    /// Adds or refreshes a host (AnnounceHost, SyncHost start).
    ///
    /// A host is a seed only when the cluster vouches for it (``isVouchedSeed(_:callerIP:)``); a host that
    /// announces itself `super` otherwise is kept as a normal host. A known host may move to another IP only
    /// from its current IP or with the cluster secret.
    private func announce(_ proto: Dragonfly_V1_Host, context: ServerContext) throws(DragonflyError) {
        var host = try SchedulerConversions.peerHost(proto, now: .now)
        let caller = callerIP(ofPeer: context.remotePeer)
        if host.isSeed && !isVouchedSeed(host, callerIP: caller) {
            host.kind = .normal
            metrics.unvouchedSeeds.increment()
            logger.debug(
                "seed announcement not vouched for: host kept as normal", metadata: ["df.host.id": "\(host.id)"])
        }
        if let known = state.withLock({ $0.core.registry.host(host.id) }),
            canonicalIP(known.ip) != canonicalIP(host.ip), !mayActOnHost(known, callerIP: caller)
        {
            throw DragonflyError(
                code: .permissionDenied,
                message: "host '\(host.id.prefix(256))' is announced from another IP; only the host itself or a caller "
                    + "with the cluster secret (security.clusterSecret) may move it")
        }
        let removed = try commitThrowing { core throws(DragonflyError) in
            let outcome = try core.announceHost(host, now: .now)
            return (outcome.removed, outcome.actions)
        }
        release(removed, reason: "evicted to make room for another host")
    }

    package func leaveHost(
        request: Dragonfly_V1_LeaveHostRequest, context: ServerContext
    ) async throws -> Google_Protobuf_Empty {
        // Leaving is idempotent: an unknown host is not an error.
        guard let host = state.withLock({ $0.core.registry.host(request.hostID) }) else {
            return Google_Protobuf_Empty()
        }
        guard mayActOnHost(host, callerIP: callerIP(ofPeer: context.remotePeer)) else {
            throw DragonflyError(
                code: .permissionDenied,
                message: "LeaveHost is accepted only from the host's own IP or with the cluster secret "
                    + "(security.clusterSecret)")
        }
        let removed = commit { core in
            let outcome = core.leaveHost(request.hostID, now: .now)
            return (outcome.removed, outcome.actions)
        }
        release(removed, reason: "its host left")
        seedTrigger.forget(hostID: request.hostID)
        hostChannels.withLock { $0.removeValue(forKey: request.hostID) }?.close()
        return Google_Protobuf_Empty()
    }

    package func listHosts(
        request: Dragonfly_V1_ListHostsRequest, context: ServerContext
    ) async throws -> Dragonfly_V1_ListHostsResponse {
        let kind: PeerHost.Kind? =
            switch request.hasType ? request.type : nil {
            case nil: nil
            case .normal: .normal
            case .super: .seed
            case .UNRECOGNIZED(let value):
                throw DragonflyError(code: .invalidArgument, message: "type \(value) is not a known host type")
            }
        let hosts = state.withLock { state in
            state.core.registry.hosts.values.filter { kind == nil || $0.kind == kind }
        }
        let clock = WallClock()
        var response = Dragonfly_V1_ListHostsResponse()
        response.hosts = hosts.sorted { $0.id < $1.id }.prefix(options.maxListedHosts)
            .map { SchedulerConversions.protoHost($0, clock: clock) }
        return response
    }

    /// The hosts known now: the seed hosts, or the normal ones (what a preheat job targets).
    package func hosts(seeds: Bool) -> [PeerHost] {
        state.withLock { state in
            state.core.registry.hosts.values.filter { $0.isSeed == seeds }.sorted { $0.id < $1.id }
        }
    }

    /// Every host known now, as the manager's host report carries them.
    package func reportedHosts() -> [Dragonfly_V1_Host] {
        let hosts = state.withLock { state in Array(state.core.registry.hosts.values) }
        let clock = WallClock()
        return hosts.sorted { $0.id < $1.id }.map { SchedulerConversions.protoHost($0, clock: clock) }
    }

    // MARK: Tasks and peers

    package func statTask(
        request: Dragonfly_V1_StatTaskRequest, context: ServerContext
    ) async throws -> Dragonfly_V1_TaskInfo {
        let taskID = try TaskID.validated(request.taskID).rawValue
        guard let task = state.withLock({ $0.core.registry.task(taskID) }) else {
            throw DragonflyError(code: .notFound, message: "task '\(taskID)' is unknown to this scheduler")
        }
        guard mayDescribe(task, presentedGrant: request.transferGrant) else {
            throw DragonflyError(
                code: .permissionDenied,
                message: "task '\(taskID)' is private: StatTask needs the task's transfer grant")
        }
        return taskInfo(task, clock: WallClock())
    }

    /// Whether the task was read with credentials: the origin reader marked it (`x-dragonfly-private`) or a
    /// registrant's download carries `Authorization` or `Cookie`.
    private func isPrivate(_ task: SchedulerTask) -> Bool {
        if task.responseHeader.keys.contains(where: { $0.lowercased() == Self.privateTaskHeader }) { return true }
        guard let download = downloads.withLock({ $0.download(forTask: task.id) }) else { return false }
        return download.requestHeader.keys.contains { ["authorization", "cookie"].contains($0.lowercased()) }
    }

    /// The task header a daemon sets on a task first read with credentials.
    static let privateTaskHeader = "x-dragonfly-private"

    /// Whether a caller presenting `presentedGrant` may learn a task's URL and layout: always for a public task;
    /// for a private one with the task's transfer grant or the cluster secret.
    private func mayDescribe(_ task: SchedulerTask, presentedGrant: String) -> Bool {
        !isPrivate(task) || SchedulerCaller.hasClusterSecret || grantKey.accepts(presentedGrant, forTask: task.id)
    }

    package func statPeer(
        request: Dragonfly_V1_StatPeerRequest, context: ServerContext
    ) async throws -> Dragonfly_V1_PeerInfo {
        let taskID = try TaskID.validated(request.taskID).rawValue
        let found = state.withLock { state -> (SchedulerTask, SchedulerPeer, PeerHost?)? in
            guard let task = state.core.registry.task(taskID), let peer = task.peers[request.peerID] else {
                return nil
            }
            return (task, peer, state.core.registry.host(peer.hostID))
        }
        guard let (task, peer, host) = found else {
            throw DragonflyError(
                code: .notFound, message: "peer '\(request.peerID.prefix(256))' of task '\(taskID)' is unknown")
        }
        let clock = WallClock()
        var info = Dragonfly_V1_PeerInfo()
        info.id = peer.id
        info.pieces = peer.finishedPieces.numbers.prefix(options.maxListedPieces).map { number in
            var piece = Dragonfly_V1_Piece()
            piece.number = number
            if let digest = task.trustedDigests[number] { piece.digest = digest }
            return piece
        }
        info.cost = SchedulerConversions.protoDuration(peer.lastProgress - peer.registeredAt)
        info.state = SchedulerConversions.peerState(peer.state)
        // StatPeer carries no grant: a private task is described by its ID and state only.
        if isPrivate(task) && !SchedulerCaller.hasClusterSecret {
            var bare = Dragonfly_V1_TaskInfo()
            bare.id = task.id
            bare.state = SchedulerConversions.taskState(task.state)
            info.task = bare
            info.pieces = info.pieces.map { piece in
                var piece = piece
                piece.digest = ""
                return piece
            }
        } else {
            info.task = taskInfo(task, clock: clock)
        }
        if let host { info.host = SchedulerConversions.protoHost(host, clock: clock) }
        info.needBackToSource = peer.wantsBackToSource || task.backToSourcePeers.contains(peer.id)
        info.createdAt = clock.timestamp(of: peer.registeredAt)
        info.updatedAt = clock.timestamp(of: peer.lastProgress)
        return info
    }

    private func taskInfo(_ task: SchedulerTask, clock: WallClock) -> Dragonfly_V1_TaskInfo {
        var info = Dragonfly_V1_TaskInfo()
        info.id = task.id
        // Never a query value or userinfo: signed URLs and tokens stay in the process.
        info.url = Redaction.url(task.url)
        if let download = downloads.withLock({ $0.download(forTask: task.id) }) {
            info.tag = download.tag
            info.application = download.application
            info.filteredQueryParams = download.filteredQueryParams
            info.tenant = download.tenant
        }
        if let contentLength = task.contentLength { info.contentLength = UInt64(clamping: contentLength) }
        info.pieceLength = UInt64(clamping: task.pieceLength ?? 0)
        if let pieceCount = task.pieceCount { info.pieceCount = UInt32(clamping: pieceCount) }
        info.sizeScope = SchedulerConversions.sizeScope(task.sizeScope)
        info.state = SchedulerConversions.taskState(task.state)
        info.peerCount = UInt32(clamping: task.peers.count)
        info.availablePeerCount = UInt32(
            clamping: task.peers.values.count { $0.canServe && ($0.finishedPieceCount > 0 || $0.state == .succeeded) })
        info.responseHeader = Redaction.headers(task.responseHeader)
        info.createdAt = clock.timestamp(of: task.createdAt)
        info.updatedAt = clock.timestamp(of: task.lastActivity)
        return info
    }

    package func leavePeer(
        request: Dragonfly_V1_LeavePeerRequest, context: ServerContext
    ) async throws -> Google_Protobuf_Empty {
        let key = PeerKey(taskID: try TaskID.validated(request.taskID).rawValue, peerID: request.peerID)
        // Leaving is idempotent: an unknown peer is not an error.
        let owner = state.withLock { state -> PeerHost? in
            guard let peer = state.core.registry.peer(key) else { return nil }
            return state.core.registry.host(peer.hostID)
        }
        if let owner, !mayActOnHost(owner, callerIP: callerIP(ofPeer: context.remotePeer)) {
            throw DragonflyError(
                code: .permissionDenied,
                message: "LeavePeer is accepted only from the IP of the peer's host or with the cluster secret "
                    + "(security.clusterSecret)")
        }
        let left = commit { core in
            let outcome = core.leavePeer(key, now: .now)
            return (!outcome.removed.peers.isEmpty, outcome.actions.filter { $0.isRejection(of: key) == false })
        }
        if left { metrics.peersLeft.increment() }
        peerStreams.withLock { $0.removeValue(forKey: key) }?.outbox.close()
        return Google_Protobuf_Empty()
    }

    // MARK: AnnouncePeer

    package func announcePeer(
        request: RPCAsyncSequence<Dragonfly_V1_AnnouncePeerRequest, any Error>,
        response: RPCWriter<Dragonfly_V1_AnnouncePeerResponse>,
        context: ServerContext
    ) async throws {
        let stream = AnnounceStream(capacity: options.peerQueueCapacity)
        metrics.announcePeerStreams.increment()
        defer {
            metrics.announcePeerStreams.decrement()
            streamEnded(stream)
        }
        try await stream.outbox.serve(writer: response) {
            var messages = request.makeAsyncIterator()
            guard let first = try await messages.next() else { return }
            try self.register(first, on: stream)
            while let message = try await messages.next() {
                try self.apply(message, on: stream)
            }
        }
    }

    private func register(
        _ message: Dragonfly_V1_AnnouncePeerRequest, on stream: AnnounceStream
    ) throws(DragonflyError) {
        let registration = try SchedulerConversions.registration(message)
        let key = registration.key
        stream.key = key
        let replaced = peerStreams.withLock { streams in
            defer { streams[key] = stream }
            return streams[key]
        }
        replaced?.outbox.close(
            with: DragonflyError(code: .cancelled, message: "peer '\(key.peerID)' registered again on another stream"))
        let decision: RegisterDecision
        do throws(DragonflyError) {
            let download = SchedulerConversions.seedDownload(from: message.register.download)
            decision = try commitThrowing { core throws(DragonflyError) in
                let outcome = try core.register(registration, now: .now)
                // Kept only once the registration was accepted (so refused ones cannot evict real ones), and
                // before its actions run (a seed trigger sends it).
                downloads.withLock { $0.remember(download, forTask: key.taskID) }
                return (outcome.decision, outcome.actions)
            }
        } catch {
            peerStreams.withLock { streams in
                if streams[key] === stream { streams[key] = nil }
            }
            throw error
        }
        metrics.registrations[Self.label(of: decision)]?.increment()
        logger.debug(
            "peer registered",
            metadata: [
                "df.task.id": "\(key.taskID)", "df.peer.id": "\(key.peerID)", "df.host.id": "\(registration.hostID)",
                "df.decision": "\(Self.label(of: decision))",
            ])
    }

    private func apply(_ message: Dragonfly_V1_AnnouncePeerRequest, on stream: AnnounceStream) throws(DragonflyError) {
        guard let key = stream.key else { return }
        guard message.taskID.isEmpty || message.taskID == key.taskID,
            message.peerID.isEmpty || message.peerID == key.peerID
        else {
            throw DragonflyError(
                code: .invalidArgument, message: "an AnnouncePeer stream carries one peer: '\(key.peerID)'")
        }
        let event = try SchedulerConversions.event(message)
        switch event {
        case .pieceFinished: metrics.piecesReported["peer"]?.increment()
        case .pieceBackToSourceFinished: metrics.piecesReported["origin"]?.increment()
        case .pieceFailed: metrics.pieceFailures.increment()
        case .failed: metrics.peerFailures["reported"]?.increment()
        case .backToSourceFailed: metrics.peerFailures["origin"]?.increment()
        default: break
        }
        if event.isFinal { stream.isSettled = true }
        commit { core in ((), core.handle(event, from: key, now: .now)) }
    }

    /// The stream of a peer ended: unless the peer reported a final state (or was failed), it left.
    private func streamEnded(_ stream: AnnounceStream) {
        guard let key = stream.key else { return }
        let isCurrent = peerStreams.withLock { streams in
            guard streams[key] === stream else { return false }
            streams[key] = nil
            return true
        }
        guard isCurrent, !stream.isSettled else { return }
        let left = commit { core in
            let outcome = core.leavePeer(key, now: .now)
            return (!outcome.removed.peers.isEmpty, outcome.actions.filter { $0.isRejection(of: key) == false })
        }
        if left {
            metrics.peersLeft.increment()
            logger.debug("peer left", metadata: ["df.task.id": "\(key.taskID)", "df.peer.id": "\(key.peerID)"])
        }
    }

    // MARK: SyncHost

    package func syncHost(
        request: RPCAsyncSequence<Dragonfly_V1_SyncHostRequest, any Error>,
        response: RPCWriter<Dragonfly_V1_SyncHostResponse>,
        context: ServerContext
    ) async throws {
        let outbox = StreamOutbox<Dragonfly_V1_SyncHostResponse>(capacity: options.hostQueueCapacity)
        let hostID = HostIDSlot()
        defer {
            if let id = hostID.value {
                hostChannels.withLock { channels in
                    if channels[id] === outbox { channels[id] = nil }
                }
            }
        }
        try await outbox.serve(writer: response) {
            var messages = request.makeAsyncIterator()
            guard let first = try await messages.next() else { return }
            guard case .start(let start) = first.request else {
                throw DragonflyError(code: .invalidArgument, message: "the first SyncHost message must be 'start'")
            }
            guard first.hostID.isEmpty || first.hostID == start.host.id else {
                throw DragonflyError(
                    code: .invalidArgument, message: "host_id '\(first.hostID.prefix(256))' differs from start.host.id")
            }
            try self.announce(start.host, context: context)
            try self.openChannel(start.host.id, outbox: outbox)
            hostID.value = start.host.id
            while let message = try await messages.next() {
                if case .commandResult(let result) = message.request {
                    self.logger.debug(
                        "host command result",
                        metadata: ["df.host.id": "\(start.host.id)", "df.command.id": "\(result.commandID.prefix(64))"])
                }
            }
        }
    }

    private func openChannel(
        _ hostID: String, outbox: StreamOutbox<Dragonfly_V1_SyncHostResponse>
    ) throws(DragonflyError) {
        let result = hostChannels.withLock {
            channels -> Result<StreamOutbox<Dragonfly_V1_SyncHostResponse>?, DragonflyError> in
            let previous = channels[hostID]
            guard previous != nil || channels.count < options.maxHostChannels else {
                return .failure(
                    DragonflyError(
                        code: .resourceExhausted,
                        message: "the scheduler holds \(options.maxHostChannels) host channels; retry later"))
            }
            channels[hostID] = outbox
            return .success(previous)
        }
        let previous = try result.get()
        previous?.close(
            with: DragonflyError(code: .cancelled, message: "host '\(hostID)' opened another SyncHost stream"))
    }

    /// Whether a host's command channel (SyncHost stream) is open.
    package func hasCommandChannel(hostID: String) -> Bool {
        hostChannels.withLock { $0[hostID] != nil }
    }

    /// The command channel of a host, for the commands the scheduler will send (preheat, delete, probe).
    package func commandChannel(hostID: String) -> StreamOutbox<Dragonfly_V1_SyncHostResponse>? {
        hostChannels.withLock { $0[hostID] }
    }

    // MARK: Maintenance

    /// Pushes the trusted digests learnt since the last call (`PieceDigests`).
    package func pushPendingDigests() {
        let pushes = commit { core in
            let actions = core.drainDigestBatches()
            return (actions.count, actions)
        }
        if pushes > 0 { metrics.digestPushes.increment(by: Int64(pushes)) }
    }

    /// Runs the GC of the resource model and ends the streams of the peers it removed.
    package func collectGarbage() {
        let removed = commit { core in
            let outcome = core.collectGarbage(now: .now)
            return (outcome.removed, outcome.actions)
        }
        release(removed, reason: "no progress for too long")
        let taskIDs = state.withLock { Set($0.core.registry.tasks.keys) }
        downloads.withLock { $0.retain(tasks: taskIDs) }
    }

    /// Sets the host gauges.
    package func updateGauges() {
        let (normal, seed) = state.withLock { state in
            state.core.registry.hosts.values.reduce(into: (0, 0)) { counts, host in
                if host.isSeed { counts.1 += 1 } else { counts.0 += 1 }
            }
        }
        metrics.hosts["normal"]?.set(Double(normal))
        metrics.hosts["super"]?.set(Double(seed))
    }

    /// A seed trigger failed: the waiting peers are scheduled again.
    func seedTriggerFailed(_ request: SeedPeerTrigger.Request, error: DragonflyError) {
        metrics.seedTriggers["failed"]?.increment()
        logger.debug(
            "seed trigger failed",
            metadata: [
                "df.task.id": "\(request.taskID)", "df.host.id": "\(request.hostID)", "df.error": "\(error.message)",
            ])
        commit { core in ((), core.seedTriggerFailed(taskID: request.taskID, hostID: request.hostID, now: .now)) }
    }

    // MARK: Performing actions

    /// Runs `body` on the scheduler in one critical section and performs its actions outside it, in order.
    @discardableResult
    private func commitThrowing<Value>(
        _ body: (inout PeerScheduler<SystemRandomNumberGenerator>) throws(DragonflyError) -> (Value, [SchedulerAction])
    ) throws(DragonflyError) -> Value {
        let (value, batch, ticket) = try state.withLock {
            state throws(DragonflyError) -> (Value, Batch, UInt64) in
            let (value, actions) = try body(&state.core)
            state.ticket += 1
            return (value, Self.batch(actions, registry: state.core.registry), state.ticket)
        }
        var followUps = deliver(batch, ticket: ticket)
        // Follow-ups change the scheduler again; bounded because each fails a peer or a seed host once.
        while !followUps.isEmpty {
            let followUp = followUps.removeFirst()
            let (actions, next) = state.withLock { state -> (Batch, UInt64) in
                let actions: [SchedulerAction]
                switch followUp {
                case .failSlowConsumer(let key):
                    actions = state.core.handle(
                        .failed(reason: "the peer did not read its AnnouncePeer stream"), from: key, now: .now
                    ).filter { $0.isRejection(of: key) == false }
                case .seedTriggerFailed(let hostID, let taskID):
                    actions = state.core.seedTriggerFailed(taskID: taskID, hostID: hostID, now: .now)
                }
                state.ticket += 1
                return (Self.batch(actions, registry: state.core.registry), state.ticket)
            }
            followUps += deliver(actions, ticket: next)
        }
        return value
    }

    /// ``commitThrowing(_:)`` for the scheduler calls that cannot fail.
    @discardableResult
    private func commit<Value>(
        _ body: (inout PeerScheduler<SystemRandomNumberGenerator>) -> (Value, [SchedulerAction])
    ) -> Value {
        do throws(DragonflyError) {
            return try commitThrowing { core throws(DragonflyError) in body(&core) }
        } catch {
            preconditionFailure("a non-throwing scheduler call threw \(error)")
        }
    }

    /// The actions with the hosts their parents and seed triggers name, read under the lock.
    private static func batch(_ actions: [SchedulerAction], registry: ResourceRegistry) -> Batch {
        var hosts: [String: PeerHost] = [:]
        for case .send(_, let response) in actions {
            for hostID in response.parentHostIDs where hosts[hostID] == nil {
                hosts[hostID] = registry.host(hostID)
            }
        }
        for case .triggerSeedPeer(let hostID, _, _) in actions {
            hosts[hostID] = registry.host(hostID)
        }
        return Batch(actions: actions, hosts: hosts)
    }

    /// Delivers `batch` once every earlier ticket was delivered; returns follow-ups for the caller.
    private func deliver(_ batch: Batch, ticket: UInt64) -> [FollowUp] {
        sequencer.withLock { sequencer in
            sequencer.parked[ticket] = batch
            var followUps: [FollowUp] = []
            while let ready = sequencer.parked.removeValue(forKey: sequencer.next) {
                sequencer.next += 1
                followUps += perform(ready)
            }
            return followUps
        }
    }

    /// Performs actions: queue sends, close streams, submit seed triggers. Never blocks.
    private func perform(_ batch: Batch) -> [FollowUp] {
        var followUps: [FollowUp] = []
        let clock = WallClock()
        for action in batch.actions {
            switch action {
            case .send(let key, let response):
                switch response {
                case .needBackToSource: metrics.backToSourceDecisions.increment()
                case .normalTask, .smallTask: metrics.parentAnswers.increment()
                default: break
                }
                guard let stream = peerStreams.withLock({ $0[key] }) else { continue }
                let message = SchedulerConversions.announcePeerResponse(
                    response, transferGrant: grantKey.grant(forTask: key.taskID), clock: clock
                ) { batch.hosts[$0] }
                if stream.outbox.send(message) == .full {
                    stream.isSettled = true
                    stream.outbox.abort(
                        with: DragonflyError(
                            code: .resourceExhausted,
                            message: "the peer did not read its AnnouncePeer stream: \(stream.outbox.capacity) "
                                + "messages were waiting"))
                    metrics.peerFailures["slow_consumer"]?.increment()
                    followUps.append(.failSlowConsumer(key))
                }
            case .fail(let key, let reason):
                metrics.peerFailures["scheduler"]?.increment()
                guard let stream = peerStreams.withLock({ $0[key] }) else { continue }
                stream.isSettled = true
                stream.outbox.close(
                    with: DragonflyError(code: .failedPrecondition, message: "scheduling failed: \(reason)"))
            case .reject(let key, let code, let message):
                peerStreams.withLock { $0[key] }?.outbox.close(with: DragonflyError(code: code, message: message))
            case .triggerSeedPeer(let hostID, let taskID, let url):
                guard let host = batch.hosts[hostID] else {
                    followUps.append(.seedTriggerFailed(hostID: hostID, taskID: taskID))
                    continue
                }
                var download = downloads.withLock { $0.download(forTask: taskID) } ?? Dragonfly_V1_Download()
                download.url = url
                // A seed never reads a local path on the scheduler's word (registrations are checked already).
                guard ScheduledSchemes.isAllowed(url) else {
                    followUps.append(.seedTriggerFailed(hostID: hostID, taskID: taskID))
                    continue
                }
                let request = SeedPeerTrigger.Request(
                    hostID: hostID, taskID: taskID, address: host.peerAddress, download: download)
                if seedTrigger.submit(request) {
                    metrics.seedTriggers["sent"]?.increment()
                } else {
                    metrics.seedTriggers["failed"]?.increment()
                    followUps.append(.seedTriggerFailed(hostID: hostID, taskID: taskID))
                }
            }
        }
        return followUps
    }

    /// Ends the streams and forgets the clients and downloads of removed resources.
    private func release(_ removed: RemovedResources, reason: String) {
        guard !removed.isEmpty else { return }
        for key in removed.peers {
            peerStreams.withLock { $0.removeValue(forKey: key) }?.outbox.close(
                with: DragonflyError(code: .notFound, message: "peer '\(key.peerID)' was removed: \(reason)"))
        }
        for hostID in removed.hosts {
            seedTrigger.forget(hostID: hostID)
            hostChannels.withLock { $0.removeValue(forKey: hostID) }?.close()
        }
        if !removed.tasks.isEmpty {
            downloads.withLock { store in
                for taskID in removed.tasks { store.forget(task: taskID) }
            }
        }
    }

    // MARK: Trust

    /// Whether the cluster vouches for `host` as a seed: with a cluster secret, the call carries it; without
    /// one, the host's Peer address is on the seed roster and the call comes from the host's own IP.
    private func isVouchedSeed(_ host: PeerHost, callerIP: String?) -> Bool {
        if clusterSecret != nil { return SchedulerCaller.hasClusterSecret }
        guard let callerIP, canonicalIP(host.ip) == callerIP else { return false }
        return seedRoster.contains(SeedRoster.address(ip: host.ip, port: host.peerPort))
    }

    /// Whether the current call may change `host`'s state: it carries the cluster secret, or it comes from the
    /// host's announced IP (until certificates, "the host itself").
    private func mayActOnHost(_ host: PeerHost, callerIP: String?) -> Bool {
        if SchedulerCaller.hasClusterSecret { return true }
        guard let callerIP else { return false }
        return canonicalIP(host.ip) == callerIP
    }

    /// The transfer grant of `taskID`, handed to the task's peers.
    package func transferGrant(forTask taskID: String) -> String {
        grantKey.grant(forTask: taskID)
    }

    // MARK: Helpers

    private static func label(of decision: RegisterDecision) -> String {
        switch decision {
        case .emptyTask: "empty"
        case .tinyTask: "tiny"
        case .smallTask: "small"
        case .normalTask: "normal"
        case .needBackToSource: "back_to_source"
        case .waitForParents: "wait"
        }
    }

    /// `127.0.0.1:8002` from `ipv4:127.0.0.1:8002`, `[::1]:8002` from `ipv6:[::1]:8002`.
    static func address(ofPeer peer: String) -> String {
        for prefix in ["ipv4:", "ipv6:"] where peer.hasPrefix(prefix) {
            return String(peer.dropFirst(prefix.count))
        }
        return peer
    }
}

/// One `AnnouncePeer` stream: its outbound queue and, once registered, the peer it carries.
final class AnnounceStream: Sendable {
    let outbox: StreamOutbox<Dragonfly_V1_AnnouncePeerResponse>
    private let state = Mutex<(key: PeerKey?, isSettled: Bool)>((nil, false))

    init(capacity: Int) {
        outbox = StreamOutbox(capacity: capacity)
    }

    /// The registered peer.
    var key: PeerKey? {
        get { state.withLock { $0.key } }
        set { state.withLock { $0.key = newValue } }
    }

    /// The peer reported a final state or was failed: the stream ending is not a leave.
    var isSettled: Bool {
        get { state.withLock { $0.isSettled } }
        set { state.withLock { $0.isSettled = newValue } }
    }
}

/// The host a `SyncHost` stream opened its channel for.
private final class HostIDSlot: Sendable {
    private let storage = Mutex<String?>(nil)

    var value: String? {
        get { storage.withLock { $0 } }
        set { storage.withLock { $0 = newValue } }
    }
}

/// Registrants' downloads by task, for seed triggers and `StatTask`; the oldest entry goes when full.
package struct DownloadStore: Sendable {
    package let capacity: Int
    private var entries: [String: (download: Dragonfly_V1_Download, order: UInt64)] = [:]
    private var counter: UInt64 = 0

    package init(capacity: Int) {
        self.capacity = max(capacity, 1)
    }

    package func download(forTask taskID: String) -> Dragonfly_V1_Download? { entries[taskID]?.download }

    /// Keeps the first accepted registrant's download of a task. When full, the new one is not kept (a seed
    /// trigger then sends the URL alone): a flood of registrations cannot evict the downloads of live tasks;
    /// GC frees the entries of tasks that are gone.
    package mutating func remember(_ download: Dragonfly_V1_Download, forTask taskID: String) {
        guard entries[taskID] == nil, entries.count < capacity else { return }
        counter += 1
        entries[taskID] = (download, counter)
    }

    package mutating func forget(task taskID: String) { entries[taskID] = nil }

    /// Drops the downloads of tasks the scheduler no longer tracks.
    package mutating func retain(tasks: Set<String>) {
        entries = entries.filter { tasks.contains($0.key) }
    }
}

extension PeerEvent {
    /// The peer reported a final state: its stream ending is not a leave.
    var isFinal: Bool {
        switch self {
        case .finished, .backToSourceFinished, .backToSourceFailed, .failed: true
        default: false
        }
    }
}

extension PeerResponse {
    /// Host IDs of the parents in the response.
    var parentHostIDs: [String] {
        switch self {
        case .normalTask(let plan): plan.parents.map(\.hostID)
        case .smallTask(let plan): plan.parents.map(\.hostID)
        default: []
        }
    }
}

extension SchedulerAction {
    /// A rejection addressed to `key`.
    func isRejection(of key: PeerKey) -> Bool {
        if case .reject(let target, _, _) = self { return target == key }
        return false
    }
}
