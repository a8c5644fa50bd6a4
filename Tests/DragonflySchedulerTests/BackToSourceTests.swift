import DragonflyCore
import DragonflyScheduler
import Testing

@Suite("Back-to-source rationing")
struct BackToSourceTests {
    @Test(
        "the limit grows by one per peersPerExtra peers",
        arguments: [(0, 1), (99, 1), (100, 2), (250, 3), (1000, 11)])
    func limit(peers: Int, expected: Int) {
        #expect(
            BackToSourceRationer(backToSourceBase: 1, backToSourcePeersPerExtra: 100).limit(peerCount: peers)
                == expected)
    }

    @Test("without a seed the first registrant reads the origin; the next waits and then gets it as parent")
    func firstRegistrant() throws {
        var scheduler = try Fixture.scheduler(hosts: [Fixture.host("h1"), Fixture.host("h2")])
        let first = try scheduler.register(Fixture.registration("p1", host: "h1"), now: Fixture.start)
        guard case .needBackToSource = first.decision else {
            Issue.record("expected back-to-source, got \(first.decision)")
            return
        }
        let second = try scheduler.register(Fixture.registration("p2", host: "h2"), now: Fixture.start)
        #expect(second.decision == .waitForParents, "exactly one origin reader")
        #expect(second.actions.isEmpty)

        let started = scheduler.handle(
            .backToSourceStarted(contentLength: 100 << 20, pieceLength: 4 << 20, responseHeader: [:]),
            from: Fixture.key("p1"), now: Fixture.at(1))
        guard case .send(let key, .normalTask(let plan)) = started.first else {
            Issue.record("expected NormalTask for the waiting peer, got \(started)")
            return
        }
        #expect(key == Fixture.key("p2"))
        #expect(plan.parents.map(\.peerID) == ["p1"], "scheduled onto the reader while it downloads")
        #expect(plan.pieceCount == 25)
        #expect(scheduler.registry.task(Fixture.taskID)?.dag.parents(of: "p2") == ["p1"])
    }

    @Test("with a seed host the scheduler triggers it and the registrant waits; the seed then reads the origin")
    func seedTrigger() throws {
        var scheduler = try Fixture.scheduler(hosts: [Fixture.host("h1"), Fixture.host("seed", kind: .seed)])
        let first = try scheduler.register(Fixture.registration("p1", host: "h1"), now: Fixture.start)
        #expect(first.decision == .waitForParents)
        #expect(first.actions == [.triggerSeedPeer(hostID: "seed", taskID: Fixture.taskID, url: Fixture.url)])
        let second = try scheduler.register(Fixture.registration("p2", host: "h1"), now: Fixture.start)
        #expect(second.actions.isEmpty, "the seed is triggered once")

        let seed = try scheduler.register(Fixture.registration("s1", host: "seed"), now: Fixture.at(1))
        guard case .needBackToSource = seed.decision else {
            Issue.record("the seed peer reads the origin, got \(seed.decision)")
            return
        }
        let actions = scheduler.handle(
            .backToSourceStarted(contentLength: nil, pieceLength: nil, responseHeader: [:]), from: Fixture.key("s1"),
            now: Fixture.at(2))
        #expect(actions.compactMap(\.recipient) == [Fixture.key("p1"), Fixture.key("p2")])
    }

    @Test("a failed seed trigger falls back to the first registrant")
    func seedTriggerFailed() throws {
        var scheduler = try Fixture.scheduler(hosts: [Fixture.host("h1"), Fixture.host("seed", kind: .seed)])
        _ = try scheduler.register(Fixture.registration("p1", host: "h1"), now: Fixture.start)
        let actions = scheduler.seedTriggerFailed(taskID: Fixture.taskID, hostID: "seed", now: Fixture.at(1))
        guard case .send(Fixture.key("p1"), .needBackToSource) = actions.first, actions.count == 1 else {
            Issue.record("expected back-to-source for the first registrant, got \(actions)")
            return
        }
    }

    @Test("disable-back-to-source is respected: such a registrant waits, the next one reads the origin")
    func disabled() throws {
        var scheduler = try Fixture.scheduler(hosts: [Fixture.host("h1"), Fixture.host("h2")])
        let first = try scheduler.register(
            Fixture.registration("p1", host: "h1", disableBackToSource: true), now: Fixture.start)
        #expect(first.decision == .waitForParents)
        let second = try scheduler.register(Fixture.registration("p2", host: "h2"), now: Fixture.start)
        guard case .needBackToSource = second.decision else {
            Issue.record("expected back-to-source, got \(second.decision)")
            return
        }
    }

    @Test("an explicit need-back-to-source is honoured within the limit")
    func explicitNeed() throws {
        var scheduler = try Fixture.scheduler(hosts: [Fixture.host("h1"), Fixture.host("h2")])
        _ = try scheduler.register(Fixture.registration("p1", host: "h1"), now: Fixture.start)
        let second = try scheduler.register(
            Fixture.registration("p2", host: "h2", wantsBackToSource: true), now: Fixture.start)
        #expect(second.decision == .waitForParents, "limit 1 is taken by p1")

        var roomy = try Fixture.scheduler(hosts: [Fixture.host("h1"), Fixture.host("h2")], base: 2)
        _ = try roomy.register(Fixture.registration("p1", host: "h1"), now: Fixture.start)
        let honoured = try roomy.register(
            Fixture.registration("p2", host: "h2", wantsBackToSource: true), now: Fixture.start)
        guard case .needBackToSource = honoured.decision else {
            Issue.record("expected back-to-source, got \(honoured.decision)")
            return
        }
        #expect(roomy.registry.task(Fixture.taskID)?.backToSourcePeers == ["p1", "p2"])
    }

    @Test("over the retry limit a peer goes back to source, or fails when it may not")
    func retryLimit() throws {
        for disabled in [false, true] {
            var scheduler = try Fixture.scheduler(
                hosts: [Fixture.host("h1"), Fixture.host("h2"), Fixture.host("h3")], retryLimit: 2, base: 2)
            _ = try scheduler.register(Fixture.registration("reader", host: "h1"), now: Fixture.start)
            _ = scheduler.handle(
                .backToSourceStarted(contentLength: nil, pieceLength: nil, responseHeader: [:]),
                from: Fixture.key("reader"), now: Fixture.start)
            _ = try scheduler.register(
                Fixture.registration("child", host: "h2", disableBackToSource: disabled), now: Fixture.start)
            var last: [SchedulerAction] = []
            for _ in 0..<3 {
                last = scheduler.handle(.reschedule(blocklist: []), from: Fixture.key("child"), now: Fixture.at(1))
            }
            if disabled {
                guard case .fail(Fixture.key("child"), _) = last.first else {
                    Issue.record("expected the peer to fail, got \(last)")
                    continue
                }
                #expect(scheduler.registry.peer(Fixture.key("child"))?.state == .failed)
            } else {
                guard case .send(_, .needBackToSource) = last.first else {
                    Issue.record("expected back-to-source, got \(last)")
                    continue
                }
            }
        }
    }
}
