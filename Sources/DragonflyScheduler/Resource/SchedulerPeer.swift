/// One download attempt of one task on one host, as the scheduler tracks it.
package struct SchedulerPeer: Sendable, Hashable {
    /// `<ip>-<hostname>-<uuid>`.
    package let id: String
    package let hostID: String
    package let taskID: String
    package var stateMachine: PeerStateMachine
    package var finishedPieces: PieceBitmap
    /// Current parents, best first.
    package var parents: [String]
    /// Parents this peer must not be given again.
    package var blocklist: Set<String>
    /// Costs of the pieces this peer fetched, for the bad-parent rule when it serves others.
    package var pieceCosts: PieceCostWindow
    /// How often the peer asked for new parents (reschedules and permanent piece failures).
    package var rescheduleCount: Int
    /// A child reported bytes from this peer that failed verification: it is never handed out as a parent of
    /// this task again.
    package var servesCorruptData: Bool
    /// The download asked never to read the origin.
    package var isBackToSourceDisabled: Bool
    /// The download asked to read the origin directly.
    package var wantsBackToSource: Bool
    package let registeredAt: ContinuousClock.Instant
    /// Last registration, state change or finished piece; the GC's clock for this peer.
    package var lastProgress: ContinuousClock.Instant

    package init(
        id: String,
        hostID: String,
        taskID: String,
        state: PeerStateMachine.State = .pending,
        finishedPieces: PieceBitmap = PieceBitmap(),
        isBackToSourceDisabled: Bool = false,
        wantsBackToSource: Bool = false,
        now: ContinuousClock.Instant
    ) {
        self.id = id
        self.hostID = hostID
        self.taskID = taskID
        self.stateMachine = PeerStateMachine(state: state)
        self.finishedPieces = finishedPieces
        self.parents = []
        self.blocklist = []
        self.pieceCosts = PieceCostWindow()
        self.rescheduleCount = 0
        self.servesCorruptData = false
        self.isBackToSourceDisabled = isBackToSourceDisabled
        self.wantsBackToSource = wantsBackToSource
        self.registeredAt = now
        self.lastProgress = now
    }

    package var state: PeerStateMachine.State { stateMachine.state }
    package var finishedPieceCount: Int { finishedPieces.count }

    /// Whether the peer can serve pieces to children: it reads the origin or downloads or finished
    /// successfully (parents serve while they download, DESIGN §5), or it was answered and already holds
    /// pieces (a re-registration after a scheduler failover).
    package var canServe: Bool {
        guard !servesCorruptData else { return false }
        return switch state {
        case .running, .backToSource, .succeeded: true
        case .receivedSmall, .receivedNormal: finishedPieceCount > 0
        case .pending, .receivedEmpty, .receivedTiny, .failed, .leave: false
        }
    }
}
