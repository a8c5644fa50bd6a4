import DragonflyCore
import GRPCCore
package import Logging

/// Bounded exponential backoff with jitter: how often and how patiently to retry a transient failure.
///
/// The wait before retry `n` (n ≥ 1) is drawn uniformly from `[b/2, b]` with
/// `b = min(maxBackoff, initialBackoff · multiplier^(n-1))`, so many clients that failed together spread out.
package struct RPCRetryPolicy: Sendable, Hashable {
    /// Attempts in total, the first one included; at least 1.
    package var maxAttempts: Int
    /// Upper bound of the first wait.
    package var initialBackoff: Duration
    /// Upper bound of every wait.
    package var maxBackoff: Duration
    /// Growth of the wait bound per attempt; at least 1.
    package var multiplier: Double

    package init(
        maxAttempts: Int = 3,
        initialBackoff: Duration = .milliseconds(100),
        maxBackoff: Duration = .seconds(2),
        multiplier: Double = 2
    ) {
        self.maxAttempts = max(1, maxAttempts)
        self.initialBackoff = max(.milliseconds(1), initialBackoff)
        self.maxBackoff = max(self.initialBackoff, maxBackoff)
        self.multiplier = max(1, multiplier)
    }

    /// Three attempts, 100 ms first wait, at most 2 s.
    package static let defaults = RPCRetryPolicy()

    /// The upper bound of the wait before retry `retry` (1 for the first retry).
    package func backoffBound(beforeRetry retry: Int) -> Duration {
        var seconds = initialBackoff.seconds
        let cap = maxBackoff.seconds
        var step = 1
        while step < retry && seconds < cap {
            seconds *= multiplier
            step += 1
        }
        return .seconds(min(seconds, cap))
    }

    /// A jittered wait before retry `retry`, in `[bound/2, bound]`.
    package func backoff(beforeRetry retry: Int) -> Duration {
        let bound = backoffBound(beforeRetry: retry).seconds
        return .seconds(Double.random(in: (bound / 2)...bound))
    }

    /// The same policy for gRPC's transparent retries of `UNAVAILABLE` (which caps attempts at 5); `nil` when it
    /// allows a single attempt only.
    var grpcRetryPolicy: RetryPolicy? {
        guard maxAttempts > 1 else { return nil }
        return RetryPolicy(
            maxAttempts: min(maxAttempts, 5),
            initialBackoff: initialBackoff,
            maxBackoff: maxBackoff,
            backoffMultiplier: multiplier,
            retryableStatusCodes: [.unavailable]
        )
    }
}

/// One attempt of a ``withRetry(policy:deadline:isRetryable:logger:operation:)`` loop.
package struct RetryAttempt: Sendable, Hashable {
    /// 1 for the first attempt.
    package var number: Int
    /// When the whole loop gives up; pass what remains as the call's timeout.
    package var deadline: ContinuousClock.Instant

    /// Time left until the deadline (zero once passed).
    package var remaining: Duration {
        max(.zero, ContinuousClock.now.duration(to: deadline))
    }
}

/// Whether an error is a transient unavailability worth retrying: `RPCError` `.unavailable` or
/// `DragonflyError` `.unavailable`.
package func isTransientUnavailability(_ error: any Error) -> Bool {
    switch error {
    case let error as RPCError: error.code == .unavailable
    case let error as DragonflyError: error.code == .unavailable
    default: false
    }
}

/// Runs `operation` until it succeeds, at most `maxAttempts` times and not past `deadline`, waiting with
/// exponential backoff and jitter between attempts. Only errors `isRetryable` accepts are retried; any other
/// error, cancellation, the last attempt's error, or an error when the next wait would pass the deadline is
/// rethrown unchanged.
package func withRetry<Value>(
    maxAttempts: Int = 3,
    initialBackoff: Duration = .milliseconds(100),
    maxBackoff: Duration = .seconds(2),
    deadline: ContinuousClock.Instant = .now.advanced(by: .seconds(30)),
    isRetryable: (any Error) -> Bool = isTransientUnavailability,
    logger: Logger? = nil,
    operation: (RetryAttempt) async throws -> Value
) async throws -> Value {
    try await withRetry(
        policy: RPCRetryPolicy(maxAttempts: maxAttempts, initialBackoff: initialBackoff, maxBackoff: maxBackoff),
        deadline: deadline,
        isRetryable: isRetryable,
        logger: logger,
        operation: operation
    )
}

/// Runs `operation` under `policy`; see ``withRetry(maxAttempts:initialBackoff:maxBackoff:deadline:isRetryable:logger:operation:)``.
package func withRetry<Value>(
    policy: RPCRetryPolicy,
    deadline: ContinuousClock.Instant = .now.advanced(by: .seconds(30)),
    isRetryable: (any Error) -> Bool = isTransientUnavailability,
    logger: Logger? = nil,
    operation: (RetryAttempt) async throws -> Value
) async throws -> Value {
    var number = 1
    while true {
        do {
            return try await operation(RetryAttempt(number: number, deadline: deadline))
        } catch {
            if error is CancellationError || Task.isCancelled || number >= policy.maxAttempts || !isRetryable(error) {
                throw error
            }
            let wait = policy.backoff(beforeRetry: number)
            guard ContinuousClock.now.advanced(by: wait) < deadline else {
                logger?.debug("retry deadline reached", metadata: ["df.rpc.attempt": "\(number)"])
                throw error
            }
            logger?.debug(
                "retrying after a transient failure",
                metadata: ["df.rpc.attempt": "\(number)", "df.rpc.backoff": "\(wait)", "df.rpc.error": "\(error)"]
            )
            try await Task.sleep(for: wait)
            number += 1
        }
    }
}

extension Duration {
    /// The duration in seconds as a floating-point number.
    fileprivate var seconds: Double {
        let (seconds, attoseconds) = components
        return Double(seconds) + Double(attoseconds) * 1e-18
    }
}
