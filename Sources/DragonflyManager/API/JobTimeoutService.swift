import DragonflyCore
package import Logging
import ServiceLifecycle

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Hands the job rows of a replica that stopped renewing its claims back to PENDING, and ends every PENDING or
/// RUNNING job whose timeout (`args.timeout` nanoseconds, default 30 minutes) has passed
/// as FAILURE, with a failure entry per URL in each unfinished cluster, so that nothing hangs past its timeout.
/// Safe with several replicas: the update is the same whoever makes it.
package struct JobTimeoutService: Service {
    /// How many open jobs one check reads at most (the oldest are checked first on the next pass).
    static let batch = 1_000

    private let store: StoreService
    private let interval: Duration
    private let logger: Logger

    package init(store: StoreService, interval: Duration, logger: Logger) {
        self.store = store
        self.interval = interval
        self.logger = logger
    }

    /// A claim not renewed for this long belongs to a replica that died: its rows go back to PENDING.
    static let staleClaim: Double = 30

    package func run() async throws {
        guard let store = try? await store.ready() else { return }
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            do {
                let now = Date()
                let released = try await store.releaseJobClusterClaims(
                    claimedBefore: now.addingTimeInterval(-Self.staleClaim))
                if !released.isEmpty {
                    logger.info("released the job rows of a vanished replica", metadata: ["df.rows": "\(released)"])
                }
                try await Self.expire(in: store, now: now, logger: logger)
            } catch {
                logger.warning("checking job timeouts failed", metadata: ["df.error": "\(error)"])
            }
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: interval) }
        }
    }

    /// One pass: returns the IDs of the jobs it ended.
    @discardableResult
    static func expire(in store: ManagerStore, now: Date, logger: Logger) async throws -> [Int] {
        var ended: [Int] = []
        for state in [JobState.pending, .running] {
            for job in try await store.jobs(state: state, limit: batch) {
                let timeout = timeoutSeconds(job.args)
                guard now.timeIntervalSince(job.createdAt) > timeout else { continue }
                let description = "the job timed out after \(ConfigDuration(milliseconds: Int64(timeout * 1000)))"
                for cluster in job.clusters where !cluster.state.isTerminal {
                    try await store.updateJobCluster(
                        id: cluster.id, state: .failure,
                        result: .object([
                            "success_tasks": .array([]),
                            "failure_tasks": .array(
                                PreheatArgs.urls(of: job.args).map { url in
                                    .object([
                                        "url": .string(url), "hostname": .string(""), "ip": .string(""),
                                        "description": .string(description),
                                    ])
                                }),
                        ]))
                }
                try await store.updateJob(id: job.id, state: .failure, result: .object(["error": .string(description)]))
                logger.info("job timed out", metadata: ["df.job": "\(job.id)"])
                ended.append(job.id)
            }
        }
        return ended
    }

    static func timeoutSeconds(_ args: JSONValue) -> Double {
        let nanoseconds = (try? PreheatArgs(stored: args))?.timeout ?? 0
        return Double(nanoseconds > 0 ? nanoseconds : PreheatArgs.defaultTimeoutNanoseconds) / 1e9
    }
}
