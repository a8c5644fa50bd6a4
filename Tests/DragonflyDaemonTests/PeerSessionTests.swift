import AsyncHTTPClient
import DragonflyCore
import DragonflyProto
import DragonflyRPC
import DragonflyStorage
import DragonflyTelemetry
import DragonflyTestSupport
import Logging
import Testing

@testable import DragonflyDaemon

/// What a download session believes, event by event (no scheduler or parent runs: the events are fed in).
@Suite struct PeerSessionTests {
    static let logger = Logger(label: "df.test.session") { _ in SwiftLogNoOpLogHandler() }

    /// A session state of a fresh run of `url`, over an in-memory store; the scheduler and parents it would talk
    /// to are unreachable (127.0.0.1:1).
    static func makeState(url: String) throws -> (SessionState, HTTPClient) {
        let config = DaemonConfig()
        let store = PieceStore(dataDirectory: "/nonexistent", medium: MemoryMedium(capacity: 1 << 30), logger: logger)
        let identity = Published<HostIdentity>()
        identity.publish(
            HostIdentity(config: config, isSeed: false, peer: "127.0.0.1:1", piece: "127.0.0.1:1", proxy: "127.0.0.1:1")
        )
        let pool = try SchedulerPool(
            addresses: [], identity: identity, config: config, uploadSlotsUsed: { 0 }, logger: logger)
        let http = HTTPClient(eventLoopGroupProvider: .singleton)
        let context = RunContext(
            store: store, announcer: PieceAnnouncer(), metrics: DaemonMetrics(telemetry: Telemetry(role: "daemon")),
            registry: PluginRegistry(), config: config, schedulers: pool, identity: identity, http: http,
            logger: logger)
        var download = Dragonfly_V1_Download()
        download.url = url
        let run = TaskRun(
            request: try TaskRequest(download), context: context, hub: ProgressHub(), urgent: UrgentPieces())
        let client = try makeRPCClient(target: "127.0.0.1:1", logger: logger)
        let session = PeerSession(
            run: run, identity: try #require(identity.current), scheduler: "127.0.0.1:1",
            client: SchedulerPool.Client(wrapping: client), logger: logger)
        let (_, sink) = AsyncStream.makeStream(of: SessionEvent.self)
        return (SessionState(session: session, peerID: "child", send: { _ in }, events: sink), http)
    }

    static func parent(_ id: String) -> Dragonfly_V1_ParentPeer {
        var parent = Dragonfly_V1_ParentPeer()
        parent.peerID = id
        parent.peerAddress = "127.0.0.1:1"
        parent.pieceDataAddress = "127.0.0.1:1"
        parent.host.id = "host-\(id)"
        return parent
    }

    @Test func aParentsContentLengthIsNeverAdopted() async throws {
        let (state, http) = try Self.makeState(url: "http://127.0.0.1:1/unknown-length.bin")
        // The scheduler does not know the length yet (the origin sent none); one parent is scheduled.
        var normal = Dragonfly_V1_NormalTaskResponse()
        normal.pieceLength = UInt64(PieceMath.minimumPieceLength)
        normal.parents = [Self.parent("parent-1")]
        var response = Dragonfly_V1_AnnouncePeerResponse()
        response.normalTask = normal
        #expect(try await state.handle(.response(response)) == false)
        #expect(state.contentLength == nil)

        // The parent claims a length (a terabyte) with its piece: the child must not take its word for it.
        var available = Dragonfly_V1_PieceAvailable()
        available.number = 0
        available.contentLength = 1 << 40
        available.isLast = true
        #expect(try await state.handle(.available(parentID: "parent-1", piece: available)) == false)
        #expect(state.contentLength == nil, "a parent's content length was adopted")
        #expect(state.pieceCount == nil)
        #expect(state.progress.contentLength == nil)

        // The scheduler's layout (learnt from the origin reader it chose) is what counts.
        var digests = Dragonfly_V1_PieceDigestsResponse()
        digests.contentLength = 10 << 20
        digests.pieceCount = 3
        response.pieceDigests = digests
        #expect(try await state.handle(.response(response)) == false)
        #expect(state.contentLength == 10 << 20)
        #expect(state.pieceCount == 3)
        state.cancelAll()
        await state.closeIfOpen()
        try await http.shutdown()
    }
}
