import DragonflyCore
import DragonflyScheduler
import Testing

@Suite("Parent selection")
struct ParentSelectorTests {
    /// A task with a child on host `hc` and a candidate `cand` on host `h1`, both downloading.
    struct Scene {
        var task = SchedulerTask(id: Fixture.taskID, url: Fixture.url, now: Fixture.start)
        var hosts: [String: PeerHost] = ["hc": Fixture.host("hc"), "h1": Fixture.host("h1")]

        init() {
            add("child", host: "hc")
            add("cand", host: "h1", pieces: [0, 1])
        }

        mutating func add(
            _ id: String, host: String, state: PeerStateMachine.State = .running, pieces: [UInt32] = []
        ) {
            task.peers[id] = SchedulerPeer(
                id: id, hostID: host, taskID: Fixture.taskID, state: state, finishedPieces: PieceBitmap(pieces),
                now: Fixture.start)
        }

        var child: SchedulerPeer { task.peers["child"] ?? SchedulerPeer(id: "", hostID: "", taskID: "", now: .now) }
    }

    /// With `scheduling.acyclic`, so that every filter, the cycle rule included, is exercised.
    static let selector = ParentSelector(strategy: DefaultStrategy(), isAcyclic: true)

    static func scene(rejecting reason: ParentSelector.Rejection) -> (Scene, candidate: String) {
        var scene = Scene()
        switch reason {
        case .isSelf:
            return (scene, "child")
        case .sameHost:
            scene.add("neighbour", host: "hc", pieces: [0])
            return (scene, "neighbour")
        case .blocklisted:
            scene.task.peers["child"]?.blocklist.insert("cand")
        case .cannotServe:
            scene.task.peers["cand"]?.stateMachine = PeerStateMachine(state: .failed)
        case .badParent:
            scene.task.peers["cand"]?.pieceCosts = PieceCostWindow([.milliseconds(10), .milliseconds(10), .seconds(1)])
        case .unknownHost:
            scene.hosts["h1"] = nil
        case .sharingDisabled:
            scene.hosts["h1"]?.isSharingDisabled = true
        case .noFreeUploadSlot:
            scene.hosts["h1"] = Fixture.host("h1", slots: 4, used: 4)
        case .wouldCreateCycle:
            scene.task.dag.addEdge(from: "child", to: "cand")
        }
        return (scene, "cand")
    }

    @Test("without scheduling.acyclic a peer may feed the peer that feeds it")
    func mutualParentsByDefault() {
        let (scene, candidate) = Self.scene(rejecting: .wouldCreateCycle)
        let selector = ParentSelector(strategy: DefaultStrategy())
        #expect(selector.rejection(of: candidate, for: scene.child, in: scene.task, hosts: scene.hosts) == nil)
    }

    @Test("each filter rejects its candidate", arguments: ParentSelector.Rejection.allCases)
    func filter(reason: ParentSelector.Rejection) {
        let (scene, candidate) = Self.scene(rejecting: reason)
        #expect(Self.selector.rejection(of: candidate, for: scene.child, in: scene.task, hosts: scene.hosts) == reason)
        var random = SeededRandomNumberGenerator(seed: 1)
        let parents = Self.selector.selectParents(for: scene.child, in: scene.task, hosts: scene.hosts, using: &random)
        #expect(!parents.map(\.peerID).contains(candidate))
    }

    @Test("the unfiltered candidate is eligible and chosen")
    func eligible() {
        let scene = Scene()
        #expect(Self.selector.rejection(of: "cand", for: scene.child, in: scene.task, hosts: scene.hosts) == nil)
        var random = SeededRandomNumberGenerator(seed: 1)
        let parents = Self.selector.selectParents(for: scene.child, in: scene.task, hosts: scene.hosts, using: &random)
        #expect(parents.map(\.peerID) == ["cand"])
        #expect(parents.first?.peerAddress == "10.0.0.1:4000")
        #expect(parents.first?.pieceDataAddress == "10.0.0.1:4005")
    }

    @Test(
        "peers that cannot serve are filtered",
        arguments: [PeerStateMachine.State.failed, .leave, .pending, .receivedTiny, .receivedEmpty]
    )
    func cannotServe(state: PeerStateMachine.State) {
        var scene = Scene()
        scene.add("cand", host: "h1", state: state, pieces: [0])
        #expect(
            Self.selector.rejection(of: "cand", for: scene.child, in: scene.task, hosts: scene.hosts) == .cannotServe)
    }

    @Test("an origin reader serves before it holds a piece; an idle registrant does not")
    func servesWhileDownloading() {
        var scene = Scene()
        scene.add("cand", host: "h1", state: .backToSource)
        #expect(Self.selector.rejection(of: "cand", for: scene.child, in: scene.task, hosts: scene.hosts) == nil)
        scene.add("cand", host: "h1", state: .receivedNormal)
        #expect(
            Self.selector.rejection(of: "cand", for: scene.child, in: scene.task, hosts: scene.hosts) == .cannotServe)
        scene.add("cand", host: "h1", state: .receivedNormal, pieces: [4])
        #expect(Self.selector.rejection(of: "cand", for: scene.child, in: scene.task, hosts: scene.hosts) == nil)
    }

    /// Two candidates that differ in one respect; the better one must come first.
    @Test(
        "scoring order with the default strategy",
        arguments: [
            ("idc", Fixture.host("hb", idc: "east"), Fixture.host("hw", idc: "west")),
            ("location", Fixture.host("hb", location: "cn|hz|a"), Fixture.host("hw", location: "cn|sh|a")),
            ("free upload", Fixture.host("hb", slots: 10, used: 1), Fixture.host("hw", slots: 10, used: 9)),
            ("idle bandwidth", Fixture.host("hb", maxTx: 100, idleTx: 90), Fixture.host("hw", maxTx: 100, idleTx: 10)),
            ("seed", Fixture.host("hb", kind: .seed), Fixture.host("hw")),
        ])
    func scoringOrder(aspect: String, better: PeerHost, worse: PeerHost) {
        var scene = Scene()
        scene.hosts["hc"] = Fixture.host("hc", idc: "east", location: "cn|hz|b")
        scene.hosts["hb"] = better
        scene.hosts["hw"] = worse
        scene.task.peers["cand"] = nil
        // Name the worse one first so a tie would put it first.
        scene.add("a-worse", host: "hw", pieces: [0])
        scene.add("b-better", host: "hb", pieces: [0])
        var random = SeededRandomNumberGenerator(seed: 7)
        let parents = Self.selector.selectParents(for: scene.child, in: scene.task, hosts: scene.hosts, using: &random)
        #expect(parents.map(\.peerID) == ["b-better", "a-worse"], "\(aspect)")
        #expect((parents.first?.score ?? 0) > (parents.last?.score ?? 1))
    }

    @Test("at most parentLimit parents, the best ones", arguments: [1, 3, 8])
    func parentLimit(limit: Int) {
        var scene = Scene()
        scene.task.peers["cand"] = nil
        for index in 0..<12 {
            scene.hosts["h\(index)"] = Fixture.host("h\(index)", slots: 12, used: index)
            scene.add("p\(index)", host: "h\(index)", pieces: [0])
        }
        let selector = ParentSelector(strategy: DefaultStrategy(), candidateSampleLimit: 40, parentLimit: limit)
        var random = SeededRandomNumberGenerator(seed: 3)
        let parents = selector.selectParents(for: scene.child, in: scene.task, hosts: scene.hosts, using: &random)
        #expect(parents.map(\.peerID) == (0..<limit).map { "p\($0)" }, "fewer used slots score higher")
    }

    @Test("sampling draws at most candidateSampleLimit distinct peers, reproducibly")
    func sampling() {
        var scene = Scene()
        for index in 0..<60 { scene.add("p\(index)", host: "h1") }
        let selector = ParentSelector(strategy: DefaultStrategy(), candidateSampleLimit: 40, parentLimit: 8)
        var first = SeededRandomNumberGenerator(seed: 9)
        var second = SeededRandomNumberGenerator(seed: 9)
        let sample = selector.sample(scene.task, using: &first)
        #expect(sample.count == 40)
        #expect(Set(sample).count == 40)
        #expect(sample == selector.sample(scene.task, using: &second))
        var small = SeededRandomNumberGenerator(seed: 9)
        #expect(
            Set(
                ParentSelector(strategy: DefaultStrategy(), candidateSampleLimit: 100).sample(scene.task, using: &small)
            )
                == Set(scene.task.peers.keys))
    }

    @Test("candidates are built from the model")
    func candidate() {
        var task = SchedulerTask(id: Fixture.taskID, url: Fixture.url, now: Fixture.start)
        task.pieceCount = 10
        let peer = SchedulerPeer(
            id: "p", hostID: "h", taskID: Fixture.taskID, state: .succeeded, finishedPieces: PieceBitmap([1, 2]),
            now: Fixture.start)
        var host = Fixture.host("h", kind: .seed, idc: "x", location: "a|b", slots: 8, used: 3, maxTx: 10, idleTx: 4)
        host.uploadSuccessCount = 5
        host.uploadFailureCount = 1
        let candidate = ParentSelector.makeCandidate(peer, host: host, task: task)
        #expect(candidate.isSeed && candidate.freeUploadSlots == 5 && candidate.uploadSlots == 8)
        #expect(candidate.finishedPieces == 10, "a succeeded peer holds every piece")
        #expect(candidate.totalPieces == 10 && candidate.idc == "x" && candidate.location == "a|b")
        #expect(candidate.uploadSuccesses == 5 && candidate.uploadFailures == 1 && candidate.idleTxBandwidth == 4)
    }
}
