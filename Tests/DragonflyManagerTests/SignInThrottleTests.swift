import Testing

@testable import DragonflyManager

/// The sign-in throttle (finding 11 of "Security, part 1"): failures count per user name and per address, a
/// key at its limit waits, and the map stays bounded whatever names an attacker sends.
@Suite struct SignInThrottleTests {
    @Test func usersAndAddressesAreCountedApart() {
        let throttle = SignInThrottle(allowed: 2, window: .seconds(600))
        throttle.recordFailure(SignInThrottle.keys(user: "root", address: "10.0.0.1"))
        #expect(throttle.wait(SignInThrottle.keys(user: "root", address: "10.0.0.1")) == nil)
        throttle.recordFailure(SignInThrottle.keys(user: "root", address: "10.0.0.2"))
        // root failed twice, from two addresses: root waits from anywhere; those addresses may sign others in.
        let wait = throttle.wait(SignInThrottle.keys(user: "root", address: "10.0.0.3"))
        #expect(wait.map { $0 > .seconds(5) && $0 <= SignInThrottle.firstWait } == true)
        #expect(throttle.wait(SignInThrottle.keys(user: "alice", address: "10.0.0.1")) == nil)
        // One address guessing two users' passwords waits for any user.
        throttle.recordFailure(SignInThrottle.keys(user: "bob", address: "10.0.0.9"))
        throttle.recordFailure(SignInThrottle.keys(user: "carol", address: "10.0.0.9"))
        #expect(throttle.wait(SignInThrottle.keys(user: "dave", address: "10.0.0.9")) != nil)
        // A success clears the user, not the address.
        throttle.recordSuccess(SignInThrottle.keys(user: "root", address: "10.0.0.3")[0])
        #expect(throttle.wait(SignInThrottle.keys(user: "root", address: "10.0.0.3")) == nil)
    }

    @Test func waitsDoubleUpToTheWindow() {
        let throttle = SignInThrottle(allowed: 1, window: .seconds(30))
        let keys = SignInThrottle.keys(user: "root", address: "10.0.0.1")
        throttle.recordFailure(keys)
        #expect((throttle.wait(keys) ?? .zero) > .seconds(5))
        throttle.recordFailure(keys)
        #expect((throttle.wait(keys) ?? .zero) > .seconds(15))
        for _ in 0..<40 { throttle.recordFailure(keys) }
        #expect((throttle.wait(keys) ?? .zero) <= .seconds(30))
    }

    @Test func theMapIsBounded() {
        let throttle = SignInThrottle(allowed: 5, window: .seconds(600))
        for index in 0..<(SignInThrottle.maxEntries + 500) {
            throttle.recordFailure(SignInThrottle.keys(user: "user-\(index)", address: "10.0.0.1"))
        }
        #expect(throttle.count <= SignInThrottle.maxEntries)
        #expect(throttle.wait(SignInThrottle.keys(user: "anyone", address: "10.0.0.1")) != nil, "the address is kept")
    }
}
