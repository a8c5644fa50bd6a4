import DragonflyDaemon
import DragonflyTestSupport
import Logging
import ServiceLifecycle
import Synchronization
import Testing

/// ``IdleExitService`` and ``ActivityTracker``: an auto-started daemon leaves once idle, never while busy.
@Suite(.timeLimit(.minutes(1)))
struct IdleExitTests {
    /// Set once from the service's task when `run()` returns.
    final class Returned: Sendable {
        let value = Mutex(false)
        var hasReturned: Bool { value.withLock { $0 } }
    }

    @Test func trackerCountsNestedWorkAndIgnoresUnbalancedEnds() async throws {
        let tracker = ActivityTracker()
        tracker.end()
        #expect(tracker.activeCount == 0)
        tracker.begin()
        tracker.begin()
        #expect(tracker.activeCount == 2)
        #expect(tracker.idleDuration() == .zero)
        tracker.end()
        #expect(tracker.idleDuration() == .zero)
        tracker.end()
        #expect(tracker.activeCount == 0)
        let later = tracker.lastActivity.advanced(by: .seconds(5))
        #expect(tracker.idleDuration(at: later) == .seconds(5))

        struct Failure: Error {}
        await #expect(throws: Failure.self) {
            try await tracker.withActivity {
                #expect(tracker.activeCount == 1)
                throw Failure()
            }
        }
        #expect(tracker.activeCount == 0)
    }

    @Test func returnsOnceIdleForTheIdleTime() async throws {
        let tracker = ActivityTracker()
        let service = IdleExitService(
            idleExit: .milliseconds(200), tracker: tracker, logger: Logger(label: "test.idle-exit"))
        let clock = ContinuousClock()
        try await service.run()
        // It returned by itself, and not before the tracker had been idle for the idle time.
        #expect(clock.now - tracker.lastActivity >= .milliseconds(200))
    }

    @Test func staysWhileBusyAndLeavesAfterTheWorkEnds() async throws {
        let tracker = ActivityTracker()
        let idleExit = Duration.milliseconds(100)
        let service = IdleExitService(
            idleExit: idleExit, tracker: tracker, checkInterval: .milliseconds(10), logger: Logger(label: "test"))
        let returned = Returned()
        tracker.begin()
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                try await service.run()
                returned.value.withLock { $0 = true }
            }
            // Busy for many idle periods (measured from the last activity): the service must still be running.
            try await poll(every: .milliseconds(20), timeLimit: .seconds(10), description: "5 idle periods to pass") {
                ContinuousClock.now - tracker.lastActivity > idleExit * 5
            }
            #expect(!returned.hasReturned)
            tracker.end()
            try await group.waitForAll()
        }
        #expect(returned.hasReturned)
        #expect(ContinuousClock.now - tracker.lastActivity >= idleExit)
    }

    @Test func returnsWhenTheGroupShutsDownGracefully() async throws {
        let tracker = ActivityTracker()
        tracker.begin()  // busy for ever: only the shutdown can end it
        let service = IdleExitService(idleExit: .seconds(60), tracker: tracker, logger: Logger(label: "test"))
        let group = ServiceGroup(
            configuration: ServiceGroupConfiguration(
                services: [.init(service: service)], logger: Logger(label: "test")))
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            await group.triggerGracefulShutdown()
            try await tasks.waitForAll()
        }
    }

    @Test func endsTheDaemonsServiceGroupWhenIdle() async throws {
        // How the daemon runs it: success of the idle service shuts the whole group down gracefully.
        struct Forever: Service {
            func run() async throws {
                try? await gracefulShutdown()
            }
        }
        let tracker = ActivityTracker()
        let group = ServiceGroup(
            configuration: ServiceGroupConfiguration(
                services: [
                    .init(service: Forever()),
                    .init(
                        service: IdleExitService(
                            idleExit: .milliseconds(100), tracker: tracker, logger: Logger(label: "test")),
                        successTerminationBehavior: .gracefullyShutdownGroup),
                ],
                logger: Logger(label: "test")))
        try await group.run()
        #expect(tracker.activeCount == 0)
    }
}
