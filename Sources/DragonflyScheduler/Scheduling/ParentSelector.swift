package import DragonflyCore

/// A parent chosen for a child, with what the service needs to build a `ParentPeer`.
package struct ParentChoice: Sendable, Hashable {
    package var peerID: String
    package var hostID: String
    /// `<ip>:<port>` of the parent's Peer gRPC service.
    package var peerAddress: String
    /// `<ip>:<port>` of the parent's piece data plane.
    package var pieceDataAddress: String
    /// The parent already holds every piece.
    package var isFinished: Bool
    /// The strategy's score, 0...1.
    package var score: Double

    package init(
        peerID: String, hostID: String, peerAddress: String, pieceDataAddress: String, isFinished: Bool,
        score: Double
    ) {
        self.peerID = peerID
        self.hostID = hostID
        self.peerAddress = peerAddress
        self.pieceDataAddress = pieceDataAddress
        self.isFinished = isFinished
        self.score = score
    }
}

/// Chooses the parents of a child among the peers of its task (DESIGN §6, "Scheduler rules"): sample up to
/// ``candidateSampleLimit`` peers, drop the ineligible ones (see ``Rejection``), score the rest with the
/// strategy and keep the best ``parentLimit``.
package struct ParentSelector: Sendable {
    /// Why a candidate cannot be a parent of the child.
    package enum Rejection: Sendable, Hashable, CaseIterable {
        /// The candidate is the child.
        case isSelf
        /// The candidate runs on the child's host.
        case sameHost
        /// The child blocklisted the candidate.
        case blocklisted
        /// The candidate cannot serve: failed, left, or not started and holding nothing.
        case cannotServe
        /// The candidate's last piece cost is an outlier (see ``PieceCostWindow``).
        case badParent
        /// The candidate's host is unknown to the scheduler.
        case unknownHost
        /// The candidate's host does not share pieces.
        case sharingDisabled
        /// The candidate's host has no free upload slot.
        case noFreeUploadSlot
        /// The edge candidate → child would close a cycle in the task's DAG.
        case wouldCreateCycle
    }

    package var strategy: any SchedulingStrategy
    /// Peers sampled per decision.
    package var candidateSampleLimit: Int
    /// Parents handed to a child.
    package var parentLimit: Int
    /// Whether an edge that would close a cycle among the task's peers is refused (`scheduling.acyclic`).
    package var isAcyclic: Bool

    package init(
        strategy: any SchedulingStrategy, candidateSampleLimit: Int = 40, parentLimit: Int = 8, isAcyclic: Bool = false
    ) {
        self.strategy = strategy
        self.candidateSampleLimit = max(candidateSampleLimit, 1)
        self.parentLimit = max(parentLimit, 1)
        self.isAcyclic = isAcyclic
    }

    package init(strategy: any SchedulingStrategy, config: SchedulerConfig.SchedulingConfig) {
        self.init(
            strategy: strategy, candidateSampleLimit: config.candidateSampleLimit, parentLimit: config.parentLimit,
            isAcyclic: config.acyclic)
    }

    /// Why `candidateID` cannot be a parent of `child`, or `nil` when it can.
    package func rejection(
        of candidateID: String,
        for child: SchedulerPeer,
        in task: SchedulerTask,
        hosts: [String: PeerHost]
    ) -> Rejection? {
        if candidateID == child.id { return .isSelf }
        guard let candidate = task.peers[candidateID], candidate.canServe else { return .cannotServe }
        if candidate.hostID == child.hostID { return .sameHost }
        if child.blocklist.contains(candidateID) { return .blocklisted }
        if candidate.pieceCosts.isLastCostOutlier { return .badParent }
        guard let host = hosts[candidate.hostID] else { return .unknownHost }
        if host.isSharingDisabled { return .sharingDisabled }
        if host.freeUploadSlots <= 0 { return .noFreeUploadSlot }
        if isAcyclic && !task.dag.canAddEdge(from: candidateID, to: child.id) { return .wouldCreateCycle }
        return nil
    }

    /// Up to ``candidateSampleLimit`` peer IDs of the task, drawn without replacement with `generator`.
    /// The IDs are sorted first so a seeded generator gives the same sample on every run.
    package func sample(
        _ task: SchedulerTask, using generator: inout some RandomNumberGenerator
    ) -> [String] {
        var ids = task.peers.keys.sorted()
        let count = min(candidateSampleLimit, ids.count)
        for index in 0..<count {
            let pick = Int.random(in: index..<ids.count, using: &generator)
            ids.swapAt(index, pick)
        }
        return Array(ids.prefix(count))
    }

    /// The strategy's view of a candidate.
    package static func makeCandidate(
        _ peer: SchedulerPeer, host: PeerHost, task: SchedulerTask
    ) -> ParentCandidate {
        ParentCandidate(
            hostID: host.id,
            isSeed: host.isSeed,
            uploadSlots: host.uploadSlots,
            freeUploadSlots: host.freeUploadSlots,
            idleTxBandwidth: host.idleTxBandwidth,
            maxTxBandwidth: host.maxTxBandwidth,
            finishedPieces: peer.state == .succeeded
                ? max(peer.finishedPieceCount, task.pieceCount ?? 0)
                : peer.finishedPieceCount,
            totalPieces: task.pieceCount ?? 0,
            uploadSuccesses: host.uploadSuccessCount,
            uploadFailures: host.uploadFailureCount,
            idc: host.idc,
            location: host.location
        )
    }

    /// The best parents for `child`, best first: sampled, filtered, scored, at most ``parentLimit``.
    /// Ties keep the lower peer ID first so results are reproducible.
    package func selectParents(
        for child: SchedulerPeer,
        in task: SchedulerTask,
        hosts: [String: PeerHost],
        using generator: inout some RandomNumberGenerator
    ) -> [ParentChoice] {
        guard let childHost = hosts[child.hostID] else { return [] }
        let context = ChildContext(hostID: childHost.id, idc: childHost.idc, location: childHost.location)
        var scored: [ParentChoice] = []
        for candidateID in sample(task, using: &generator)
        where rejection(of: candidateID, for: child, in: task, hosts: hosts) == nil {
            if let choice = Self.choice(candidateID, in: task, hosts: hosts, strategy: strategy, context: context) {
                scored.append(choice)
            }
        }
        scored.sort { ($0.score, $1.peerID) > ($1.score, $0.peerID) }
        return Array(scored.prefix(parentLimit))
    }

    /// `candidateID` as a parent of `child`, scored; `nil` when a filter rejects it (unless `filtered` is
    /// false, for a parent the child already has) or its host is unknown.
    package func choice(
        _ candidateID: String, for child: SchedulerPeer, in task: SchedulerTask, hosts: [String: PeerHost],
        filtered: Bool = true
    ) -> ParentChoice? {
        guard !filtered || rejection(of: candidateID, for: child, in: task, hosts: hosts) == nil,
            let childHost = hosts[child.hostID]
        else { return nil }
        let context = ChildContext(hostID: childHost.id, idc: childHost.idc, location: childHost.location)
        return Self.choice(candidateID, in: task, hosts: hosts, strategy: strategy, context: context)
    }

    private static func choice(
        _ candidateID: String, in task: SchedulerTask, hosts: [String: PeerHost], strategy: any SchedulingStrategy,
        context: ChildContext
    ) -> ParentChoice? {
        guard let peer = task.peers[candidateID], let host = hosts[peer.hostID] else { return nil }
        return ParentChoice(
            peerID: peer.id,
            hostID: host.id,
            peerAddress: host.peerAddress,
            pieceDataAddress: host.pieceDataAddress,
            isFinished: peer.state == .succeeded,
            score: strategy.score(makeCandidate(peer, host: host, task: task), for: context)
        )
    }
}
