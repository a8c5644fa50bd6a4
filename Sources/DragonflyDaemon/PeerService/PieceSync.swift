import DragonflyCore
import DragonflyProto
import DragonflyStorage
import GRPCCore
import Logging
import ServiceLifecycle

/// One `SyncPieces` stream: the pieces this host holds of a task, then each new one as it is stored
/// (DESIGN §5).
///
/// It subscribes to the ``PieceAnnouncer`` **first**, then lists the store, so no piece stored in between is
/// missed; every piece is sent once (pieces are de-duplicated across the listing and the announcements). The
/// store is listed again when the subscription overflowed, when the conductor finishes the task, and every
/// ``PeerServiceConfiguration/refreshInterval`` while nothing is announced.
///
/// The stream ends normally
/// - when every wanted piece was sent (all pieces, or all `interested` ones); `is_last` is set on the final
///   message when this host then holds the whole task;
/// - when the conductor finishes the task or its download stopped (not complete, no writer) or it was
///   deleted: no more pieces will come from here;
/// - on graceful shutdown.
///
/// A task this host does not know and that nothing announces within
/// ``PeerServiceConfiguration/unknownTaskWait`` fails with NOT_FOUND; an interested piece number at or beyond
/// the task's piece count with OUT_OF_RANGE.
struct PieceSync {
    let taskID: TaskID
    let interested: Set<Int>
    let store: PieceStore
    let announcer: PieceAnnouncer
    let configuration: PeerServiceConfiguration
    let logger: Logger
    /// Whether the caller may learn of the task's pieces (a private task needs the caller's transfer grant).
    let authorize: @Sendable (StoredTaskInfo) -> Bool

    /// What has been sent and what is known of the task.
    private struct Progress {
        var sent: Set<Int> = []
        /// Piece count once known.
        var count: Int?
        var contentLength: Int64?
        /// This host holds every piece.
        var holdsAll = false
        /// The task was seen in the store or announced.
        var seen = false
    }

    init(
        taskID: TaskID,
        interested: [Int],
        store: PieceStore,
        announcer: PieceAnnouncer,
        configuration: PeerServiceConfiguration,
        logger: Logger,
        authorize: @escaping @Sendable (StoredTaskInfo) -> Bool = { _ in true }
    ) {
        self.authorize = authorize
        self.taskID = taskID
        self.interested = Set(interested)
        self.store = store
        self.announcer = announcer
        self.configuration = configuration
        self.logger = logger
    }

    /// Runs the stream, handing each message to `send`.
    func run(send: (Dragonfly_V1_PieceAvailable) async throws -> Void) async throws {
        let subscription = try announcer.subscribe(taskID: taskID)
        defer { subscription.cancel() }
        let clock = ContinuousClock()
        let unknownDeadline = clock.now.advanced(by: configuration.unknownTaskWait)
        var progress = Progress()
        var needsListing = true
        logger.debug("piece sync started")
        defer { logger.debug("piece sync ended", metadata: ["df.piece.count": "\(progress.sent.count)"]) }

        while true {
            if needsListing {
                needsListing = false
                switch try await list(&progress, send: send) {
                case .done: return
                case .waiting: break
                case .absent:
                    if progress.seen { return }  // deleted
                    if clock.now >= unknownDeadline {
                        throw DragonflyError(code: .notFound, message: "task \(taskID) is not on this host")
                    }
                }
            }
            let wait =
                progress.seen
                ? configuration.refreshInterval
                : min(configuration.refreshInterval, max(clock.now.duration(to: unknownDeadline), .milliseconds(1)))
            let event = try await subscription.next(timeout: wait)
            // Checked at least every refresh interval, well within the shutdown drain budget.
            if Task.isShuttingDownGracefully { return }
            switch event {
            case .piece(let piece):
                progress.seen = true
                if try await announce(piece, &progress, send: send) { return }
                // The task's final piece (or the one completing it): the store says whether all are held now.
                if piece.isLast { needsListing = true }
            case .overflowed, .timedOut:
                needsListing = true
            case .finished:
                // No more pieces: send what the store holds and stop.
                switch try await list(&progress, send: send) {
                case .absent where !progress.seen:
                    throw DragonflyError(code: .notFound, message: "task \(taskID) is not on this host")
                default:
                    return
                }
            }
        }
    }

    private enum Listing {
        /// Everything wanted was sent, or nothing more will come.
        case done
        /// More pieces may come.
        case waiting
        /// The store does not hold the task.
        case absent
    }

    /// Sends the held pieces not sent yet and says whether the stream is over.
    private func list(
        _ progress: inout Progress,
        send: (Dragonfly_V1_PieceAvailable) async throws -> Void
    ) async throws -> Listing {
        guard let info = store.taskInfo(taskID: taskID), let held = try? store.finishedPieces(taskID: taskID) else {
            return .absent
        }
        try checkAuthorized(info)
        progress.seen = true
        progress.contentLength = info.contentLength ?? progress.contentLength
        progress.count = info.pieceCount ?? progress.count
        try checkInterested(progress.count)
        if info.isFinished || (progress.count.map { held.count >= $0 } ?? false) { progress.holdsAll = true }
        let fresh = held.filter { !progress.sent.contains($0) && (interested.isEmpty || interested.contains($0)) }
        if !fresh.isEmpty {
            let digests = (try? store.pieceDigests(taskID: taskID)) ?? []
            let pieces = fresh.compactMap { number -> AnnouncedPiece? in
                guard number < digests.count, let digest = digests[number] else { return nil }
                let span = Self.span(of: number, in: info)
                return AnnouncedPiece(
                    number: number, offset: span.offset, length: span.length, digest: digest,
                    contentLength: info.contentLength, isLast: false)
            }
            for (index, piece) in pieces.enumerated() {
                progress.sent.insert(piece.number)
                let last = index == pieces.count - 1 && isComplete(progress) && progress.holdsAll
                try await send(Self.message(piece, contentLength: progress.contentLength, isLast: last))
            }
        }
        if isComplete(progress) { return .done }
        // Not complete and nobody writing it: the download stopped, nothing more will come.
        if !info.isFinished && !info.isInUse { return .done }
        return .waiting
    }

    /// Sends an announced piece unless already sent; returns whether the stream is complete.
    private func announce(
        _ piece: AnnouncedPiece,
        _ progress: inout Progress,
        send: (Dragonfly_V1_PieceAvailable) async throws -> Void
    ) async throws -> Bool {
        if let info = store.taskInfo(taskID: taskID) { try checkAuthorized(info) }
        if let contentLength = piece.contentLength, progress.contentLength == nil,
            let info = store.taskInfo(taskID: taskID)
        {
            progress.contentLength = contentLength
            progress.count = PieceMath.pieceCount(contentLength: contentLength, pieceLength: info.pieceLength)
        }
        try checkInterested(progress.count)
        guard !progress.sent.contains(piece.number), interested.isEmpty || interested.contains(piece.number) else {
            return false
        }
        progress.sent.insert(piece.number)
        let complete = isComplete(progress)
        if complete && interested.isEmpty { progress.holdsAll = true }
        try await send(
            Self.message(piece, contentLength: progress.contentLength, isLast: complete && progress.holdsAll))
        return complete
    }

    private func isComplete(_ progress: Progress) -> Bool {
        if interested.isEmpty {
            guard let count = progress.count else { return false }
            return progress.sent.count >= count
        }
        return interested.isSubset(of: progress.sent)
    }

    private func checkAuthorized(_ info: StoredTaskInfo) throws {
        guard authorize(info) else {
            throw RPCError(
                code: .permissionDenied,
                message: "task \(taskID) is private; only peers its scheduler scheduled may sync it")
        }
    }

    private func checkInterested(_ count: Int?) throws {
        guard let count, let beyond = interested.first(where: { $0 >= count }) else { return }
        throw RPCError(
            code: .outOfRange, message: "task \(taskID) has \(count) pieces; interested piece \(beyond) is beyond it")
    }

    static func message(_ piece: AnnouncedPiece, contentLength: Int64?, isLast: Bool) -> Dragonfly_V1_PieceAvailable {
        var message = Dragonfly_V1_PieceAvailable()
        message.number = UInt32(clamping: piece.number)
        message.offset = UInt64(max(piece.offset, 0))
        message.length = UInt64(max(piece.length, 0))
        message.digest = piece.digest
        if let length = piece.contentLength ?? contentLength { message.contentLength = UInt64(max(length, 0)) }
        message.isLast = isLast
        return message
    }

    /// Offset and length of piece `number` of a stored task. While the content length is unknown every piece
    /// is taken to be full length.
    static func span(of number: Int, in info: StoredTaskInfo) -> (offset: Int64, length: Int64) {
        let offset = Int64(number) * info.pieceLength
        guard let contentLength = info.contentLength else { return (offset, info.pieceLength) }
        return (offset, max(0, min(info.pieceLength, contentLength - offset)))
    }
}
