import Synchronization

/// The pieces callers of one run are waiting for right now — the pieces a proxy `Range` covers — which the run
/// fetches before any other (from parents: ``PieceDispatcher/prioritize(_:)``; from the origin: the fetcher's
/// queue). The rest of the task follows.
///
/// Bounded: at most ``capacity`` pieces are remembered; a caller whose range would exceed that adds none (its
/// pieces come in the run's own order).
final class UrgentPieces: Sendable {
    static let capacity = 4096

    private struct State {
        var pieces: Set<Int> = []
        var version = 0
    }

    private let state = Mutex(State())

    /// Adds `pieces`; ignored when the set would exceed ``capacity``.
    func add(_ pieces: some Collection<Int>) {
        state.withLock { state in
            guard !pieces.isEmpty, state.pieces.count + pieces.count <= Self.capacity else { return }
            let before = state.pieces.count
            state.pieces.formUnion(pieces)
            if state.pieces.count != before { state.version += 1 }
        }
    }

    /// Forgets pieces that are held now.
    func remove(where isHeld: (Int) -> Bool) {
        state.withLock { state in
            state.pieces = state.pieces.filter { !isHeld($0) }
        }
    }

    /// The pieces, when they changed since `version`; with the version to pass next time.
    func changed(since version: Int) -> (pieces: Set<Int>, version: Int)? {
        state.withLock { state in state.version == version ? nil : (state.pieces, state.version) }
    }

    /// The pieces now.
    var current: Set<Int> { state.withLock { $0.pieces } }
}
