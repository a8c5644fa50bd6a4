package import DragonflyCore
package import Logging
package import NIOCore
import Synchronization

/// Options of a ``PieceFetcher``.
package struct PieceFetcherConfig: Sendable {
    /// Range requests in flight at once (connections to the origin).
    package var concurrency: Int
    /// Retries per piece.
    package var retry: RetryPolicy
    /// The most bytes one range request asks for (see ``PiecePlan``).
    package var maximumBytesPerRequest: Int64
    /// Limits the bytes per second read from the origin (`get --ratelimit`); shared, so one bucket can cap
    /// several fetches.
    package var rateLimiter: TokenBucket?
    /// Pieces a caller is waiting for now: the next range request starts with the first queued run holding
    /// one of them (asked again before every request).
    package var urgentPieces: (@Sendable () -> Set<Int>)?
    /// The largest object fetched: a larger stated length is refused before any byte is read, and a stream of
    /// unknown length is cut off past it, so an origin cannot fill the disk (`download.maxContentLength`).
    package var maximumContentLength: Int64

    package init(
        concurrency: Int = 4,
        retry: RetryPolicy = RetryPolicy(),
        maximumBytesPerRequest: Int64 = 64 << 20,
        rateLimiter: TokenBucket? = nil,
        urgentPieces: (@Sendable () -> Set<Int>)? = nil,
        maximumContentLength: Int64 = 1 << 40
    ) {
        self.maximumContentLength = max(maximumContentLength, 0)
        self.concurrency = max(concurrency, 1)
        self.retry = retry
        self.maximumBytesPerRequest = max(maximumBytesPerRequest, 1)
        self.rateLimiter = rateLimiter
        self.urgentPieces = urgentPieces
    }
}

/// What a ``PieceFetcher/fetch(_:metadata:pieceLength:pieces:consumer:)`` did.
package struct PieceFetchSummary: Sendable, Hashable {
    /// The object's length: the stat's, or for an unknown length the one found at the end of the stream
    /// (nil if the stream was not read to its end).
    package var contentLength: Int64?
    /// Pieces of the object, when its length is known.
    package var pieceCount: Int?
    /// Pieces handed to the consumer.
    package var deliveredPieces: Int
    /// Requests sent to the origin, failed ones included.
    package var requests: Int
    /// Requests that failed and were sent again.
    package var retries: Int
    /// Body bytes received from the origin, including bytes skipped in a single stream.
    package var bytesReceived: Int64
    /// Whether the pieces came from one stream (no range support, unknown length, or an origin that answered
    /// a range request with the whole body).
    package var usedSingleStream: Bool

    package init(
        contentLength: Int64?,
        pieceCount: Int?,
        deliveredPieces: Int = 0,
        requests: Int = 0,
        retries: Int = 0,
        bytesReceived: Int64 = 0,
        usedSingleStream: Bool = false
    ) {
        self.contentLength = contentLength
        self.pieceCount = pieceCount
        self.deliveredPieces = deliveredPieces
        self.requests = requests
        self.retries = retries
        self.bytesReceived = bytesReceived
        self.usedSingleStream = usedSingleStream
    }
}

/// Reads the pieces of one object from its origin: the reader behind `get --no-daemon` and the daemon's
/// back-to-source path (DESIGN §6).
///
/// - With a known length and range support, a fixed pool of ``PieceFetcherConfig/concurrency`` workers pulls
///   runs of consecutive needed pieces (``PiecePlan``) from a queue and fetches each with one piece-aligned
///   range request; the response is cut into pieces as it streams.
/// - Otherwise one stream is cut into pieces (4 MiB pieces for an unknown length, as the caller computes with
///   ``PieceMath``), skipping the bytes of pieces not needed. A range request answered with 200 and the whole
///   body switches the fetch to that single stream: a whole body is never taken for a piece.
/// - Each complete piece is handed to the consumer, which verifies and stores it. The consumer is awaited
///   before more bytes are read, so memory stays within `concurrency × pieceLength` plus one chunk. It may
///   run concurrently for different pieces and is called once per piece; an error it throws ends the fetch
///   unchanged and is never retried.
/// - Failed requests are retried per piece (``RetryPolicy``), resuming at the first piece not yet delivered;
///   an error that is not retryable (e.g. a 404) is rethrown unchanged.
package struct PieceFetcher: Sendable {
    /// Receives one complete piece: its number (from 0) and its bytes.
    package typealias Consumer = @Sendable (_ number: Int, _ bytes: ByteBuffer) async throws -> Void

    package let client: any SourceClient
    package let config: PieceFetcherConfig
    let logger: Logger

    package init(
        client: any SourceClient,
        config: PieceFetcherConfig = PieceFetcherConfig(),
        logger: Logger = Logger(label: "dragonfly.source.fetch")
    ) {
        self.client = client
        self.config = config
        self.logger = logger
    }

    /// The error for an object larger than `limit` (`stated` when the origin said its length).
    static func tooLarge(_ request: SourceRequest, limit: Int64, stated: Int64?) -> DragonflyError {
        let size = stated.map { "is \($0) bytes" } ?? "sent more than \(limit) bytes"
        return DragonflyError(
            code: .resourceExhausted,
            message: "\(Redaction.url(request.url)) \(size), more than the \(limit)-byte limit "
                + "(download.maxContentLength)")
    }

    /// Fetches `pieces` (all pieces when nil) of the object described by `metadata` and hands each to
    /// `consumer`.
    ///
    /// - Parameters:
    ///   - request: The origin request (URL and pass-through headers).
    ///   - metadata: What `stat` said: the length (nil when unknown) and range support.
    ///   - pieceLength: The task's piece length.
    ///   - pieces: The piece numbers needed, e.g. those missing after a peer download failed.
    /// - Throws: ``DragonflyError/Code/invalidArgument`` for a piece number outside the object; the origin's
    ///   error when it is not retryable or retries ran out (then the message names the piece and attempts);
    ///   the consumer's error; `CancellationError`.
    package func fetch(
        _ request: SourceRequest,
        metadata: SourceMetadata,
        pieceLength: Int64,
        pieces: Set<Int>? = nil,
        consumer: @escaping Consumer
    ) async throws -> PieceFetchSummary {
        guard pieceLength > 0 else {
            throw DragonflyError(code: .invalidArgument, message: "piece length must be positive, not \(pieceLength)")
        }
        let length = metadata.contentLength
        if let length, length > config.maximumContentLength {
            throw Self.tooLarge(request, limit: config.maximumContentLength, stated: length)
        }
        let pieceCount = length.map { Int(($0 + pieceLength - 1) / pieceLength) }
        if let pieces, let bad = pieces.first(where: { $0 < 0 || $0 >= (pieceCount ?? .max) }) {
            throw DragonflyError(
                code: .invalidArgument,
                message:
                    "piece \(bad) is outside \(Redaction.url(request.url)) (\(pieceCount.map(String.init) ?? "unknown") pieces)"
            )
        }
        let needed: Set<Int>? = pieces ?? pieceCount.map { Set(0..<$0) }
        if length == 0 || needed?.isEmpty == true {
            return PieceFetchSummary(contentLength: length, pieceCount: pieceCount)
        }
        let job = FetchJob(
            fetcher: self,
            request: request,
            metadata: metadata,
            pieceLength: pieceLength,
            pieceCount: pieceCount,
            needed: needed,
            consumer: consumer
        )
        logger.debug(
            "fetching pieces from the origin",
            metadata: [
                "df.source.url": "\(Redaction.url(request.url))", "df.piece.length": "\(pieceLength)",
                "df.piece.needed": "\(needed.map { "\($0.count)" } ?? "all")",
                "df.source.ranges": "\(metadata.supportsRanges)",
            ])
        if length != nil, metadata.supportsRanges, let needed {
            try await job.fetchWithRanges(needed: needed)
            if let whole = job.progress.takeWholeBodyResponse() {
                logger.debug(
                    "origin ignored a range request; switching to one stream",
                    metadata: ["df.source.url": "\(Redaction.url(request.url))"])
                try await job.fetchAsOneStream(startingWith: whole)
            }
        } else {
            try await job.fetchAsOneStream(startingWith: nil)
        }
        return job.progress.summary(contentLength: length, pieceLength: pieceLength)
    }
}

/// One fetch in progress: its parameters and the shared progress its workers update.
private struct FetchJob: Sendable {
    let fetcher: PieceFetcher
    let request: SourceRequest
    let metadata: SourceMetadata
    let pieceLength: Int64
    let pieceCount: Int?
    let needed: Set<Int>?
    let consumer: PieceFetcher.Consumer
    let progress: FetchProgress

    init(
        fetcher: PieceFetcher,
        request: SourceRequest,
        metadata: SourceMetadata,
        pieceLength: Int64,
        pieceCount: Int?,
        needed: Set<Int>?,
        consumer: @escaping PieceFetcher.Consumer
    ) {
        self.fetcher = fetcher
        self.request = request
        self.metadata = metadata
        self.pieceLength = pieceLength
        self.pieceCount = pieceCount
        self.needed = needed
        self.consumer = consumer
        self.progress = FetchProgress()
    }

    private var logger: Logger { fetcher.logger }
    private var config: PieceFetcherConfig { fetcher.config }

    /// The byte length of piece `number` (the last piece of a known length may be shorter).
    private func length(ofPiece number: Int) -> Int64 {
        let start = Int64(number) * pieceLength
        guard let total = metadata.contentLength else { return pieceLength }
        return min(pieceLength, total - start)
    }

    /// Whether piece `number` should be handed to the consumer (needed and not delivered yet).
    private func isWanted(_ number: Int) -> Bool {
        if let pieceCount, number >= pieceCount { return false }
        if let needed, !needed.contains(number) { return false }
        return !progress.isDelivered(number)
    }

    /// The lowest piece still wanted, or nil when every needed piece is delivered. For an unknown length with
    /// every piece needed this is the first piece not delivered.
    private func firstWantedPiece() -> Int? {
        if let needed {
            return needed.filter { !progress.isDelivered($0) }.min()
        }
        return progress.firstUndelivered()
    }

    // MARK: Concurrent ranges

    func fetchWithRanges(needed: Set<Int>) async throws {
        let perRequest = PiecePlan.piecesPerRequest(
            neededCount: needed.count,
            pieceLength: pieceLength,
            concurrency: config.concurrency,
            maximumBytesPerRequest: config.maximumBytesPerRequest
        )
        let runs = PiecePlan.runs(of: needed, maximumCount: perRequest)
        progress.enqueue(runs)
        let workers = min(config.concurrency, runs.count)
        try await withThrowingDiscardingTaskGroup { group in
            for _ in 0..<workers {
                group.addTask {
                    while let run = progress.nextRun(urgent: config.urgentPieces?() ?? []) {
                        try await fetch(run)
                    }
                }
            }
        }
    }

    /// Fetches one run with range requests, resuming after failures at the first piece not delivered.
    private func fetch(_ run: PieceRun) async throws {
        var next = run.first
        var retry = RetryState()
        while next < run.end {
            try Task.checkCancellation()
            if progress.isStopped { return }
            let start = Int64(next) * pieceLength
            let end = Int64(run.first + run.count - 1) * pieceLength + length(ofPiece: run.end - 1)
            let range = ByteRange(start: start, length: end - start)
            do {
                progress.countRequest()
                let response = try await fetcher.client.fetch(request, range: range)
                guard response.isPartial else {
                    progress.stop(wholeBody: response)
                    return
                }
                try checkLength(response.metadata)
                var assembler = PieceAssembler(number: next, length: length(ofPiece: next))
                for try await chunk in response.body {
                    try await account(chunk)
                    var chunk = chunk
                    while chunk.readableBytes > 0 {
                        guard next < run.end else {
                            throw DragonflyError(
                                code: .originError,
                                message:
                                    "origin sent more than the requested range \(range) of \(Redaction.url(request.url))"
                            )
                        }
                        assembler.append(from: &chunk)
                        if assembler.isComplete {
                            try await deliver(assembler)
                            next += 1
                            if next < run.end {
                                assembler = PieceAssembler(number: next, length: length(ofPiece: next))
                            }
                        }
                    }
                    if progress.isStopped { return }
                }
                if next < run.end {
                    throw DragonflyError(
                        code: .unavailable,
                        message: "origin closed the response to range \(range) of \(Redaction.url(request.url)) early, "
                            + "in piece \(next)")
                }
            } catch {
                try await recover(from: error, piece: next, state: &retry)
            }
        }
    }

    // MARK: One stream

    /// Cuts one stream into pieces, starting with `whole` (a response with the whole body) when given.
    /// After a failure the stream is opened again: at the first wanted piece when the origin honours ranges,
    /// else from the start, skipping the bytes of pieces already delivered.
    func fetchAsOneStream(startingWith whole: SourceResponse?) async throws {
        progress.markSingleStream()
        var pending = whole
        var retry = RetryState()
        let rangesWork = metadata.supportsRanges && whole == nil
        while let firstWanted = firstWantedPiece() {
            try Task.checkCancellation()
            var offset: Int64 = 0
            do {
                let response: SourceResponse
                if let whole = pending {
                    pending = nil
                    response = whole
                } else {
                    let resume = Int64(firstWanted) * pieceLength
                    let range = rangesWork && resume > 0 ? ByteRange(start: resume, length: nil) : nil
                    progress.countRequest()
                    response = try await fetcher.client.fetch(request, range: range)
                    offset = range != nil && response.isPartial ? resume : 0
                }
                try checkLength(response.metadata)
                if try await cut(response.body, from: &offset) { return }
            } catch {
                let failed = Int(offset / pieceLength)
                try await recover(from: error, piece: isWanted(failed) ? failed : firstWanted, state: &retry)
            }
        }
    }

    /// Reads `body`, whose first byte is at `offset`, handing wanted pieces to the consumer. Returns true when
    /// the fetch is complete: every needed piece delivered, or the end of an object of unknown length.
    private func cut(_ body: SourceBody, from offset: inout Int64) async throws -> Bool {
        let total = metadata.contentLength
        var number = Int(offset / pieceLength)
        var assembler: PieceAssembler? =
            isWanted(number) ? PieceAssembler(number: number, length: length(ofPiece: number)) : nil
        for try await chunk in body {
            try await account(chunk)
            var chunk = chunk
            while chunk.readableBytes > 0 {
                if total == nil, offset >= fetcher.config.maximumContentLength {
                    throw PieceFetcher.tooLarge(request, limit: fetcher.config.maximumContentLength, stated: nil)
                }
                if let total, offset >= total {
                    throw DragonflyError(
                        code: .originError,
                        message:
                            "origin sent more than the \(total) bytes of \(Redaction.url(request.url)); did the object change?"
                    )
                }
                let pieceEnd = Int64(number) * pieceLength + length(ofPiece: number)
                let take = Int(min(Int64(chunk.readableBytes), pieceEnd - offset))
                if assembler != nil {
                    assembler?.append(from: &chunk, upTo: take)
                } else {
                    chunk.moveReaderIndex(forwardBy: take)
                }
                offset += Int64(take)
                guard offset == pieceEnd else { continue }
                if let complete = assembler {
                    try await deliver(complete)
                }
                number += 1
                assembler = isWanted(number) ? PieceAssembler(number: number, length: length(ofPiece: number)) : nil
                if total != nil, let needed, progress.deliveredCount == needed.count { return true }
            }
        }
        if let total {
            guard offset == total else {
                throw DragonflyError(
                    code: .unavailable,
                    message: "origin closed the stream of \(Redaction.url(request.url)) at byte \(offset) of \(total)")
            }
            return true
        }
        // Unknown length: the end of the stream is the end of the object.
        if let last = assembler, last.receivedBytes > 0 {
            try await deliver(last)
        }
        progress.setDiscoveredLength(offset)
        return true
    }

    // MARK: Shared steps

    /// Fails when a response says the object's length is not the one the pieces were planned for.
    private func checkLength(_ responseMetadata: SourceMetadata) throws {
        guard let expected = metadata.contentLength, let actual = responseMetadata.contentLength, actual != expected
        else { return }
        throw DragonflyError(
            code: .originError,
            message:
                "\(Redaction.url(request.url)) changed on the origin: \(actual) bytes now, \(expected) when it was looked up"
        )
    }

    /// Counts received bytes and applies the rate limit.
    private func account(_ chunk: ByteBuffer) async throws {
        progress.countBytes(chunk.readableBytes)
        if let limiter = config.rateLimiter {
            try await limiter.acquire(Int64(chunk.readableBytes))
        }
    }

    private func deliver(_ piece: PieceAssembler) async throws {
        logger.trace(
            "piece fetched from the origin",
            metadata: ["df.source.url": "\(Redaction.url(request.url))", "df.piece.number": "\(piece.number)"])
        do {
            try await consumer(piece.number, piece.bytes)
        } catch {
            throw ConsumerFailure(error: error)
        }
        progress.markDelivered(piece.number)
    }

    /// Decides what a failure means: rethrows it when it is final, else waits before the next attempt.
    private func recover(from error: any Error, piece: Int, state: inout RetryState) async throws {
        if let failure = error as? ConsumerFailure { throw failure.error }
        if error is CancellationError || Task.isCancelled { throw CancellationError() }
        state.record(failureOf: piece)
        let policy = config.retry
        guard policy.isRetryable(error) else { throw error }
        guard state.failures < policy.maximumAttempts else {
            let reason = (error as? DragonflyError)?.message ?? "\(error)"
            throw DragonflyError(
                code: (error as? DragonflyError)?.code ?? .unavailable,
                message:
                    "piece \(piece) of \(Redaction.url(request.url)) failed after \(state.failures) attempts: \(reason)",
                cause: (error as? DragonflyError)?.cause ?? error
            )
        }
        let wait = policy.backoff(afterFailure: state.failures, error: error)
        progress.countRetry()
        logger.debug(
            "origin request failed; retrying",
            metadata: [
                "df.source.url": "\(Redaction.url(request.url))", "df.piece.number": "\(piece)",
                "df.attempt": "\(state.failures)", "df.retry.wait": "\(wait)", "df.error": "\(error)",
            ])
        try await Task.sleep(for: wait)
    }
}

/// Consecutive failures of the piece a fetch is stuck at; a failure at another piece starts a new count.
private struct RetryState {
    private(set) var piece = -1
    private(set) var failures = 0

    mutating func record(failureOf piece: Int) {
        if piece != self.piece {
            self.piece = piece
            failures = 0
        }
        failures += 1
    }
}

/// An error thrown by the consumer, passed through without retrying.
private struct ConsumerFailure: Error {
    var error: any Error
}

/// Collects the bytes of one piece from a stream's chunks.
private struct PieceAssembler: Sendable {
    let number: Int
    let length: Int64
    private(set) var bytes: ByteBuffer

    init(number: Int, length: Int64) {
        self.number = number
        self.length = length
        self.bytes = ByteBuffer()
    }

    var receivedBytes: Int { bytes.readableBytes }
    var isComplete: Bool { Int64(bytes.readableBytes) == length }

    /// Moves up to `limit` bytes (and never past the piece's end) from the front of `chunk` into the piece.
    /// A chunk that holds a whole piece is sliced without copying.
    mutating func append(from chunk: inout ByteBuffer, upTo limit: Int = .max) {
        let missing = Int(length) - bytes.readableBytes
        let count = min(missing, chunk.readableBytes, limit)
        guard count > 0, let slice = chunk.readSlice(length: count) else { return }
        if bytes.readableBytes == 0 && count == Int(length) {
            bytes = slice
            return
        }
        if bytes.capacity == 0 {
            bytes.reserveCapacity(Int(length))
        }
        bytes.writeImmutableBuffer(slice)
    }
}

/// The progress of one fetch shared by its workers: the queue of runs, delivered pieces and counters.
private final class FetchProgress: Sendable {
    private struct State {
        var runs: [PieceRun] = []
        var nextRun = 0
        var delivered: Set<Int> = []
        var wholeBody: SourceResponse?
        var isStopped = false
        var usedSingleStream = false
        var discoveredLength: Int64?
        var requests = 0
        var retries = 0
        var bytesReceived: Int64 = 0
    }

    private let state = Mutex(State())

    func enqueue(_ runs: [PieceRun]) {
        state.withLock { $0.runs.append(contentsOf: runs) }
    }

    /// The next run to fetch — the first queued one holding an `urgent` piece, else the next in order — or nil
    /// when the queue is empty or the range phase stopped.
    func nextRun(urgent: Set<Int>) -> PieceRun? {
        state.withLock { state in
            guard !state.isStopped, state.nextRun < state.runs.count else { return nil }
            if !urgent.isEmpty,
                let index = state.runs[state.nextRun...].firstIndex(where: { run in
                    (run.first..<run.end).contains { urgent.contains($0) }
                }), index != state.nextRun
            {
                state.runs.insert(state.runs.remove(at: index), at: state.nextRun)
            }
            defer { state.nextRun += 1 }
            return state.runs[state.nextRun]
        }
    }

    var isStopped: Bool { state.withLock { $0.isStopped } }

    /// Ends the range phase because the origin sent a whole body; the first such response is kept for the
    /// single stream that follows, later ones are dropped (which cancels them).
    func stop(wholeBody response: SourceResponse) {
        state.withLock { state in
            state.isStopped = true
            if state.wholeBody == nil { state.wholeBody = response }
        }
    }

    func takeWholeBodyResponse() -> SourceResponse? {
        state.withLock { state in
            defer { state.wholeBody = nil }
            return state.wholeBody
        }
    }

    func isDelivered(_ number: Int) -> Bool { state.withLock { $0.delivered.contains(number) } }

    /// The lowest piece number not delivered.
    func firstUndelivered() -> Int {
        state.withLock { state in
            var number = 0
            while state.delivered.contains(number) { number += 1 }
            return number
        }
    }

    func markDelivered(_ number: Int) { state.withLock { _ = $0.delivered.insert(number) } }
    func markSingleStream() { state.withLock { $0.usedSingleStream = true } }
    func setDiscoveredLength(_ length: Int64) { state.withLock { $0.discoveredLength = length } }
    func countRequest() { state.withLock { $0.requests += 1 } }
    func countRetry() { state.withLock { $0.retries += 1 } }
    func countBytes(_ count: Int) { state.withLock { $0.bytesReceived += Int64(count) } }

    var deliveredCount: Int { state.withLock { $0.delivered.count } }

    func summary(contentLength: Int64?, pieceLength: Int64) -> PieceFetchSummary {
        state.withLock { state in
            let length = contentLength ?? state.discoveredLength
            return PieceFetchSummary(
                contentLength: length,
                pieceCount: length.map { Int(($0 + pieceLength - 1) / pieceLength) },
                deliveredPieces: state.delivered.count,
                requests: state.requests,
                retries: state.retries,
                bytesReceived: state.bytesReceived,
                usedSingleStream: state.usedSingleStream
            )
        }
    }
}
