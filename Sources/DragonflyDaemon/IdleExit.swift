package import Logging
package import ServiceLifecycle
import Synchronization

/// Counts the work a daemon is doing and remembers when it last did any, for ``IdleExitService``.
///
/// The Local and Peer services wrap each call in ``withActivity(_:)`` (or ``begin()``/``end()``), so a daemon
/// started by `dragonfly get` (DESIGN §2, §15: non-resident, `--idle-exit`) stays up while it downloads or
/// serves pieces and exits once nothing happened for the idle time.
///
/// ```swift
/// let tracker = ActivityTracker()
/// let bytes = try await tracker.withActivity { try await conductor.download(request) }
/// ```
package final class ActivityTracker: Sendable {
    private struct State {
        var active: Int
        var lastActivity: ContinuousClock.Instant
    }

    private let state: Mutex<State>

    /// A tracker with no work in progress whose last activity is now (a daemon is not idle the moment it starts).
    package init() {
        state = Mutex(State(active: 0, lastActivity: ContinuousClock.now))
    }

    /// Work began; the daemon is busy until the matching ``end()``.
    package func begin() {
        state.withLock { state in
            state.active += 1
            state.lastActivity = ContinuousClock.now
        }
    }

    /// Work ended; the idle time counts from now once no other work is in progress. An `end()` without a
    /// `begin()` is ignored.
    package func end() {
        state.withLock { state in
            state.active = max(state.active - 1, 0)
            state.lastActivity = ContinuousClock.now
        }
    }

    /// Runs `body` as one piece of work (``begin()`` before, ``end()`` after, also when it throws).
    package func withActivity<Value>(
        isolation: isolated (any Actor)? = #isolation,
        _ body: () async throws -> Value
    ) async rethrows -> Value {
        begin()
        defer { end() }
        return try await body()
    }

    /// Pieces of work in progress.
    package var activeCount: Int { state.withLock { $0.active } }

    /// When work last began or ended.
    package var lastActivity: ContinuousClock.Instant { state.withLock { $0.lastActivity } }

    /// How long the daemon has been idle at `now`; zero while work is in progress.
    package func idleDuration(at now: ContinuousClock.Instant = .now) -> Duration {
        state.withLock { state in
            state.active > 0 ? .zero : max(now - state.lastActivity, .zero)
        }
    }
}

/// Returns once the daemon has had no activity for `idleExit`, so that a `ServiceGroup` running it with
/// `successTerminationBehavior: .gracefullyShutdownGroup` shuts the daemon down (an auto-started daemon's
/// `--idle-exit`, DESIGN §15). It also returns when the group shuts down for another reason.
///
/// ```swift
/// let tracker = ActivityTracker()
/// services.append(
///     .init(
///         service: IdleExitService(idleExit: .seconds(300), tracker: tracker, logger: logger),
///         successTerminationBehavior: .gracefullyShutdownGroup))
/// ```
package struct IdleExitService: Service {
    /// How long without activity before the service returns; must be positive.
    package let idleExit: Duration
    /// Where the activity is counted.
    package let tracker: ActivityTracker
    /// The longest pause between two checks.
    package let checkInterval: Duration
    private let logger: Logger

    /// - Parameters:
    ///   - idleExit: Idle time after which the service returns (positive).
    ///   - tracker: The activity of the daemon's services.
    ///   - checkInterval: The longest pause between two checks; by default a tenth of `idleExit`, at most 1 s
    ///     and at least 10 ms, so the daemon exits within about that much after the idle time.
    package init(idleExit: Duration, tracker: ActivityTracker, checkInterval: Duration? = nil, logger: Logger) {
        precondition(idleExit > .zero, "idleExit must be positive; do not run the service for 0 (never)")
        self.idleExit = idleExit
        self.tracker = tracker
        self.checkInterval =
            checkInterval ?? min(max(idleExit / 10, .milliseconds(10)), .seconds(1))
        self.logger = logger
    }

    package func run() async throws {
        do {
            try await cancelWhenGracefulShutdown {
                while true {
                    let idle = tracker.idleDuration()
                    if idle >= idleExit {
                        logger.info(
                            "idle; exiting",
                            metadata: ["df.daemon.idle_exit": "\(idleExit)", "df.daemon.idle": "\(idle)"])
                        return
                    }
                    // While busy, check again after one interval; while idle, not later than the deadline.
                    let wait = idle == .zero ? checkInterval : min(idleExit - idle, checkInterval)
                    try await Task.sleep(for: max(wait, .milliseconds(1)))
                }
            }
        } catch is CancellationError {
            // Graceful shutdown (or cancellation) of the group: nothing left to watch.
        }
    }
}
