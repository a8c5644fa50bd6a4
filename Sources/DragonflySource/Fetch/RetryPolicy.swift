import DragonflyCore

/// When and how long to wait before asking the origin again for a piece.
///
/// Retried: unreachable origins, timeouts and broken streams (``DragonflyError/Code/unavailable``,
/// ``DragonflyError/Code/deadlineExceeded``) and error statuses that may pass (408, 429, 5xx). Never
/// retried: other 4xx statuses, bad arguments, consumer failures and cancellation. Waits grow exponentially
/// from ``initialBackoff`` up to ``maximumBackoff`` with "equal jitter" (half fixed, half random) so that
/// peers failing together do not come back together; a `Retry-After` in seconds is honoured up to
/// ``maximumBackoff``.
package struct RetryPolicy: Sendable, Hashable {
    /// Attempts per piece, the first included (1 means no retry).
    package var maximumAttempts: Int
    /// The wait after the first failure.
    package var initialBackoff: Duration
    /// The longest wait between two attempts.
    package var maximumBackoff: Duration

    package init(
        maximumAttempts: Int = 5,
        initialBackoff: Duration = .milliseconds(200),
        maximumBackoff: Duration = .seconds(10)
    ) {
        self.maximumAttempts = max(maximumAttempts, 1)
        self.initialBackoff = initialBackoff
        self.maximumBackoff = max(maximumBackoff, initialBackoff)
    }

    /// Whether `error` may pass if the request is sent again.
    package func isRetryable(_ error: any Error) -> Bool {
        guard let error = error as? DragonflyError else { return false }
        switch error.code {
        case .unavailable, .deadlineExceeded:
            return true
        case .originError:
            return (error.cause as? OriginResponseError)?.isTemporary ?? false
        default:
            return false
        }
    }

    /// The wait after the `failures`-th consecutive failure of a piece (1-based), with `unit` a random
    /// number in `0...1` for the jitter.
    package func backoff(afterFailure failures: Int, error: (any Error)? = nil, unit: Double) -> Duration {
        let exponent = min(max(failures - 1, 0), 30)
        let growth = initialBackoff * (1 << exponent)
        let base = growth > maximumBackoff || growth < initialBackoff ? maximumBackoff : growth
        var wait = base / 2 + (base / 2) * min(max(unit, 0), 1)
        if let retryAfter = Self.retryAfter(error) {
            wait = max(wait, min(retryAfter, maximumBackoff))
        }
        return wait
    }

    /// The wait before a retry, with random jitter.
    package func backoff(afterFailure failures: Int, error: (any Error)? = nil) -> Duration {
        backoff(afterFailure: failures, error: error, unit: Double.random(in: 0...1))
    }

    /// `Retry-After: <seconds>` of an origin error response (the HTTP-date form is ignored).
    private static func retryAfter(_ error: (any Error)?) -> Duration? {
        guard let origin = (error as? DragonflyError)?.cause as? OriginResponseError,
            let value = origin.headers.first(where: { $0.name.lowercased() == "retry-after" })?.value,
            let seconds = Int(value.filter { $0 != " " }), seconds >= 0
        else { return nil }
        return .seconds(seconds)
    }
}
