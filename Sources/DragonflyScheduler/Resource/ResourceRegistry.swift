package import DragonflyCore

/// Identifies a peer within its task.
package struct PeerKey: Sendable, Hashable, Comparable, CustomStringConvertible {
    package var taskID: String
    package var peerID: String

    package init(taskID: String, peerID: String) {
        self.taskID = taskID
        self.peerID = peerID
    }

    package static func < (lhs: PeerKey, rhs: PeerKey) -> Bool {
        (lhs.taskID, lhs.peerID) < (rhs.taskID, rhs.peerID)
    }

    package var description: String { "\(taskID)/\(peerID)" }
}

/// Size bounds and time-to-live of the in-memory resource model.
package struct ResourceLimits: Sendable, Hashable {
    /// Hosts kept; when full, the least recently announced host without peers is evicted.
    package var maxHosts: Int
    /// Tasks kept; when full, the least recently active task without a downloading peer is evicted.
    package var maxTasks: Int
    /// Peers kept per task; when full, finished leaves of the DAG are evicted first.
    package var maxPeersPerTask: Int
    /// Peers with no progress for this long are collected.
    package var peerTTL: Duration
    /// Hosts not announced for this long are collected with their peers.
    package var hostTTL: Duration
    /// Tasks with no activity for this long are collected with their peers.
    package var taskTTL: Duration

    package init(
        maxHosts: Int = 100_000,
        maxTasks: Int = 100_000,
        maxPeersPerTask: Int = 1000,
        peerTTL: Duration = .seconds(30 * 60),
        hostTTL: Duration = .seconds(3600),
        taskTTL: Duration = .seconds(24 * 3600)
    ) {
        self.maxHosts = max(maxHosts, 1)
        self.maxTasks = max(maxTasks, 1)
        self.maxPeersPerTask = max(maxPeersPerTask, 1)
        self.peerTTL = peerTTL
        self.hostTTL = hostTTL
        self.taskTTL = taskTTL
    }

    /// The limits of a scheduler configuration (`gc.*`); host and task bounds keep their defaults.
    package init(gc: SchedulerConfig.GCConfig, maxHosts: Int = 100_000, maxTasks: Int = 100_000) {
        self.init(
            maxHosts: maxHosts,
            maxTasks: maxTasks,
            maxPeersPerTask: gc.maxPeersPerTask,
            peerTTL: gc.peerTTL.duration,
            hostTTL: gc.hostTTL.duration,
            taskTTL: gc.taskTTL.duration
        )
    }
}

/// What a removal, eviction or garbage collection took out of the registry.
package struct RemovedResources: Sendable, Hashable {
    package var hosts: [String] = []
    package var tasks: [String] = []
    package var peers: [PeerKey] = []
    /// Surviving peers that lost a parent and should be scheduled again.
    package var orphanedChildren: [PeerKey] = []

    package init() {}

    package var isEmpty: Bool { hosts.isEmpty && tasks.isEmpty && peers.isEmpty }

    mutating func merge(_ other: RemovedResources) {
        hosts += other.hosts
        tasks += other.tasks
        peers += other.peers
        orphanedChildren += other.orphanedChildren
    }
}

/// The scheduler's in-memory model: hosts, tasks and the peers of each task, with bounded maps and GC.
///
/// A value type (the service keeps it behind a `Mutex` together with the rest of the scheduling state).
/// Every insertion checks its bound and evicts by a documented rule, or refuses with `resourceExhausted`
/// when nothing may be evicted:
/// - hosts: the least recently announced host that has no peer;
/// - tasks: the least recently active task with no peer still downloading (its peers go with it);
/// - peers of a task: finished leaves of the task's DAG (failed or left before succeeded, then the oldest
///   progress first); a peer that is downloading or serving children is never evicted.
package struct ResourceRegistry: Sendable {
    package let limits: ResourceLimits
    package private(set) var hosts: [String: PeerHost] = [:]
    package private(set) var tasks: [String: SchedulerTask] = [:]

    package init(limits: ResourceLimits = ResourceLimits()) {
        self.limits = limits
    }

    // MARK: Lookups

    package func host(_ id: String) -> PeerHost? { hosts[id] }
    package func task(_ id: String) -> SchedulerTask? { tasks[id] }
    package func peer(_ key: PeerKey) -> SchedulerPeer? { tasks[key.taskID]?.peers[key.peerID] }

    /// Every peer on a host, across tasks, sorted.
    package func peers(onHost hostID: String) -> [PeerKey] {
        var keys: [PeerKey] = []
        for task in tasks.values {
            for peer in task.peers.values where peer.hostID == hostID {
                keys.append(PeerKey(taskID: task.id, peerID: peer.id))
            }
        }
        return keys.sorted()
    }

    /// Total number of peers across tasks.
    package var peerCount: Int { tasks.values.reduce(0) { $0 + $1.peers.count } }

    // MARK: Mutation in place

    /// Runs `body` on the stored task; `nil` when there is no such task.
    @discardableResult
    package mutating func modifyTask<Result>(_ id: String, _ body: (inout SchedulerTask) -> Result) -> Result? {
        guard tasks[id] != nil else { return nil }
        return body(&tasks[id, default: SchedulerTask(id: id, url: "", now: .now)])
    }

    /// Runs `body` on the stored host; `nil` when there is no such host.
    @discardableResult
    package mutating func modifyHost<Result>(_ id: String, _ body: (inout PeerHost) -> Result) -> Result? {
        guard var host = hosts[id] else { return nil }
        let result = body(&host)
        hosts[id] = host
        return result
    }

    // MARK: Hosts

    /// Adds or refreshes a host. Evicts the least recently announced host without peers when full.
    @discardableResult
    package mutating func announceHost(_ host: PeerHost) throws(DragonflyError) -> RemovedResources {
        var removed = RemovedResources()
        if hosts[host.id] == nil && hosts.count >= limits.maxHosts {
            let busy = Set(tasks.values.flatMap { $0.peers.values.map(\.hostID) })
            let victim = hosts.values.filter { !busy.contains($0.id) }
                .min { ($0.lastAnnounce, $0.id) < ($1.lastAnnounce, $1.id) }
            guard let victim else {
                throw DragonflyError(
                    code: .resourceExhausted,
                    message: "the scheduler tracks \(limits.maxHosts) hosts, all with peers; raise the host limit "
                        + "or add schedulers")
            }
            removed.merge(removeHost(victim.id))
        }
        hosts[host.id] = host
        return removed
    }

    /// Removes a host and all its peers.
    @discardableResult
    package mutating func removeHost(_ id: String) -> RemovedResources {
        var removed = RemovedResources()
        guard hosts.removeValue(forKey: id) != nil else { return removed }
        removed.hosts.append(id)
        for key in peers(onHost: id) { removed.merge(removePeer(key)) }
        return removed
    }

    // MARK: Tasks

    /// Returns the task, creating it when new. Evicts the least recently active task with no downloading
    /// peer when full.
    @discardableResult
    package mutating func ensureTask(
        id: String, url: String, now: ContinuousClock.Instant
    ) throws(DragonflyError) -> RemovedResources {
        var removed = RemovedResources()
        if tasks[id] != nil { return removed }
        if tasks.count >= limits.maxTasks {
            let victim = tasks.values.filter { task in task.peers.values.allSatisfy { $0.stateMachine.isFinished } }
                .min { ($0.lastActivity, $0.id) < ($1.lastActivity, $1.id) }
            guard let victim else {
                throw DragonflyError(
                    code: .resourceExhausted,
                    message: "the scheduler tracks \(limits.maxTasks) tasks, all downloading; retry later or add "
                        + "schedulers")
            }
            removed.merge(removeTask(victim.id))
        }
        tasks[id] = SchedulerTask(id: id, url: url, now: now)
        return removed
    }

    /// Removes a task and its peers.
    @discardableResult
    package mutating func removeTask(_ id: String) -> RemovedResources {
        var removed = RemovedResources()
        guard let task = tasks.removeValue(forKey: id) else { return removed }
        removed.tasks.append(id)
        removed.peers = task.peers.keys.sorted().map { PeerKey(taskID: id, peerID: $0) }
        return removed
    }

    // MARK: Peers

    /// Adds a peer to its task (which must exist, as must its host). When the task holds
    /// ``ResourceLimits/maxPeersPerTask`` peers, finished leaves are evicted first.
    @discardableResult
    package mutating func addPeer(_ peer: SchedulerPeer) throws(DragonflyError) -> RemovedResources {
        guard hosts[peer.hostID] != nil else {
            throw DragonflyError(
                code: .failedPrecondition, message: "host '\(peer.hostID)' is unknown: announce it before its peers")
        }
        guard let task = tasks[peer.taskID] else {
            throw DragonflyError(code: .notFound, message: "task '\(peer.taskID)' is unknown")
        }
        var removed = RemovedResources()
        if task.peers[peer.id] == nil && task.peers.count >= limits.maxPeersPerTask {
            guard let victim = Self.evictionCandidate(in: task) else {
                throw DragonflyError(
                    code: .resourceExhausted,
                    message: "task '\(peer.taskID)' has \(limits.maxPeersPerTask) peers, none finished and "
                        + "without children; retry later")
            }
            removed.merge(removePeer(PeerKey(taskID: peer.taskID, peerID: victim)))
        }
        tasks[peer.taskID]?.peers[peer.id] = peer
        return removed
    }

    /// The peer evicted first when the task is full: a finished DAG leaf, failed or left before succeeded,
    /// then the oldest progress; `nil` when no peer may be evicted.
    package static func evictionCandidate(in task: SchedulerTask) -> String? {
        func rank(_ peer: SchedulerPeer) -> Int { peer.state == .succeeded ? 1 : 0 }
        return task.peers.values
            .filter { $0.stateMachine.isFinished && task.dag.isLeaf($0.id) }
            .min { (rank($0), $0.lastProgress, $0.id) < (rank($1), $1.lastProgress, $1.id) }?
            .id
    }

    /// Removes a peer, its DAG edges and its origin-reader and waiting marks. Its children lose it as a parent
    /// and are reported as orphans.
    @discardableResult
    package mutating func removePeer(_ key: PeerKey) -> RemovedResources {
        var removed = RemovedResources()
        guard tasks[key.taskID]?.peers[key.peerID] != nil else { return removed }
        modifyTask(key.taskID) { task in
            task.peers[key.peerID] = nil
            task.backToSourcePeers.remove(key.peerID)
            task.trustedReaders.remove(key.peerID)
            task.untrustedReaders.remove(key.peerID)
            task.waitingPeers.remove(key.peerID)
            let children = task.dag.removePeer(key.peerID)
            for child in children.sorted() {
                task.peers[child]?.parents.removeAll { $0 == key.peerID }
                removed.orphanedChildren.append(PeerKey(taskID: key.taskID, peerID: child))
            }
        }
        removed.peers.append(key)
        return removed
    }

    // MARK: Garbage collection

    /// Removes hosts unseen for ``ResourceLimits/hostTTL`` (with their peers), tasks idle for
    /// ``ResourceLimits/taskTTL`` (with their peers), and peers that left or made no progress for
    /// ``ResourceLimits/peerTTL``. Returns what was removed.
    package mutating func collectGarbage(now: ContinuousClock.Instant) -> RemovedResources {
        var removed = RemovedResources()
        for host in hosts.values.sorted(by: { $0.id < $1.id }) where now - host.lastAnnounce > limits.hostTTL {
            removed.merge(removeHost(host.id))
        }
        for task in tasks.values.sorted(by: { $0.id < $1.id }) where now - task.lastActivity > limits.taskTTL {
            removed.merge(removeTask(task.id))
        }
        var stale: [PeerKey] = []
        for task in tasks.values {
            for peer in task.peers.values where peer.state == .leave || now - peer.lastProgress > limits.peerTTL {
                stale.append(PeerKey(taskID: task.id, peerID: peer.id))
            }
        }
        for key in stale.sorted() { removed.merge(removePeer(key)) }
        let gone = Set(removed.peers)
        removed.orphanedChildren = removed.orphanedChildren.filter { !gone.contains($0) }
        return removed
    }
}
