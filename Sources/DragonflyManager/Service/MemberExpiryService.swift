package import DragonflyCore
package import Logging
import ServiceLifecycle

#if canImport(FoundationEssentials)
package import FoundationEssentials
#else
package import Foundation
#endif

/// Marks schedulers and seed peers inactive once they missed keep-alives for `keepAlive.timeout` (DESIGN §10).
///
/// Sweeps every ``sweepInterval(for:)`` (a fifth of the timeout, at most 1 s) and marks inactive the members
/// silent for longer than the timeout minus that interval, so a member is inactive at the latest `timeout` after
/// its last keep-alive (with the defaults: keep-alives every 5 s, inactive 14–15 s after the last one). A
/// failing sweep is logged and retried at the next tick.
package struct MemberExpiryService: Service {
    private let store: @Sendable () async throws -> ManagerStore
    private let timeout: Duration
    private let forgetAfter: Duration
    private let logger: Logger

    package init(
        store: @escaping @Sendable () async throws -> ManagerStore,
        config: ManagerConfig.KeepAliveConfig,
        logger: Logger
    ) {
        self.store = store
        self.timeout = config.timeout.duration
        self.forgetAfter = config.forgetAfter.duration
        self.logger = logger
    }

    /// How often the sweep runs for a keep-alive `timeout`.
    package static func sweepInterval(for timeout: Duration) -> Duration {
        max(.milliseconds(50), min(.seconds(1), timeout / 5))
    }

    package func run() async throws {
        try? await cancelWhenGracefulShutdown { try await loop() }
    }

    private func loop() async throws {
        // Without a store there is nothing to sweep; the store service reports its own failure.
        let store = try await self.store()
        let interval = Self.sweepInterval(for: timeout)
        var failing = false
        while !Task.isCancelled {
            do {
                try await sweep(store, now: Date())
                failing = false
            } catch {
                if !failing {
                    logger.warning("keep-alive expiry sweep failed; retrying", metadata: ["df.error": "\(error)"])
                }
                failing = true
            }
            try await Task.sleep(for: interval)
        }
    }

    /// Marks inactive the members whose last keep-alive at `now` is older than the timeout minus the sweep
    /// interval, and forgets the inactive ones silent for longer than `keepAlive.forgetAfter`.
    package func sweep(_ store: ManagerStore, now: Date) async throws(DragonflyError) {
        let cutoff = now.addingTimeInterval(-(timeout - Self.sweepInterval(for: timeout)).timeInterval)
        let forgetCutoff = now.addingTimeInterval(-forgetAfter.timeInterval)
        for kind in ClusterKind.allCases {
            let forgotten = try await store.deleteInactiveMembers(kind, lastKeepAliveBefore: forgetCutoff)
            if forgotten > 0 {
                logger.debug(
                    "inactive members forgotten",
                    metadata: ["df.member.kind": "\(kind.memberName)", "df.member.count": "\(forgotten)"])
            }
            let expired = try await store.markInactiveMembers(kind, lastKeepAliveBefore: cutoff, now: now)
            if !expired.isEmpty {
                logger.debug(
                    "members missed their keep-alives",
                    metadata: ["df.member.kind": "\(kind.memberName)", "df.member.ids": "\(expired)"])
            }
        }
    }
}

extension Duration {
    /// The duration in seconds.
    fileprivate var timeInterval: TimeInterval {
        let (seconds, attoseconds) = components
        return TimeInterval(seconds) + TimeInterval(attoseconds) * 1e-18
    }
}
