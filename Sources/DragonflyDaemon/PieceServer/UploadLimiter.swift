package import DragonflyCore
import Synchronization

/// The upload budget of a daemon: a fixed number of concurrent piece responses (`upload.slots`) and a token
/// bucket of `upload.rateLimit` bytes per second, plus the counters a host announces (DESIGN §5, §6).
package final class UploadLimiter: Sendable {
    /// Concurrent piece responses before the server answers 429.
    package let slots: Int
    /// Shapes upload bandwidth; nil when unlimited.
    package let bucket: TokenBucket?

    private struct Counters {
        var slotsInUse = 0
        var uploadCount: UInt64 = 0
        var failedCount: UInt64 = 0
    }

    private let counters = Mutex(Counters())

    /// - Parameters:
    ///   - slots: Concurrent piece responses (at least 1).
    ///   - rateLimit: Bytes per second; 0 means unlimited.
    package init(slots: Int, rateLimit: Int64) {
        precondition(slots > 0, "upload slots must be positive")
        self.slots = slots
        self.bucket = rateLimit > 0 ? TokenBucket(rate: rateLimit) : nil
    }

    /// `upload.slots` and `upload.rateLimit` of a daemon configuration.
    package convenience init(config: DaemonConfig.UploadConfig) {
        self.init(slots: config.slots, rateLimit: config.rateLimit.bytes)
    }

    /// Takes a slot if one is free; pair every `true` with ``releaseSlot(succeeded:)``.
    package func tryAcquireSlot() -> Bool {
        counters.withLock { counters in
            guard counters.slotsInUse < slots else { return false }
            counters.slotsInUse += 1
            return true
        }
    }

    /// Gives a slot back and counts the upload as served or failed.
    package func releaseSlot(succeeded: Bool) {
        counters.withLock { counters in
            precondition(counters.slotsInUse > 0, "released an upload slot that was not taken")
            counters.slotsInUse -= 1
            if succeeded { counters.uploadCount += 1 } else { counters.failedCount += 1 }
        }
    }

    /// Waits until the rate limit allows `bytes` more (returns at once when unlimited).
    ///
    /// - Throws: `CancellationError` when cancelled while waiting.
    package func acquireBandwidth(_ bytes: Int64) async throws {
        try await bucket?.acquire(bytes)
    }

    /// Piece responses in progress now (`upload_slots_used`).
    package var slotsInUse: Int { counters.withLock { $0.slotsInUse } }

    /// Pieces served completely since start (`upload_count`).
    package var uploadCount: UInt64 { counters.withLock { $0.uploadCount } }

    /// Piece responses that failed after taking a slot (`upload_failed_count`).
    package var failedCount: UInt64 { counters.withLock { $0.failedCount } }
}
