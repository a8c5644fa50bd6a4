import DragonflyCore
import DragonflySource
import DragonflyTestSupport
import NIOCore
import Synchronization
import Testing

@Suite("PieceFetcher against nginx", .timeLimit(.minutes(3)))
struct PieceFetcherTests {
    static let mebibyte = 1 << 20
    /// Fast retries: the policy's shape is tested in RetryPolicyTests.
    static let quickRetry = RetryPolicy(
        maximumAttempts: 3, initialBackoff: .milliseconds(5), maximumBackoff: .milliseconds(20))

    @Test func fortyMiBInFourMiBPiecesOverFourConnectionsReassemblesExactly() async throws {
        let pieceLength = 4 * Self.mebibyte
        let blob = randomBytes(count: 40 * Self.mebibyte, seed: 40)
        try await withNginxOrigin { origin in
            try origin.writeFile("blob40.bin", contents: blob)
            try await withHTTPSource { client in
                let request = SourceRequest(url: origin.url(for: "blob40.bin"))
                let metadata = try await client.stat(request)
                let sink = PieceSink()
                let fetcher = PieceFetcher(client: client, config: PieceFetcherConfig(concurrency: 4))
                let summary = try await fetcher.fetch(
                    request, metadata: metadata, pieceLength: Int64(pieceLength), consumer: sink.consumer)

                #expect(sink.reassembled == blob)
                #expect(sink.duplicates.isEmpty)
                #expect(sink.maximumConcurrentDeliveries <= 4)
                #expect(summary.deliveredPieces == 10)
                #expect(summary.pieceCount == 10)
                #expect(summary.requests == 10)
                #expect(summary.retries == 0)
                #expect(!summary.usedSingleStream)
                #expect(summary.bytesReceived == Int64(blob.count))
            }
            let gets = try await accessLog(of: origin, count: 11).filter { $0.method == "GET" }
            #expect(gets.count == 10)
            #expect(gets.allSatisfy { $0.status == 206 })
            let expected = (0..<10).map { rangeHeader(ofPiece: $0, pieceLength: pieceLength, total: blob.count) }
            #expect(Set(gets.compactMap(\.range)) == Set(expected))
            #expect(try origin.totalBytesSent() == blob.count)
        }
    }

    /// Issue "Security, part 1", finding 11: a download of unknown length had no size cap, so an origin could fill
    /// the disk. A stated length over the limit is refused before any GET; an unknown-length stream is cut off.
    @Test func anObjectOverTheSizeLimitIsRefusedAndAnEndlessStreamIsCutOff() async throws {
        let pieceLength = Self.mebibyte
        let blob = randomBytes(count: 3 * pieceLength + 100, seed: 13)
        try await withNginxOrigin { origin in
            try origin.writeFile("big.bin", contents: blob)
            try await withHTTPSource { client in
                let request = SourceRequest(url: origin.url(for: "big.bin"))
                let metadata = try await client.stat(request)
                let fetcher = PieceFetcher(
                    client: client, config: PieceFetcherConfig(maximumContentLength: Int64(2 * pieceLength)))
                let stated = await #expect(throws: DragonflyError.self) {
                    try await fetcher.fetch(
                        request, metadata: metadata, pieceLength: Int64(pieceLength), consumer: PieceSink().consumer)
                }
                #expect(stated?.code == .resourceExhausted)
                #expect(stated?.message.contains("download.maxContentLength") == true)
                #expect(try origin.accessLog().filter { $0.method == "GET" }.isEmpty, "nothing was read")

                var unknown = metadata
                unknown.contentLength = nil
                unknown.supportsRanges = false
                let sink = PieceSink()
                let streamed = await #expect(throws: DragonflyError.self) {
                    try await fetcher.fetch(
                        request, metadata: unknown, pieceLength: Int64(pieceLength), consumer: sink.consumer)
                }
                #expect(streamed?.code == .resourceExhausted)
                #expect(sink.pieces.count <= 2, "at most the limit's pieces were kept")
            }
        }
    }

    @Test func aSubsetFetchesOnlyThosePieces() async throws {
        let pieceLength = Self.mebibyte
        let blob = randomBytes(count: 10 * pieceLength + 12345, seed: 11)
        let wanted: Set<Int> = [1, 3, 4, 10]
        try await withNginxOrigin { origin in
            try origin.writeFile("blob.bin", contents: blob)
            try await withHTTPSource { client in
                let request = SourceRequest(url: origin.url(for: "blob.bin"))
                let metadata = try await client.stat(request)
                let sink = PieceSink()
                let summary = try await PieceFetcher(client: client).fetch(
                    request, metadata: metadata, pieceLength: Int64(pieceLength), pieces: wanted,
                    consumer: sink.consumer)
                #expect(Set(sink.pieces.keys) == wanted)
                for number in wanted {
                    #expect(sink.pieces[number] == piece(number, of: blob, pieceLength: pieceLength))
                }
                #expect(summary.deliveredPieces == 4)
                #expect(summary.pieceCount == 11)
            }
            let gets = try await accessLog(of: origin, count: 1 + wanted.count).filter { $0.method == "GET" }
            let expected = wanted.map { rangeHeader(ofPiece: $0, pieceLength: pieceLength, total: blob.count) }
            #expect(Set(gets.compactMap(\.range)) == Set(expected))
            #expect(gets.reduce(0) { $0 + $1.bytesSent } == 3 * pieceLength + 12345)
        }
    }

    @Test func urgentPiecesAreRequestedBeforeTheQueuedOnes() async throws {
        let pieceLength = Self.mebibyte
        let blob = randomBytes(count: 10 * pieceLength, seed: 12)
        try await withNginxOrigin { origin in
            try origin.writeFile("blob.bin", contents: blob)
            try await withHTTPSource { client in
                let request = SourceRequest(url: origin.url(for: "blob.bin"))
                let metadata = try await client.stat(request)
                let sink = PieceSink()
                // One connection and one piece per request: the request order is the order the queue hands out.
                let config = PieceFetcherConfig(
                    concurrency: 1, maximumBytesPerRequest: Int64(pieceLength), urgentPieces: { [7, 3] })
                _ = try await PieceFetcher(client: client, config: config).fetch(
                    request, metadata: metadata, pieceLength: Int64(pieceLength), consumer: sink.consumer)
                #expect(sink.reassembled == blob)
            }
            let gets = try await accessLog(of: origin, count: 11).filter { $0.method == "GET" }
            let expected = [3, 7, 0, 1, 2, 4, 5, 6, 8, 9].map {
                rangeHeader(ofPiece: $0, pieceLength: pieceLength, total: blob.count)
            }
            #expect(gets.compactMap(\.range) == expected)
        }
    }

    @Test func anOriginThatIgnoresRangesIsReadAsOneStream() async throws {
        let pieceLength = Self.mebibyte
        let blob = randomBytes(count: 6 * pieceLength + 99, seed: 5)
        try await withNginxOrigin { origin in
            try origin.writeFile("blob.bin", contents: blob)
            try await withHTTPSource { client in
                let request = SourceRequest(url: origin.rangeIgnoringURL(for: "blob.bin"))
                // The stat is honest here (no Accept-Ranges); claim range support as a lying origin would, so
                // the range requests are answered with 200 and the whole body.
                var metadata = try await client.stat(request)
                #expect(!metadata.supportsRanges)
                metadata.supportsRanges = true

                let all = PieceSink()
                let fetcher = PieceFetcher(client: client, config: PieceFetcherConfig(concurrency: 4))
                let summary = try await fetcher.fetch(
                    request, metadata: metadata, pieceLength: Int64(pieceLength), consumer: all.consumer)
                #expect(all.reassembled == blob)
                #expect(all.duplicates.isEmpty)
                #expect(summary.usedSingleStream)
                #expect(summary.deliveredPieces == 7)
                for (number, bytes) in all.pieces {
                    #expect(bytes == piece(number, of: blob, pieceLength: pieceLength))
                }

                let some = PieceSink()
                _ = try await fetcher.fetch(
                    request, metadata: metadata, pieceLength: Int64(pieceLength), pieces: [2, 4],
                    consumer: some.consumer)
                #expect(Set(some.pieces.keys) == [2, 4])
                #expect(some.pieces[2] == piece(2, of: blob, pieceLength: pieceLength))
                #expect(some.pieces[4] == piece(4, of: blob, pieceLength: pieceLength))
            }
        }
    }

    @Test func anOriginWithoutRangeSupportIsReadAsOneStreamWithOneRequest() async throws {
        let pieceLength = Self.mebibyte
        let blob = randomBytes(count: 5 * pieceLength, seed: 9)
        try await withNginxOrigin { origin in
            try origin.writeFile("blob.bin", contents: blob)
            try await withHTTPSource { client in
                let request = SourceRequest(url: origin.rangeIgnoringURL(for: "blob.bin"))
                let metadata = try await client.stat(request)
                let sink = PieceSink()
                let summary = try await PieceFetcher(client: client).fetch(
                    request, metadata: metadata, pieceLength: Int64(pieceLength), consumer: sink.consumer)
                #expect(sink.reassembled == blob)
                #expect(summary.requests == 1)
                #expect(summary.usedSingleStream)
            }
            let gets = try await accessLog(of: origin, count: 2).filter { $0.method == "GET" }
            #expect(gets.map(\.range) == [nil])
        }
    }

    @Test func anUnknownLengthIsCutIntoPiecesUntilTheEnd() async throws {
        let pieceLength = Self.mebibyte
        let blob = randomBytes(count: 3 * pieceLength + 4321, seed: 13)
        try await withNginxOrigin { origin in
            try origin.writeFile("blob.bin", contents: blob)
            try await withHTTPSource { client in
                let request = SourceRequest(url: origin.url(for: "blob.bin"))
                let metadata = SourceMetadata(contentLength: nil, supportsRanges: false)
                let sink = PieceSink()
                let summary = try await PieceFetcher(client: client).fetch(
                    request, metadata: metadata, pieceLength: Int64(pieceLength), consumer: sink.consumer)
                #expect(sink.reassembled == blob)
                #expect(sink.pieces[3]?.count == 4321)
                #expect(summary.contentLength == Int64(blob.count))
                #expect(summary.pieceCount == 4)
                #expect(summary.deliveredPieces == 4)
            }
        }
    }

    @Test func aTransientFailureOfOnePieceIsRetried() async throws {
        let pieceLength = Self.mebibyte
        let blob = randomBytes(count: 8 * pieceLength, seed: 21)
        try await withNginxOrigin { origin in
            try origin.writeFile("blob.bin", contents: blob)
            try await withHTTPSource { client in
                // Fault injection over the real origin: the first two requests for piece 3 go to nginx's
                // /status/503 location instead of the file.
                let flaky = FailingSource(
                    base: client, failingStart: Int64(3 * pieceLength), failures: 2, failureURL: origin.statusURL(503))
                let request = SourceRequest(url: origin.url(for: "blob.bin"))
                let metadata = try await client.stat(request)
                let sink = PieceSink()
                let fetcher = PieceFetcher(
                    client: flaky,
                    config: PieceFetcherConfig(
                        concurrency: 4,
                        retry: RetryPolicy(
                            maximumAttempts: 3, initialBackoff: .milliseconds(5), maximumBackoff: .milliseconds(20))))
                let summary = try await fetcher.fetch(
                    request, metadata: metadata, pieceLength: Int64(pieceLength), consumer: sink.consumer)
                #expect(sink.reassembled == blob)
                #expect(summary.retries == 2)
                #expect(summary.requests == 10)
            }
            let log = try await accessLog(of: origin, count: 11)
            let failed = log.filter { $0.status == 503 }
            #expect(failed.count == 2)
            #expect(
                failed.allSatisfy { $0.range == rangeHeader(ofPiece: 3, pieceLength: pieceLength, total: blob.count) })
        }
    }

    @Test func aPersistentServerErrorFailsAfterExactlyTheAttemptLimit() async throws {
        try await withNginxOrigin { origin in
            try await withHTTPSource { client in
                let url = origin.statusURL(503)
                let metadata = SourceMetadata(contentLength: Int64(Self.mebibyte), supportsRanges: true)
                let error = try await #require(throws: DragonflyError.self) {
                    try await PieceFetcher(client: client, config: PieceFetcherConfig(retry: Self.quickRetry)).fetch(
                        SourceRequest(url: url), metadata: metadata, pieceLength: Int64(Self.mebibyte)
                    ) { _, _ in }
                }
                #expect(error.code == .originError)
                #expect(error.message.contains("piece 0 of \(url) failed after 3 attempts"))
                #expect((error.cause as? OriginResponseError)?.status == 503)
            }
            let log = try await accessLog(of: origin, count: 3)
            #expect(log.count == 3)
            #expect(log.allSatisfy { $0.uri == "/status/503" })
        }
    }

    @Test func aClientErrorIsNotRetried() async throws {
        try await withNginxOrigin { origin in
            try await withHTTPSource { client in
                let url = origin.statusURL(404)
                let metadata = SourceMetadata(contentLength: Int64(Self.mebibyte), supportsRanges: true)
                let error = try await #require(throws: DragonflyError.self) {
                    try await PieceFetcher(client: client, config: PieceFetcherConfig(retry: Self.quickRetry)).fetch(
                        SourceRequest(url: url), metadata: metadata, pieceLength: Int64(Self.mebibyte)
                    ) { _, _ in }
                }
                #expect(error.code == .originError)
                #expect(error.message.hasPrefix("origin returned 404 Not Found for \(url)"))
                #expect((error.cause as? OriginResponseError)?.status == 404)
            }
            let log = try await accessLog(of: origin, count: 1)
            #expect(log.count == 1)
        }
    }

    @Test func aRefusedConnectionFailsAfterExactlyTheAttemptLimit() async throws {
        let port = try freeLoopbackPort()
        let url = "http://127.0.0.1:\(port)/blob.bin"
        try await withHTTPSource { client in
            let metadata = SourceMetadata(contentLength: Int64(Self.mebibyte), supportsRanges: true)
            let error = try await #require(throws: DragonflyError.self) {
                try await PieceFetcher(client: client, config: PieceFetcherConfig(retry: Self.quickRetry)).fetch(
                    SourceRequest(url: url), metadata: metadata, pieceLength: Int64(Self.mebibyte)
                ) { _, _ in }
            }
            #expect(error.code == .unavailable)
            #expect(error.message.contains("piece 0 of \(url) failed after 3 attempts"))
            #expect(error.message.contains("127.0.0.1"))
        }
    }

    @Test func aConsumerErrorEndsTheFetchUnchanged() async throws {
        struct StoreFull: Error {}
        let blob = randomBytes(count: 4 * Self.mebibyte, seed: 2)
        try await withNginxOrigin { origin in
            try origin.writeFile("blob.bin", contents: blob)
            try await withHTTPSource { client in
                let request = SourceRequest(url: origin.url(for: "blob.bin"))
                let metadata = try await client.stat(request)
                await #expect(throws: StoreFull.self) {
                    try await PieceFetcher(client: client, config: PieceFetcherConfig(retry: Self.quickRetry)).fetch(
                        request, metadata: metadata, pieceLength: Int64(Self.mebibyte)
                    ) { _, _ in throw StoreFull() }
                }
            }
        }
    }

    @Test func pieceNumbersOutsideTheObjectAreRejected() async throws {
        try await withHTTPSource { client in
            let metadata = SourceMetadata(contentLength: 10, supportsRanges: true)
            let error = try await #require(throws: DragonflyError.self) {
                try await PieceFetcher(client: client).fetch(
                    SourceRequest(url: "http://127.0.0.1:1/x"), metadata: metadata, pieceLength: 4, pieces: [3]
                ) { _, _ in }
            }
            #expect(error.code == .invalidArgument)
        }
    }

    @Test func theRateLimitBoundsTheReadSpeed() async throws {
        let blob = randomBytes(count: 2 * Self.mebibyte, seed: 4)
        try await withNginxOrigin { origin in
            try origin.writeFile("blob.bin", contents: blob)
            try await withHTTPSource { client in
                let request = SourceRequest(url: origin.url(for: "blob.bin"))
                let metadata = try await client.stat(request)
                // 4 MiB/s with a 256 KiB burst: 2 MiB cannot arrive in much less than (2 MiB - 256 KiB) / 4 MiB/s.
                let bucket = TokenBucket(rate: 4 << 20, burst: 256 << 10)
                let sink = PieceSink()
                let started = ContinuousClock.now
                _ = try await PieceFetcher(client: client, config: PieceFetcherConfig(rateLimiter: bucket)).fetch(
                    request, metadata: metadata, pieceLength: 256 << 10, consumer: sink.consumer)
                let elapsed = ContinuousClock.now - started
                #expect(sink.reassembled == blob)
                #expect(elapsed >= .milliseconds(400))
            }
        }
    }

    @Test func cancellationStopsAFetchPromptly() async throws {
        let blob = randomBytes(count: 4 * Self.mebibyte, seed: 8)
        try await withNginxOrigin { origin in
            try origin.writeFile("blob.bin", contents: blob)
            try await withHTTPSource { client in
                // 128 KiB/s: the whole object would take 32 s; the fetch is cancelled after the first piece.
                let request = SourceRequest(url: origin.rateLimitedURL(for: "blob.bin", bytesPerSecond: 128 << 10))
                let metadata = SourceMetadata(contentLength: Int64(blob.count), supportsRanges: true)
                let (firstPiece, signal) = AsyncStream<Void>.makeStream()
                let fetch = Task {
                    try await PieceFetcher(client: client).fetch(
                        request, metadata: metadata, pieceLength: 64 << 10
                    ) { _, _ in signal.yield() }
                }
                var iterator = firstPiece.makeAsyncIterator()
                await iterator.next()
                let started = ContinuousClock.now
                fetch.cancel()
                await #expect(throws: CancellationError.self) { try await fetch.value }
                #expect(ContinuousClock.now - started < .seconds(15), "the cancelled fetch ran on")
            }
        }
    }
}

/// A real HTTP source whose first `failures` requests for the range starting at `failingStart` are sent to
/// `failureURL` (an nginx error location) instead: fault injection over real I/O, not a mock of the origin.
struct FailingSource: SourceClient {
    let base: HTTPSourceClient
    let failingStart: Int64
    let failureURL: String
    private let remaining: Remaining

    init(base: HTTPSourceClient, failingStart: Int64, failures: Int, failureURL: String) {
        self.base = base
        self.failingStart = failingStart
        self.failureURL = failureURL
        self.remaining = Remaining(failures)
    }

    var schemes: [String] { base.schemes }

    func stat(_ request: SourceRequest) async throws -> SourceMetadata {
        try await base.stat(request)
    }

    func fetch(_ request: SourceRequest, range: ByteRange?) async throws -> SourceResponse {
        if range?.start == failingStart, remaining.take() {
            return try await base.fetch(SourceRequest(url: failureURL), range: range)
        }
        return try await base.fetch(request, range: range)
    }

    private final class Remaining: Sendable {
        private let count: Mutex<Int>
        init(_ count: Int) { self.count = Mutex(count) }
        func take() -> Bool {
            count.withLock { count in
                guard count > 0 else { return false }
                count -= 1
                return true
            }
        }
    }
}
