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
        #expect(elapsed >= .milliseconds(150))
        #expect(elapsed < .seconds(10))
    }

    @Test(.timeLimit(.minutes(1)))
    func returnsAsSoonAsTheConditionHolds() async throws {
        var checks = 0
        let clock = ContinuousClock()
        let start = clock.now
        try await poll(every: .milliseconds(10), timeLimit: .seconds(50), description: "third check") {
            checks += 1
            return checks == 3
        }
        #expect(checks == 3)
        #expect(clock.now - start < .seconds(10))
    }

    @Test(.timeLimit(.minutes(1)))
    func checksImmediatelyBeforeWaiting() async throws {
        var checks = 0
        let clock = ContinuousClock()
        let start = clock.now
        try await poll(every: .seconds(30), timeLimit: .seconds(50), description: "first check") {
            checks += 1
            return true
        }
        #expect(checks == 1)
        #expect(clock.now - start < .seconds(10))
    }

    @Test(.timeLimit(.minutes(1)))
    func rethrowsTheConditionsError() async throws {
        struct Boom: Error {}
        await #expect(throws: Boom.self) {
            try await poll(timeLimit: .seconds(30), description: "an error") { throw Boom() }
        }
    }
}
