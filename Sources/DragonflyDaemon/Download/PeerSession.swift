import AsyncHTTPClient
import DragonflyCore
import DragonflyProto
import DragonflyRPC
import DragonflyStorage
import GRPCCore
import Logging
import NIOCore
import NIOHTTP1
import Prometheus
import SwiftProtobuf
import Synchronization

/// What happens during a ``PeerSession``; one loop consumes them in order, so its state needs no lock.
enum SessionEvent: Sendable {
    case response(Dragonfly_V1_AnnouncePeerResponse)
    case schedulerEnded((any Error)?)
    case available(parentID: String, piece: Dragonfly_V1_PieceAvailable)
    case syncEnded(parentID: String, error: (any Error)?)
    case progressed(PieceDispatcher.Request, bytes: Int)
    case pieceStored(PieceDispatcher.Request, length: Int64, digest: String, cost: Duration)
    case pieceFailed(PieceDispatcher.Request, DragonflyError, corrupted: Bool)
    case originDone(Result<Int64?, DragonflyError>)
    case tick
}

/// A parent as the scheduler described it.
struct ParentInfo: Sendable, Hashable {
    var peerID: String
    var hostID: String
    var peerAddress: String
    var pieceDataAddress: String
    /// A seed peer (`dragonfly cdn`).
    var isSeed = false
}

/// One registration of a task at one scheduler: the `AnnouncePeer` stream and the downloads it directs.
struct PeerSession: Sendable {
    let run: TaskRun
    let identity: HostIdentity
    let scheduler: String
    let client: SchedulerPool.Client
    let logger: Logger

    /// Sends piece requests and verifies, stores, announces and reports the pieces until the task is complete.
    ///
    /// - Throws: ``SchedulerLost`` when the scheduler fails or disappears before the task completes (the caller
    ///   tries the next one); the origin's error when the task's origin failed; other `DragonflyError`s.
    func run() async throws {
        let peerID = identity.makePeerID()
        let (events, eventSink) = AsyncStream.makeStream(of: SessionEvent.self)
        let (outbound, outboundSink) = AsyncStream.makeStream(of: Dragonfly_V1_AnnouncePeerRequest.self)
        let taskID = run.taskID
        let hostID = identity.hostID
        let send: @Sendable (Dragonfly_V1_AnnouncePeerRequest.OneOf_Request) -> Void = { request in
            var message = Dragonfly_V1_AnnouncePeerRequest()
            message.hostID = hostID
            message.taskID = taskID.rawValue
            message.peerID = peerID
            message.request = request
            outboundSink.yield(message)
        }
        var register = Dragonfly_V1_RegisterPeerRequest()
        register.download = run.request.download
        register.download.clearOutputPath()
        if let info = run.store.taskInfo(taskID: taskID) {
            if let held = try? run.store.finishedPieces(taskID: taskID) {
                register.finishedPieceNumbers = held.map { UInt32($0) }
            }
            if let length = info.contentLength { register.contentLength = UInt64(length) }
            register.pieceLength = UInt64(info.pieceLength)
        }
        send(.register(register))

        var options = CallOptions.defaults
        options.timeout = run.request.timeout ?? .seconds(2 * 3600)
        let rpc = Task { [client] in
            do {
                try await client.announcePeer(
                    options: options,
                    requestProducer: { writer in
                        for await message in outbound { try await writer.write(message) }
                    },
                    onResponse: { response in
                        for try await message in response.messages { eventSink.yield(.response(message)) }
                    }
                )
                eventSink.yield(.schedulerEnded(nil))
            } catch {
                eventSink.yield(.schedulerEnded(error))
            }
        }
        let ticker = Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: .milliseconds(250))
                eventSink.yield(.tick)
            }
        }
        let state = SessionState(session: self, peerID: peerID, send: send, events: eventSink)
        do {
            for await event in events {
                if try await state.handle(event) { break }
            }
            try Task.checkCancellation()
        } catch {
            state.cancelAll()
            ticker.cancel()
            outboundSink.finish()
            rpc.cancel()
            await state.closeIfOpen()
            throw error
        }
        state.cancelAll()
        ticker.cancel()
        // Let the last report (Finished) reach the scheduler before the stream closes.
        outboundSink.finish()
        let closing = Task {
            try? await Task.sleep(for: .seconds(2))
            rpc.cancel()
        }
        _ = await rpc.result
        closing.cancel()
        eventSink.finish()
    }
}

/// The mutable state of one session; used only from the session's event loop.
final class SessionState {
    let session: PeerSession
    let peerID: String
    let send: @Sendable (Dragonfly_V1_AnnouncePeerRequest.OneOf_Request) -> Void
    let events: AsyncStream<SessionEvent>.Continuation
    let clock = ContinuousClock()

    var run: TaskRun { session.run }
    var context: RunContext { session.run.context }
    var store: PieceStore { context.store }
    var taskID: TaskID { session.run.taskID }

    var dispatcher: PieceDispatcher?
    /// The version of ``TaskRun/urgent`` the dispatcher last saw.
    var urgentVersion = 0
    var isOpen = false
    var hasStarted = false
    var contentLength: Int64?
    var pieceLength: Int64 = 0
    var pieceCount: Int?
    var pendingDigests: [Int: String] = [:]
    var parents: [String: ParentInfo] = [:]
    /// Bytes stored from each parent this session, for the debug summary (at most ``maximumParents`` live
    /// parents; dropped ones stay counted, bounded by the reschedule limit).
    var bytesByParent: [String: Int64] = [:]
    /// Requests abandoned before they completed, by cause (debug figures for the "download finished" line).
    var abandoned = (stalled: 0, failed: 0, duplicates: 0)
    var syncs: [String: Task<Void, Never>] = [:]
    var fetches: [PieceDispatcher.Request: Task<Void, Never>] = [:]
    var origin: Task<Void, Never>?
    var progress: RunProgress
    var reschedules = 0
    var lastReschedule: ContinuousClock.Instant?
    var lastProgress: ContinuousClock.Instant

    init(
        session: PeerSession,
        peerID: String,
        send: @escaping @Sendable (Dragonfly_V1_AnnouncePeerRequest.OneOf_Request) -> Void,
        events: AsyncStream<SessionEvent>.Continuation
    ) {
        self.session = session
        self.peerID = peerID
        self.send = send
        self.events = events
        progress = RunProgress(taskID: session.run.taskID, hostID: session.identity.hostID, peerID: peerID)
        lastProgress = clock.now
    }

    /// The most parents followed at once.
    static let maximumParents = 64

    // MARK: - Events

    /// Handles one event; returns true when the task is complete.
    func handle(_ event: SessionEvent) async throws -> Bool {
        switch event {
        case .response(let response):
            if try await handle(response) { return true }
        case .schedulerEnded(let error):
            let reason =
                error.map { DragonflyError(converting: $0) }
                ?? DragonflyError(code: .unavailable, message: "the scheduler closed the stream")
            throw SchedulerLost(error: reason)
        case .available(let parentID, let piece):
            guard parents[parentID] != nil else { break }
            // A parent's `content_length` is never adopted: the layout comes only from the scheduler (which
            // learnt it from the origin reader it chose) or from this host's own origin stat. A parent that
            // lied would otherwise fix the task's length and piece count for this child.
            do {
                try dispatcher?.parent(parentID, has: [Int(piece.number)])
                if piece.isLast { dispatcher?.parentFinishedAnnouncing(parentID) }
            } catch {
                logger.warning(
                    "parent announced a piece outside the task; dropping it",
                    metadata: ["df.parent": "\(parentID)", "df.error": "\(error.message)"])
                dropParent(parentID, corrupted: false)
            }
        case .syncEnded(let parentID, let error):
            syncs[parentID] = nil
            if error == nil { dispatcher?.parentFinishedAnnouncing(parentID) }
            if let error {
                logger.debug(
                    "parent's piece stream failed", metadata: ["df.parent": "\(parentID)", "df.error": "\(error)"])
                dropParent(parentID, corrupted: false)
            }
        case .progressed(let request, let bytes):
            dispatcher?.progressed(request, bytes: bytes, now: clock.now)
            return false
        case .pieceStored(let request, let length, let digest, let cost):
            fetches[request] = nil
            let duplicates = dispatcher?.completed(request, bytes: Int(length), now: clock.now) ?? []
            abandoned.duplicates += duplicates.count
            cancel(duplicates)
            context.metrics.downloadPeerBytes.increment(by: length)
            if bytesByParent.count < 4 * Self.maximumParents || bytesByParent[request.parentID] != nil {
                bytesByParent[request.parentID, default: 0] += length
            }
            lastProgress = clock.now
            var piece = Dragonfly_V1_Piece()
            piece.number = UInt32(request.piece)
            piece.offset = UInt64(Int64(request.piece) * pieceLength)
            piece.length = UInt64(length)
            piece.digest = digest
            piece.parentID = request.parentID
            piece.cost = Google_Protobuf_Duration(rounding: cost)
            piece.source = .peer
            var finished = Dragonfly_V1_PieceFinishedRequest()
            finished.piece = piece
            send(.pieceFinished(finished))
            progress.completedBytes += length
            progress.fromPeers += length
            progress.lastPiece = piece
            run.hub.publish(progress.message())
            if try await finishIfComplete() { return true }
        case .pieceFailed(let request, let error, let corrupted):
            fetches[request] = nil
            if corrupted {
                logger.warning(
                    "a parent sent a piece that failed verification; dropping it",
                    metadata: ["df.parent": "\(request.parentID)", "df.piece": "\(request.piece)"])
                cancel(dispatcher?.corrupted(request) ?? [])
                reportFailed(request, permanent: true, reason: PieceFailureReason.corrupted)
                dropParent(request.parentID, corrupted: true)
            } else {
                abandoned.failed += 1
                logger.debug(
                    "piece fetch failed",
                    metadata: [
                        "df.parent": "\(request.parentID)", "df.piece": "\(request.piece)",
                        "df.error": "\(error.message)",
                    ])
                if case .drop(let doomed) = dispatcher?.failed(request) {
                    cancel(doomed)
                    reportFailed(request, permanent: true)
                    dropParent(request.parentID, corrupted: false)
                }
            }
        case .originDone(let result):
            origin = nil
            switch result {
            case .success(let length):
                let info = try await store.finishTask(taskID: taskID, contentLength: length)
                isOpen = false
                var finished = Dragonfly_V1_BackToSourceFinishedRequest()
                finished.contentLength = UInt64(info.contentLength ?? 0)
                finished.pieceCount = UInt32(info.pieceCount ?? 0)
                finished.bytesFromOrigin = UInt64(progress.fromOrigin)
                send(.backToSourceFinished(finished))
                run.hub.publish(progress.message())
                return true
            case .failure(let error):
                var failed = Dragonfly_V1_BackToSourceFailedRequest()
                failed.reason = error.message
                if let origin = Self.originResponse(of: error) {
                    var sourceError = Dragonfly_V1_SourceError()
                    sourceError.statusCode = UInt32(clamping: origin.status)
                    sourceError.message = error.message
                    sourceError.temporary = origin.isTemporary
                    for field in origin.headers { sourceError.header[field.name.lowercased()] = field.value }
                    failed.sourceError = sourceError
                }
                send(.backToSourceFailed(failed))
                throw error
            }
        case .tick:
            checkStalls()
        }
        pump()
        return false
    }

    private func handle(_ response: Dragonfly_V1_AnnouncePeerResponse) async throws -> Bool {
        switch response.response {
        case .emptyTask:
            try await openIfNeeded(contentLength: 0, pieceLength: PieceMath.minimumPieceLength, headers: [:])
            learnLayout(contentLength: 0)
            return try await finishIfComplete(force: true)
        case .tinyTask(let tiny):
            let content = tiny.content
            let length = Int64(content.count)
            try await openIfNeeded(
                contentLength: length,
                pieceLength: run.request.pieceLength ?? PieceMath.pieceLength(forContentLength: length),
                headers: tiny.responseHeader)
            learnLayout(contentLength: length)
            if length > 0 {
                try await store.writePiece(taskID: taskID, number: 0, bytes: ByteBuffer(bytes: content))
                context.metrics.downloadPeerBytes.increment(by: length)
                progress.completedBytes += length
                progress.fromPeers += length
            }
            return try await finishIfComplete(force: true)
        case .smallTask(let small):
            context.announcer.grants.record(small.transferGrant, for: taskID)
            try await openIfNeeded(
                contentLength: Int64(small.contentLength), pieceLength: Int64(small.pieceLength),
                headers: small.responseHeader)
            learnLayout(contentLength: Int64(small.contentLength))
            trust([0: small.piece.digest])
            addParents(small.parents)
            startIfNeeded()
        case .normalTask(let normal):
            context.announcer.grants.record(normal.transferGrant, for: taskID)
            try await openIfNeeded(
                contentLength: normal.hasContentLength ? Int64(normal.contentLength) : nil,
                pieceLength: Int64(normal.pieceLength), headers: normal.responseHeader)
            if normal.hasContentLength { learnLayout(contentLength: Int64(normal.contentLength)) }
            if normal.hasPieceCount { learnLayout(pieceCount: Int(normal.pieceCount)) }
            trust(Dictionary(uniqueKeysWithValues: normal.pieceDigests.map { (Int($0.key), $0.value) }))
            addParents(normal.parents)
            startIfNeeded()
            return try await finishIfComplete()
        case .pieceDigests(let digests):
            if digests.hasContentLength { learnLayout(contentLength: Int64(digests.contentLength)) }
            if digests.hasPieceCount { learnLayout(pieceCount: Int(digests.pieceCount)) }
            trust(Dictionary(uniqueKeysWithValues: digests.pieceDigests.map { (Int($0.key), $0.value) }))
        case .needBackToSource(let need):
            context.announcer.grants.record(need.transferGrant, for: taskID)
            logger.debug("the scheduler sends this peer to the origin", metadata: ["df.reason": "\(need.reason)"])
            startOrigin()
        case .sourceError(let error):
            let status = error.statusCode
            throw DragonflyError(
                code: .originError,
                message: "the origin answered HTTP \(status) for \(Redaction.url(run.request.url))"
                    + (error.message.isEmpty ? "" : ": \(error.message)"))
        case nil:
            break
        }
        return false
    }

    // MARK: - Layout and parents

    private var logger: Logger { session.logger }

    private func openIfNeeded(contentLength: Int64?, pieceLength: Int64, headers: [String: String]) async throws {
        guard !isOpen else { return }
        guard pieceLength > 0 else {
            throw SchedulerLost(
                error: DragonflyError(code: .internalError, message: "the scheduler sent no piece length"))
        }
        let opened = try await store.openTask(
            id: taskID, url: run.request.url, contentLength: contentLength, pieceLength: pieceLength,
            headers: headers.filter {
                ["etag", "last-modified", "content-type", TaskPrivacy.header].contains($0.key.lowercased())
            })
        isOpen = true
        self.pieceLength = pieceLength
        progress.pieceLength = pieceLength
        progress.headers = headers
        progress.completedBytes = opened.heldBytes
        learnLayout(contentLength: contentLength)
        let held = Set((try? store.finishedPieces(taskID: taskID)) ?? [])
        var configuration = PieceDispatcher.Configuration()
        configuration.maxInFlight = min(max(context.config.download.concurrentPieces, 1), 256)
        configuration.perParentLimit = min(configuration.perParentLimit, configuration.maxInFlight)
        configuration.seedsLast = context.config.download.seedsLast
        configuration.seedRequestLimit = context.config.download.seedRequestLimit
        // Every peer of a swarm starts at its own place among equally rare pieces (DESIGN §6, rarest first).
        if let count = pieceCount, count > 1 { configuration.tieBreakStart = Int.random(in: 0..<count) }
        do {
            dispatcher = try PieceDispatcher(
                configuration: configuration, pieceCount: pieceCount, pieceLength: pieceLength,
                contentLength: self.contentLength, held: held)
        } catch {
            throw SchedulerLost(error: error)
        }
        if !pendingDigests.isEmpty {
            trust(pendingDigests)
            pendingDigests = [:]
        }
    }

    private func learnLayout(contentLength: Int64? = nil, pieceCount: Int? = nil) {
        if let contentLength, self.contentLength == nil {
            self.contentLength = contentLength
            progress.contentLength = contentLength
            if pieceLength > 0 {
                self.pieceCount = PieceMath.pieceCount(contentLength: contentLength, pieceLength: pieceLength)
            }
        }
        if let pieceCount, self.pieceCount == nil { self.pieceCount = pieceCount }
        if let count = self.pieceCount {
            progress.pieceCount = count
            do {
                if let doomed = try dispatcher?.setPieceCount(count, contentLength: self.contentLength) {
                    cancel(doomed)
                }
            } catch {
                logger.warning("inconsistent piece count", metadata: ["df.error": "\(error.message)"])
            }
        }
    }

    private func trust(_ digests: [Int: String]) {
        guard !digests.isEmpty else { return }
        if dispatcher != nil {
            do {
                try dispatcher?.trust(digests: digests)
            } catch {
                logger.warning("ignoring bad piece digests", metadata: ["df.error": "\(error.message)"])
            }
        } else {
            pendingDigests.merge(digests) { _, new in new }
        }
    }

    private func addParents(_ list: [Dragonfly_V1_ParentPeer]) {
        for parent in list where parents[parent.peerID] == nil && parents.count < Self.maximumParents {
            guard parent.peerID != peerID, !parent.pieceDataAddress.isEmpty, !parent.peerAddress.isEmpty else {
                continue
            }
            let info = ParentInfo(
                peerID: parent.peerID, hostID: parent.host.id, peerAddress: parent.peerAddress,
                pieceDataAddress: parent.pieceDataAddress, isSeed: parent.host.type == .super)
            parents[info.peerID] = info
            dispatcher?.addParent(info.peerID, isSeed: info.isSeed)
            logger.debug("parent added", metadata: ["df.parent": "\(info.peerID)", "df.parents": "\(parents.count)"])
            syncs[info.peerID] = Self.syncPieces(
                from: info, taskID: taskID, peerID: peerID, grant: context.announcer.grants.current(for: taskID),
                events: events, logger: logger)
        }
    }

    private func startIfNeeded() {
        guard !hasStarted else { return }
        hasStarted = true
        send(.started(Dragonfly_V1_PeerStartedRequest()))
    }

    private func dropParent(_ parentID: String, corrupted: Bool) {
        guard parents.removeValue(forKey: parentID) != nil else { return }
        syncs.removeValue(forKey: parentID)?.cancel()
        cancel(dispatcher?.removeParent(parentID) ?? [])
        if !corrupted {
            var reschedule = Dragonfly_V1_RescheduleRequest()
            reschedule.blocklist = [parentID]
            reschedule.reason = "parent \(parentID) failed"
            send(.reschedule(reschedule))
            lastReschedule = clock.now
        }
    }

    private func reportFailed(_ request: PieceDispatcher.Request, permanent: Bool, reason: String = "") {
        var failed = Dragonfly_V1_PieceFailedRequest()
        failed.pieceNumber = UInt32(request.piece)
        failed.parentID = request.parentID
        failed.temporary = !permanent
        failed.reason = reason
        send(.pieceFailed(failed))
    }

    private func cancel(_ requests: [PieceDispatcher.Request]) {
        for request in requests { fetches.removeValue(forKey: request)?.cancel() }
    }

    func cancelAll() {
        for task in fetches.values { task.cancel() }
        for task in syncs.values { task.cancel() }
        origin?.cancel()
        fetches = [:]
        syncs = [:]
    }

    func closeIfOpen() async {
        guard isOpen else { return }
        isOpen = false
        try? await store.closeTask(taskID: taskID)
    }

    // MARK: - Fetching

    /// Starts the requests the dispatcher wants now.
    private func pump() {
        guard origin == nil, var dispatcher else { return }
        if let (pieces, version) = run.urgent.changed(since: urgentVersion) {
            urgentVersion = version
            dispatcher.prioritize(pieces)
        }
        let requests = dispatcher.nextRequests(now: clock.now)
        self.dispatcher = dispatcher
        for request in requests {
            guard let parent = parents[request.parentID] else { continue }
            if parent.isSeed {
                logger.debug(
                    "piece requested from a seed",
                    metadata: [
                        "df.piece": "\(request.piece)", "df.duplicate": "\(request.isDuplicate)",
                        "df.parents.holding": "\(dispatcher.holderCount(ofPiece: request.piece))",
                    ])
            }
            let expected: Int64? = contentLength.flatMap {
                PieceMath.span(ofPiece: request.piece, contentLength: $0, pieceLength: pieceLength)?.length
            }
            fetches[request] = Self.fetchPiece(
                request, from: parent, taskID: taskID, pieceLength: pieceLength, expectedLength: expected,
                contentLength: contentLength, context: context, events: events)
        }
    }

    private func checkStalls() {
        guard dispatcher != nil, origin == nil else { return }
        let now = clock.now
        for request in dispatcher?.stalled(now: now) ?? [] {
            abandoned.stalled += 1
            logger.debug(
                "piece fetch stalled", metadata: ["df.parent": "\(request.parentID)", "df.piece": "\(request.piece)"])
            fetches.removeValue(forKey: request)?.cancel()
            if case .drop(let doomed) = dispatcher?.failed(request) {
                cancel(doomed)
                reportFailed(request, permanent: true)
                dropParent(request.parentID, corrupted: false)
            }
        }
        // Pieces nobody can supply: ask the scheduler for other parents, then fall back to the origin.
        guard hasStarted, dispatcher?.needsReschedule == true else { return }
        if let last = lastReschedule, now - last < .seconds(2) { return }
        reschedules += 1
        lastReschedule = now
        if reschedules > max(context.config.download.pieceRetryLimit, 1) {
            let disabled = run.request.download.disableBackToSource || context.config.download.disableBackToSource
            if !disabled {
                logger.info("no parent can supply the missing pieces; reading them from the origin")
                startOrigin()
            }
            return
        }
        var reschedule = Dragonfly_V1_RescheduleRequest()
        reschedule.reason = "no parent holds the missing pieces"
        send(.reschedule(reschedule))
    }

    private func startOrigin() {
        guard origin == nil else { return }
        for task in fetches.values { task.cancel() }
        fetches = [:]
        let wasOpen = isOpen
        isOpen = true  // the reader opens it when it was not
        let reader = OriginReader(run: run, report: send)
        let events = events
        var snapshot = progress
        origin = Task {
            do {
                let length = try await reader.read(progress: &snapshot, openTask: !wasOpen)
                events.yield(.originDone(.success(length)))
            } catch {
                events.yield(.originDone(.failure(DragonflyError(converting: error))))
            }
        }
        if pieceLength == 0 { pieceLength = run.request.pieceLength ?? 0 }
    }

    /// Finishes the task when every piece is held.
    private func finishIfComplete(force: Bool = false) async throws -> Bool {
        guard isOpen else { return false }
        let complete: Bool
        if force {
            complete = true
        } else {
            guard let dispatcher, dispatcher.isComplete else { return false }
            complete = true
        }
        guard complete else { return false }
        let info = try await store.finishTask(taskID: taskID, contentLength: contentLength)
        isOpen = false
        var finished = Dragonfly_V1_PeerFinishedRequest()
        finished.contentLength = UInt64(info.contentLength ?? 0)
        finished.pieceCount = UInt32(info.pieceCount ?? 0)
        finished.bytesFromPeers = UInt64(progress.fromPeers)
        finished.bytesFromOrigin = UInt64(progress.fromOrigin)
        send(.finished(finished))
        run.hub.publish(progress.message())
        logger.debug(
            "download finished",
            metadata: [
                "df.bytes.peers": "\(progress.fromPeers)", "df.bytes.origin": "\(progress.fromOrigin)",
                "df.bytes.by_parent": "\(bytesByParent.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" })",
                "df.abandoned.stalled": "\(abandoned.stalled)", "df.abandoned.failed": "\(abandoned.failed)",
                "df.abandoned.duplicates": "\(abandoned.duplicates)",
            ])
        return true
    }

    static func originResponse(of error: DragonflyError) -> OriginResponseError? {
        var cause: (any Error)? = error.cause
        for _ in 0..<4 {
            if let origin = cause as? OriginResponseError { return origin }
            cause = (cause as? DragonflyError)?.cause
        }
        return nil
    }

    // MARK: - I/O tasks

    /// Follows a parent's `SyncPieces` stream, turning each announced piece into an event.
    static func syncPieces(
        from parent: ParentInfo,
        taskID: TaskID,
        peerID: String,
        grant: String,
        events: AsyncStream<SessionEvent>.Continuation,
        logger: Logger
    ) -> Task<Void, Never> {
        Task {
            do {
                try await withRPCClient(
                    target: parent.peerAddress, options: RPCClientOptions(defaultTimeout: nil), logger: logger
                ) { client in
                    var request = Dragonfly_V1_SyncPiecesRequest()
                    request.taskID = taskID.rawValue
                    request.peerID = peerID
                    request.transferGrant = grant
                    try await Dragonfly_V1_Peer.Client(wrapping: client).syncPieces(request) { response in
                        for try await piece in response.messages {
                            events.yield(.available(parentID: parent.peerID, piece: piece))
                        }
                    }
                }
                events.yield(.syncEnded(parentID: parent.peerID, error: nil))
            } catch {
                guard !Task.isCancelled else { return }
                events.yield(.syncEnded(parentID: parent.peerID, error: error))
            }
        }
    }

    /// Fetches one piece from a parent's piece server, verifies it against the trusted digest and stores it.
    static func fetchPiece(
        _ request: PieceDispatcher.Request,
        from parent: ParentInfo,
        taskID: TaskID,
        pieceLength: Int64,
        expectedLength: Int64?,
        contentLength: Int64?,
        context: RunContext,
        events: AsyncStream<SessionEvent>.Continuation
    ) -> Task<Void, Never> {
        Task {
            let clock = ContinuousClock()
            let begin = clock.now
            do {
                let limit = Int(expectedLength ?? pieceLength)
                // The body is collected on the connection's event loop: no hop to this task per socket read
                // (with AsyncHTTPClient's async body that hop was a large part of the daemon's CPU). Stalls are
                // the dispatcher's call (no bytes for a time scaled by the piece size), which cancels this task;
                // the HTTP deadline only bounds a request that trickles forever.
                let collector = PieceBodyCollector(limit: limit, piece: request.piece, parent: parent.peerID) {
                    events.yield(.progressed(request, bytes: max($0, 1)))
                }
                var http = try HTTPClient.Request(
                    url: "http://\(parent.pieceDataAddress)/pieces/\(taskID)/\(request.piece)", method: .GET)
                let grant = context.announcer.grants.current(for: taskID)
                if !grant.isEmpty { http.headers.add(name: TransferGrants.headerName, value: grant) }
                let transfer = context.http.execute(request: http, delegate: collector, deadline: .now() + .minutes(30))
                let bytes = try await withTaskCancellationHandler {
                    try await transfer.futureResult.get()
                } onCancel: {
                    transfer.cancel()
                }
                if let expectedLength, Int64(bytes.readableBytes) != expectedLength {
                    throw PieceCorrupted(
                        message:
                            "piece \(request.piece) from \(parent.peerID) has \(bytes.readableBytes) bytes, not \(expectedLength)"
                    )
                }
                let digest: String
                do {
                    digest = try await context.store.writePiece(
                        taskID: taskID, number: request.piece, bytes: bytes, expectedDigest: request.digest)
                } catch let error as DragonflyError where error.code == .dataLoss {
                    throw PieceCorrupted(message: error.message)
                } catch let error as DragonflyError where error.code == .alreadyExists {
                    // Another copy of the piece (endgame) won; nothing to count.
                    throw CancellationError()
                }
                let offset = Int64(request.piece) * pieceLength
                context.announcer.publish(
                    taskID: taskID,
                    piece: AnnouncedPiece(
                        number: request.piece, offset: offset, length: Int64(bytes.readableBytes), digest: digest,
                        contentLength: contentLength,
                        isLast: contentLength.map { offset + Int64(bytes.readableBytes) >= $0 } ?? false))
                events.yield(
                    .pieceStored(request, length: Int64(bytes.readableBytes), digest: digest, cost: clock.now - begin))
            } catch is CancellationError {
                return
            } catch let corrupt as PieceCorrupted {
                events.yield(
                    .pieceFailed(request, DragonflyError(code: .dataLoss, message: corrupt.message), corrupted: true))
            } catch {
                guard !Task.isCancelled else { return }
                events.yield(.pieceFailed(request, DragonflyError(converting: error), corrupted: false))
            }
        }
    }
}

/// A parent's bytes failed verification (wrong digest or length).
struct PieceCorrupted: Error {
    var message: String
}

/// Collects one piece's body from a parent's piece server on the connection's event loop (AsyncHTTPClient calls
/// a delegate serially on one loop, hence `@unchecked Sendable`): fails on a non-200 answer and on a body longer
/// than the piece, and reports progress at most every 250 ms.
final class PieceBodyCollector: HTTPClientResponseDelegate, @unchecked Sendable {
    typealias Response = ByteBuffer

    private let limit: Int
    private let piece: Int
    private let parent: String
    private let onProgress: @Sendable (Int) -> Void
    private var body = ByteBuffer()
    private var unreported = 0
    private var reported = NIODeadline.now()

    init(limit: Int, piece: Int, parent: String, onProgress: @escaping @Sendable (Int) -> Void) {
        self.limit = limit
        self.piece = piece
        self.parent = parent
        self.onProgress = onProgress
    }

    func didReceiveHead(task: HTTPClient.Task<ByteBuffer>, _ head: HTTPResponseHead) -> EventLoopFuture<Void> {
        guard head.status == .ok else {
            return task.eventLoop.makeFailedFuture(
                DragonflyError(
                    code: head.status == .tooManyRequests ? .resourceExhausted : .unavailable,
                    message: "parent \(parent) answered \(head.status.code) for piece \(piece)"))
        }
        body.reserveCapacity(limit)
        return task.eventLoop.makeSucceededVoidFuture()
    }

    func didReceiveBodyPart(task: HTTPClient.Task<ByteBuffer>, _ buffer: ByteBuffer) -> EventLoopFuture<Void> {
        guard body.readableBytes + buffer.readableBytes <= limit else {
            return task.eventLoop.makeFailedFuture(
                PieceCorrupted(message: "piece \(piece) from \(parent) is longer than \(limit) bytes"))
        }
        var buffer = buffer
        unreported += buffer.readableBytes
        body.writeBuffer(&buffer)
        let now = NIODeadline.now()
        if now - reported >= .milliseconds(250) {
            onProgress(unreported)
            reported = now
            unreported = 0
        }
        return task.eventLoop.makeSucceededVoidFuture()
    }

    func didFinishRequest(task: HTTPClient.Task<ByteBuffer>) throws -> ByteBuffer {
        body
    }
}
