import DragonflyCore
import DragonflyProto
import DragonflyRPC
import DragonflyScheduler
import DragonflyTelemetry
import DragonflyTestSupport
import GRPCCore
import Synchronization
import Testing

/// "Security, part 1" on the scheduler side: hostile clients of the real Scheduler gRPC service (in-process on
/// 127.0.0.1:0). Each test replays one attack and fails without its fix.
@Suite(.timeLimit(.minutes(2)))
struct SchedulerSecurityServiceTests {
    typealias Fixture = SchedulerFixture

    static let secret = "test-cluster-secret-1234"
    static let attackerDigest = "sha256:" + String(repeating: "e", count: 64)

    /// An `AnnouncePeer` report of a piece read from the origin with `digest`.
    static func originPiece(_ number: UInt32, digest: String) -> Dragonfly_V1_AnnouncePeerRequest.OneOf_Request {
        var finished = Dragonfly_V1_PieceBackToSourceFinishedRequest()
        finished.piece = Fixture.piece(number)
        finished.piece.digest = digest
        return .pieceBackToSourceFinished(finished)
    }

    /// A registration with the given download URL and registration fields.
    static func registration(
        peer: String, host: String, task: String = Fixture.taskID, url: String = Fixture.url,
        contentLength: UInt64? = nil, header: [String: String] = [:]
    ) -> Dragonfly_V1_AnnouncePeerRequest {
        var message = Fixture.registration(peer: peer, host: host, task: task, url: url)
        if let contentLength { message.register.contentLength = contentLength }
        message.register.download.requestHeader = header
        return message
    }

    // MARK: Finding 2: swarm poisoning

    @Test func aSelfDeclaredSeedIsANormalHost() async throws {
        try await SchedulerHarness.run { harness in
            try await harness.announceHost("evil", type: .super, port: 4100)
            var seeds = Dragonfly_V1_ListHostsRequest()
            seeds.type = .super
            #expect(try await harness.client.listHosts(seeds).hosts.isEmpty)
            let all = try await harness.client.listHosts(Dragonfly_V1_ListHostsRequest()).hosts
            #expect(all.map(\.id) == ["evil"] && all.first?.type == .normal)
            let metrics = String(decoding: harness.telemetry.exposition(), as: UTF8.self)
            #expect(metrics.contains("dragonfly_scheduler_unvouched_seed_announcements_total 1"))
        }
    }

    @Test func withAClusterSecretOnlyACallerWithItAnnouncesASeed() async throws {
        try await SchedulerHarness.run(
            clusterSecret: Self.secret, clientSecret: Self.secret
        ) {
            harness in
            try await harness.announceHost("seed", type: .super, port: 4100)
            // The same announcement without the secret, from another client.
            try await withRPCClient(target: harness.address, logger: SchedulerHarness.logger) { rpc in
                let bare = Dragonfly_V1_Scheduler.Client(wrapping: rpc)
                _ = try await bare.announceHost(Fixture.announcement("evil", type: .super, port: 4200))
                let listing = await #expect(throws: RPCError.self) {
                    _ = try await bare.listHosts(Dragonfly_V1_ListHostsRequest())
                }
                #expect(listing?.code == .permissionDenied)
                #expect(listing?.message.contains("security.clusterSecret") == true)
            }
            let hosts = try await harness.client.listHosts(Dragonfly_V1_ListHostsRequest()).hosts
            #expect(hosts.map(\.id) == ["evil", "seed"])
            #expect(hosts.map(\.type) == [.normal, .super])
        }
    }

    /// The attack of the finding: a client announces a "super" host, registers the task first with its own
    /// content length and reports pieces "read from the origin" with its own digest. The children must get
    /// the digests of the seed the scheduler triggered, never the attacker's.
    @Test func anAttackerCannotPreRegisterATaskWithItsOwnDigests() async throws {
        let seedService = RecordingPeerService()
        try await withPeerServer(seedService) { seedPort in
            try await SchedulerHarness.run(seedPeers: ["127.0.0.1:\(seedPort)"]) { harness in
                try await harness.announceHost("seed", type: .super, port: seedPort)
                try await harness.announceHost("evil", type: .super, port: 4100)
                try await harness.announceHost("victim", port: 4200)

                let evil = harness.openStream(
                    first: Self.registration(peer: "evil-peer", host: "evil", contentLength: 5),
                    key: PeerKey(taskID: Fixture.taskID, peerID: "evil-peer"), hostID: "evil")
                evil.report(Fixture.backToSourceStarted(contentLength: 5))
                for number: UInt32 in 0...2 { evil.report(Self.originPiece(number, digest: Self.attackerDigest)) }
                // The scheduler triggered the listed seed, not the self-declared one.
                try await poll(timeLimit: .seconds(10), description: "the listed seed is triggered") {
                    !seedService.recordedDownloads.isEmpty
                }
                #expect(try await harness.statTask().contentLength != 5)

                let seed = harness.register(peer: "seed-peer", host: "seed")
                _ = try await seed.next("NeedBackToSource for the seed") { $0.needBackToSource }
                seed.report(Fixture.backToSourceStarted())
                seed.report(Fixture.pieceBackToSourceFinished(0))

                let victim = harness.register(peer: "victim-peer", host: "victim")
                let digest = try await victim.next("the digest of piece 0") { response -> String? in
                    response.normalTask?.pieceDigests[0] ?? response.pieceDigests?.pieceDigests[0]
                }
                #expect(digest == Fixture.digest(1))
                try await poll(timeLimit: .seconds(10), description: "the seed's length is the task's") {
                    try await harness.statTask().contentLength == 3 * (4 << 20)
                }
                let received = victim.responses.flatMap { response -> [String] in
                    switch response.response {
                    case .normalTask(let normal): Array(normal.pieceDigests.values)
                    case .pieceDigests(let digests): Array(digests.pieceDigests.values)
                    default: []
                    }
                }
                #expect(!received.contains(Self.attackerDigest))
            }
        }
    }

    // MARK: Finding 1: file:// through the scheduler

    @Test func aFileURLIsRefusedAndNeverReachesASeed() async throws {
        let seedService = RecordingPeerService()
        try await withPeerServer(seedService) { seedPort in
            try await SchedulerHarness.run(seedPeers: ["127.0.0.1:\(seedPort)"]) { harness in
                try await harness.announceHost("seed", type: .super, port: seedPort)
                try await harness.announceHost("h1", port: 4100)
                for url in ["file:///etc/shadow", "FILE:///etc/shadow", "/etc/shadow", "gopher://x/y"] {
                    let task = String(repeating: "c", count: 63) + String(url.count % 10)
                    let session = harness.register(peer: "p-\(url.count)", host: "h1", task: task, url: url)
                    let end = try await session.end()
                    let error = try #require(end.failureValue)
                    #expect(error.code == .invalidArgument)
                    #expect(error.message.contains("network sources"))
                }
                // A normal registration still triggers the seed: the seed was reachable all along.
                _ = harness.register(peer: "p-ok", host: "h1")
                try await poll(timeLimit: .seconds(10), description: "the seed is triggered for http") {
                    !seedService.recordedDownloads.isEmpty
                }
                #expect(seedService.recordedDownloads.allSatisfy { $0.url == Fixture.url })
            }
        }
    }

    @Test func aRefusalNeverEchoesSecretsOfTheURL() async throws {
        try await SchedulerHarness.run { harness in
            try await harness.announceHost("h1", port: 4100)
            let session = harness.register(
                peer: "p1", host: "h1", url: "file://user:hunter2@host/etc/passwd?token=SECRETVALUE")
            let error = try #require(try await session.end().failureValue)
            #expect(error.code == .invalidArgument)
            #expect(!error.message.contains("hunter2") && !error.message.contains("SECRETVALUE"))
        }
    }

    // MARK: Finding 3: transfer grants

    @Test func everyAnswerCarriesTheTaskGrantDerivedFromTheClusterSecret() async throws {
        try await SchedulerHarness.run(clusterSecret: Self.secret) { harness in
            try await harness.announceHost("h1", port: 4100)
            try await harness.announceHost("h2", port: 4200)
            let expected = TransferGrantKey(secret: ClusterSecret(secret: Self.secret)).grant(forTask: Fixture.taskID)
            #expect(expected.count == 64)
            let first = harness.register(peer: "p1", host: "h1")
            let need = try await first.next("NeedBackToSource") { $0.needBackToSource }
            #expect(need.transferGrant == expected)
            first.report(Fixture.backToSourceStarted())
            first.report(Fixture.pieceBackToSourceFinished(0))
            let second = harness.register(peer: "p2", host: "h2")
            let normal = try await second.next("NormalTask") { $0.normalTask }
            #expect(normal.transferGrant == expected)
            // Another task has another grant.
            #expect(
                TransferGrantKey(secret: ClusterSecret(secret: Self.secret)).grant(
                    forTask: String(repeating: "cd", count: 32)) != expected)
        }
    }

    @Test func aPrivateTaskIsDescribedOnlyWithItsGrant() async throws {
        try await SchedulerHarness.run { harness in
            try await harness.announceHost("h1", port: 4100)
            let reader = harness.openStream(
                first: Self.registration(peer: "p1", host: "h1", header: ["Authorization": "Bearer abc"]),
                key: PeerKey(taskID: Fixture.taskID, peerID: "p1"), hostID: "h1")
            let need = try await reader.next("NeedBackToSource") { $0.needBackToSource }
            #expect(!need.transferGrant.isEmpty)
            let refused = await #expect(throws: RPCError.self) { _ = try await harness.statTask() }
            #expect(refused?.code == .permissionDenied)
            var request = Dragonfly_V1_StatTaskRequest()
            request.taskID = Fixture.taskID
            request.transferGrant = String(repeating: "0", count: 64)
            let wrong = await #expect(throws: RPCError.self) { _ = try await harness.client.statTask(request) }
            #expect(wrong?.code == .permissionDenied)
            request.transferGrant = need.transferGrant
            #expect(try await harness.client.statTask(request).url == Fixture.url)
        }
    }

    // MARK: Finding 9: no secrets in StatTask

    @Test func statTaskNeverShowsQueryValuesOrUserinfo() async throws {
        try await SchedulerHarness.run { harness in
            try await harness.announceHost("h1", port: 4100)
            let url = "https://user:hunter2@bucket.test/blob?X-Amz-Signature=SECRETSIG&v=1"
            let reader = harness.register(peer: "p1", host: "h1", url: url)
            _ = try await reader.next("NeedBackToSource") { $0.needBackToSource }
            let info = try await harness.statTask()
            #expect(info.url.hasPrefix("https://"))
            #expect(info.url.contains("bucket.test/blob"))
            #expect(!info.url.contains("hunter2") && !info.url.contains("SECRETSIG"))
        }
    }

    // MARK: Finding 8: state of other hosts

    @Test func leaveHostAndLeavePeerOnlyForTheCallersOwnHost() async throws {
        try await SchedulerHarness.run(clusterSecret: Self.secret) { harness in
            // A host on another IP (TEST-NET-1; nothing is sent there) and one on the caller's own IP.
            var remote = Fixture.announcement("remote", port: 4100)
            remote.host.ip = "192.0.2.10"
            _ = try await harness.client.announceHost(remote)
            try await harness.announceHost("own", port: 4200)
            let peer = harness.register(peer: "remote-peer", host: "remote")
            _ = try await peer.next("NeedBackToSource") { $0.needBackToSource }

            var leaveHost = Dragonfly_V1_LeaveHostRequest()
            leaveHost.hostID = "remote"
            let hostRefusal = await #expect(throws: RPCError.self) { _ = try await harness.client.leaveHost(leaveHost) }
            #expect(hostRefusal?.code == .permissionDenied)
            var leavePeer = Dragonfly_V1_LeavePeerRequest()
            leavePeer.taskID = Fixture.taskID
            leavePeer.peerID = "remote-peer"
            let peerRefusal = await #expect(throws: RPCError.self) { _ = try await harness.client.leavePeer(leavePeer) }
            #expect(peerRefusal?.code == .permissionDenied)
            #expect(try await harness.statTask().peerCount == 1)

            // Moving the remote host to the caller's IP is a hijack: refused too.
            var hijack = Fixture.announcement("remote", port: 4100)
            hijack.host.ip = "127.0.0.1"
            let moved = await #expect(throws: RPCError.self) { _ = try await harness.client.announceHost(hijack) }
            #expect(moved?.code == .permissionDenied)

            // The caller's own host may leave; unknown hosts leave quietly.
            leaveHost.hostID = "own"
            _ = try await harness.client.leaveHost(leaveHost)
            leaveHost.hostID = "never-announced"
            _ = try await harness.client.leaveHost(leaveHost)

            // A caller with the cluster secret may act for any host.
            try await withRPCClient(
                target: harness.address,
                interceptors: [ClusterSecretClientInterceptor(secret: #require(ClusterSecret(secret: Self.secret)))],
                logger: SchedulerHarness.logger
            ) { rpc in
                let trusted = Dragonfly_V1_Scheduler.Client(wrapping: rpc)
                _ = try await trusted.leavePeer(leavePeer)
                leaveHost.hostID = "remote"
                _ = try await trusted.leaveHost(leaveHost)
                #expect(try await trusted.listHosts(Dragonfly_V1_ListHostsRequest()).hosts.isEmpty)
            }
        }
    }

    // MARK: Finding 12: bounds on what peers say

    @Test func aHugePieceNumberIsRefusedInsteadOfAllocated() async throws {
        try await SchedulerHarness.run { harness in
            try await harness.announceHost("h1", port: 4100)
            let reader = harness.register(peer: "p1", host: "h1")
            _ = try await reader.next("NeedBackToSource") { $0.needBackToSource }
            reader.report(Fixture.backToSourceStarted())
            reader.report(Self.originPiece(4_000_000_000, digest: Fixture.digest(1)))
            let error = try #require(try await reader.end().failureValue)
            #expect(error.code == .invalidArgument)
        }
    }

    @Test func backToSourceHeadersAreBounded() async throws {
        try await SchedulerHarness.run { harness in
            try await harness.announceHost("h1", port: 4100)
            let reader = harness.register(peer: "p1", host: "h1")
            _ = try await reader.next("NeedBackToSource") { $0.needBackToSource }
            var started = Dragonfly_V1_BackToSourceStartedRequest()
            for index in 0..<1000 { started.responseHeader["x-junk-\(index)"] = String(repeating: "v", count: 100) }
            reader.report(.backToSourceStarted(started))
            let error = try #require(try await reader.end().failureValue)
            #expect(error.code == .invalidArgument)
            #expect(try await harness.statTask().responseHeader.isEmpty)
        }
    }

    @Test func refusedRegistrationsAreNotKept() async throws {
        try await SchedulerHarness.run { harness in
            try await harness.announceHost("h1", port: 4100)
            // A registration for an unknown host is refused and leaves nothing behind.
            let junkTask = String(repeating: "9", count: 64)
            let junk = harness.register(peer: "j1", host: "not-announced", task: junkTask)
            #expect(try await junk.end().failureValue?.code == .failedPrecondition)
            let unknown = await #expect(throws: RPCError.self) { _ = try await harness.statTask(junkTask) }
            #expect(unknown?.code == .notFound)
        }
    }

    @Test func aFullDownloadStoreKeepsWhatItHas() {
        var store = DownloadStore(capacity: 2)
        var first = Dragonfly_V1_Download()
        first.tag = "real"
        store.remember(first, forTask: "a")
        store.remember(Dragonfly_V1_Download(), forTask: "b")
        for index in 0..<100 { store.remember(Dragonfly_V1_Download(), forTask: "junk-\(index)") }
        #expect(store.download(forTask: "a")?.tag == "real")
        #expect(store.download(forTask: "junk-0") == nil)
        store.forget(task: "b")
        store.remember(Dragonfly_V1_Download(), forTask: "c")
        #expect(store.download(forTask: "c") != nil)
    }
}

extension Result {
    /// The error of a failure, `nil` for a success.
    var failureValue: Failure? {
        if case .failure(let error) = self { error } else { nil }
    }
}
