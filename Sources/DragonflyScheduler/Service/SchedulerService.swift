package import DragonflyCore
package import DragonflyProto
import DragonflyRPC
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

    /// Creates the service from the role configuration; nothing runs until it is registered with a gRPC server
    /// and ``makeMaintenanceService()`` runs in the same `ServiceGroup`.
    package init(
        config: SchedulerConfig,
        strategy: any SchedulingStrategy,
        telemetry: Telemetry,
        options: Options = Options(),
        logger: Logger
    ) {
        self.config = config
        self.options = options
        self.logger = logger
        self.metrics = SchedulerMetrics(telemetry: telemetry)
        self.seedTrigger = SeedPeerTrigger(logger: logger)
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
        try announce(request.host)
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
    private func announce(_ proto: Dragonfly_V1_Host) throws(DragonflyError) {
        let host = try SchedulerConversions.peerHost(proto, now: .now)
        let removed = try commitThrowing { core throws(DragonflyError) in
            let outcome = try core.announceHost(host, now: .now)
            return (outcome.removed, outcome.actions)
        }
        release(removed, reason: "evicted to make room for another host")
    }

    package func leaveHost(
        request: Dragonfly_V1_LeaveHostRequest, context: ServerContext
    ) async throws -> Google_Protobuf_Empty {
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
        return taskInfo(task, clock: WallClock())
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
        info.task = taskInfo(task, clock: clock)
        if let host { info.host = SchedulerConversions.protoHost(host, clock: clock) }
        info.needBackToSource = peer.wantsBackToSource || task.backToSourcePeers.contains(peer.id)
        info.createdAt = clock.timestamp(of: peer.registeredAt)
        info.updatedAt = clock.timestamp(of: peer.lastProgress)
        return info
    }

    private func taskInfo(_ task: SchedulerTask, clock: WallClock) -> Dragonfly_V1_TaskInfo {
        var info = Dragonfly_V1_TaskInfo()
        info.id = task.id
        info.url = task.url
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
        info.responseHeader = task.responseHeader
        info.createdAt = clock.timestamp(of: task.createdAt)
        info.updatedAt = clock.timestamp(of: task.lastActivity)
        return info
    }

    package func leavePeer(
        request: Dragonfly_V1_LeavePeerRequest, context: ServerContext
    ) async throws -> Google_Protobuf_Empty {
        let key = PeerKey(taskID: try TaskID.validated(request.taskID).rawValue, peerID: request.peerID)
        // Leaving is idempotent: an unknown peer is not an error.
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
        downloads.withLock { store in
            store.remember(SchedulerConversions.seedDownload(from: message.register.download), forTask: key.taskID)
        }
        stream.key = key
        let replaced = peerStreams.withLock { streams in
            defer { streams[key] = stream }
            return streams[key]
        }
        replaced?.outbox.close(
            with: DragonflyError(code: .cancelled, message: "peer '\(key.peerID)' registered again on another stream"))
        let decision: RegisterDecision
        do throws(DragonflyError) {
            decision = try commitThrowing { core throws(DragonflyError) in
                let outcome = try core.register(registration, now: .now)
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
            try self.announce(start.host)
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
                let message = SchedulerConversions.announcePeerResponse(response, clock: clock) { batch.hosts[$0] }
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
struct DownloadStore: Sendable {
    let capacity: Int
    private var entries: [String: (download: Dragonfly_V1_Download, order: UInt64)] = [:]
    private var counter: UInt64 = 0

    init(capacity: Int) {
        self.capacity = max(capacity, 1)
    }

    func download(forTask taskID: String) -> Dragonfly_V1_Download? { entries[taskID]?.download }

    /// Keeps the first registrant's download of a task.
    mutating func remember(_ download: Dragonfly_V1_Download, forTask taskID: String) {
        guard entries[taskID] == nil else { return }
        if entries.count >= capacity, let oldest = entries.min(by: { $0.value.order < $1.value.order }) {
            entries[oldest.key] = nil
        }
        counter += 1
        entries[taskID] = (download, counter)
    }

    mutating func forget(task taskID: String) { entries[taskID] = nil }

    /// Drops the downloads of tasks the scheduler no longer tracks.
    mutating func retain(tasks: Set<String>) {
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
