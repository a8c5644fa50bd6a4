import DragonflyDaemon
import Testing

@Suite struct SchedulerRingTests {
    static let keys = (0..<2000).map { "task-\($0)" }

    @Test func everySchedulerAppearsOnceOwnerFirst() {
        let ring = SchedulerRing(addresses: ["10.0.0.1:8002", "10.0.0.2:8002", "10.0.0.3:8002", "10.0.0.2:8002"])
        #expect(ring.addresses == ["10.0.0.1:8002", "10.0.0.2:8002", "10.0.0.3:8002"])
        for key in Self.keys.prefix(50) {
            let order = ring.candidates(for: key)
            #expect(order.count == 3)
            #expect(Set(order) == Set(ring.addresses))
            #expect(order == ring.candidates(for: key), "the order must be stable")
        }
        #expect(SchedulerRing(addresses: []).candidates(for: "x").isEmpty)
    }

    @Test func tasksSpreadOverSchedulers() {
        let ring = SchedulerRing(addresses: ["a:1", "b:1", "c:1", "d:1"])
        var owners: [String: Int] = [:]
        for key in Self.keys { owners[ring.candidates(for: key)[0], default: 0] += 1 }
        #expect(owners.count == 4)
        // With 64 points per scheduler no scheduler owns less than half or more than twice its fair share.
        for (_, count) in owners { #expect(count > 250 && count < 1000, "\(owners)") }
    }

    @Test func removingASchedulerMovesOnlyItsTasksToTheNextCandidate() {
        let full = SchedulerRing(addresses: ["a:1", "b:1", "c:1"])
        let reduced = SchedulerRing(addresses: ["a:1", "c:1"])
        for key in Self.keys {
            let order = full.candidates(for: key)
            let owner = reduced.candidates(for: key)[0]
            if order[0] == "b:1" {
                // The failover order of the full ring names the scheduler that takes over.
                #expect(owner == order[1])
            } else {
                #expect(owner == order[0])
            }
        }
    }
}
