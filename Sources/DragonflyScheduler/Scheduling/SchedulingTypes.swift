package import DragonflyCore

/// A registration on an `AnnouncePeer` stream, converted from `RegisterPeerRequest` by the service.
package struct PeerRegistration: Sendable, Hashable {
    package var key: PeerKey
    package var hostID: String
    package var url: String
    /// Pieces the peer already holds (re-registration after a failover or restart).
    package var finishedPieces: [UInt32]
    package var contentLength: Int64?
    package var pieceLength: Int64?
    /// `Download.disable_back_to_source`.
    package var isBackToSourceDisabled: Bool
    /// `Download.need_back_to_source`.
    package var wantsBackToSource: Bool

    package init(
        key: PeerKey,
        hostID: String,
        url: String,
        finishedPieces: [UInt32] = [],
        contentLength: Int64? = nil,
        pieceLength: Int64? = nil,
        isBackToSourceDisabled: Bool = false,
        wantsBackToSource: Bool = false
    ) {
        self.key = key
        self.hostID = hostID
        self.url = url
        self.finishedPieces = finishedPieces
        self.contentLength = contentLength
        self.pieceLength = pieceLength
        self.isBackToSourceDisabled = isBackToSourceDisabled
        self.wantsBackToSource = wantsBackToSource
    }
}

/// The content of a `NormalTask` answer.
package struct NormalTaskPlan: Sendable, Hashable {
    /// Parents, best first.
    package var parents: [ParentChoice]
    package var contentLength: Int64?
    package var pieceLength: Int64
    package var pieceCount: Int?
    /// Trusted digests known so far; more follow in `PieceDigests`.
    package var pieceDigests: [UInt32: String]
    package var responseHeader: [String: String]

    package init(
        parents: [ParentChoice], contentLength: Int64?, pieceLength: Int64, pieceCount: Int?,
        pieceDigests: [UInt32: String], responseHeader: [String: String]
    ) {
        self.parents = parents
        self.contentLength = contentLength
        self.pieceLength = pieceLength
        self.pieceCount = pieceCount
        self.pieceDigests = pieceDigests
        self.responseHeader = responseHeader
    }
}

/// The content of a `SmallTask` answer: the one piece, its trusted digest and parents holding it.
package struct SmallTaskPlan: Sendable, Hashable {
    package var parents: [ParentChoice]
    package var contentLength: Int64
    package var pieceLength: Int64
    /// Trusted digest of piece 0.
    package var pieceDigest: String
    package var responseHeader: [String: String]

    package init(
        parents: [ParentChoice], contentLength: Int64, pieceLength: Int64, pieceDigest: String,
        responseHeader: [String: String]
    ) {
        self.parents = parents
        self.contentLength = contentLength
        self.pieceLength = pieceLength
        self.pieceDigest = pieceDigest
        self.responseHeader = responseHeader
    }
}

/// Trusted digests learnt since the last push (`PieceDigests`).
package struct DigestBatch: Sendable, Hashable {
    package var taskID: String
    package var pieceDigests: [UInt32: String]
    package var contentLength: Int64?
    package var pieceCount: Int?

    package init(taskID: String, pieceDigests: [UInt32: String], contentLength: Int64?, pieceCount: Int?) {
        self.taskID = taskID
        self.pieceDigests = pieceDigests
        self.contentLength = contentLength
        self.pieceCount = pieceCount
    }
}

/// How a registration is answered.
package enum RegisterDecision: Sendable, Hashable {
    /// Zero bytes: write an empty output.
    case emptyTask
    /// At most 128 bytes, carried inline.
    case tinyTask(content: [UInt8])
    /// One piece: fetch it from one of these parents.
    case smallTask(SmallTaskPlan)
    /// Fetch the pieces from these parents.
    case normalTask(NormalTaskPlan)
    /// Read the origin.
    case needBackToSource(reason: String)
    /// No parent yet (an origin reader or seed is being started); parents follow on the stream.
    case waitForParents
}

/// One message the scheduler sends on a peer's `AnnouncePeer` stream.
package enum PeerResponse: Sendable, Hashable {
    case emptyTask
    case tinyTask(content: [UInt8])
    case smallTask(SmallTaskPlan)
    case normalTask(NormalTaskPlan)
    case pieceDigests(DigestBatch)
    case needBackToSource(reason: String)
    case sourceError(OriginError)
}

/// Something the owner of a ``PeerScheduler`` must perform (send, trigger, close).
package enum SchedulerAction: Sendable, Hashable {
    /// Send a response on the peer's stream.
    case send(PeerKey, PeerResponse)
    /// Ask the seed host to download the task into its cache (Peer `DownloadTask` without output); report a
    /// failure with ``PeerScheduler/seedTriggerFailed(taskID:hostID:now:)``.
    case triggerSeedPeer(hostID: String, taskID: String, url: String)
    /// End the peer's stream: it cannot be scheduled any more.
    case fail(PeerKey, reason: String)
    /// The request was invalid for the peer's state or unknown; end the stream with this error.
    case reject(PeerKey, code: DragonflyError.Code, message: String)
}

/// The answer to a registration: the decision and every action to perform (including sending the answer).
package struct RegisterOutcome: Sendable, Hashable {
    package var decision: RegisterDecision
    package var actions: [SchedulerAction]
}

/// What a removal (leave, GC) took out and the follow-up actions for the peers it affected.
package struct RemovalOutcome: Sendable, Hashable {
    package var removed: RemovedResources
    package var actions: [SchedulerAction]
}

/// A report on a peer's `AnnouncePeer` stream after its registration.
package enum PeerEvent: Sendable, Hashable {
    /// `Started`.
    case started
    /// `BackToSourceStarted`.
    case backToSourceStarted(contentLength: Int64?, pieceLength: Int64?, responseHeader: [String: String])
    /// `PieceFinished`: fetched from `parentID` (nil when local) and verified.
    case pieceFinished(number: UInt32, parentID: String?, length: Int64, cost: Duration, digest: String)
    /// `PieceBackToSourceFinished`: read from the origin; its digest becomes trusted.
    case pieceBackToSourceFinished(number: UInt32, length: Int64, cost: Duration, digest: String)
    /// `PieceFailed`; `isCorrupted` when the parent's bytes failed verification (reason
    /// ``PieceFailureReason/corrupted``).
    case pieceFailed(number: UInt32, parentID: String, isTemporary: Bool, isCorrupted: Bool = false)
    /// `Reschedule`.
    case reschedule(blocklist: [String])
    /// `Finished`.
    case finished(contentLength: Int64, pieceCount: Int)
    /// `BackToSourceFinished`.
    case backToSourceFinished(contentLength: Int64, pieceCount: Int)
    /// `BackToSourceFailed`, with the origin's error answer when it gave one.
    case backToSourceFailed(reason: String, originError: OriginError?)
    /// `Failed`.
    case failed(reason: String)
}
