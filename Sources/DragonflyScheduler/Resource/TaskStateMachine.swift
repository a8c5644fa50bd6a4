package import DragonflyCore

/// The life cycle of a task at the scheduler (after Dragonfly's task FSM):
/// `pending → running → succeeded | failed`, any of them `→ leave`, and a finished or left task runs again
/// when a new peer downloads it.
///
/// A value type: ``handle(_:)`` takes an event and returns the actions the owner performs. An invalid event
/// leaves the state unchanged and returns ``Action/rejected(_:)``.
package struct TaskStateMachine: Sendable, Hashable {
    /// A state of the task; mirrors `TaskState` of `common.proto`.
    package enum State: Sendable, Hashable, CaseIterable {
        case pending
        case running
        case succeeded
        case failed
        case leave
    }

    /// What happened to the task.
    package enum Event: Sendable, Hashable, CaseIterable {
        /// A peer started downloading it (from parents or the origin).
        case download
        /// A peer holds every piece.
        case downloadSucceeded
        /// The origin failed for it.
        case downloadFailed
        /// No peer holds it any more.
        case leave
    }

    /// What the owner must do after an event.
    package enum Action: Sendable, Hashable {
        /// The task became available as a whole: size-scope answers (empty, tiny, small) may be used.
        case announceComplete
        /// The task failed: every peer of it is told (origin error broadcast).
        case failPeers
        /// The task's origin readers and pending digest batch are reset.
        case resetOriginReaders
        /// The event is not valid in the current state; nothing changed.
        case rejected(InvalidTransition)
    }

    /// An event that is not valid in a state.
    package struct InvalidTransition: Error, Sendable, Hashable, CustomStringConvertible {
        package var state: State
        package var event: Event
        package init(state: State, event: Event) {
            self.state = state
            self.event = event
        }

        package var description: String { "task event \(event) is not valid in state \(state)" }

        /// The same failure as a ``DragonflyError`` for the gRPC edge (`failedPrecondition`).
        package var error: DragonflyError {
            DragonflyError(code: .failedPrecondition, message: description)
        }
    }

    package private(set) var state: State

    package init(state: State = .pending) {
        self.state = state
    }

    /// Applies an event and returns what the owner must do; an invalid event changes nothing.
    package mutating func handle(_ event: Event) -> [Action] {
        guard let next = Self.next(from: state, on: event) else {
            return [.rejected(InvalidTransition(state: state, event: event))]
        }
        let previous = state
        state = next
        switch next {
        case .succeeded: return previous == .succeeded ? [] : [.announceComplete]
        case .failed: return [.failPeers]
        case .leave: return [.resetOriginReaders]
        case .pending, .running: return []
        }
    }

    /// The transition table; `nil` for an invalid event.
    package static func next(from state: State, on event: Event) -> State? {
        switch (event, state) {
        case (.download, .pending), (.download, .failed), (.download, .leave):
            .running
        case (.download, .running), (.download, .succeeded):
            state
        case (.downloadSucceeded, .running), (.downloadSucceeded, .failed), (.downloadSucceeded, .leave),
            (.downloadSucceeded, .succeeded):
            .succeeded
        case (.downloadFailed, .pending), (.downloadFailed, .running):
            .failed
        case (.leave, .pending), (.leave, .running), (.leave, .succeeded), (.leave, .failed):
            .leave
        default:
            nil
        }
    }
}
