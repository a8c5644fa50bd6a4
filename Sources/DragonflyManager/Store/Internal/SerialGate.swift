import Synchronization

/// A first-in, first-out async lock: one holder at a time, waiters resumed in arrival order.
///
/// The SQLite backend serialises every statement and transaction on its single connection with it, so a
/// `BEGIN … COMMIT` of one caller never interleaves with another caller's statements. Waiting is not
/// cancellable: a waiter always gets the gate eventually, since every holder runs one bounded database call.
final class SerialGate: Sendable {
    private struct State {
        var isHeld = false
        var waiters: [CheckedContinuation<Void, Never>] = []
    }

    private let state = Mutex(State())

    init() {}

    /// Runs `body` while holding the gate.
    func withGate<Result: Sendable>(_ body: () async throws -> Result) async throws -> Result {
        await acquire()
        defer { release() }
        return try await body()
    }

    private func acquire() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let acquired = state.withLock { state -> Bool in
                if !state.isHeld {
                    state.isHeld = true
                    return true
                }
                state.waiters.append(continuation)
                return false
            }
            if acquired {
                continuation.resume()
            }
        }
    }

    private func release() {
        let next = state.withLock { state -> CheckedContinuation<Void, Never>? in
            guard !state.waiters.isEmpty else {
                state.isHeld = false
                return nil
            }
            // The gate passes straight to the next waiter and stays held.
            return state.waiters.removeFirst()
        }
        next?.resume()
    }
}
