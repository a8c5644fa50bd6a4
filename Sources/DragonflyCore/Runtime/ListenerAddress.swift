import Synchronization

/// The address a listener actually bound, published once it is known.
///
/// Listener services fulfil it after binding (port 0 becomes a real port); the ready-file writer and tests
/// await it. Awaiting a promise that is failed or never fulfilled ends with an error, never a hang past the
/// caller's deadline.
package final class ListenerAddress: Sendable {
    private enum State {
        case pending([CheckedContinuation<String, any Error>])
        case bound(String)
        case failed(any Error)
    }

    /// The listener's name in the ready file (`peer`, `grpc`, `metrics`, …).
    package let name: String
    private let state = Mutex(State.pending([]))

    package init(name: String) { self.name = name }

    /// Publishes the bound address `IP:port` (or a socket path).
    package func fulfil(_ address: String) {
        let waiters: [CheckedContinuation<String, any Error>] = state.withLock { state in
            guard case .pending(let waiters) = state else { return [] }
            state = .bound(address)
            return waiters
        }
        for waiter in waiters { waiter.resume(returning: address) }
    }

    /// Records that the listener could not bind.
    package func fail(_ error: any Error) {
        let waiters: [CheckedContinuation<String, any Error>] = state.withLock { state in
            guard case .pending(let waiters) = state else { return [] }
            state = .failed(error)
            return waiters
        }
        for waiter in waiters { waiter.resume(throwing: error) }
    }

    /// The bound address, if known.
    package var current: String? {
        state.withLock { state in
            if case .bound(let address) = state { return address }
            return nil
        }
    }

    /// Waits until the address is bound (or binding failed).
    package func value() async throws -> String {
        try await withCheckedThrowingContinuation { continuation in
            let immediate: Result<String, any Error>? = state.withLock { state in
                switch state {
                case .pending(var waiters):
                    waiters.append(continuation)
                    state = .pending(waiters)
                    return nil
                case .bound(let address):
                    return .success(address)
                case .failed(let error):
                    return .failure(error)
                }
            }
            if let immediate { continuation.resume(with: immediate) }
        }
    }
}
