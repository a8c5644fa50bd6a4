import DragonflyCore
import DragonflyProto
import DragonflyRPC
import DragonflyTestSupport
import GRPCCore
import Synchronization
import Testing

/// `withRetry` is bounded by attempts and by its deadline, and retries only transient failures.
@Suite(.timeLimit(.minutes(2)))
struct RetryTests {
    @Test func deadPortFailsAfterExactlyMaxAttempts() async throws {
        // Nothing listens on a port that was just free (our own servers never take fixed ports).
        let port = try freeLoopbackPort()
        let attempts = Mutex(0)
        let error = try await withRPCClient(target: "127.0.0.1:\(port)", logger: Fixtures.logger) { client in
            let peer = Dragonfly_V1_Peer.Client(wrapping: client)
            return await #expect(throws: RPCError.self) {
                try await withRetry(
                    maxAttempts: 3,
                    initialBackoff: .milliseconds(10),
                    maxBackoff: .milliseconds(40),
                    deadline: .now.advanced(by: .seconds(30))
                ) { attempt in
                    attempts.withLock { $0 += 1 }
                    #expect(attempt.number == attempts.withLock { $0 })
                    var options = CallOptions.defaults
                    options.timeout = attempt.remaining
                    return try await peer.health(Dragonfly_V1_HealthRequest(), options: options)
                }
            }
        }
        #expect(error?.code == .unavailable)
        #expect(attempts.withLock { $0 } == 3)
    }

    @Test func succeedsOnTheThirdAttempt() async throws {
        var attempts = 0
        let value = try await withRetry(maxAttempts: 5, initialBackoff: .milliseconds(1)) { attempt in
            attempts += 1
            if attempt.number < 3 {
                throw DragonflyError(code: .unavailable, message: "scheduler restarting")
            }
            return "ok after \(attempt.number)"
        }
        #expect(value == "ok after 3")
        #expect(attempts == 3)
    }

    @Test func nonTransientErrorIsNotRetried() async throws {
        var attempts = 0
        let error = await #expect(throws: DragonflyError.self) {
            try await withRetry(maxAttempts: 5, initialBackoff: .milliseconds(1)) { _ in
                attempts += 1
                throw DragonflyError(code: .notFound, message: "no such task")
            }
        }
        #expect(error?.code == .notFound)
        #expect(attempts == 1)
    }

    @Test(.timeLimit(.minutes(1))) func deadlineBoundsAttemptsBeforeMaxAttempts() async throws {
        let clock = ContinuousClock()
        let start = clock.now
        var attempts = 0
        await #expect(throws: RPCError.self) {
            try await withRetry(
                maxAttempts: 10_000,
                initialBackoff: .milliseconds(10),
                maxBackoff: .milliseconds(20),
                deadline: start.advanced(by: .milliseconds(300))
            ) { _ in
                attempts += 1
                throw RPCError(code: .unavailable, message: "down")
            }
        }
        // 10 000 attempts with ≥ 10 ms backoff would take minutes: the deadline, not the attempt limit, ended it.
        #expect(attempts > 1)
        #expect(attempts < 10_000)
    }

    @Test func backoffGrowsExponentiallyUpToTheCap() {
        let policy = RPCRetryPolicy(
            maxAttempts: 10,
            initialBackoff: .milliseconds(100),
            maxBackoff: .seconds(1),
            multiplier: 2
        )
        #expect(policy.backoffBound(beforeRetry: 1) == .milliseconds(100))
        #expect(policy.backoffBound(beforeRetry: 2) == .milliseconds(200))
        #expect(policy.backoffBound(beforeRetry: 3) == .milliseconds(400))
        #expect(policy.backoffBound(beforeRetry: 5) == .seconds(1))
        #expect(policy.backoffBound(beforeRetry: 50) == .seconds(1))
        for retry in 1...6 {
            let wait = policy.backoff(beforeRetry: retry)
            let bound = policy.backoffBound(beforeRetry: retry)
            #expect(wait <= bound && wait >= bound / 2, "jittered wait \(wait) outside [\(bound / 2), \(bound)]")
        }
    }

    @Test func invalidPolicyValuesAreClamped() {
        let policy = RPCRetryPolicy(maxAttempts: 0, initialBackoff: .zero, maxBackoff: .zero, multiplier: 0)
        #expect(policy.maxAttempts == 1)
        #expect(policy.initialBackoff > .zero)
        #expect(policy.maxBackoff >= policy.initialBackoff)
        #expect(policy.multiplier == 1)
    }
}
