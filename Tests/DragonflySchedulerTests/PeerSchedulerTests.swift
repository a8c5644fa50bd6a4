import DragonflyCore
import DragonflyScheduler
import Testing

@Suite("Peer scheduler")
struct PeerSchedulerTests {
    static let hosts = [Fixture.host("h1"), Fixture.host("h2"), Fixture.host("h3"), Fixture.host("h4")]
    static let mib: Int64 = 1 << 20

    static func digest(_ number: UInt32) -> String { "sha256:" + String(repeating: "\(number % 10)", count: 64) }

    /// `reader` on h1 reads the origin for a task of `length` bytes and, when `complete`, finishes it.
    static func readOrigin(
        _ scheduler: inout PeerScheduler<SeededRandomNumberGenerator>, length: Int64, pieces: UInt32,
        complete: Bool = true
    ) throws {
        let outcome = try scheduler.register(Fixture.registration("reader", host: "h1"), now: Fixture.start)
        guard case .needBackToSource = outcome.decision else {
            Issue.record("expected back-to-source, got \(outcome.decision)")
            return
        }
        let reader = Fixture.key("reader")
        _ = scheduler.handle(
            .backToSourceStarted(contentLength: length, pieceLength: 4 * mib, responseHeader: ["ETag": "x"]),
            from: reader, now: Fixture.start)
        for number in 0..<pieces {
            _ = scheduler.handle(
                .pieceBackToSourceFinished(
                    number: number, length: 4 * mib, cost: .milliseconds(10), digest: digest(number)),
                from: reader, now: Fixture.start)
        }
        if complete {
            _ = scheduler.handle(
                .backToSourceFinished(contentLength: length, pieceCount: Int(pieces)), from: reader, now: Fixture.start)
        }
    }

    /// `reader` read a 10-piece task, `mid` (h2) holds pieces 0–1 and downloads, `child` (h3) got both as parents.
    static func childOfReaderAndMid() throws -> PeerScheduler<SeededRandomNumberGenerator> {
        var scheduler = try Fixture.scheduler(hosts: hosts)
        try readOrigin(&scheduler, length: 40 * mib, pieces: 10)
        _ = try scheduler.register(Fixture.registration("mid", host: "h2", pieces: [0, 1]), now: Fixture.start)
        _ = scheduler.handle(.started, from: Fixture.key("mid"), now: Fixture.start)
        let child = try scheduler.register(Fixture.registration("child", host: "h3"), now: Fixture.start)
        #expect(Set(child.decision.parents) == ["reader", "mid"])
        return scheduler
    }

    @Test("an empty complete task is answered with EmptyTask")
    func emptyTask() throws {
        var scheduler = try Fixture.scheduler(hosts: Self.hosts)
        try Self.readOrigin(&scheduler, length: 0, pieces: 0)
        let outcome = try scheduler.register(Fixture.registration("p", host: "h2"), now: Fixture.at(1))
        #expect(outcome.decision == .emptyTask)
        #expect(outcome.actions == [.send(Fixture.key("p"), .emptyTask)])
        #expect(scheduler.registry.peer(Fixture.key("p"))?.state == .receivedEmpty)
    }

    @Test("a tiny task carries its content inline once known, else is answered as small")
    func tinyTask() throws {
        var scheduler = try Fixture.scheduler(hosts: Self.hosts)
        try Self.readOrigin(&scheduler, length: 5, pieces: 1)
        let small = try scheduler.register(Fixture.registration("p", host: "h2"), now: Fixture.at(1))
        guard case .smallTask(let plan) = small.decision else {
            Issue.record("expected SmallTask without content, got \(small.decision)")
            return
        }
        #expect(plan.pieceDigest == Self.digest(0) && plan.contentLength == 5)

        scheduler.learnTinyContent(Array("hello".utf8), taskID: Fixture.taskID)
        let tiny = try scheduler.register(Fixture.registration("q", host: "h3"), now: Fixture.at(1))
        #expect(tiny.decision == .tinyTask(content: Array("hello".utf8)))
        #expect(scheduler.registry.peer(Fixture.key("q"))?.state == .receivedTiny)
    }

    @Test("a one-piece task is answered with SmallTask: parent holding it and its trusted digest")
    func smallTask() throws {
        var scheduler = try Fixture.scheduler(hosts: Self.hosts)
        try Self.readOrigin(&scheduler, length: Self.mib, pieces: 1)
        let outcome = try scheduler.register(Fixture.registration("p", host: "h2"), now: Fixture.at(1))
        guard case .smallTask(let plan) = outcome.decision else {
            Issue.record("expected SmallTask, got \(outcome.decision)")
            return
        }
        #expect(plan.parents.map(\.peerID) == ["reader"])
        #expect(plan.pieceDigest == Self.digest(0))
        #expect(plan.responseHeader == ["ETag": "x"])
        #expect(scheduler.registry.peer(Fixture.key("p"))?.state == .receivedSmall)
    }

    @Test("a normal task gets parents and every trusted digest")
    func normalTask() throws {
        var scheduler = try Fixture.scheduler(hosts: Self.hosts)
        try Self.readOrigin(&scheduler, length: 10 * Self.mib, pieces: 3)
        let outcome = try scheduler.register(Fixture.registration("p", host: "h2"), now: Fixture.at(1))
        guard case .normalTask(let plan) = outcome.decision else {
            Issue.record("expected NormalTask, got \(outcome.decision)")
            return
        }
        #expect(plan.parents.map(\.peerID) == ["reader"])
        #expect(plan.parents.first?.isFinished == true)
        #expect(plan.pieceDigests == [0: Self.digest(0), 1: Self.digest(1), 2: Self.digest(2)])
        #expect(plan.contentLength == 10 * Self.mib && plan.pieceLength == 4 * Self.mib && plan.pieceCount == 3)
        #expect(scheduler.registry.peer(Fixture.key("p"))?.state == .receivedNormal)
        #expect(scheduler.registry.task(Fixture.taskID)?.state == .succeeded)
    }

    @Test("digests are learnt from the origin reader and batched to downloading peers")
    func digestBatching() throws {
        var scheduler = try Fixture.scheduler(hosts: Self.hosts)
        try Self.readOrigin(&scheduler, length: 40 * Self.mib, pieces: 2, complete: false)
        let child = try scheduler.register(Fixture.registration("child", host: "h2"), now: Fixture.start)
        guard case .normalTask(let plan) = child.decision else {
            Issue.record("expected NormalTask, got \(child.decision)")
            return
        }
        #expect(plan.pieceDigests.count == 2, "digests known so far travel with the parents")
        #expect(scheduler.tasksWithPendingDigests == [Fixture.taskID])

        let first = scheduler.drainDigestBatches()
        let batch = DigestBatch(
            taskID: Fixture.taskID, pieceDigests: [0: Self.digest(0), 1: Self.digest(1)], contentLength: 40 * Self.mib,
            pieceCount: 10)
        #expect(first == [.send(Fixture.key("child"), .pieceDigests(batch))], "the reader itself is not told")
        #expect(scheduler.drainDigestBatches().isEmpty, "drained")

        _ = scheduler.handle(
            .pieceBackToSourceFinished(number: 2, length: 4 * Self.mib, cost: .milliseconds(5), digest: Self.digest(2)),
            from: Fixture.key("reader"), now: Fixture.at(1))
        let pushes = scheduler.drainDigestBatches()
        let expected = DigestBatch(
            taskID: Fixture.taskID, pieceDigests: [2: Self.digest(2)], contentLength: 40 * Self.mib, pieceCount: 10)
        #expect(pushes == [.send(Fixture.key("child"), .pieceDigests(expected))])
        #expect(scheduler.drainDigestBatches().isEmpty)
    }

    @Test("with firstDigestRecipients a fresh digest goes to one downloading peer, the rest once it is held")
    func stagedDigests() throws {
        var scheduler = try Fixture.scheduler(hosts: Self.hosts)
        scheduler.firstDigestRecipients = 1
        scheduler.digestReleaseAfter = .seconds(2)
        try Self.readOrigin(&scheduler, length: 40 * Self.mib, pieces: 0, complete: false)
        for (peer, host) in [("a", "h2"), ("b", "h3"), ("c", "h4")] {
            _ = try scheduler.register(Fixture.registration(peer, host: host), now: Fixture.start)
            _ = scheduler.handle(.started, from: Fixture.key(peer), now: Fixture.start)
        }
        for number in 0..<3 as Range<UInt32> {
            _ = scheduler.handle(
                .pieceBackToSourceFinished(
                    number: number, length: 4 * Self.mib, cost: .milliseconds(5), digest: Self.digest(number)),
                from: Fixture.key("reader"), now: Fixture.start)
        }
        func digests(_ actions: [SchedulerAction]) -> [String: [UInt32]] {
            var result: [String: [UInt32]] = [:]
            for case .send(let key, .pieceDigests(let batch)) in actions {
                result[key.peerID, default: []] += batch.pieceDigests.keys.sorted()
            }
            return result
        }
        // Piece p goes first to the (p mod 3)-th downloading peer only.
        #expect(digests(scheduler.drainDigestBatches(now: Fixture.start)) == ["a": [0], "b": [1], "c": [2]])
        #expect(scheduler.drainDigestBatches(now: Fixture.start + .milliseconds(100)).isEmpty)
        // a holds piece 0 now: b and c get its digest (a is a second source); 1 and 2 wait.
        _ = scheduler.handle(
            .pieceFinished(
                number: 0, parentID: "reader", length: 4 * Self.mib, cost: .milliseconds(5), digest: Self.digest(0)),
            from: Fixture.key("a"), now: Fixture.start + .milliseconds(200))
        #expect(digests(scheduler.drainDigestBatches(now: Fixture.start + .milliseconds(300))) == ["b": [0], "c": [0]])
        // Nobody fetched 1 and 2 in time: everyone else gets them.
        #expect(
            digests(scheduler.drainDigestBatches(now: Fixture.start + .milliseconds(2500))) == [
                "a": [1, 2], "b": [2], "c": [1],
            ])
        #expect(scheduler.drainDigestBatches(now: Fixture.at(3)).isEmpty)
        #expect(scheduler.tasksWithPendingDigests.isEmpty)
    }

    @Test("a peer scheduled while digests are staged gets only released ones, then becomes a first recipient")
    func stagedDigestsAndALatePeer() throws {
        var scheduler = try Fixture.scheduler(hosts: Self.hosts)
        scheduler.firstDigestRecipients = 1
        scheduler.digestReleaseAfter = .seconds(30)
        try Self.readOrigin(&scheduler, length: 40 * Self.mib, pieces: 0, complete: false)
        for (peer, host) in [("a", "h2"), ("b", "h3")] {
            _ = try scheduler.register(Fixture.registration(peer, host: host), now: Fixture.start)
            _ = scheduler.handle(.started, from: Fixture.key(peer), now: Fixture.start)
        }
        for number in 0..<2 as Range<UInt32> {
            _ = scheduler.handle(
                .pieceBackToSourceFinished(
                    number: number, length: 4 * Self.mib, cost: .milliseconds(5), digest: Self.digest(number)),
                from: Fixture.key("reader"), now: Fixture.start)
        }
        func digests(_ actions: [SchedulerAction]) -> [String: [UInt32]] {
            var result: [String: [UInt32]] = [:]
            for case .send(let key, .pieceDigests(let batch)) in actions {
                result[key.peerID, default: []] += batch.pieceDigests.keys.sorted()
            }
            return result
        }
        #expect(digests(scheduler.drainDigestBatches(now: Fixture.start)) == ["a": [0], "b": [1]])
        // Both digests are staged when "late" registers: its plan carries neither.
        let late = try scheduler.register(Fixture.registration("late", host: "h4"), now: Fixture.start)
        guard case .normalTask(let plan) = late.decision else {
            Issue.record("expected a normal task, got \(late.decision)")
            return
        }
        #expect(plan.pieceDigests.isEmpty)
        _ = scheduler.handle(.started, from: Fixture.key("late"), now: Fixture.start)
        _ = scheduler.handle(
            .pieceBackToSourceFinished(
                number: 2, length: 4 * Self.mib, cost: .milliseconds(5), digest: Self.digest(2)),
            from: Fixture.key("reader"), now: Fixture.start)
        // Pieces 0 and 1 have their first recipient; piece 2 goes to one of a, b, late (2 mod 3: late).
        #expect(digests(scheduler.drainDigestBatches(now: Fixture.start + .milliseconds(100))) == ["late": [2]])
        // A peer on a seed host (announced after the origin reader started) holding piece 1 is no second
        // source: nothing is released.
        _ = try scheduler.announceHost(Fixture.host("seed", kind: .seed), now: Fixture.start)
        _ = try scheduler.register(Fixture.registration("s", host: "seed"), now: Fixture.start)
        _ = scheduler.handle(
            .pieceFinished(
                number: 1, parentID: "reader", length: 4 * Self.mib, cost: .milliseconds(5), digest: Self.digest(1)),
            from: Fixture.key("s"), now: Fixture.start + .milliseconds(150))
        #expect(
            digests(scheduler.drainDigestBatches(now: Fixture.start + .milliseconds(200)))["a"]?.contains(1) != true)
        // a holds piece 0: everyone else gets it.
        _ = scheduler.handle(
            .pieceFinished(
                number: 0, parentID: "reader", length: 4 * Self.mib, cost: .milliseconds(5), digest: Self.digest(0)),
            from: Fixture.key("a"), now: Fixture.start + .milliseconds(250))
        let released = digests(scheduler.drainDigestBatches(now: Fixture.start + .milliseconds(300)))
        #expect(released["b"]?.contains(0) == true && released["late"]?.contains(0) == true)
        #expect(released["b"]?.contains(1) != true && released["late"]?.contains(1) != true)
    }

    @Test("digests from a non-reader are not trusted; the first trusted digest wins")
    func untrustedDigests() throws {
        var scheduler = try Fixture.scheduler(hosts: Self.hosts)
        try Self.readOrigin(&scheduler, length: 40 * Self.mib, pieces: 1, complete: false)
        _ = try scheduler.register(Fixture.registration("child", host: "h2"), now: Fixture.start)
        _ = scheduler.handle(
            .pieceFinished(number: 5, parentID: "reader", length: 1, cost: .milliseconds(1), digest: "sha256:evil"),
            from: Fixture.key("child"), now: Fixture.start)
        _ = scheduler.handle(
            .pieceBackToSourceFinished(number: 0, length: 1, cost: .milliseconds(1), digest: "sha256:other"),
            from: Fixture.key("reader"), now: Fixture.start)
        let digests = scheduler.registry.task(Fixture.taskID)?.trustedDigests
        #expect(digests == [0: Self.digest(0)])
    }

    @Test("digests reported by a seed host's peer are trusted")
    func seedDigests() throws {
        var scheduler = try Fixture.scheduler(hosts: Self.hosts + [Fixture.host("seed", kind: .seed)])
        _ = try scheduler.register(Fixture.registration("s", host: "seed", pieces: [0]), now: Fixture.start)
        _ = scheduler.handle(
            .pieceFinished(number: 1, parentID: nil, length: 1, cost: .zero, digest: Self.digest(1)),
            from: Fixture.key("s"), now: Fixture.start)
        #expect(scheduler.registry.task(Fixture.taskID)?.trustedDigests == [1: Self.digest(1)])
    }

    @Test("a piece fetched from a parent, or held by a normal host, never teaches a digest")
    func digestsOfFetchedPiecesAreNotLearnt() throws {
        var scheduler = try Fixture.scheduler(hosts: Self.hosts + [Fixture.host("seed", kind: .seed)])
        _ = try scheduler.register(Fixture.registration("s", host: "seed", pieces: [0]), now: Fixture.start)
        _ = try scheduler.register(Fixture.registration("n", host: "h2", pieces: [0]), now: Fixture.start)
        _ = scheduler.handle(
            .pieceFinished(number: 2, parentID: "n", length: 1, cost: .zero, digest: Self.digest(2)),
            from: Fixture.key("s"), now: Fixture.start)
        _ = scheduler.handle(
            .pieceFinished(number: 3, parentID: nil, length: 1, cost: .zero, digest: Self.digest(3)),
            from: Fixture.key("n"), now: Fixture.start)
        #expect(scheduler.registry.task(Fixture.taskID)?.trustedDigests.isEmpty == true)
    }

    @Test("an origin error fails the task and is broadcast to every other unfinished peer")
    func originErrorBroadcast() throws {
        var scheduler = try Fixture.scheduler(hosts: Self.hosts)
        try Self.readOrigin(&scheduler, length: 40 * Self.mib, pieces: 0, complete: false)
        _ = try scheduler.register(Fixture.registration("a", host: "h2"), now: Fixture.start)
        _ = try scheduler.register(Fixture.registration("b", host: "h3"), now: Fixture.start)
        _ = try scheduler.register(Fixture.registration("gone", host: "h4"), now: Fixture.start)
        _ = scheduler.handle(.failed(reason: "disk full"), from: Fixture.key("gone"), now: Fixture.start)

        let error = OriginError(statusCode: 404, header: ["X": "y"], message: "Not Found")
        let actions = scheduler.handle(
            .backToSourceFailed(reason: "404", originError: error), from: Fixture.key("reader"), now: Fixture.at(1))
        #expect(
            actions == [.send(Fixture.key("a"), .sourceError(error)), .send(Fixture.key("b"), .sourceError(error))])
        let task = scheduler.registry.task(Fixture.taskID)
        #expect(task?.state == .failed)
        #expect(task?.originError == error)
        #expect(task?.backToSourcePeers.isEmpty == true)
    }

    @Test("a failed origin reader without an origin error hands the origin to a waiting peer")
    func readerFailsWithoutOriginError() throws {
        var scheduler = try Fixture.scheduler(hosts: Self.hosts)
        _ = try scheduler.register(Fixture.registration("reader", host: "h1"), now: Fixture.start)
        _ = try scheduler.register(Fixture.registration("next", host: "h2"), now: Fixture.start)
        let actions = scheduler.handle(
            .backToSourceFailed(reason: "reset", originError: nil), from: Fixture.key("reader"), now: Fixture.at(1))
        guard case .send(Fixture.key("next"), .needBackToSource) = actions.first else {
            Issue.record("expected the waiting peer to read the origin, got \(actions)")
            return
        }
    }

    @Test("a permanent piece failure blocklists the parent and reschedules; a temporary one does not")
    func pieceFailed() throws {
        var scheduler = try Self.childOfReaderAndMid()

        let temporary = scheduler.handle(
            .pieceFailed(number: 3, parentID: "mid", isTemporary: true), from: Fixture.key("child"), now: Fixture.start)
        #expect(temporary.isEmpty)
        #expect(scheduler.registry.host("h2")?.uploadFailureCount == 1)

        let actions = scheduler.handle(
            .pieceFailed(number: 3, parentID: "mid", isTemporary: false), from: Fixture.key("child"), now: Fixture.start
        )
        guard case .send(_, .normalTask(let plan)) = actions.first else {
            Issue.record("expected new parents, got \(actions)")
            return
        }
        #expect(plan.parents.map(\.peerID) == ["reader"])
        let peer = scheduler.registry.peer(Fixture.key("child"))
        #expect(peer?.blocklist == ["mid"] && peer?.rescheduleCount == 1)
        #expect(scheduler.registry.task(Fixture.taskID)?.dag.parents(of: "child") == ["reader"])
    }

    @Test("a peer's first piece offers it as an extra parent to the task's downloading peers")
    func firstPieceOffersTheHolderAsAParent() throws {
        var scheduler = try Fixture.scheduler(hosts: Self.hosts)
        try Self.readOrigin(&scheduler, length: 40 * Self.mib, pieces: 10, complete: false)
        // Both register before either started (as when they waited for the reader together): each gets the reader.
        for (peer, host) in [("a", "h2"), ("b", "h3")] {
            let outcome = try scheduler.register(Fixture.registration(peer, host: host), now: Fixture.start)
            #expect(outcome.decision.parents == ["reader"])
        }
        for peer in ["a", "b"] { _ = scheduler.handle(.started, from: Fixture.key(peer), now: Fixture.start) }
        func piece(_ number: UInt32) -> PeerEvent {
            .pieceFinished(
                number: number, parentID: "reader", length: 4 * Self.mib, cost: .milliseconds(5),
                digest: Self.digest(number))
        }
        let offered = scheduler.handle(piece(0), from: Fixture.key("a"), now: Fixture.start)
        guard offered.count == 1, case .send(Fixture.key("b"), .normalTask(let plan)) = offered.first else {
            Issue.record("expected one NormalTask to b, got \(offered)")
            return
        }
        #expect(Set(plan.parents.map(\.peerID)) == ["reader", "a"])
        #expect(plan.pieceDigests[0] == Self.digest(0))
        #expect(scheduler.registry.peer(Fixture.key("b"))?.parents == ["reader", "a"])

        // b's first piece: b may feed a although a feeds b (peers trade both ways unless `scheduling.acyclic`).
        let back = scheduler.handle(piece(1), from: Fixture.key("b"), now: Fixture.start)
        guard back.count == 1, case .send(Fixture.key("a"), .normalTask(let mutual)) = back.first else {
            Issue.record("expected one NormalTask to a, got \(back)")
            return
        }
        #expect(Set(mutual.parents.map(\.peerID)) == ["reader", "b"])
        #expect(scheduler.registry.task(Fixture.taskID)?.dag.parents(of: "a") == ["reader", "b"])
        // Later pieces offer nothing new.
        #expect(scheduler.handle(piece(2), from: Fixture.key("a"), now: Fixture.start).isEmpty)
    }

    @Test("a peer that re-registers holding pieces is offered to the task's downloading peers at once")
    func reRegistrationWithPiecesOffersTheHolder() throws {
        var scheduler = try Fixture.scheduler(hosts: Self.hosts)
        // After a failover: a first peer holds piece 0 and nobody else has parents but it.
        _ = try scheduler.register(Fixture.registration("a", host: "h2", pieces: [0]), now: Fixture.start)
        _ = scheduler.handle(.started, from: Fixture.key("a"), now: Fixture.start)
        let b = try scheduler.register(Fixture.registration("b", host: "h3"), now: Fixture.start)
        #expect(b.decision.parents.contains("a"))
        _ = scheduler.handle(.started, from: Fixture.key("b"), now: Fixture.start)
        // The old origin reader comes back with four pieces: b hears of it now, not at its next first piece.
        let reader = try scheduler.register(
            Fixture.registration("reader", host: "h1", pieces: [0, 1, 2, 3]), now: Fixture.start)
        let offers = reader.actions.compactMap { action -> [String]? in
            guard case .send(Fixture.key("b"), .normalTask(let plan)) = action else { return nil }
            return plan.parents.map(\.peerID)
        }
        #expect(offers.last.map(Set.init) == ["a", "reader"], "\(reader.actions)")
    }

    @Test("an origin reader is never offered parents, and its Started is ignored rather than rejected")
    func originReadersKeepReading() throws {
        var scheduler = try Fixture.scheduler(hosts: Self.hosts)
        // Registered and sent to the origin, but BackToSourceStarted not seen yet (still receivedNormal).
        let reader = try scheduler.register(Fixture.registration("reader", host: "h1"), now: Fixture.start)
        guard case .needBackToSource = reader.decision else {
            Issue.record("expected back-to-source, got \(reader.decision)")
            return
        }
        let holder = try scheduler.register(Fixture.registration("a", host: "h2", pieces: [0]), now: Fixture.start)
        #expect(!holder.actions.contains { if case .send(Fixture.key("reader"), _) = $0 { true } else { false } })
        #expect(scheduler.handle(.started, from: Fixture.key("reader"), now: Fixture.start).isEmpty)
        #expect(scheduler.registry.task(Fixture.taskID)?.backToSourcePeers == ["reader"])
    }

    @Test("a parent reported corrupted is handed out to no child of the task again")
    func corruptedParent() throws {
        var scheduler = try Self.childOfReaderAndMid()

        // A plain permanent failure blocklists the parent for the reporting child only.
        _ = scheduler.handle(
            .pieceFailed(number: 0, parentID: "mid", isTemporary: false), from: Fixture.key("child"), now: Fixture.start
        )
        #expect(scheduler.registry.peer(Fixture.key("mid"))?.servesCorruptData == false)
        let other = try scheduler.register(Fixture.registration("other", host: "h4"), now: Fixture.start)
        #expect(Set(other.decision.parents) == ["reader", "mid"])

        // Corrupted bytes: nobody gets that parent any more, the reporter included.
        _ = scheduler.handle(
            .pieceFailed(number: 1, parentID: "mid", isTemporary: false, isCorrupted: true), from: Fixture.key("other"),
            now: Fixture.start)
        #expect(scheduler.registry.peer(Fixture.key("mid"))?.servesCorruptData == true)
        let late = try scheduler.register(Fixture.registration("late", host: "h3"), now: Fixture.start)
        #expect(late.decision.parents.contains("reader") && !late.decision.parents.contains("mid"))
    }

    @Test("reschedule honours the blocklist it carries")
    func rescheduleBlocklist() throws {
        var scheduler = try Fixture.scheduler(hosts: Self.hosts)
        try Self.readOrigin(&scheduler, length: 40 * Self.mib, pieces: 10)
        _ = try scheduler.register(Fixture.registration("child", host: "h3"), now: Fixture.start)
        let actions = scheduler.handle(
            .reschedule(blocklist: ["reader"]), from: Fixture.key("child"), now: Fixture.start)
        #expect(actions.isEmpty, "no parent left and the task is complete: wait")
        #expect(scheduler.registry.task(Fixture.taskID)?.waitingPeers == ["child"])
    }

    @Test("a parent that leaves gets its children rescheduled")
    func parentLeaves() throws {
        var scheduler = try Fixture.scheduler(hosts: Self.hosts)
        try Self.readOrigin(&scheduler, length: 40 * Self.mib, pieces: 10)
        _ = try scheduler.register(Fixture.registration("mid", host: "h2", pieces: [0]), now: Fixture.start)
        _ = scheduler.handle(.started, from: Fixture.key("mid"), now: Fixture.start)
        _ = try scheduler.register(
            Fixture.registration("child", host: "h3"), now: Fixture.start)
        _ = scheduler.handle(.reschedule(blocklist: ["reader"]), from: Fixture.key("child"), now: Fixture.start)
        #expect(scheduler.registry.peer(Fixture.key("child"))?.parents == ["mid"])

        let outcome = scheduler.leavePeer(Fixture.key("mid"), now: Fixture.at(1))
        #expect(outcome.removed.peers == [Fixture.key("mid")])
        #expect(outcome.actions.isEmpty, "its child's only other parent is blocklisted: it waits")
        #expect(scheduler.registry.task(Fixture.taskID)?.waitingPeers == ["child"])
    }

    @Test("events for unknown peers or in the wrong state are rejected, not trapped")
    func rejections() throws {
        var scheduler = try Fixture.scheduler(hosts: Self.hosts)
        let unknown = scheduler.handle(.started, from: Fixture.key("nobody"), now: Fixture.start)
        guard case .reject(_, let code, _) = unknown.first else {
            Issue.record("expected a rejection, got \(unknown)")
            return
        }
        #expect(code == .notFound)
        _ = try scheduler.register(Fixture.registration("p", host: "h1"), now: Fixture.start)
        _ = scheduler.handle(.finished(contentLength: 1, pieceCount: 1), from: Fixture.key("p"), now: Fixture.start)
        let late = scheduler.handle(.started, from: Fixture.key("p"), now: Fixture.start)
        guard case .reject(_, let lateCode, _) = late.first else {
            Issue.record("expected a rejection, got \(late)")
            return
        }
        #expect(lateCode == .failedPrecondition)
        #expect(throws: DragonflyError.self) {
            try scheduler.register(Fixture.registration("x", host: "unknown-host"), now: Fixture.start)
        }
    }

    @Test("GC through the scheduler removes stale peers")
    func garbageCollection() throws {
        var scheduler = try Fixture.scheduler(hosts: Self.hosts)
        _ = try scheduler.register(Fixture.registration("p", host: "h1"), now: Fixture.start)
        #expect(scheduler.collectGarbage(now: Fixture.at(60)).removed.isEmpty)
        let outcome = scheduler.collectGarbage(now: Fixture.at(31 * 60))
        #expect(outcome.removed.peers == [Fixture.key("p")])
    }
}
