import DragonflyCore
import DragonflyProto
import DragonflyRPC
import DragonflyScheduler
import DragonflyTelemetry
import DragonflyTestSupport
import GRPCCore
import ServiceLifecycle
import SwiftProtobuf
import Synchronization
import Testing

/// The Scheduler gRPC service of `dragonfly scheduler`, in-process on 127.0.0.1:0, driven by real clients.
@Suite(.timeLimit(.minutes(2)))
struct SchedulerServiceTests {
    typealias Fixture = SchedulerFixture

    @Test func firstRegistrantReadsTheOriginAndTheNextOneGetsItAsParent() async throws {
        try await SchedulerHarness.run { harness in
            try await harness.announceHost("h1", port: 4100)
            try await harness.announceHost("h2", port: 4200)
            let first = harness.register(peer: "p1", host: "h1")
            let need = try await first.next("NeedBackToSource") { $0.needBackToSource }
            #expect(!need.reason.isEmpty)
            first.report(Fixture.backToSourceStarted())

            let second = harness.register(peer: "p2", host: "h2")
            let normal = try await second.next("NormalTask") { $0.normalTask }
            #expect(normal.parents.map(\.peerID) == ["p1"])
            let parent = try #require(normal.parents.first)
            #expect(parent.peerAddress == "127.0.0.1:4100")
            #expect(parent.pieceDataAddress == "127.0.0.1:4105")
            #expect(parent.host.id == "h1")
            #expect(normal.pieceLength == 4 << 20)

            // The origin reader's digest reaches the child in a PieceDigests push.
            first.report(Fixture.pieceBackToSourceFinished(0))
            let digest = try await second.next("PieceDigests with piece 0") { $0.pieceDigests?.pieceDigests[0] }
            #expect(digest == Fixture.digest(1))

            for number: UInt32 in 1...2 { first.report(Fixture.pieceBackToSourceFinished(number)) }
            var done = Dragonfly_V1_BackToSourceFinishedRequest()
            done.contentLength = 3 * (4 << 20)
            done.pieceCount = 3
            first.report(.backToSourceFinished(done))
            second.report(.started(Dragonfly_V1_PeerStartedRequest()))
            for number: UInt32 in 0...2 { second.report(Fixture.pieceFinished(number, parent: "p1")) }
            var finished = Dragonfly_V1_PeerFinishedRequest()
            finished.contentLength = 3 * (4 << 20)
            finished.pieceCount = 3
            second.report(.finished(finished))
            first.close()
            second.close()
            #expect(try await first.end().get() == ())
            #expect(try await second.end().get() == ())

            // Finished peers stay as parents after their streams ended.
            let info = try await harness.statTask()
            #expect(info.id == Fixture.taskID)
            #expect(info.url == Fixture.url)
            #expect(info.tag == "t")
            #expect(info.application == "app")
            #expect(info.state == .succeeded)
            #expect(info.contentLength == 3 * (4 << 20))
            #expect(info.pieceLength == 4 << 20)
            #expect(info.pieceCount == 3)
            #expect(info.sizeScope == .normal)
            #expect(info.peerCount == 2)
            #expect(info.availablePeerCount == 2)

            let metrics = String(decoding: harness.telemetry.exposition(), as: UTF8.self)
            #expect(metrics.contains(#"dragonfly_scheduler_peer_registrations_total{decision="back_to_source"} 1"#))
            #expect(metrics.contains(#"dragonfly_scheduler_peer_registrations_total{decision="normal"} 1"#))
            #expect(metrics.contains(#"dragonfly_scheduler_pieces_reported_total{source="origin"} 3"#))
            #expect(metrics.contains("dragonfly_scheduler_host_announcements_total 2"))

            let unknown = await #expect(throws: RPCError.self) {
                _ = try await harness.statTask(String(repeating: "0", count: 64))
            }
            #expect(unknown?.code == .notFound)
        }
    }

    @Test func aSeedHostIsTriggeredOnceAndServesTheWaitingChild() async throws {
        let seedPeerService = RecordingPeerService()
        try await withPeerServer(seedPeerService) { seedPort in
            // The cluster vouches for the seed: its Peer address is on the seed roster.
            try await SchedulerHarness.run(seedPeers: ["127.0.0.1:\(seedPort)"]) { harness in
                try await harness.announceHost("seed-1", type: .super, port: seedPort)
                try await harness.announceHost("h1", port: 4100)
                let child = harness.register(peer: "c1", host: "h1")
                try await poll(timeLimit: .seconds(10), description: "the seed host receives DownloadTask") {
                    !seedPeerService.recordedDownloads.isEmpty
                }
                let download = try #require(seedPeerService.recordedDownloads.first)
                #expect(download.url == Fixture.url)
                #expect(!download.hasOutputPath)
                #expect(download.tag == "t")
                #expect(download.application == "app")
                // The child was told to wait: no answer yet.
                #expect(child.responses.isEmpty)

                let seed = harness.register(peer: "s1", host: "seed-1")
                _ = try await seed.next("NeedBackToSource for the seed") { $0.needBackToSource }
                seed.report(Fixture.backToSourceStarted())
                seed.report(Fixture.pieceBackToSourceFinished(0))
                let normal = try await child.next("NormalTask") { $0.normalTask }
                #expect(normal.parents.map(\.peerID) == ["s1"])
                #expect(normal.parents.first?.host.type == .super)
                #expect(seedPeerService.recordedDownloads.count == 1)
            }
        }
    }

    @Test func anOriginErrorReachesEveryOtherPeerOfTheTask() async throws {
        try await SchedulerHarness.run { harness in
            for (index, host) in ["h1", "h2", "h3"].enumerated() {
                try await harness.announceHost(host, port: 4100 + 100 * index)
            }
            let reader = harness.register(peer: "p1", host: "h1")
            _ = try await reader.next("NeedBackToSource") { $0.needBackToSource }
            reader.report(Fixture.backToSourceStarted())
            let children = [harness.register(peer: "p2", host: "h2"), harness.register(peer: "p3", host: "h3")]
            for child in children { _ = try await child.next("NormalTask") { $0.normalTask } }

            var failed = Dragonfly_V1_BackToSourceFailedRequest()
            failed.reason = "origin answered 404"
            failed.sourceError.statusCode = 404
            failed.sourceError.message = "Not Found"
            reader.report(.backToSourceFailed(failed))
            for child in children {
                let error = try await child.next("SourceError") { $0.sourceError }
                #expect(error.statusCode == 404)
                #expect(error.message == "Not Found")
            }
            #expect(try await harness.statTask().state == .failed)
        }
    }

    @Test func aParentNamedInPieceFailedIsNotOfferedAgain() async throws {
        try await SchedulerHarness.run { harness in
            for (index, host) in ["h1", "h2", "h3"].enumerated() {
                try await harness.announceHost(host, port: 4100 + 100 * index)
            }
            let reader = harness.register(peer: "p1", host: "h1")
            _ = try await reader.next("NeedBackToSource") { $0.needBackToSource }
            reader.report(Fixture.backToSourceStarted())
            reader.report(Fixture.pieceBackToSourceFinished(0))
            reader.report(Fixture.pieceBackToSourceFinished(1))

            let middle = harness.register(peer: "p2", host: "h2")
            _ = try await middle.next("NormalTask") { $0.normalTask }
            middle.report(.started(Dragonfly_V1_PeerStartedRequest()))
            middle.report(Fixture.pieceFinished(0, parent: "p1"))

            let child = harness.register(peer: "p3", host: "h3")
            let first = try await child.next("NormalTask") { $0.normalTask }
            #expect(Set(first.parents.map(\.peerID)) == ["p1", "p2"])

            var pieceFailed = Dragonfly_V1_PieceFailedRequest()
            pieceFailed.pieceNumber = 1
            pieceFailed.parentID = "p1"
            pieceFailed.temporary = false
            pieceFailed.reason = "digest mismatch"
            child.report(.pieceFailed(pieceFailed))
            let afterFailure = try await child.next("NormalTask after PieceFailed") { $0.normalTask }
            #expect(afterFailure.parents.map(\.peerID) == ["p2"])

            child.report(.reschedule(Dragonfly_V1_RescheduleRequest()))
            let afterReschedule = try await child.next("NormalTask after Reschedule") { $0.normalTask }
            #expect(afterReschedule.parents.map(\.peerID) == ["p2"])
        }
    }

    @Test func malformedStreamsAreRejectedAndTheServerKeepsServing() async throws {
        try await SchedulerHarness.run { harness in
            try await harness.announceHost("h1")

            var started = Dragonfly_V1_AnnouncePeerRequest()
            started.hostID = "h1"
            started.taskID = Fixture.taskID
            started.peerID = "p0"
            started.started = Dragonfly_V1_PeerStartedRequest()
            let notRegister = harness.openStream(
                first: started, key: PeerKey(taskID: Fixture.taskID, peerID: "p0"), hostID: "h1")
            let firstEnd = try await notRegister.end()
            #expect(throws: RPCError.self) { try firstEnd.get() }
            if case .failure(let error) = firstEnd {
                #expect(error.code == .invalidArgument)
                #expect(error.message.contains("register"))
            }

            let traversal = harness.register(peer: "p1", host: "h1", task: "../../etc")
            let secondEnd = try await traversal.end()
            if case .failure(let error) = secondEnd {
                #expect(error.code == .invalidArgument)
                #expect(error.message.contains("not a task ID"))
            } else {
                Issue.record("a task ID of '../../etc' was accepted")
            }

            let badStat = await #expect(throws: RPCError.self) { _ = try await harness.statTask("../../etc") }
            #expect(badStat?.code == .invalidArgument)

            // A bad digest ends that peer's stream, not the server.
            let reader = harness.register(peer: "p2", host: "h1")
            _ = try await reader.next("NeedBackToSource") { $0.needBackToSource }
            var bad = Dragonfly_V1_PieceBackToSourceFinishedRequest()
            bad.piece.number = 0
            bad.piece.digest = "md5:zz"
            reader.report(.pieceBackToSourceFinished(bad))
            if case .failure(let error) = try await reader.end() {
                #expect(error.code == .invalidArgument)
            } else {
                Issue.record("a malformed digest was accepted")
            }

            let healthy = harness.register(peer: "p3", host: "h1", task: String(repeating: "cd", count: 32))
            _ = try await healthy.next("NeedBackToSource after the bad streams") { $0.needBackToSource }
        }
    }

    @Test func aStreamClosedWithoutFinishedIsALeave() async throws {
        try await SchedulerHarness.run { harness in
            try await harness.announceHost("h1", port: 4100)
            try await harness.announceHost("h2", port: 4200)
            let reader = harness.register(peer: "p1", host: "h1")
            _ = try await reader.next("NeedBackToSource") { $0.needBackToSource }
            reader.report(Fixture.backToSourceStarted())
            let child = harness.register(peer: "p2", host: "h2")
            _ = try await child.next("NormalTask") { $0.normalTask }
            #expect(try await harness.statTask().peerCount == 2)

            child.close()
            #expect(try await child.end().get() == ())
            try await poll(timeLimit: .seconds(10), description: "the closed peer leaves the task") {
                try await harness.statTask().peerCount == 1
            }
            var statPeer = Dragonfly_V1_StatPeerRequest()
            statPeer.taskID = Fixture.taskID
            statPeer.peerID = "p2"
            let gone = await #expect(throws: RPCError.self) { _ = try await harness.client.statPeer(statPeer) }
            #expect(gone?.code == .notFound)
            statPeer.peerID = "p1"
            let stillThere = try await harness.client.statPeer(statPeer)
            #expect(stillThere.state == .backToSource)
            #expect(stillThere.needBackToSource)
            #expect(stillThere.host.id == "h1")
        }
    }

    @Test func syncHostAnnouncesTheHostAndStaysOpenUntilTheClientEndsIt() async throws {
        try await SchedulerHarness.run(seedPeers: ["127.0.0.1:4900"]) { harness in
            try await harness.announceHost("h1")
            let (requests, continuation) = AsyncStream.makeStream(of: Dragonfly_V1_SyncHostRequest.self)
            var start = Dragonfly_V1_SyncHostRequest()
            start.hostID = "seed-9"
            start.start.host.id = "seed-9"
            start.start.host.type = .super
            start.start.host.ip = "127.0.0.1"
            start.start.host.port = 4900
            continuation.yield(start)
            let client = harness.client
            async let ended: Void = client.syncHost(
                requestProducer: { writer in
                    for await message in requests { try await writer.write(message) }
                },
                onResponse: { response in
                    for try await _ in response.messages {}
                })
            try await poll(timeLimit: .seconds(10), description: "the SyncHost host is listed") {
                try await client.listHosts(Dragonfly_V1_ListHostsRequest()).hosts.map(\.id) == ["h1", "seed-9"]
            }
            var seedsOnly = Dragonfly_V1_ListHostsRequest()
            seedsOnly.type = .super
            #expect(try await client.listHosts(seedsOnly).hosts.map(\.id) == ["seed-9"])
            continuation.finish()
            try await ended

            var leave = Dragonfly_V1_LeaveHostRequest()
            leave.hostID = "seed-9"
            _ = try await client.leaveHost(leave)
            #expect(try await client.listHosts(Dragonfly_V1_ListHostsRequest()).hosts.map(\.id) == ["h1"])
        }
    }

    @Test func anUnreachableSeedHostFallsBackToTheFirstRegistrant() async throws {
        let closedPort = try freeLoopbackPort()
        try await SchedulerHarness.run(seedPeers: ["127.0.0.1:\(closedPort)"]) { harness in
            try await harness.announceHost("seed-1", type: .super, port: closedPort)
            try await harness.announceHost("h1", port: 4100)
            let child = harness.register(peer: "c1", host: "h1")
            // The trigger cannot connect: the waiting registrant reads the origin itself.
            let need = try await child.next("NeedBackToSource after the failed trigger") { $0.needBackToSource }
            #expect(need.reason.contains("first registrant"))
        }
    }

    @Test func announceHostNamesTheSchedulerAndTheInterval() async throws {
        try await SchedulerHarness.run { harness in
            let answer = try await harness.announceHost("h1")
            #expect(answer.schedulerID == harness.address)
            #expect(answer.interval.seconds == 30)

            var bad = Fixture.announcement("h2")
            bad.host.port = 0
            let refused = await #expect(throws: RPCError.self) { _ = try await harness.client.announceHost(bad) }
            #expect(refused?.code == .invalidArgument)

            // Registering on an unknown host is refused with a clear reason.
            let stranger = harness.register(peer: "p1", host: "nobody")
            if case .failure(let error) = try await stranger.end() {
                #expect(error.code == .failedPrecondition)
                #expect(error.message.contains("announce"))
            } else {
                Issue.record("a peer of an unknown host was registered")
            }
        }
    }

    @Test func gracefulShutdownEndsOpenPeerStreams() async throws {
        let role = try SchedulerHarness.makeRole()
        let group = ServiceGroup(
            configuration: ServiceGroupConfiguration(services: role.services, logger: SchedulerHarness.logger))
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            let address = try await #require(role.listeners.first { $0.name == "grpc" }).value()
            try await withRPCClient(target: address, logger: SchedulerHarness.logger) { rpc in
                let client = Dragonfly_V1_Scheduler.Client(wrapping: rpc)
                _ = try await client.announceHost(Fixture.announcement("h1"))
                let session = PeerSession(key: PeerKey(taskID: Fixture.taskID, peerID: "p1"), hostID: "h1")
                session.send(Fixture.registration(peer: "p1", host: "h1"))
                async let call: Void = session.run(client: client)
                _ = try await session.next("NeedBackToSource") { $0.needBackToSource }
                await group.triggerGracefulShutdown()
                if case .failure(let error) = try await session.end() {
                    #expect(error.code == .unavailable)
                } else {
                    Issue.record("the stream ended OK while the scheduler shut down")
                }
                session.close()
                await call
            }
            try await tasks.waitForAll()
        }
    }
}

/// The bounded queue behind every peer stream, without I/O.
@Suite struct SchedulerServiceOutboxTests {
    @Test func aFullQueueRefusesInsteadOfGrowing() {
        let outbox = StreamOutbox<Int>(capacity: 2)
        #expect(outbox.send(1) == .enqueued)
        #expect(outbox.send(2) == .enqueued)
        #expect(outbox.send(3) == .full)
        outbox.close(with: DragonflyError(code: .failedPrecondition, message: "done"))
        #expect(outbox.isClosed)
        #expect(outbox.send(4) == .closed)
    }
}
