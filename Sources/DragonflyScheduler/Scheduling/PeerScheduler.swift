package import DragonflyCore

/// The scheduler's synchronous core: applies registrations and `AnnouncePeer` reports to the
/// ``ResourceRegistry`` and returns the ``SchedulerAction``s the gRPC service performs.
///
/// A value type with an injected clock (`now` on every call) and random source, so every rule of DESIGN §6 is
/// tested without I/O. The service keeps one behind a `Mutex` and performs the actions outside the lock.
package struct PeerScheduler<Random: RandomNumberGenerator & Sendable>: Sendable {
    package var registry: ResourceRegistry
    package var selector: ParentSelector
    package var rationer: BackToSourceRationer
    /// `scheduling.firstDigestRecipients`: 0 pushes every digest to every downloading peer at once.
    package var firstDigestRecipients: Int
    /// `scheduling.digestReleaseAfter`.
    package var digestReleaseAfter: Duration
    /// `scheduling.firstDigestBacklog`: staged pieces one peer is first recipient of at once.
    package var firstDigestBacklog: Int
    private var random: Random

    package init(
        registry: ResourceRegistry, selector: ParentSelector, rationer: BackToSourceRationer, random: Random,
        firstDigestRecipients: Int = 0, digestReleaseAfter: Duration = .seconds(2), firstDigestBacklog: Int = 1 << 20
    ) {
        self.registry = registry
        self.selector = selector
        self.rationer = rationer
        self.random = random
        self.firstDigestRecipients = max(firstDigestRecipients, 0)
        self.digestReleaseAfter = digestReleaseAfter
        self.firstDigestBacklog = max(firstDigestBacklog, 1)
    }

    /// A scheduler core configured from `scheduling.*` and `gc.*`.
    package init(config: SchedulerConfig, strategy: any SchedulingStrategy, random: Random) {
        self.init(
            registry: ResourceRegistry(limits: ResourceLimits(gc: config.gc)),
            selector: ParentSelector(strategy: strategy, config: config.scheduling),
            rationer: BackToSourceRationer(config: config.scheduling),
            random: random,
            firstDigestRecipients: config.scheduling.firstDigestRecipients,
            digestReleaseAfter: config.scheduling.digestReleaseAfter.duration,
            firstDigestBacklog: config.scheduling.firstDigestBacklog)
    }

    // MARK: Hosts

    /// Adds or refreshes a host (`AnnounceHost`, `SyncHost` start).
    package mutating func announceHost(_ host: PeerHost, now: ContinuousClock.Instant) throws(DragonflyError)
        -> RemovalOutcome
    {
        let removed = try registry.announceHost(host)
        return RemovalOutcome(removed: removed, actions: rescheduleOrphans(removed.orphanedChildren, now: now))
    }

    /// Removes a host and its peers (`LeaveHost`); their children are scheduled again.
    package mutating func leaveHost(_ hostID: String, now: ContinuousClock.Instant) -> RemovalOutcome {
        let removed = registry.removeHost(hostID)
        return RemovalOutcome(removed: removed, actions: afterRemoval(removed, now: now))
    }

    // MARK: Registration

    /// Registers a peer and decides how to answer it.
    package mutating func register(
        _ registration: PeerRegistration, now: ContinuousClock.Instant
    ) throws(DragonflyError) -> RegisterOutcome {
        let key = registration.key
        guard registry.host(registration.hostID) != nil else {
            throw DragonflyError(
                code: .failedPrecondition,
                message: "host '\(registration.hostID)' is unknown: announce it before registering peers")
        }
        try registry.ensureTask(id: key.taskID, url: registration.url, now: now)
        var actions: [SchedulerAction] = []
        if registry.peer(key) != nil {
            // A re-registration starts over with what the peer holds now.
            actions += afterRemoval(registry.removePeer(key), now: now)
        }
        let peer = SchedulerPeer(
            id: key.peerID,
            hostID: registration.hostID,
            taskID: key.taskID,
            finishedPieces: PieceBitmap(registration.finishedPieces),
            isBackToSourceDisabled: registration.isBackToSourceDisabled,
            wantsBackToSource: registration.wantsBackToSource,
            now: now)
        try registry.addPeer(peer)
        registry.modifyTask(key.taskID) { task in
            if task.url.isEmpty { task.url = registration.url }
            // A registrant's own lengths are never the task's: only an origin reader the scheduler chose tells
            // them (a registrant could otherwise pre-register a task with a layout of its choosing).
            task.trustedReaders.remove(key.peerID)
            task.trustedReaders.formIntersection(task.peers.keys)
            task.triggeredSeedHosts.remove(registration.hostID)
            task.lastActivity = now
        }

        let decision = decideRegistration(key, now: now, actions: &actions)
        let event: PeerStateMachine.Event
        switch decision {
        case .emptyTask: event = .registerEmpty
        case .tinyTask: event = .registerTiny
        case .smallTask: event = .registerSmall
        case .normalTask, .needBackToSource, .waitForParents: event = .registerNormal
        }
        _ = registry.modifyTask(key.taskID) { $0.peers[key.peerID]?.stateMachine.handle(event) }
        if let response = Self.response(for: decision) {
            actions.insert(.send(key, response), at: 0)
        }
        // A peer that holds pieces already (a re-registration after a failover) can serve peers left waiting and
        // is offered to those that have parents already: its first piece came before this scheduler knew it.
        if registration.finishedPieces.isEmpty == false {
            actions += scheduleWaitingPeers(taskID: key.taskID, now: now)
            actions += offerAsParent(key)
        }
        return RegisterOutcome(decision: decision, actions: actions)
    }

    private static func response(for decision: RegisterDecision) -> PeerResponse? {
        switch decision {
        case .emptyTask: .emptyTask
        case .tinyTask(let content): .tinyTask(content: content)
        case .smallTask(let plan): .smallTask(plan)
        case .normalTask(let plan): .normalTask(plan)
        case .needBackToSource(let reason): .needBackToSource(reason: reason)
        case .waitForParents: nil
        }
    }

    private mutating func decideRegistration(
        _ key: PeerKey, now: ContinuousClock.Instant, actions: inout [SchedulerAction]
    ) -> RegisterDecision {
        guard let task = registry.task(key.taskID), let peer = task.peers[key.peerID] else { return .waitForParents }
        if task.state == .succeeded, let shortcut = sizeScopeAnswer(for: peer, in: task) {
            return shortcut
        }
        switch schedule(key, now: now) {
        case .parents(let plan):
            return .normalTask(plan)
        case .backToSource(let reason):
            return .needBackToSource(reason: reason)
        case .wait(let trigger):
            if let trigger { actions.append(trigger) }
            return .waitForParents
        case .fail:
            // Unreachable for a fresh peer (no reschedules yet); waiting keeps the stream open.
            return .waitForParents
        }
    }

    /// Empty, tiny and small answers, used once the task is complete.
    private mutating func sizeScopeAnswer(for peer: SchedulerPeer, in task: SchedulerTask) -> RegisterDecision? {
        switch task.sizeScope {
        case .empty:
            return .emptyTask
        case .tiny:
            if let content = task.tinyContent, Int64(content.count) == task.contentLength {
                return .tinyTask(content: content)
            }
            return smallTaskAnswer(for: peer, in: task)
        case .small:
            return smallTaskAnswer(for: peer, in: task)
        case nil, .normal:
            return nil
        }
    }

    private mutating func smallTaskAnswer(for peer: SchedulerPeer, in task: SchedulerTask) -> RegisterDecision? {
        guard let contentLength = task.contentLength, let digest = task.trustedDigests[0] else { return nil }
        let holders = selector.selectParents(for: peer, in: task, hosts: registry.hosts, using: &random)
            .filter { choice in
                guard !task.untrustedReaders.contains(choice.peerID) else { return false }
                guard let parent = task.peers[choice.peerID] else { return false }
                return parent.state == .succeeded || parent.finishedPieces.contains(0)
            }
        guard !holders.isEmpty else { return nil }
        setParents(holders, of: PeerKey(taskID: task.id, peerID: peer.id))
        return .smallTask(
            SmallTaskPlan(
                parents: holders,
                contentLength: contentLength,
                pieceLength: task.pieceLength ?? contentLength,
                pieceDigest: digest,
                responseHeader: task.responseHeader))
    }

    // MARK: Scheduling

    private enum ScheduleOutcome {
        case parents(NormalTaskPlan)
        case backToSource(reason: String)
        case wait(trigger: SchedulerAction?)
        case fail(reason: String)
    }

    /// Parents when there are eligible ones, else the rationer's decision. Reserves the origin-reader slot on
    /// `backToSource`, marks the peer waiting on `wait`, and records a triggered seed host.
    private mutating func schedule(_ key: PeerKey, now: ContinuousClock.Instant) -> ScheduleOutcome {
        guard let task = registry.task(key.taskID), let peer = task.peers[key.peerID] else {
            return .fail(reason: "peer '\(key.peerID)' is unknown")
        }
        let hosts = registry.hosts
        var decision: BackToSourceRationer.Decision?
        // Nobody reads the origin and no complete copy exists (a new task, a failed reader, or the task's
        // scheduler died and peers re-register here with parts of it): parents could only hand out what is
        // already fetched, so the rationer picks an origin reader first — a seed host over a triggered one,
        // then the first registrant — and everyone else gets it as a parent as soon as it has pieces.
        let lacksOriginReader =
            task.activeReaders.isEmpty && task.state != .succeeded
            && !task.peers.values.contains { $0.state == .succeeded && !task.untrustedReaders.contains($0.id) }
        let isSeedPeer = hosts[peer.hostID]?.isSeed == true
        if rationer.isOverRetryLimit(peer) || peer.wantsBackToSource
            || (lacksOriginReader && (isSeedPeer || task.triggeredSeedHosts.isEmpty))
        {
            let early = rationer.decide(for: peer, in: task, hosts: hosts)
            switch early {
            case .backToSource, .fail: decision = early
            case .triggerSeedPeer, .waitForParents: break
            }
        }
        if decision == nil {
            // A peer that read the origin untrusted holds bytes nobody vouched for: a parent only once every
            // piece has a trusted digest to check its bytes against (e.g. the seed finished, then died).
            let parents = selector.selectParents(for: peer, in: task, hosts: hosts, using: &random)
                .filter { !task.untrustedReaders.contains($0.peerID) || task.hasEveryTrustedDigest }
            if !parents.isEmpty {
                setParents(parents, of: key)
                return .parents(makeNormalPlan(parents: parents, task: task))
            }
            decision = rationer.decide(for: peer, in: task, hosts: hosts)
        }
        switch decision ?? .waitForParents {
        case .backToSource(let reason):
            let trusted = isTrustworthyReader(peer, of: task)
            registry.modifyTask(key.taskID) { task in
                task.backToSourcePeers.insert(key.peerID)
                task.waitingPeers.remove(key.peerID)
                if trusted {
                    task.trustedReaders.insert(key.peerID)
                    task.untrustedReaders.remove(key.peerID)
                } else {
                    task.untrustedReaders.insert(key.peerID)
                }
            }
            return .backToSource(reason: reason)
        case .fail(let reason):
            registry.modifyTask(key.taskID) { $0.waitingPeers.remove(key.peerID) }
            return .fail(reason: reason)
        case .triggerSeedPeer(let hostID):
            registry.modifyTask(key.taskID) { task in
                task.triggeredSeedHosts.insert(hostID)
                task.waitingPeers.insert(key.peerID)
            }
            return .wait(trigger: .triggerSeedPeer(hostID: hostID, taskID: key.taskID, url: task.url))
        case .waitForParents:
            registry.modifyTask(key.taskID) { $0.waitingPeers.insert(key.peerID) }
            return .wait(trigger: nil)
        }
    }

    /// Whether the scheduler may trust what `peer` reads from the origin: it runs on a seed host the cluster
    /// vouches for, or no such seed can serve the task (a cluster without seeds, or every seed failed it).
    private func isTrustworthyReader(_ peer: SchedulerPeer, of task: SchedulerTask) -> Bool {
        if registry.host(peer.hostID)?.isSeed == true { return true }
        return !registry.hosts.values.contains { $0.isSeed && !task.failedSeedHosts.contains($0.id) }
    }

    private func makeNormalPlan(parents: [ParentChoice], task: SchedulerTask) -> NormalTaskPlan {
        NormalTaskPlan(
            parents: parents,
            contentLength: task.contentLength,
            pieceLength: task.pieceLength ?? PieceMath.pieceLength(forContentLength: task.contentLength),
            pieceCount: task.pieceCount,
            // Staged digests reach this peer from drainDigestBatches (as a first recipient or at release).
            pieceDigests: firstDigestRecipients == 0
                ? task.trustedDigests
                : task.trustedDigests.filter {
                    task.stagedDigests[$0.key] == nil && task.pendingDigestBatch[$0.key] == nil
                },
            responseHeader: task.responseHeader)
    }

    /// Replaces the child's parents in the task's edges and on the peer.
    private mutating func setParents(_ parents: [ParentChoice], of key: PeerKey) {
        registry.modifyTask(key.taskID) { task in
            task.dag.removeParents(of: key.peerID)
            var accepted: [String] = []
            for parent in parents where task.dag.addEdge(from: parent.peerID, to: key.peerID) {
                accepted.append(parent.peerID)
            }
            task.peers[key.peerID]?.parents = accepted
            task.waitingPeers.remove(key.peerID)
        }
    }

    /// Schedules a peer again (reschedule request, lost parent) and returns the actions.
    private mutating func reschedule(_ key: PeerKey, now: ContinuousClock.Instant) -> [SchedulerAction] {
        switch schedule(key, now: now) {
        case .parents(let plan):
            return [.send(key, .normalTask(plan))]
        case .backToSource(let reason):
            return [.send(key, .needBackToSource(reason: reason))]
        case .wait(let trigger):
            return trigger.map { [$0] } ?? []
        case .fail(let reason):
            _ = applyPeerEvent(.downloadFailed, to: key, now: now)
            return [.fail(key, reason: reason)] + afterDetach(key, now: now)
        }
    }

    /// Tries again every waiting peer of the task; peers still without parents keep waiting.
    package mutating func scheduleWaitingPeers(taskID: String, now: ContinuousClock.Instant) -> [SchedulerAction] {
        guard let waiting = registry.task(taskID)?.waitingPeers.sorted(), !waiting.isEmpty else { return [] }
        var actions: [SchedulerAction] = []
        for peerID in waiting {
            actions += reschedule(PeerKey(taskID: taskID, peerID: peerID), now: now)
        }
        return actions
    }

    /// Offers a peer that just became able to serve (its first piece) as an extra parent to the task's peers
    /// that download from parents and have fewer than the parent limit, fewest parents first. Each gets a
    /// `NormalTask` with its parents (the daemon opens the ones it does not know yet). Without this, peers that
    /// register together only ever get the first holders — a star around the seed instead of a swarm.
    /// Bounded: a child takes at most the parent limit; the selector's filters apply (`acyclic` among them).
    private mutating func offerAsParent(_ key: PeerKey) -> [SchedulerAction] {
        guard let task = registry.task(key.taskID), task.peers[key.peerID]?.canServe == true,
            !task.untrustedReaders.contains(key.peerID)
        else { return [] }
        let hosts = registry.hosts
        let children = task.peers.values.filter { child in
            guard child.id != key.peerID, child.parents.count < selector.parentLimit,
                !child.parents.contains(key.peerID), !task.backToSourcePeers.contains(child.id)
            else { return false }
            return child.state == .receivedNormal || child.state == .running
        }.sorted { ($0.parents.count, $0.id) < ($1.parents.count, $1.id) }
        var actions: [SchedulerAction] = []
        for child in children {
            guard let current = registry.task(key.taskID), let child = current.peers[child.id],
                selector.choice(key.peerID, for: child, in: current, hosts: hosts) != nil
            else { continue }
            var added = false
            registry.modifyTask(key.taskID) { task in
                guard task.dag.addEdge(from: key.peerID, to: child.id) else { return }
                task.peers[child.id]?.parents.append(key.peerID)
                added = true
            }
            guard added, let updated = registry.task(key.taskID), let updatedChild = updated.peers[child.id] else {
                continue
            }
            let parents = updatedChild.parents.compactMap {
                selector.choice($0, for: updatedChild, in: updated, hosts: hosts, filtered: false)
            }
            actions.append(
                .send(
                    PeerKey(taskID: key.taskID, peerID: child.id),
                    .normalTask(makeNormalPlan(parents: parents, task: updated))))
        }
        return actions
    }

    // MARK: Reports

    /// Applies a report from the peer's stream.
    package mutating func handle(
        _ event: PeerEvent, from key: PeerKey, now: ContinuousClock.Instant
    ) -> [SchedulerAction] {
        guard let task = registry.task(key.taskID), let peer = task.peers[key.peerID] else {
            return [.reject(key, code: .notFound, message: "peer '\(key.peerID)' of task '\(key.taskID)' is unknown")]
        }
        registry.modifyTask(key.taskID) { task in
            task.lastActivity = now
            task.peers[key.peerID]?.lastProgress = now
        }
        switch event {
        case .started:
            // An origin reader that also heard of parents keeps reading; its stream stays open.
            if task.backToSourcePeers.contains(key.peerID), peer.state == .backToSource || peer.state == .receivedNormal
            {
                return []
            }
            if let rejection = applyPeerEvent(.download, to: key, now: now) { return [rejection] }
            applyTaskEvent(.download, to: key.taskID)
            return []

        case .backToSourceStarted(let contentLength, let pieceLength, let header):
            if let rejection = applyPeerEvent(.downloadBackToSource, to: key, now: now) { return [rejection] }
            applyTaskEvent(.download, to: key.taskID)
            // Only a reader the scheduler chose describes the task; its origin headers replace (not grow) the
            // task's, and are bounded by the service.
            if task.trustedReaders.contains(key.peerID) {
                registry.modifyTask(key.taskID) { task in
                    task.learnLengths(contentLength: contentLength, pieceLength: pieceLength)
                    if !header.isEmpty { task.responseHeader = header }
                }
            }
            return scheduleWaitingPeers(taskID: key.taskID, now: now)

        case .pieceFinished(let number, let parentID, let length, let cost, let digest):
            let isFirstPiece = peer.finishedPieceCount == 0
            // A piece a vouched seed holds in its own cache (no parent: it read it from the origin earlier, e.g.
            // before this scheduler started) describes the task; the first digest of a piece wins.
            let fromSeedCache = parentID == nil && registry.host(peer.hostID)?.isSeed == true
            var parentHostID: String?
            registry.modifyTask(key.taskID) { task in
                task.peers[key.peerID]?.finishedPieces.insert(number)
                if let parentID, task.peers[parentID] != nil {
                    task.peers[key.peerID]?.pieceCosts.record(cost)
                    task.peers[parentID]?.lastProgress = now
                    parentHostID = task.peers[parentID]?.hostID
                }
                // The digest of a piece fetched from a parent is never learnt: it only echoes what the peer
                // verified against, or is an attacker's.
                if fromSeedCache { task.learnDigest(digest, forPiece: number) }
            }
            if let parentHostID {
                registry.modifyHost(parentHostID) { $0.uploadSuccessCount += 1 }
                selector.strategy.recordTransfer(
                    parentHostID: parentHostID, childHostID: peer.hostID, bytes: length, duration: cost)
            }
            return isFirstPiece ? scheduleWaitingPeers(taskID: key.taskID, now: now) + offerAsParent(key) : []

        case .pieceBackToSourceFinished(let number, _, _, let digest):
            let isFirstPiece = peer.finishedPieceCount == 0
            let trusted = task.trustedReaders.contains(key.peerID)
            registry.modifyTask(key.taskID) { task in
                task.peers[key.peerID]?.finishedPieces.insert(number)
                if trusted { task.learnDigest(digest, forPiece: number) }
            }
            return isFirstPiece ? scheduleWaitingPeers(taskID: key.taskID, now: now) + offerAsParent(key) : []

        case .pieceFailed(_, let parentID, let isTemporary, let isCorrupted):
            if let parentHostID = task.peers[parentID]?.hostID {
                registry.modifyHost(parentHostID) { $0.uploadFailureCount += 1 }
            }
            guard !isTemporary else { return [] }
            registry.modifyTask(key.taskID) { task in
                // Bytes that fail verification will fail for every child: nobody gets this parent again.
                if isCorrupted { task.peers[parentID]?.servesCorruptData = true }
                task.peers[key.peerID]?.blocklist.insert(parentID)
                task.peers[key.peerID]?.parents.removeAll { $0 == parentID }
                task.peers[key.peerID]?.rescheduleCount += 1
                task.dag.removeEdge(from: parentID, to: key.peerID)
            }
            return reschedule(key, now: now)

        case .reschedule(let blocklist):
            registry.modifyTask(key.taskID) { task in
                task.peers[key.peerID]?.blocklist.formUnion(blocklist)
                task.peers[key.peerID]?.rescheduleCount += 1
            }
            return reschedule(key, now: now)

        case .finished(let contentLength, let pieceCount), .backToSourceFinished(let contentLength, let pieceCount):
            if task.trustedReaders.contains(key.peerID) {
                registry.modifyTask(key.taskID) { task in
                    task.learnLengths(contentLength: contentLength, pieceLength: nil, pieceCount: pieceCount)
                }
            }
            if let rejection = applyPeerEvent(.downloadSucceeded, to: key, now: now) { return [rejection] }
            return scheduleWaitingPeers(taskID: key.taskID, now: now)

        case .backToSourceFailed(_, let originError):
            let isTrustedReader = task.trustedReaders.contains(key.peerID)
            if let rejection = applyPeerEvent(.downloadFailed, to: key, now: now) { return [rejection] }
            // Only a reader the scheduler trusts may fail the task for everyone with the origin's error.
            guard let originError, isTrustedReader else {
                return afterDetach(key, now: now) + scheduleWaitingPeers(taskID: key.taskID, now: now)
            }
            return failTask(key.taskID, with: originError, reporter: key)

        case .failed:
            if let rejection = applyPeerEvent(.downloadFailed, to: key, now: now) { return [rejection] }
            return afterDetach(key, now: now)
        }
    }

    /// A peer leaves its task (`LeavePeer`): it is removed and its children are scheduled again.
    package mutating func leavePeer(_ key: PeerKey, now: ContinuousClock.Instant) -> RemovalOutcome {
        if let rejection = applyPeerEvent(.leave, to: key, now: now) {
            return RemovalOutcome(removed: RemovedResources(), actions: [rejection])
        }
        let removed = registry.removePeer(key)
        var actions = afterRemoval(removed, now: now)
        actions += scheduleWaitingPeers(taskID: key.taskID, now: now)
        return RemovalOutcome(removed: removed, actions: actions)
    }

    /// A triggered seed host could not start the task: forget the trigger and schedule the waiting peers
    /// again (another seed, or a first registrant, reads the origin).
    package mutating func seedTriggerFailed(
        taskID: String, hostID: String, now: ContinuousClock.Instant
    ) -> [SchedulerAction] {
        registry.modifyTask(taskID) { task in
            task.triggeredSeedHosts.remove(hostID)
            task.failedSeedHosts.insert(hostID)
        }
        return scheduleWaitingPeers(taskID: taskID, now: now)
    }

    /// Stores the whole content of a tiny task, once the service fetched it from a peer that holds it.
    package mutating func learnTinyContent(_ content: [UInt8], taskID: String) {
        registry.modifyTask(taskID) { task in
            guard Int64(content.count) <= SchedulerTask.tinyLimit else { return }
            if task.contentLength == nil { task.contentLength = Int64(content.count) }
            if task.contentLength == Int64(content.count) { task.tinyContent = content }
        }
    }

    // MARK: Digests

    /// Task IDs with trusted digests not pushed yet, or pushed to their first recipients only.
    package var tasksWithPendingDigests: [String] {
        registry.tasks.values.filter { !$0.pendingDigestBatch.isEmpty || !$0.stagedDigests.isEmpty }.map(\.id).sorted()
    }

    /// The peers that get `PieceDigests`, sorted: downloading from parents, answered, not waiting.
    private static func digestRecipients(of task: SchedulerTask) -> [String] {
        task.downloadingPeerIDs.filter { id in !task.waitingPeers.contains(id) && task.peers[id]?.state != .pending }
    }

    /// Drains every task's pending digests as `PieceDigests` sends (the service calls this every ≤ 100 ms).
    ///
    /// With ``firstDigestRecipients`` > 0, a fresh digest is staged: it goes to that many downloading peers first
    /// — a different few for each piece, so each fetches different pieces from the origin reader, and to peers
    /// that register later while the piece has fewer first recipients than that; a peer is first recipient of at
    /// most ``firstDigestBacklog`` staged pieces at once, so pieces leave the seed one after another rather than
    /// all at once — and to every other downloading peer once a peer other than an origin reader holds the piece
    /// (it is then a second source) or ``digestReleaseAfter`` after its first recipients got it. Peers scheduled meanwhile get only released digests with their parents
    /// (`makeNormalPlan`). With 0, every downloading peer gets every digest at once.
    package mutating func drainDigestBatches(now: ContinuousClock.Instant = .now) -> [SchedulerAction] {
        var actions: [SchedulerAction] = []
        for taskID in tasksWithPendingDigests {
            guard let task = registry.task(taskID) else { continue }
            let recipients = Self.digestRecipients(of: task)
            var perRecipient: [String: [UInt32: String]] = [:]
            var staged = task.stagedDigests
            let first = firstDigestRecipients
            for (number, digest) in task.pendingDigestBatch {
                if first == 0 {
                    for peer in recipients { perRecipient[peer, default: [:]][number] = digest }
                } else if staged[number] == nil {
                    staged[number] = StagedDigest(digest: digest, since: now, sentTo: [])
                }
            }
            // A second source: a peer that neither reads the origin nor runs on a seed host (a seed that finished
            // reading is no longer an origin reader, but it is still the one whose upload is scarce).
            let secondSources = task.peers.values.filter { peer in
                !task.backToSourcePeers.contains(peer.id) && registry.host(peer.hostID)?.isSeed != true
                    && !task.untrustedReaders.contains(peer.id)
            }
            // Release first: held pieces free their first recipients' backlog for new assignments.
            var backlog: [String: Int] = [:]
            var assignable: [UInt32] = []
            for number in staged.keys.sorted() {
                guard var entry = staged[number] else { continue }
                // A first recipient that left the task no longer counts: the piece gets another.
                if entry.sentTo.contains(where: { task.peers[$0] == nil }) {
                    entry.sentTo = entry.sentTo.filter { task.peers[$0] != nil }
                    staged[number] = entry
                }
                let isHeld = secondSources.contains { $0.finishedPieces.contains(number) }
                if isHeld || (!entry.sentTo.isEmpty && now - entry.since >= digestReleaseAfter) {
                    for peer in recipients where !entry.sentTo.contains(peer) {
                        perRecipient[peer, default: [:]][number] = entry.digest
                    }
                    staged[number] = nil
                    continue
                }
                for peer in entry.sentTo { backlog[peer, default: 0] += 1 }
                if entry.sentTo.count < first { assignable.append(number) }
            }
            // More first recipients, lowest pieces first: the next peers after each piece's own starting point
            // that have room in their backlog.
            for number in assignable where !recipients.isEmpty {
                guard var entry = staged[number] else { continue }
                let start = Int(number % UInt32(recipients.count))
                for offset in 0..<recipients.count where entry.sentTo.count < first {
                    let peer = recipients[(start + offset) % recipients.count]
                    guard backlog[peer, default: 0] < firstDigestBacklog, !entry.sentTo.contains(peer) else {
                        continue
                    }
                    if entry.sentTo.isEmpty { entry.since = now }
                    entry.sentTo.insert(peer)
                    backlog[peer, default: 0] += 1
                    perRecipient[peer, default: [:]][number] = entry.digest
                }
                staged[number] = entry
            }
            registry.modifyTask(taskID) { task in
                task.pendingDigestBatch = [:]
                task.stagedDigests = staged
            }
            for peer in recipients {
                guard let digests = perRecipient[peer] else { continue }
                let batch = DigestBatch(
                    taskID: taskID, pieceDigests: digests, contentLength: task.contentLength,
                    pieceCount: task.pieceCount)
                actions.append(.send(PeerKey(taskID: taskID, peerID: peer), .pieceDigests(batch)))
            }
        }
        return actions
    }

    // MARK: Garbage collection

    /// Runs the registry's GC and schedules the peers that lost their parents.
    package mutating func collectGarbage(now: ContinuousClock.Instant) -> RemovalOutcome {
        let removed = registry.collectGarbage(now: now)
        return RemovalOutcome(removed: removed, actions: afterRemoval(removed, now: now))
    }

    // MARK: Helpers

    /// Applies a peer event and performs the state machine's owner actions; returns a rejection when invalid.
    private mutating func applyPeerEvent(
        _ event: PeerStateMachine.Event, to key: PeerKey, now: ContinuousClock.Instant
    ) -> SchedulerAction? {
        // A peer reading the origin on its own (or untrusted) finishing does not complete the task for others.
        let isUntrustedReader =
            registry.task(key.taskID).map {
                $0.untrustedReaders.contains(key.peerID)
                    || (!$0.trustedReaders.contains(key.peerID) && $0.peers[key.peerID]?.state == .backToSource)
            } ?? false
        guard let actions = registry.modifyTask(key.taskID, { $0.peers[key.peerID]?.stateMachine.handle(event) }),
            let actions
        else {
            return .reject(key, code: .notFound, message: "peer '\(key.peerID)' of task '\(key.taskID)' is unknown")
        }
        for action in actions {
            switch action {
            case .occupyBackToSourceSlot:
                registry.modifyTask(key.taskID) { task in
                    task.backToSourcePeers.insert(key.peerID)
                    task.waitingPeers.remove(key.peerID)
                    // Reading the origin without the scheduler's word: nothing it says is trusted.
                    if !task.trustedReaders.contains(key.peerID) { task.untrustedReaders.insert(key.peerID) }
                }
            case .releaseBackToSourceSlot:
                registry.modifyTask(key.taskID) { $0.backToSourcePeers.remove(key.peerID) }
            case .markTaskSucceeded:
                registry.modifyTask(key.taskID) { $0.waitingPeers.remove(key.peerID) }
                if !isUntrustedReader { applyTaskEvent(.downloadSucceeded, to: key.taskID) }
            case .detachFromParentsOfChildren:
                registry.modifyTask(key.taskID) { task in
                    task.waitingPeers.remove(key.peerID)
                    task.backToSourcePeers.remove(key.peerID)
                }
            case .rejected(let invalid):
                return .reject(key, code: .failedPrecondition, message: invalid.description)
            }
        }
        return nil
    }

    private mutating func applyTaskEvent(_ event: TaskStateMachine.Event, to taskID: String) {
        let actions = registry.modifyTask(taskID) { $0.stateMachine.handle(event) } ?? []
        for action in actions {
            switch action {
            case .announceComplete:
                registry.modifyTask(taskID) { $0.originError = nil }
            case .resetOriginReaders:
                registry.modifyTask(taskID) { task in
                    task.backToSourcePeers = []
                    task.triggeredSeedHosts = []
                }
            case .failPeers, .rejected:
                // Failing the peers needs the origin error: done by `failTask`. An invalid task event (e.g.
                // `download` on a failed task from a late report) changes nothing.
                break
            }
        }
        if event == .download {
            registry.modifyTask(taskID) { task in
                if task.state == .running { task.originError = nil }
            }
        }
    }

    /// The origin failed the task: every other unfinished peer gets the origin's error.
    private mutating func failTask(
        _ taskID: String, with error: OriginError, reporter: PeerKey
    ) -> [SchedulerAction] {
        applyTaskEvent(.downloadFailed, to: taskID)
        guard let task = registry.task(taskID) else { return [] }
        registry.modifyTask(taskID) { task in
            task.originError = error
            task.waitingPeers = []
            task.backToSourcePeers = []
            task.triggeredSeedHosts = []
        }
        return task.peers.values
            .filter { $0.id != reporter.peerID && !$0.stateMachine.isFinished }
            .map(\.id).sorted()
            .map { .send(PeerKey(taskID: taskID, peerID: $0), .sourceError(error)) }
    }

    /// A failed peer stops serving: its child edges go, and children left with no parent are scheduled again.
    private mutating func afterDetach(_ key: PeerKey, now: ContinuousClock.Instant) -> [SchedulerAction] {
        let orphans =
            registry.modifyTask(key.taskID) { task -> [PeerKey] in
                let children = task.dag.removeChildren(of: key.peerID)
                for child in children { task.peers[child]?.parents.removeAll { $0 == key.peerID } }
                return children.sorted().map { PeerKey(taskID: key.taskID, peerID: $0) }
            } ?? []
        return rescheduleOrphans(orphans, now: now)
    }

    private mutating func afterRemoval(_ removed: RemovedResources, now: ContinuousClock.Instant) -> [SchedulerAction] {
        rescheduleOrphans(removed.orphanedChildren, now: now)
    }

    /// Schedules again the orphans that have no parent left and are still downloading from parents.
    private mutating func rescheduleOrphans(_ orphans: [PeerKey], now: ContinuousClock.Instant) -> [SchedulerAction] {
        var actions: [SchedulerAction] = []
        for key in orphans {
            guard let peer = registry.peer(key), peer.parents.isEmpty, !peer.stateMachine.isFinished,
                peer.state != .backToSource
            else { continue }
            actions += reschedule(key, now: now)
        }
        return actions
    }
}
