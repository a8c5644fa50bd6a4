/// Waits until `condition` returns `true`, checking it every `interval` until `timeLimit` has passed.
///
/// This is the only way tests wait for something to happen: never a fixed sleep. The condition is checked
/// once immediately, then after each interval, and a final time at the deadline; `poll` returns as soon as
/// a check succeeds. An error thrown by `condition` ends the wait and is rethrown unchanged; cancellation of
/// the calling task ends it with `CancellationError`.
///
/// - Parameters:
///   - interval: The time between two checks.
///   - timeLimit: How long to wait in total before giving up.
///   - description: What is being awaited, e.g. `"nginx accepting connections on 127.0.0.1:8080"`; it
///     appears in the timeout error.
///   - condition: The check; `true` ends the wait.
/// - Throws: ``TestSupportError`` with code ``TestSupportError/Code/timedOut`` naming `description` and
///   `timeLimit` when the deadline passes with the condition still `false`.
package func poll(
    every interval: Duration = .milliseconds(50),
    timeLimit: Duration,
    description: String,
    until condition: () async throws -> Bool
) async throws {
    precondition(interval > .zero, "poll interval must be positive")
    let clock = ContinuousClock()
    let deadline = clock.now.advanced(by: timeLimit)
    var checks = 0
    while true {
        checks += 1
        if try await condition() {
            return
        }
        let now = clock.now
        if now >= deadline {
            break
        }
        // Never sleep past the deadline, so the last check happens at it rather than an interval later.
        try await clock.sleep(until: min(now.advanced(by: interval), deadline), tolerance: nil)
    }
    throw TestSupportError(
        code: .timedOut,
        message: "timed out after \(timeLimit) (\(checks) checks) waiting for \(description)"
    )
}
