import DragonflyTestSupport
import Testing

@Suite struct PollTests {
    @Test(.timeLimit(.minutes(1)))
    func timesOutNamingWhatWasAwaited() async throws {
        let clock = ContinuousClock()
        let start = clock.now
        let error = await #expect(throws: TestSupportError.self) {
            try await poll(
                every: .milliseconds(10), timeLimit: .milliseconds(150), description: "the moon to turn blue"
            ) {
                false
            }
        }
        let elapsed = clock.now - start
        #expect(error?.code == .timedOut)
        #expect(error?.message.contains("the moon to turn blue") == true)
        #expect(String(describing: error).contains("the moon to turn blue"))
        // A lower bound only: an upper one would measure the machine's load (the test's time limit bounds it).
        #expect(elapsed >= .milliseconds(150))
    }

    @Test(.timeLimit(.minutes(1)))
    func returnsAsSoonAsTheConditionHolds() async throws {
        // A poll that waited for its own limit (an hour) would exceed the test's minute.
        var checks = 0
        try await poll(every: .milliseconds(10), timeLimit: .seconds(3600), description: "third check") {
            checks += 1
            return checks == 3
        }
        #expect(checks == 3)
    }

    @Test(.timeLimit(.minutes(1)))
    func checksImmediatelyBeforeWaiting() async throws {
        // A poll that slept one interval (an hour) first would exceed the test's minute.
        var checks = 0
        try await poll(every: .seconds(3600), timeLimit: .seconds(7200), description: "first check") {
            checks += 1
            return true
        }
        #expect(checks == 1)
    }

    @Test(.timeLimit(.minutes(1)))
    func rethrowsTheConditionsError() async throws {
        struct Boom: Error {}
        await #expect(throws: Boom.self) {
            try await poll(timeLimit: .seconds(30), description: "an error") { throw Boom() }
        }
    }
}
