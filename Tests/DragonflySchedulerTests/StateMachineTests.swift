import DragonflyCore
import DragonflyScheduler
import Testing

@Suite("Peer state machine")
struct PeerStateMachineTests {
    typealias State = PeerStateMachine.State
    typealias Event = PeerStateMachine.Event

    /// Dragonfly's peer transitions, written out as the expected table.
    static func expected(_ state: State, _ event: Event) -> State? {
        let received: [State] = [.receivedEmpty, .receivedTiny, .receivedSmall, .receivedNormal]
        switch event {
        case .registerEmpty: return state == .pending ? .receivedEmpty : nil
        case .registerTiny: return state == .pending ? .receivedTiny : nil
        case .registerSmall: return state == .pending ? .receivedSmall : nil
        case .registerNormal: return state == .pending ? .receivedNormal : nil
        case .download: return received.contains(state) ? .running : nil
        case .downloadBackToSource: return (received + [.running]).contains(state) ? .backToSource : nil
        case .downloadSucceeded: return (received + [.running, .backToSource]).contains(state) ? .succeeded : nil
        case .downloadFailed:
            return ([.pending] + received + [.running, .backToSource, .succeeded]).contains(state) ? .failed : nil
        case .leave: return state == .leave ? nil : .leave
        }
    }

    @Test("every (state, event) pair follows the table", arguments: State.allCases, Event.allCases)
    func table(state: State, event: Event) {
        var machine = PeerStateMachine(state: state)
        let actions = machine.handle(event)
        if let next = Self.expected(state, event) {
            #expect(machine.state == next)
            #expect(!actions.contains { if case .rejected = $0 { true } else { false } })
        } else {
            #expect(machine.state == state, "an invalid event must not move the state")
            #expect(actions == [.rejected(.init(state: state, event: event))])
        }
    }

    @Test("entering and leaving back-to-source occupies and releases the slot")
    func backToSourceSlot() {
        var machine = PeerStateMachine()
        #expect(machine.handle(.registerNormal) == [])
        #expect(machine.handle(.downloadBackToSource) == [.occupyBackToSourceSlot])
        #expect(machine.handle(.downloadSucceeded) == [.releaseBackToSourceSlot, .markTaskSucceeded])
        #expect(machine.handle(.leave) == [.detachFromParentsOfChildren])
        #expect(machine.isFinished)
    }

    @Test("failing while reading the origin releases the slot and detaches children")
    func failWhileBackToSource() {
        var machine = PeerStateMachine(state: .backToSource)
        #expect(machine.handle(.downloadFailed) == [.releaseBackToSourceSlot, .detachFromParentsOfChildren])
    }

    @Test("an invalid transition is an error action with a failedPrecondition error")
    func invalidIsError() {
        var machine = PeerStateMachine(state: .succeeded)
        let actions = machine.handle(.download)
        guard case .rejected(let invalid) = actions.first else {
            Issue.record("expected a rejection, got \(actions)")
            return
        }
        #expect(invalid.error.code == .failedPrecondition)
        #expect(machine.state == .succeeded)
    }
}

@Suite("Task state machine")
struct TaskStateMachineTests {
    typealias State = TaskStateMachine.State
    typealias Event = TaskStateMachine.Event

    static func expected(_ state: State, _ event: Event) -> State? {
        switch (event, state) {
        case (.download, .pending), (.download, .failed), (.download, .leave): .running
        case (.download, .running): .running
        case (.download, .succeeded): .succeeded
        case (.downloadSucceeded, .pending): nil
        case (.downloadSucceeded, _): .succeeded
        case (.downloadFailed, .pending), (.downloadFailed, .running): .failed
        case (.downloadFailed, _): nil
        case (.leave, .leave): nil
        case (.leave, _): .leave
        }
    }

    @Test("every (state, event) pair follows the table", arguments: State.allCases, Event.allCases)
    func table(state: State, event: Event) {
        var machine = TaskStateMachine(state: state)
        let actions = machine.handle(event)
        if let next = Self.expected(state, event) {
            #expect(machine.state == next)
        } else {
            #expect(machine.state == state)
            #expect(actions == [.rejected(.init(state: state, event: event))])
        }
    }

    @Test("task actions: complete once, failure fails peers, leave resets readers")
    func actions() {
        var machine = TaskStateMachine()
        #expect(machine.handle(.download) == [])
        #expect(machine.handle(.downloadSucceeded) == [.announceComplete])
        #expect(machine.handle(.downloadSucceeded) == [])
        #expect(machine.handle(.leave) == [.resetOriginReaders])
        #expect(machine.handle(.download) == [])
        #expect(machine.handle(.downloadFailed) == [.failPeers])
    }
}
