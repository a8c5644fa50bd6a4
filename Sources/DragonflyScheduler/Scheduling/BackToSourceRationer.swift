package import DragonflyCore

/// Rations reads from the origin (DESIGN §6): normally exactly one peer per task reads the origin — a seed
/// peer when a seed host exists (the scheduler triggers it), otherwise the first registrant — and at most
/// `backToSourceBase + peers / backToSourcePeersPerExtra` peers read it at once.
package struct BackToSourceRationer: Sendable, Hashable {
    /// What a peer without parents should do.
    package enum Decision: Sendable, Hashable {
        /// Read the origin.
        case backToSource(reason: String)
        /// Ask this seed host to download the task (the caller performs it) and wait for it as a parent.
        case triggerSeedPeer(hostID: String)
        /// Wait: an origin reader is at work or the origin may not be read now; parents follow.
        case waitForParents
        /// Give up: the peer exhausted its reschedules and may not read the origin.
        case fail(reason: String)
    }

    package var backToSourceBase: Int
    package var backToSourcePeersPerExtra: Int
    /// Reschedules of one peer before it is told to go back to the origin.
    package var retryLimit: Int

    package init(backToSourceBase: Int = 1, backToSourcePeersPerExtra: Int = 100, retryLimit: Int = 5) {
        self.backToSourceBase = max(backToSourceBase, 1)
        self.backToSourcePeersPerExtra = max(backToSourcePeersPerExtra, 1)
        self.retryLimit = max(retryLimit, 0)
    }

    package init(config: SchedulerConfig.SchedulingConfig) {
        self.init(
            backToSourceBase: config.backToSourceBase,
            backToSourcePeersPerExtra: config.backToSourcePeersPerExtra,
            retryLimit: config.retryLimit)
    }

    /// Origin readers allowed at once for a task with `peerCount` peers.
    package func limit(peerCount: Int) -> Int {
        backToSourceBase + max(peerCount, 0) / backToSourcePeersPerExtra
    }

    /// Whether one more peer of the task may read the origin now.
    package func hasFreeSlot(in task: SchedulerTask) -> Bool {
        task.activeReaders.count < limit(peerCount: task.peers.count)
    }

    /// Whether the peer used up its reschedules.
    package func isOverRetryLimit(_ peer: SchedulerPeer) -> Bool {
        peer.rescheduleCount > retryLimit
    }

    /// The seed host to trigger for the task: one not yet holding a peer of the task, not triggered already and
    /// whose trigger did not fail, most free upload slots first, then by ID; `nil` when there is none.
    package func seedHostToTrigger(for task: SchedulerTask, hosts: [String: PeerHost]) -> String? {
        let used = Set(task.peers.values.map(\.hostID))
        return hosts.values
            .filter { host in
                host.isSeed && !used.contains(host.id) && !task.triggeredSeedHosts.contains(host.id)
                    && !task.failedSeedHosts.contains(host.id)
            }
            .min { (-$0.freeUploadSlots, $0.id) < (-$1.freeUploadSlots, $1.id) }?
            .id
    }

    /// What `peer`, which has no eligible parent (or asked for the origin), should do.
    package func decide(
        for peer: SchedulerPeer, in task: SchedulerTask, hosts: [String: PeerHost]
    ) -> Decision {
        let mayRead = !peer.isBackToSourceDisabled
        if isOverRetryLimit(peer) {
            guard mayRead else {
                return .fail(reason: "rescheduled \(peer.rescheduleCount) times and back-to-source is disabled")
            }
            guard hasFreeSlot(in: task) else {
                return .fail(reason: "rescheduled \(peer.rescheduleCount) times and the origin readers are at limit")
            }
            return .backToSource(reason: "rescheduled more than \(retryLimit) times")
        }
        if peer.wantsBackToSource && mayRead && hasFreeSlot(in: task) {
            return .backToSource(reason: "the download asked to read the origin")
        }
        if hosts[peer.hostID]?.isSeed == true && mayRead && hasFreeSlot(in: task) {
            return .backToSource(reason: "seed peer reads the origin")
        }
        if !task.activeReaders.isEmpty || !task.triggeredSeedHosts.isEmpty {
            return .waitForParents
        }
        if task.state == .succeeded && task.peers.values.contains(where: { $0.state == .succeeded }) {
            // A complete copy exists; its holder is busy or filtered for now.
            return .waitForParents
        }
        if let seed = seedHostToTrigger(for: task, hosts: hosts) {
            return .triggerSeedPeer(hostID: seed)
        }
        guard mayRead, hasFreeSlot(in: task) else { return .waitForParents }
        return .backToSource(reason: "first registrant of the task")
    }
}
