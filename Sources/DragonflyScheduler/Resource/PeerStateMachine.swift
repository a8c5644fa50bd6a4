package import DragonflyCore

/// The life cycle of one peer at the scheduler (DESIGN §6, after Dragonfly's peer FSM):
/// `pending → received{Empty,Tiny,Small,Normal} → running | backToSource → succeeded | failed → leave`.
///
/// A value type: ``handle(_:)`` takes an event, moves the state and returns the actions the owner performs
/// (the registry's back-to-source set and peer DAG live outside). An invalid event leaves the state unchanged
/// and returns ``Action/rejected(_:)``; it never traps.
package struct PeerStateMachine: Sendable, Hashable {
    /// A state of the peer; mirrors `PeerState` of `common.proto`.
    package enum State: Sendable, Hashable, CaseIterable {
        case pending
        case receivedEmpty
        case receivedTiny
        case receivedSmall
        case receivedNormal
        case running
        case backToSource
        case succeeded
        case failed
        case leave
    }

    /// What happened to the peer.
    package enum Event: Sendable, Hashable, CaseIterable {
        /// Answered with `EmptyTask`.
        case registerEmpty
        /// Answered with `TinyTask`.
        case registerTiny
        /// Answered with `SmallTask`.
        case registerSmall
        /// Answered with `NormalTask` or `NeedBackToSource`, or left waiting for parents.
        case registerNormal
        /// Started downloading from parents.
        case download
        /// Started reading the origin.
        case downloadBackToSource
        /// Holds every wanted piece.
        case downloadSucceeded
        /// Gave up.
        case downloadFailed
        /// Left the task.
        case leave
    }

    /// What the owner must do after an event.
    package enum Action: Sendable, Hashable {
        /// Count the peer as an origin reader of its task.
        case occupyBackToSourceSlot
        /// The peer no longer reads the origin: free its back-to-source slot.
        case releaseBackToSourceSlot
        /// The task has a complete copy: move the task to succeeded.
        case markTaskSucceeded
        /// The peer can no longer serve: drop it as a parent from the task's DAG.
        case detachFromParentsOfChildren
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

        package var description: String { "peer event \(event) is not valid in state \(state)" }

        /// The same failure as a ``DragonflyError`` for the gRPC edge (`failedPrecondition`).
        package var error: DragonflyError {
            DragonflyError(code: .failedPrecondition, message: description)
        }
    }

    package private(set) var state: State

    package init(state: State = .pending) {
        self.state = state
    }

    /// Whether the peer was answered with one of the `received*` responses.
    package var isReceived: Bool {
        switch state {
        case .receivedEmpty, .receivedTiny, .receivedSmall, .receivedNormal: true
        default: false
        }
    }

    /// Whether the peer reached an end state (succeeded, failed or left).
    package var isFinished: Bool {
        state == .succeeded || state == .failed || state == .leave
    }

    /// Applies an event and returns what the owner must do; an invalid event changes nothing.
    package mutating func handle(_ event: Event) -> [Action] {
        guard let next = Self.next(from: state, on: event) else {
            return [.rejected(InvalidTransition(state: state, event: event))]
        }
        let previous = state
        state = next
        var actions: [Action] = []
        if next == .backToSource && previous != .backToSource { actions.append(.occupyBackToSourceSlot) }
        if previous == .backToSource && next != .backToSource { actions.append(.releaseBackToSourceSlot) }
        if next == .succeeded { actions.append(.markTaskSucceeded) }
        if next == .failed || next == .leave { actions.append(.detachFromParentsOfChildren) }
        return actions
    }

    /// The transition table; `nil` for an invalid event.
    package static func next(from state: State, on event: Event) -> State? {
        switch (event, state) {
        case (.registerEmpty, .pending): .receivedEmpty
        case (.registerTiny, .pending): .receivedTiny
        case (.registerSmall, .pending): .receivedSmall
        case (.registerNormal, .pending): .receivedNormal
        case (.download, .receivedEmpty), (.download, .receivedTiny), (.download, .receivedSmall),
            (.download, .receivedNormal):
            .running
        case (.downloadBackToSource, .receivedEmpty), (.downloadBackToSource, .receivedTiny),
            (.downloadBackToSource, .receivedSmall), (.downloadBackToSource, .receivedNormal),
            (.downloadBackToSource, .running):
            .backToSource
        case (.downloadSucceeded, .receivedEmpty), (.downloadSucceeded, .receivedTiny),
            (.downloadSucceeded, .receivedSmall), (.downloadSucceeded, .receivedNormal),
            (.downloadSucceeded, .running), (.downloadSucceeded, .backToSource):
            .succeeded
        case (.downloadFailed, .pending), (.downloadFailed, .receivedEmpty), (.downloadFailed, .receivedTiny),
            (.downloadFailed, .receivedSmall), (.downloadFailed, .receivedNormal), (.downloadFailed, .running),
            (.downloadFailed, .backToSource), (.downloadFailed, .succeeded):
            .failed
        case (.leave, .leave):
            nil
        case (.leave, _):
            .leave
        default:
            nil
        }
    }
}
