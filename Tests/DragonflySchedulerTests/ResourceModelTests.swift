import DragonflyCore
import DragonflyScheduler
import Testing

@Suite("Peer DAG")
struct PeerDAGTests {
    @Test("only a self edge is refused; canAddEdge tells which edges would close a cycle")
    func cycles() {
        var dag = PeerDAG()
        let first = dag.addEdge(from: "a", to: "b")
        let second = dag.addEdge(from: "b", to: "c")
        #expect(first && second)
        // c → a and b → a would close cycles, a self edge is one, a second path a → c is not.
        #expect(
            [("c", "a"), ("b", "a"), ("a", "a"), ("a", "c")].map { dag.canAddEdge(from: $0.0, to: $0.1) }
                == [false, false, false, true])
        // The edges record what the selector chose: mutual parents are allowed unless `scheduling.acyclic`.
        let mutual = dag.addEdge(from: "b", to: "a")
        let selfEdge = dag.addEdge(from: "a", to: "a")
        #expect(mutual && !selfEdge)
        #expect(dag.edgeCount == 3)
        #expect(dag.parents(of: "a") == ["b"] && dag.children(of: "a") == ["b"])
    }

    @Test("removing a peer returns its children and drops its edges")
    func removePeer() {
        var dag = PeerDAG()
        dag.addEdge(from: "a", to: "b")
        dag.addEdge(from: "b", to: "c")
        dag.addEdge(from: "b", to: "d")
        let orphans = dag.removePeer("b")
        #expect(orphans == ["c", "d"])
        #expect(dag.edgeCount == 0)
        #expect(dag.isLeaf("a"))
        let added = dag.addEdge(from: "c", to: "a")
        #expect(added, "no path remains from a to c")
    }
}

@Suite("Piece bitmap and costs")
struct PieceBookkeepingTests {
    @Test("bitmap counts distinct pieces")
    func bitmap() {
        var bitmap = PieceBitmap([3, 70, 3])
        #expect(bitmap.count == 2)
        let insertedNew = bitmap.insert(0)
        let insertedAgain = bitmap.insert(70)
        #expect(insertedNew && !insertedAgain)
        #expect(bitmap.contains(70) && !bitmap.contains(69) && !bitmap.contains(100_000))
        #expect(bitmap.numbers == [0, 3, 70])
    }

    @Test("a last cost over 20× the mean marks a bad parent while samples are few")
    func slowFactor() {
        var window = PieceCostWindow(Array(repeating: .milliseconds(100), count: 5))
        window.record(.milliseconds(1900))
        #expect(!window.isLastCostOutlier, "19× the mean is fine")
        window = PieceCostWindow(Array(repeating: .milliseconds(100), count: 5))
        window.record(.milliseconds(2100))
        #expect(window.isLastCostOutlier)
    }

    @Test("with 30 earlier samples, mean + 3σ decides")
    func threeSigma() {
        // Alternating 90/110 ms: mean 100 ms, σ 10 ms, so the bound is 130 ms (far below 20× the mean).
        let earlier: [Duration] = (0..<30).map { .milliseconds($0 % 2 == 0 ? 90 : 110) }
        var window = PieceCostWindow(earlier)
        window.record(.milliseconds(129))
        #expect(!window.isLastCostOutlier)
        window = PieceCostWindow(earlier)
        window.record(.milliseconds(131))
        #expect(window.isLastCostOutlier)
        // With only 29 earlier samples the same cost is fine (20× rule).
        window = PieceCostWindow(Array(earlier.prefix(29)))
        window.record(.milliseconds(131))
        #expect(!window.isLastCostOutlier)
    }

    @Test("a single sample is never an outlier and the window is bounded")
    func bounded() {
        var window = PieceCostWindow([.seconds(100)])
        #expect(!window.isLastCostOutlier)
        for _ in 0..<500 { window.record(.milliseconds(1)) }
        #expect(window.seconds.count == PieceCostWindow.capacity)
    }
}

@Suite("Resource registry")
struct ResourceRegistryTests {
    static func peer(
        _ id: String, host: String = "h1", state: PeerStateMachine.State = .running,
        at time: ContinuousClock.Instant = Fixture.start
    ) -> SchedulerPeer {
        SchedulerPeer(id: id, hostID: host, taskID: Fixture.taskID, state: state, now: time)
    }

    static func registry(limits: ResourceLimits = ResourceLimits()) throws -> ResourceRegistry {
        var registry = ResourceRegistry(limits: limits)
        try registry.announceHost(Fixture.host("h1"))
        try registry.ensureTask(id: Fixture.taskID, url: Fixture.url, now: Fixture.start)
        return registry
    }

    @Test("a peer needs a known host and task")
    func preconditions() throws {
        var registry = ResourceRegistry()
        #expect(throws: DragonflyError.self) { try registry.addPeer(Self.peer("p")) }
        try registry.announceHost(Fixture.host("h1"))
        let error = #expect(throws: DragonflyError.self) { try registry.addPeer(Self.peer("p")) }
        #expect(error?.code == .notFound)
    }

    @Test("a full task evicts failed leaves, then succeeded leaves, oldest first")
    func peerEviction() throws {
        var registry = try Self.registry(limits: ResourceLimits(maxPeersPerTask: 4))
        try registry.addPeer(Self.peer("done-old", state: .succeeded, at: Fixture.at(1)))
        try registry.addPeer(Self.peer("done-new", state: .succeeded, at: Fixture.at(2)))
        try registry.addPeer(Self.peer("failed", state: .failed, at: Fixture.at(3)))
        try registry.addPeer(Self.peer("running"))
        var removed = try registry.addPeer(Self.peer("n1"))
        #expect(removed.peers == [Fixture.key("failed")])
        removed = try registry.addPeer(Self.peer("n2"))
        #expect(removed.peers == [Fixture.key("done-old")])
    }

    @Test("a finished parent with children is not evicted; with no candidate the task refuses")
    func peerEvictionRefuses() throws {
        var registry = try Self.registry(limits: ResourceLimits(maxPeersPerTask: 2))
        try registry.addPeer(Self.peer("parent", state: .succeeded))
        try registry.addPeer(Self.peer("child"))
        registry.modifyTask(Fixture.taskID) { $0.dag.addEdge(from: "parent", to: "child") }
        let error = #expect(throws: DragonflyError.self) { try registry.addPeer(Self.peer("late")) }
        #expect(error?.code == .resourceExhausted)
        #expect(registry.task(Fixture.taskID)?.peers.count == 2)
    }

    @Test("full host and task maps evict idle entries first")
    func hostAndTaskBounds() throws {
        var registry = ResourceRegistry(limits: ResourceLimits(maxHosts: 2, maxTasks: 2))
        try registry.announceHost(Fixture.host("busy", at: Fixture.at(0)))
        try registry.announceHost(Fixture.host("idle", at: Fixture.at(1)))
        try registry.ensureTask(id: "t1", url: Fixture.url, now: Fixture.at(0))
        try registry.ensureTask(id: "t2", url: Fixture.url, now: Fixture.at(5))
        try registry.addPeer(SchedulerPeer(id: "p", hostID: "busy", taskID: "t1", state: .running, now: Fixture.start))

        let hostEviction = try registry.announceHost(Fixture.host("new", at: Fixture.at(2)))
        #expect(hostEviction.hosts == ["idle"], "the busy host is older but has a peer")

        let taskEviction = try registry.ensureTask(id: "t3", url: Fixture.url, now: Fixture.at(6))
        #expect(taskEviction.tasks == ["t2"], "t1 is older but downloading")
        let error = #expect(throws: DragonflyError.self) {
            try registry.addPeer(SchedulerPeer(id: "q", hostID: "new", taskID: "t3", now: Fixture.start))
            try registry.announceHost(Fixture.host("third"))
        }
        #expect(error?.code == .resourceExhausted)
    }

    @Test("GC removes peers without progress, unseen hosts and idle tasks by TTL")
    func garbageCollection() throws {
        let limits = ResourceLimits(peerTTL: .seconds(30 * 60), hostTTL: .seconds(3600), taskTTL: .seconds(86_400))
        var registry = ResourceRegistry(limits: limits)
        try registry.announceHost(Fixture.host("fresh", at: Fixture.at(3000)))
        try registry.announceHost(Fixture.host("stale", at: Fixture.at(0)))
        try registry.ensureTask(id: "t1", url: Fixture.url, now: Fixture.at(0))
        try registry.ensureTask(id: "old", url: Fixture.url, now: Fixture.at(0))
        try registry.addPeer(SchedulerPeer(id: "slow", hostID: "fresh", taskID: "t1", now: Fixture.at(0)))
        try registry.addPeer(SchedulerPeer(id: "busy", hostID: "fresh", taskID: "t1", now: Fixture.at(1500)))
        try registry.addPeer(
            SchedulerPeer(id: "gone", hostID: "fresh", taskID: "t1", state: .leave, now: Fixture.at(3000)))
        try registry.addPeer(SchedulerPeer(id: "on-stale", hostID: "stale", taskID: "t1", now: Fixture.at(3000)))
        registry.modifyTask("t1") { $0.lastActivity = Fixture.at(3000) }

        var removed = registry.collectGarbage(now: Fixture.at(1801))
        #expect(removed.peers == [PeerKey(taskID: "t1", peerID: "gone"), PeerKey(taskID: "t1", peerID: "slow")])
        #expect(removed.hosts.isEmpty && removed.tasks.isEmpty)

        removed = registry.collectGarbage(now: Fixture.at(3601))
        #expect(removed.hosts == ["stale"])
        #expect(removed.peers.contains(PeerKey(taskID: "t1", peerID: "on-stale")))
        #expect(removed.peers.contains(PeerKey(taskID: "t1", peerID: "busy")))

        removed = registry.collectGarbage(now: Fixture.at(86_401))
        #expect(removed.tasks == ["old"])
        #expect(registry.task("t1") != nil)
    }

    @Test("removing a parent reports its children as orphans")
    func orphans() throws {
        var registry = try Self.registry()
        try registry.announceHost(Fixture.host("h2"))
        try registry.addPeer(Self.peer("parent"))
        try registry.addPeer(Self.peer("child", host: "h2"))
        registry.modifyTask(Fixture.taskID) { task in
            task.dag.addEdge(from: "parent", to: "child")
            task.peers["child"]?.parents = ["parent"]
        }
        let removed = registry.removeHost("h1")
        #expect(removed.peers == [Fixture.key("parent")])
        #expect(removed.orphanedChildren == [Fixture.key("child")])
        #expect(registry.peer(Fixture.key("child"))?.parents == [])
    }
}
