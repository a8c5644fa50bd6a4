import Synchronization

/// The arithmetic of a token bucket, without a clock or locks, so it can be tested with made-up instants.
///
/// Tokens refill continuously at `rate` per second up to `burst`. ``reserve(_:at:)`` always succeeds: it takes
/// the tokens even when that leaves the bucket in debt and returns how long the caller must wait for the debt
/// to be repaid. Because later callers see the debt, concurrent callers are served in arrival order and a
/// request larger than `burst` is allowed (it just waits longer).
package struct TokenBucketState: Sendable {
    /// Tokens per second.
    package let rate: Int64
    /// The most tokens that can be saved up.
    package let burst: Int64
    /// Current tokens; negative while callers are waiting on a debt.
    package private(set) var tokens: Double
    private var updated: ContinuousClock.Instant

    /// A bucket that starts full at `now`.
    package init(rate: Int64, burst: Int64, now: ContinuousClock.Instant) {
        precondition(rate > 0, "a token bucket needs a positive rate")
        precondition(burst > 0, "a token bucket needs a positive burst")
        self.rate = rate
        self.burst = burst
        self.tokens = Double(burst)
        self.updated = now
    }

    /// Takes `count` tokens at `now` and returns how long to wait before using them (zero when available).
    package mutating func reserve(_ count: Int64, at now: ContinuousClock.Instant) -> Duration {
        refill(at: now)
        tokens -= Double(max(count, 0))
        guard tokens < 0 else { return .zero }
        return .nanoseconds(Int64((-tokens / Double(rate) * 1e9).rounded(.up)))
    }

    /// Takes `count` tokens only if they are available now.
    package mutating func take(_ count: Int64, at now: ContinuousClock.Instant) -> Bool {
        refill(at: now)
        guard tokens >= Double(count) else { return false }
        tokens -= Double(count)
        return true
    }

    /// Gives back tokens reserved by a caller that will not use them (it was cancelled while waiting).
    package mutating func refund(_ count: Int64) {
        tokens = min(tokens + Double(max(count, 0)), Double(burst))
    }

    private mutating func refill(at now: ContinuousClock.Instant) {
        guard now > updated else { return }
        let elapsed = updated.duration(to: now)
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) * 1e-18
        tokens = min(tokens + seconds * Double(rate), Double(burst))
        updated = now
    }
}

/// A token-bucket rate limiter shared by concurrent tasks, e.g. the bytes per second read from an origin
/// (`get --ratelimit`) or served to peers.
///
/// Callers ``acquire(_:)`` the tokens for what they are about to use, or have just used, and are suspended
/// until the rate allows it. Waiting honours task cancellation (the reserved tokens are given back).
package final class TokenBucket: Sendable {
    /// Tokens per second.
    package let rate: Int64
    /// The most tokens that can be saved up (the largest burst at full speed).
    package let burst: Int64
    private let state: Mutex<TokenBucketState>

    /// A full bucket refilling at `rate` tokens per second; `burst` defaults to one second's worth.
    package init(rate: Int64, burst: Int64? = nil) {
        precondition(rate > 0, "a token bucket needs a positive rate")
        let burst = max(burst ?? rate, 1)
        self.rate = rate
        self.burst = burst
        self.state = Mutex(TokenBucketState(rate: rate, burst: burst, now: .now))
    }

    /// Takes `count` tokens, waiting until the rate allows them.
    ///
    /// - Throws: `CancellationError` when the task is cancelled while waiting.
    package func acquire(_ count: Int64) async throws {
        guard count > 0 else { return }
        let wait = state.withLock { $0.reserve(count, at: .now) }
        guard wait > .zero else { return }
        do {
            try await Task.sleep(for: wait, tolerance: .milliseconds(1))
        } catch {
            state.withLock { $0.refund(count) }
            throw error
        }
    }

    /// Takes `count` tokens if they are available now, without waiting.
    package func tryAcquire(_ count: Int64) -> Bool {
        state.withLock { $0.take(count, at: .now) }
    }
}
