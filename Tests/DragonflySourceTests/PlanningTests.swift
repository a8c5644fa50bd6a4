import DragonflyCore
import Testing

@testable import DragonflySource

@Suite("piece plans, retries, rate limits and parsers (no I/O)")
struct PlanningTests {
    // MARK: PiecePlan

    @Test func smallObjectsGetOneRequestPerPiece() {
        let perRequest = PiecePlan.piecesPerRequest(
            neededCount: 10, pieceLength: 4 << 20, concurrency: 4, maximumBytesPerRequest: 64 << 20)
        #expect(perRequest == 1)
        #expect(PiecePlan.runs(of: 0..<10, maximumCount: perRequest).count == 10)
    }

    @Test func largeObjectsGetRunsCappedByBytesAndBalance() {
        // 1 GiB in 4 MiB pieces over 4 connections: 64 MiB per request, 16 requests.
        #expect(
            PiecePlan.piecesPerRequest(
                neededCount: 256, pieceLength: 4 << 20, concurrency: 4, maximumBytesPerRequest: 64 << 20) == 16)
        // 128 pieces: at least 4 requests per connection wins over the byte cap.
        #expect(
            PiecePlan.piecesPerRequest(
                neededCount: 128, pieceLength: 4 << 20, concurrency: 4, maximumBytesPerRequest: 64 << 20) == 8)
        // Pieces larger than the byte cap: still one piece per request.
        #expect(
            PiecePlan.piecesPerRequest(
                neededCount: 1000, pieceLength: 128 << 20, concurrency: 4, maximumBytesPerRequest: 64 << 20) == 1)
    }

    @Test func runsFollowConsecutivePiecesAndTheirCap() {
        #expect(
            PiecePlan.runs(of: [9, 1, 2, 3, 4, 5, 7], maximumCount: 3) == [
                PieceRun(first: 1, count: 3), PieceRun(first: 4, count: 2), PieceRun(first: 7, count: 1),
                PieceRun(first: 9, count: 1),
            ])
        #expect(PiecePlan.runs(of: [2, 2, 3], maximumCount: 8) == [PieceRun(first: 2, count: 2)])
        #expect(PiecePlan.runs(of: [Int](), maximumCount: 8).isEmpty)
    }

    // MARK: RetryPolicy

    @Test func onlyTransientFailuresAreRetried() {
        let policy = RetryPolicy()
        func origin(_ status: Int) -> DragonflyError {
            DragonflyError(
                code: .originError, message: "x", cause: OriginResponseError(status: status, reason: "r"))
        }
        #expect(policy.isRetryable(DragonflyError(code: .unavailable, message: "refused")))
        #expect(policy.isRetryable(DragonflyError(code: .deadlineExceeded, message: "slow")))
        for status in [408, 429, 500, 502, 503, 504] {
            #expect(policy.isRetryable(origin(status)))
        }
        for status in [400, 401, 403, 404, 410, 416] {
            #expect(!policy.isRetryable(origin(status)))
        }
        #expect(!policy.isRetryable(DragonflyError(code: .originError, message: "changed")))
        #expect(!policy.isRetryable(DragonflyError(code: .invalidArgument, message: "bad")))
        #expect(!policy.isRetryable(CancellationError()))
    }

    @Test func backoffGrowsExponentiallyWithBoundedJitter() {
        let policy = RetryPolicy(maximumAttempts: 10, initialBackoff: .milliseconds(100), maximumBackoff: .seconds(1))
        #expect(policy.backoff(afterFailure: 1, unit: 0) == .milliseconds(50))
        #expect(policy.backoff(afterFailure: 1, unit: 1) == .milliseconds(100))
        #expect(policy.backoff(afterFailure: 3, unit: 0) == .milliseconds(200))
        #expect(policy.backoff(afterFailure: 3, unit: 1) == .milliseconds(400))
        #expect(policy.backoff(afterFailure: 9, unit: 1) == .seconds(1))
        #expect(policy.backoff(afterFailure: 200, unit: 1) == .seconds(1))
        for _ in 0..<100 {
            let wait = policy.backoff(afterFailure: 2)
            #expect(wait >= .milliseconds(100) && wait <= .milliseconds(200))
        }
    }

    @Test func retryAfterIsHonouredUpToTheMaximum() {
        let policy = RetryPolicy(initialBackoff: .milliseconds(100), maximumBackoff: .seconds(5))
        func busy(_ seconds: String) -> DragonflyError {
            DragonflyError(
                code: .originError, message: "busy",
                cause: OriginResponseError(
                    status: 503, reason: "Service Unavailable",
                    headers: [HeaderField(name: "Retry-After", value: seconds)]))
        }
        #expect(policy.backoff(afterFailure: 1, error: busy("2"), unit: 0) == .seconds(2))
        #expect(policy.backoff(afterFailure: 1, error: busy("60"), unit: 0) == .seconds(5))
        #expect(policy.backoff(afterFailure: 1, error: busy("soon"), unit: 0) == .milliseconds(50))
    }

    // MARK: TokenBucketState

    @Test func tokenBucketAllowsTheBurstThenPacesAtTheRate() {
        let start = ContinuousClock.now
        var bucket = TokenBucketState(rate: 1000, burst: 500, now: start)
        #expect(bucket.reserve(500, at: start) == .zero)
        #expect(bucket.reserve(250, at: start) == .milliseconds(250))
        // Later callers queue behind the debt.
        #expect(bucket.reserve(250, at: start) == .milliseconds(500))
        // After the debt is repaid and a second of refill, at most the burst is available.
        #expect(bucket.reserve(500, at: start.advanced(by: .seconds(2))) == .zero)
        let tookMore = bucket.take(1, at: start.advanced(by: .seconds(2)))
        #expect(!tookMore)
    }

    @Test func tokenBucketRefundsCancelledReservations() {
        let start = ContinuousClock.now
        var bucket = TokenBucketState(rate: 100, burst: 100, now: start)
        #expect(bucket.reserve(300, at: start) == .seconds(2))
        bucket.refund(300)
        let took = bucket.take(100, at: start)
        #expect(took)
    }

    @Test func tokenBucketTakesTokensWithoutWaitingWhenAvailable() async throws {
        let bucket = TokenBucket(rate: 1 << 20)
        #expect(bucket.tryAcquire(1 << 19))
        try await bucket.acquire(1 << 19)
        #expect(!bucket.tryAcquire(1 << 19))
    }

    // MARK: Parsers

    @Test func contentRangeHeadersAreParsed() {
        #expect(ContentRange("bytes 0-0/1234") == ContentRange(first: 0, last: 0, total: 1234))
        #expect(ContentRange("bytes 100-199/*") == ContentRange(first: 100, last: 199, total: nil))
        #expect(ContentRange("bytes */0") == ContentRange(first: nil, last: nil, total: 0))
        #expect(ContentRange("Bytes 5-9/10 ") == ContentRange(first: 5, last: 9, total: 10))
        for bad in ["bytes 9-5/10", "bytes 5-10/10", "items 0-1/2", "bytes */*", "bytes 0-1", "bytes -1-2/5"] {
            #expect(ContentRange(bad) == nil)
        }
    }

    @Test func urlPartsNameSchemeHostAndPort() throws {
        let plain = try #require(URLParts("http://User:pw@Example.COM/a?b"))
        #expect(plain.scheme == "http")
        #expect(plain.host == "example.com")
        #expect(plain.port == 80)
        #expect(plain.origin == "http://example.com:80")
        let v6 = try #require(URLParts("https://[::1]:8443/x"))
        #expect(v6.host == "::1")
        #expect(v6.port == 8443)
        #expect(URLParts("https://h")?.port == 443)
        #expect(URLParts("no-scheme") == nil)
    }

    @Test func httpDatesAreIMFFixdates() {
        #expect(HTTPDate.format(secondsSinceEpoch: 0) == "Thu, 01 Jan 1970 00:00:00 GMT")
        #expect(HTTPDate.format(secondsSinceEpoch: 784_111_777) == "Sun, 06 Nov 1994 08:49:37 GMT")
        #expect(HTTPDate.format(secondsSinceEpoch: 1_709_210_096) == "Thu, 29 Feb 2024 12:34:56 GMT")
    }

    @Test func lruCacheEvictsTheLeastRecentlyUsed() {
        var cache = LRUCache<String, Int>(capacity: 2)
        cache.setValue(1, forKey: "a")
        cache.setValue(2, forKey: "b")
        #expect(cache.value(forKey: "a") == 1)
        cache.setValue(3, forKey: "c")
        #expect(cache.value(forKey: "b") == nil)
        #expect(cache.value(forKey: "a") == 1)
        #expect(cache.value(forKey: "c") == 3)
        #expect(cache.count == 2)
        cache.removeValue(forKey: "a")
        #expect(cache.count == 1)
    }
}

@Suite("built-in source registration")
struct RegistrationTests {
    @Test func registersHTTPAndFileOnceOnly() async throws {
        let registry = PluginRegistry()
        let sources = try registerBuiltinSources(into: registry)
        #expect(registry.sourceSchemes == ["file", "http", "https"])
        #expect(try registry.sourceClient(forURL: "https://example.com/x") is HTTPSourceClient)
        #expect(try registry.sourceClient(forURL: "file:///tmp/x") is FileSourceClient)

        let again = try #require(throws: DragonflyError.self) { try registerBuiltinSources(into: registry) }
        #expect(again.code == .alreadyExists)
        try await sources.shutdown()
    }
}
