import AsyncHTTPClient
import DragonflyCore
import DragonflyProto
import DragonflyRPC
import DragonflySource
import DragonflyStorage
import GRPCCore
import Logging
import NIOCore
import Prometheus
import SwiftProtobuf
import Synchronization

/// One download of one task into the store (DESIGN §6 steps 3–6).
///
/// With schedulers, the run registers on an `AnnouncePeer` stream at the task's owner on the hash ring and
/// follows its answers: parents to fetch pieces from (``PieceDispatcher`` decides which piece from whom; each
/// piece is verified against the scheduler's trusted digest before it is stored, announced to this host's
/// children and reported), or `NeedBackToSource` (read the origin and report each piece with its digest, which
/// the scheduler then trusts and hands to children). A scheduler that dies mid-task hands over to the next one
/// on the ring, re-registering with the pieces already held. No scheduler reachable → the origin directly,
/// unless back-to-source is disabled.
struct TaskRun: Sendable {
    let request: TaskRequest
    let context: RunContext
    let hub: ProgressHub
    /// Pieces callers wait for (proxy ranges), fetched before the others.
    let urgent: UrgentPieces

    var taskID: TaskID { request.taskID }
    var store: PieceStore { context.store }

    func run() async throws {
        var logger = context.logger
        logger[metadataKey: "df.task.id"] = "\(taskID)"
        let candidates = context.schedulers.candidates(for: taskID)
        let wantsOrigin = request.download.needBackToSource
        var lastError: DragonflyError?
        if !candidates.isEmpty && !wantsOrigin {
            let identity = try await context.identity.value()
            for (address, client) in candidates {
                do {
                    let peer = PeerSession(
                        run: self, identity: identity, scheduler: address, client: client, logger: logger)
                    try await peer.run()
                    return
                } catch let error as SchedulerLost {
                    logger.info(
                        "scheduler unavailable; trying the next one",
                        metadata: ["df.scheduler": "\(address)", "df.error": "\(error.error.message)"])
                    lastError = error.error
                    try Task.checkCancellation()
                }
            }
        }
        let disabled = request.download.disableBackToSource || context.config.download.disableBackToSource
        if disabled {
            let reason = lastError.map { "no scheduler could serve it (\($0.message))" } ?? "no scheduler is configured"
            throw DragonflyError(
                code: .unavailable,
                message: "cannot download \(Redaction.url(request.url)): \(reason) and back-to-source is disabled")
        }
        logger.debug("downloading from the origin without a scheduler")
        var progress = RunProgress(taskID: taskID, hostID: context.identity.current?.hostID ?? "")
        let reader = OriginReader(run: self, report: nil)
        do {
            let length = try await reader.read(progress: &progress, openTask: true)
            _ = try await store.finishTask(taskID: taskID, contentLength: length)
        } catch {
            try? await store.closeTask(taskID: taskID)
            context.announcer.finish(taskID: taskID, contentLength: progress.contentLength)
            throw error
        }
        context.announcer.finish(taskID: taskID, contentLength: progress.contentLength)
        hub.publish(progress.message(done: true))
    }
}

/// The run's scheduler failed before the task finished: try the next one.
struct SchedulerLost: Error {
    var error: DragonflyError
}

/// Counters reported in `DownloadProgress`.
struct RunProgress: Sendable {
    var taskID: TaskID
    var hostID: String
    var peerID = ""
    var contentLength: Int64?
    var pieceLength: Int64 = 0
    var pieceCount: Int?
    var completedBytes: Int64 = 0
    var fromPeers: Int64 = 0
    var fromOrigin: Int64 = 0
    var fromLocal: Int64 = 0
    var headers: [String: String] = [:]
    var lastPiece: Dragonfly_V1_Piece?

    func message(done: Bool = false) -> Dragonfly_V1_DownloadProgress {
        var message = Dragonfly_V1_DownloadProgress()
        message.taskID = taskID.rawValue
        message.peerID = peerID
        message.hostID = hostID
        if let contentLength { message.contentLength = UInt64(contentLength) }
        message.pieceLength = UInt64(max(pieceLength, 0))
        if let pieceCount { message.pieceCount = UInt32(pieceCount) }
        message.bytesDownloaded = UInt64(max(completedBytes, 0))
        if let lastPiece { message.piece = lastPiece }
        message.bytesFromPeers = UInt64(max(fromPeers, 0))
        message.bytesFromOrigin = UInt64(max(fromOrigin, 0))
        message.bytesFromLocal = UInt64(max(fromLocal, 0))
        message.responseHeader = headers
        message.done = done
        return message
    }
}

/// Reads a task's missing pieces from the origin into the store; with `report`, tells the scheduler about it
/// (`BackToSourceStarted`, `PieceBackToSourceFinished` per piece) so it can hand the digests to children.
struct OriginReader: Sendable {
    let run: TaskRun
    /// Sends a report on the `AnnouncePeer` stream, when there is one.
    let report: (@Sendable (Dragonfly_V1_AnnouncePeerRequest.OneOf_Request) -> Void)?

    /// Stats the origin, opens the task in the store (when `openTask`; else the caller has it open with the same
    /// layout) and fetches every missing piece. Returns the content length (learnt at the end of the stream when
    /// the origin did not say). The caller finishes or closes the task.
    func read(progress: inout RunProgress, openTask: Bool) async throws -> Int64? {
        let context = run.context
        let request = run.request
        let store = context.store
        let sourceRequest = SourceRequest(url: request.url, headers: request.headers, timeout: request.timeout)
        let client: any SourceClient
        do {
            client = try context.registry.sourceClient(forURL: request.url)
        } catch {
            throw DragonflyError(code: .invalidArgument, message: error.message)
        }
        let metadata = try await client.stat(sourceRequest)
        if let range = request.range, let length = metadata.contentLength, range.start >= length {
            // Let the origin answer the unsatisfiable range itself, so the caller sees its 416.
            _ = try await client.fetch(sourceRequest, range: range)
            throw DragonflyError(
                code: .originError,
                message: "range \(range) is beyond the end (\(length) bytes) of \(Redaction.url(request.url))")
        }
        let pieceLength = request.pieceLength ?? PieceMath.pieceLength(forContentLength: metadata.contentLength)
        var headers: [String: String] = [:]
        if let etag = metadata.etag { headers["etag"] = etag }
        if let lastModified = metadata.lastModified { headers["last-modified"] = lastModified }
        if TaskPrivacy.carriesCredentials(request.download.requestHeader) {
            headers[TaskPrivacy.header] = "1"
        }
        for field in metadata.headers where field.name.lowercased() == "content-type" {
            headers["content-type"] = field.value
        }
        let heldBytes: Int64
        if openTask {
            heldBytes = try await store.openTask(
                id: run.taskID, url: request.url, contentLength: metadata.contentLength, pieceLength: pieceLength,
                headers: headers
            ).heldBytes
        } else {
            guard let info = store.taskInfo(taskID: run.taskID), info.pieceLength == pieceLength else {
                throw DragonflyError(
                    code: .failedPrecondition,
                    message:
                        "the origin's layout of \(Redaction.url(request.url)) differs from the one the peers announced")
            }
            heldBytes = info.heldBytes
            // Opened from the scheduler's layout: the privacy of this read is known only here.
            if headers[TaskPrivacy.header] != nil { store.mergeHeaders(taskID: run.taskID, headers) }
        }
        var started = Dragonfly_V1_BackToSourceStartedRequest()
        started.reason = "reading the origin"
        if let length = metadata.contentLength { started.contentLength = UInt64(length) }
        started.pieceLength = UInt64(pieceLength)
        started.responseHeader = headers
        report?(.backToSourceStarted(started))
        // Pieces already held (a resumed task, or a re-registration after the task's scheduler died): the
        // scheduler trusts this origin reader's digests, and learns those only from this report (DESIGN §4).
        if let report, let info = store.taskInfo(taskID: run.taskID),
            let digests = try? store.pieceDigests(taskID: run.taskID)
        {
            for piece in Dragonfly_V1_TaskInfo(stored: info, digests: digests).pieces {
                var held = Dragonfly_V1_PieceBackToSourceFinishedRequest()
                held.piece = piece
                report(.pieceBackToSourceFinished(held))
            }
        }

        progress.contentLength = metadata.contentLength
        progress.pieceLength = pieceLength
        progress.pieceCount = metadata.contentLength.map {
            PieceMath.pieceCount(contentLength: $0, pieceLength: pieceLength)
        }
        progress.headers = headers
        progress.completedBytes = heldBytes
        run.hub.publish(progress.message())

        let missing = try store.missingPieces(taskID: run.taskID)
        let needed: Set<Int>? = metadata.contentLength == nil ? nil : Set(missing)
        let shared = Mutex(progress)
        let fetcher = PieceFetcher(
            client: client,
            config: PieceFetcherConfig(
                concurrency: max(context.config.download.originConnections, 1),
                rateLimiter: request.download.hasRateLimit && request.download.rateLimit > 0
                    ? TokenBucket(rate: Int64(clamping: request.download.rateLimit), burst: 1 << 20) : nil,
                urgentPieces: { [urgent = run.urgent] in urgent.current },
                maximumContentLength: context.config.download.maxContentLength.bytes
            ),
            logger: context.logger
        )
        let summary = try await fetcher.fetch(
            sourceRequest, metadata: metadata, pieceLength: pieceLength, pieces: needed
        ) { [run, report] number, bytes in
            let clock = ContinuousClock()
            let begin = clock.now
            let length = bytes.readableBytes
            let digest = try await store.writePiece(taskID: run.taskID, number: number, bytes: bytes)
            context.metrics.downloadOriginBytes.increment(by: Int64(length))
            let offset = Int64(number) * pieceLength
            run.context.announcer.publish(
                taskID: run.taskID,
                piece: AnnouncedPiece(
                    number: number, offset: offset, length: Int64(length), digest: digest,
                    contentLength: metadata.contentLength,
                    isLast: metadata.contentLength.map { offset + Int64(length) >= $0 } ?? false))
            var piece = Dragonfly_V1_Piece()
            piece.number = UInt32(number)
            piece.offset = UInt64(offset)
            piece.length = UInt64(length)
            piece.digest = digest
            piece.cost = Google_Protobuf_Duration(rounding: clock.now - begin)
            piece.source = .origin
            var finished = Dragonfly_V1_PieceBackToSourceFinishedRequest()
            finished.piece = piece
            report?(.pieceBackToSourceFinished(finished))
            let snapshot = shared.withLock { state in
                state.completedBytes += Int64(length)
                state.fromOrigin += Int64(length)
                state.lastPiece = piece
                return state
            }
            run.hub.publish(snapshot.message())
        }
        let finalLength = metadata.contentLength ?? summary.contentLength
        progress = shared.withLock { $0 }
        progress.contentLength = finalLength
        if let finalLength {
            progress.pieceCount = PieceMath.pieceCount(contentLength: finalLength, pieceLength: pieceLength)
        }
        return finalLength
    }
}
