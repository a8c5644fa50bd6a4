import DragonflyCore
import DragonflyDaemon
import DragonflyProto
import DragonflyRPC
import DragonflyStorage
import DragonflyTestSupport
import GRPCCore
import Logging
import Testing

/// The Peer gRPC service over a real HTTP/2 server on 127.0.0.1:0 with a real store.
@Suite struct PeerServiceTests {
    static let pieceLength: Int64 = 1024
    static let contentLength: Int64 = 4 * pieceLength - 100

    /// Reports two progress messages, then the final one; remembers what it was asked.
    struct FakeDownloader: TaskDownloading {
        func download(
            _ download: Dragonfly_V1_Download,
            progress: @escaping @Sendable (Dragonfly_V1_DownloadProgress) async -> Void
        ) async throws -> Dragonfly_V1_DownloadProgress {
            guard download.url != "https://example.com/fail" else {
                throw DragonflyError(code: .originError, message: "origin answered 404")
            }
            var report = Dragonfly_V1_DownloadProgress()
            report.taskID = TaskID.make(url: download.url).rawValue
            for bytes in [100, 200] as [UInt64] {
                report.bytesDownloaded = bytes
                await progress(report)
            }
            report.bytesDownloaded = 300
            report.done = true
            return report
        }
    }

    typealias PeerClient = Dragonfly_V1_Peer.Client<RPCClientTransport>

    /// Runs a Peer service over `fixture`'s store and a client connected to it.
    static func withPeer<T: Sendable>(
        _ fixture: PieceFixture,
        announcer: PieceAnnouncer,
        configuration: PeerServiceConfiguration = PeerServiceConfiguration(),
        _ body: (PeerClient) async throws -> T
    ) async throws -> T {
        let logger = Logger(label: "test")
        let service = PeerService(
            store: fixture.store, announcer: announcer, downloader: FakeDownloader(),
            hostID: { "127.0.0.1-test-4000" }, hostType: .super, configuration: configuration, logger: logger)
        let server = try GRPCServerService(
            address: .tcp(host: "127.0.0.1", port: 0), services: [service], listenerName: "peer", logger: logger)
        return try await withRunningService(server) {
            let address = try await server.listener.value()
            return try await withRPCClient(target: address, logger: logger) { client in
                try await body(PeerClient(wrapping: client))
            }
        }
    }

    static func syncRequest(_ id: String, interested: [UInt32] = []) -> Dragonfly_V1_SyncPiecesRequest {
        var request = Dragonfly_V1_SyncPiecesRequest()
        request.taskID = id
        request.interestedPieceNumbers = interested
        return request
    }

    static func expectCode(_ code: RPCError.Code, _ body: () async throws -> Void) async {
        do {
            try await body()
            Issue.record("expected \(code)")
        } catch let error as RPCError {
            #expect(error.code == code, "\(error)")
        } catch {
            Issue.record("expected an RPCError \(code), got \(error)")
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func syncPiecesSendsHeldThenPublishedPiecesThenEnds() async throws {
        try await PieceFixture.with { fixture in
            let id = PieceFixture.taskID("sync")
            let announcer = PieceAnnouncer()
            try await fixture.open(id, contentLength: Self.contentLength, pieceLength: Self.pieceLength)
            var written: [AnnouncedPiece] = []
            for number in [1, 0] {
                written.append(
                    try await fixture.write(
                        id, number, contentLength: Self.contentLength, pieceLength: Self.pieceLength))
            }
            let expected = written
            try await Self.withPeer(fixture, announcer: announcer) { peer in
                try await peer.syncPieces(Self.syncRequest(id.rawValue)) { response in
                    var messages = response.messages.makeAsyncIterator()
                    // Held pieces first, in order.
                    for number in [0, 1] {
                        let received = try await messages.next()
                        let message = try #require(received)
                        let piece = try #require(expected.first { $0.number == number })
                        #expect(message.number == UInt32(number))
                        #expect(message.offset == UInt64(piece.offset))
                        #expect(message.length == UInt64(piece.length))
                        #expect(message.digest == piece.digest)
                        #expect(message.contentLength == UInt64(Self.contentLength))
                        #expect(!message.isLast)
                    }
                    #expect(announcer.subscriberCount(taskID: id) == 1)
                    // Then each piece the moment it is published, once.
                    let two = try await fixture.write(
                        id, 2, contentLength: Self.contentLength, pieceLength: Self.pieceLength)
                    announcer.publish(taskID: id, piece: two)
                    announcer.publish(taskID: id, piece: two)
                    let received = try await messages.next()
                    let message = try #require(received)
                    #expect(message.number == 2 && message.digest == two.digest && !message.isLast)
                    let three = try await fixture.write(
                        id, 3, contentLength: Self.contentLength, pieceLength: Self.pieceLength)
                    #expect(three.isLast)
                    try await fixture.store.finishTask(taskID: id)
                    announcer.publish(taskID: id, piece: three)
                    let final = try await messages.next()
                    let last = try #require(final)
                    #expect(last.number == 3 && last.length == UInt64(three.length) && last.isLast)
                    let end = try await messages.next()
                    #expect(end == nil)
                }
                try await poll(timeLimit: .seconds(10), description: "the subscription is released") {
                    announcer.taskCount == 0
                }
            }
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func syncPiecesEndsWhenTheConductorFinishes() async throws {
        try await PieceFixture.with { fixture in
            let id = PieceFixture.taskID("finish")
            let announcer = PieceAnnouncer()
            try await fixture.open(id, contentLength: Self.contentLength, pieceLength: Self.pieceLength)
            try await fixture.write(id, 0, contentLength: Self.contentLength, pieceLength: Self.pieceLength)
            try await Self.withPeer(fixture, announcer: announcer) { peer in
                try await peer.syncPieces(Self.syncRequest(id.rawValue)) { response in
                    var messages = response.messages.makeAsyncIterator()
                    let first = try await messages.next()
                    #expect(first?.number == 0)
                    try await poll(timeLimit: .seconds(10), description: "the stream subscribed") {
                        announcer.subscriberCount(taskID: id) == 1
                    }
                    // The download failed: the conductor closes the task and finishes it.
                    try await fixture.write(id, 1, contentLength: Self.contentLength, pieceLength: Self.pieceLength)
                    try await fixture.store.closeTask(taskID: id)
                    announcer.finish(taskID: id, contentLength: Self.contentLength)
                    let last = try await messages.next()
                    #expect(last?.number == 1 && last?.isLast == false)
                    let end = try await messages.next()
                    #expect(end == nil)
                }
            }
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func syncPiecesOfACompleteTaskEndsWithIsLastAndHonoursInterest() async throws {
        try await PieceFixture.with { fixture in
            let id = PieceFixture.taskID("complete")
            let announcer = PieceAnnouncer()
            try await fixture.open(id, contentLength: Self.contentLength, pieceLength: Self.pieceLength)
            for number in 0..<4 {
                try await fixture.write(
                    id, number, contentLength: Self.contentLength, pieceLength: Self.pieceLength)
            }
            try await fixture.store.finishTask(taskID: id)
            try await Self.withPeer(fixture, announcer: announcer) { peer in
                let all = try await peer.syncPieces(Self.syncRequest(id.rawValue)) { response in
                    var numbers: [(UInt32, Bool)] = []
                    for try await message in response.messages { numbers.append((message.number, message.isLast)) }
                    return numbers.map { "\($0.0)\($0.1 ? "!" : "")" }
                }
                #expect(all == ["0", "1", "2", "3!"])
                let some = try await peer.syncPieces(Self.syncRequest(id.rawValue, interested: [3, 1])) { response in
                    var numbers: [UInt32] = []
                    for try await message in response.messages { numbers.append(message.number) }
                    return numbers
                }
                #expect(some == [1, 3])
                await Self.expectCode(.outOfRange) {
                    try await peer.syncPieces(Self.syncRequest(id.rawValue, interested: [4])) { response in
                        for try await _ in response.messages {}
                    }
                }
            }
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func syncPiecesRejectsBadAndUnknownTasks() async throws {
        try await PieceFixture.with { fixture in
            var configuration = PeerServiceConfiguration()
            configuration.unknownTaskWait = .milliseconds(200)
            configuration.refreshInterval = .milliseconds(50)
            try await Self.withPeer(fixture, announcer: PieceAnnouncer(), configuration: configuration) { peer in
                for bad in ["../../etc", "", String(repeating: "A", count: 64)] {
                    await Self.expectCode(.invalidArgument) {
                        try await peer.syncPieces(Self.syncRequest(bad)) { response in
                            for try await _ in response.messages {}
                        }
                    }
                }
                await Self.expectCode(.notFound) {
                    try await peer.syncPieces(Self.syncRequest(PieceFixture.taskID("nowhere").rawValue)) {
                        response in
                        for try await _ in response.messages {}
                    }
                }
            }
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func statTaskHealthAndDownloadTask() async throws {
        try await PieceFixture.with { fixture in
            let id = PieceFixture.taskID("stat")
            try await fixture.open(id, contentLength: Self.contentLength, pieceLength: Self.pieceLength)
            let piece = try await fixture.write(
                id, 2, contentLength: Self.contentLength, pieceLength: Self.pieceLength)
            try await Self.withPeer(fixture, announcer: PieceAnnouncer()) { peer in
                var stat = Dragonfly_V1_StatTaskRequest()
                stat.taskID = id.rawValue
                let info = try await peer.statTask(stat)
                #expect(info.id == id.rawValue)
                #expect(info.contentLength == UInt64(Self.contentLength))
                #expect(info.pieceCount == 4)
                #expect(info.state == .running)
                #expect(info.pieces.map(\.number) == [2])
                #expect(info.pieces.first?.digest == piece.digest)
                stat.taskID = PieceFixture.taskID("absent").rawValue
                await Self.expectCode(.notFound) { _ = try await peer.statTask(stat) }
                stat.taskID = "nope"
                await Self.expectCode(.invalidArgument) { _ = try await peer.statTask(stat) }

                let health = try await peer.health(Dragonfly_V1_HealthRequest())
                #expect(health.hostID == "127.0.0.1-test-4000")
                #expect(health.type == .super)
                #expect(health.isReady)

                var request = Dragonfly_V1_DownloadTaskRequest()
                request.download.url = "https://example.com/file"
                request.download.outputPath = "/tmp/should-not-be-written"
                await Self.expectCode(.invalidArgument) {
                    try await peer.downloadTask(request) { response in
                        for try await _ in response.messages {}
                    }
                }
                request.download.clearOutputPath()
                let reports = try await peer.downloadTask(request) { response in
                    var reports: [Dragonfly_V1_DownloadProgress] = []
                    for try await report in response.messages { reports.append(report) }
                    return reports
                }
                #expect(reports.map(\.bytesDownloaded) == [100, 200, 300])
                #expect(reports.last?.done == true)
                request.download.url = "https://example.com/fail"
                await Self.expectCode(.failedPrecondition) {
                    try await peer.downloadTask(request) { response in
                        for try await _ in response.messages {}
                    }
                }
            }
        }
    }
}
