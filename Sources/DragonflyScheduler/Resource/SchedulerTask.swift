package import DragonflyCore

/// An origin failure passed on to every peer of the task (`SourceError` of `common.proto`).
package struct OriginError: Sendable, Hashable {
    package var statusCode: Int
    package var header: [String: String]
    package var message: String
    package var isTemporary: Bool

    package init(statusCode: Int, header: [String: String] = [:], message: String, isTemporary: Bool = false) {
        self.statusCode = statusCode
        self.header = header
        self.message = message
        self.isTemporary = isTemporary
    }
}

/// A task at the scheduler: what is known of its content, its peers, their DAG and its origin readers.
package struct SchedulerTask: Sendable {
    /// Largest content carried inline in `TinyTask`.
    package static let tinyLimit: Int64 = SizeScope.tinyLimit

    /// 64 lowercase hex characters.
    package let id: String
    package var url: String
    /// Content length; `nil` while unknown.
    package var contentLength: Int64?
    /// Piece length; `nil` until a peer decided it.
    package var pieceLength: Int64?
    /// Number of pieces; `nil` while unknown.
    package var pieceCount: Int?
    /// Response headers of the origin.
    package var responseHeader: [String: String]
    /// Whole content of a tiny task, once someone handed it to the scheduler.
    package var tinyContent: [UInt8]?
    package var stateMachine: TaskStateMachine
    /// Digests learnt from the origin reader or seed hosts; the only ones children are given.
    package var trustedDigests: [UInt32: String]
    /// Trusted digests learnt since the last `PieceDigests` push.
    package var pendingDigestBatch: [UInt32: String]
    /// Digests pushed to a few downloading peers only, waiting to go to the rest (`scheduling.firstDigestRecipients`).
    package var stagedDigests: [UInt32: StagedDigest]
    /// The peers of the task by peer ID.
    package var peers: [String: SchedulerPeer]
    /// Parent → child edges between the peers.
    package var dag: PeerDAG
    /// Peers reading the origin now.
    package var backToSourcePeers: Set<String>
    /// The origin readers the scheduler chose and trusts: the peers it told to read the origin that run on a
    /// seed host the cluster vouches for, or on any host when no such seed can serve the task. Only their
    /// digests, lengths and origin headers are learnt (DESIGN §11).
    package var trustedReaders: Set<String>
    /// Peers that read the origin without the scheduler's trust (they started on their own, or run on a normal
    /// host while a vouched seed can serve the task), kept while the peer is: they take no origin-reader slot,
    /// make nobody wait, are never parents, and what they report never describes or completes the task.
    package var untrustedReaders: Set<String>
    /// Seed hosts asked to download the task and not yet registered as its peers.
    package var triggeredSeedHosts: Set<String>
    /// Seed hosts whose trigger failed; not asked again for this task.
    package var failedSeedHosts: Set<String>
    /// Peers left without parents, scheduled again when a parent appears.
    package var waitingPeers: Set<String>
    /// The origin's error, once it failed the task.
    package var originError: OriginError?
    package let createdAt: ContinuousClock.Instant
    /// Last peer activity; the GC's clock for this task.
    package var lastActivity: ContinuousClock.Instant

    package init(id: String, url: String, now: ContinuousClock.Instant) {
        self.id = id
        self.url = url
        self.contentLength = nil
        self.pieceLength = nil
        self.pieceCount = nil
        self.responseHeader = [:]
        self.tinyContent = nil
        self.stateMachine = TaskStateMachine()
        self.trustedDigests = [:]
        self.pendingDigestBatch = [:]
        self.stagedDigests = [:]
        self.peers = [:]
        self.dag = PeerDAG()
        self.backToSourcePeers = []
        self.trustedReaders = []
        self.untrustedReaders = []
        self.triggeredSeedHosts = []
        self.failedSeedHosts = []
        self.waitingPeers = []
        self.originError = nil
        self.createdAt = now
        self.lastActivity = now
    }

    package var state: TaskStateMachine.State { stateMachine.state }

    /// The size scope (DESIGN §4) from the content length and piece length known so far; nil while the
    /// content length is unknown.
    package var sizeScope: SizeScope? {
        guard let contentLength else { return nil }
        if let pieceCount, pieceCount == 1, contentLength > SizeScope.tinyLimit { return .small }
        return SizeScope(contentLength: contentLength, pieceLength: pieceLength ?? .max)
    }

    /// Records the length facts a peer learnt (origin stat, its own metadata); never overwrites known values
    /// with unknown ones. The piece count follows from content and piece length when not given.
    package mutating func learnLengths(contentLength: Int64?, pieceLength: Int64?, pieceCount: Int? = nil) {
        if let contentLength, contentLength >= 0 { self.contentLength = contentLength }
        if let pieceLength, pieceLength > 0 { self.pieceLength = pieceLength }
        if let pieceCount, pieceCount >= 0 {
            self.pieceCount = pieceCount
        } else if let length = self.contentLength, let piece = self.pieceLength, piece > 0 {
            self.pieceCount = Int((length + piece - 1) / piece)
        }
    }

    /// Adds a trusted digest and queues it for the next push; the first digest of a piece wins.
    /// Returns `false` when a different digest was already trusted for the piece (a conflict).
    @discardableResult
    package mutating func learnDigest(_ digest: String, forPiece number: UInt32) -> Bool {
        if let known = trustedDigests[number] { return known == digest }
        trustedDigests[number] = digest
        pendingDigestBatch[number] = digest
        return true
    }

    /// The origin readers that count: reading now, and not untrusted.
    package var activeReaders: Set<String> { backToSourcePeers.subtracting(untrustedReaders) }

    /// Whether a trusted digest is known for every piece: then any holder may serve, since children verify each
    /// piece against these digests and an untrusted reader's bytes either match them or are rejected.
    package var hasEveryTrustedDigest: Bool {
        guard let pieceCount else { return false }
        return trustedDigests.count >= pieceCount
    }

    /// Peers of the task that are still downloading (not finished, not reading the origin themselves).
    package var downloadingPeerIDs: [String] {
        peers.values.filter { !$0.stateMachine.isFinished && !backToSourcePeers.contains($0.id) }
            .map(\.id).sorted()
    }
}

/// A trusted digest pushed to a few of the task's downloading peers first.
package struct StagedDigest: Sendable, Hashable {
    package var digest: String
    /// When it went to the first recipients.
    package var since: ContinuousClock.Instant
    /// Peers that have it already.
    package var sentTo: Set<String>

    package init(digest: String, since: ContinuousClock.Instant, sentTo: Set<String>) {
        self.digest = digest
        self.since = since
        self.sentTo = sentTo
    }
}
