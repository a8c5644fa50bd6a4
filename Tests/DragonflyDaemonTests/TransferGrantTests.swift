import DragonflyCore
import DragonflyDaemon
import DragonflyStorage
import DragonflyTelemetry
import DragonflyTestSupport
import Logging
import NIOCore
import NIOHTTP1
import Testing

/// Private tasks on the piece data plane need the task's transfer grant (issue "Security, part 1", finding 3):
/// before, `:4005` served any cached piece, private ones included, to anyone who could compute the task ID.
@Suite struct TransferGrantTests {
    static let pieceLength: Int64 = 64 << 10

    /// A store holding one private and one public single-piece task, and a piece server over it.
    static func withPrivateAndPublicTask(
        grants: TransferGrants,
        _ body: (_ address: String, _ privateID: TaskID, _ publicID: TaskID) async throws -> Void
    ) async throws {
        try await PieceFixture.with { fixture in
            let privateID = PieceFixture.taskID("private.bin")
            let publicID = PieceFixture.taskID("public.bin")
            _ = try await fixture.store.openTask(
                id: privateID, url: "https://example.com/private.bin", contentLength: 1000,
                pieceLength: Self.pieceLength, headers: ["x-dragonfly-private": "1"])
            try await fixture.write(privateID, 0, contentLength: 1000, pieceLength: Self.pieceLength)
            try await fixture.open(publicID, contentLength: 1000, pieceLength: Self.pieceLength)
            try await fixture.write(publicID, 0, contentLength: 1000, pieceLength: Self.pieceLength)
            let server = PieceServer(
                configuration: PieceServerConfiguration(address: ListenAddress(host: "127.0.0.1", port: 0)),
                store: fixture.store, limiter: UploadLimiter(slots: 4, rateLimit: 0),
                metrics: DaemonMetrics(telemetry: Telemetry(role: "daemon")), grants: grants,
                logger: Logger(label: "test"))
            try await withRunningService(server) {
                try await body(try await server.listener.value(), privateID, publicID)
            }
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func aPrivatePieceNeedsAGrantTheParentHolds() async throws {
        let grants = TransferGrants()
        try await Self.withPrivateAndPublicTask(grants: grants) { address, privateID, publicID in
            try await HTTPTestConnection.with(address) { connection in
                // Public tasks need nothing.
                #expect(try await connection.get("/pieces/\(publicID)/0").status == 200)
                // The attack: a stranger who computed the task ID from the URL.
                let anonymous = try await connection.get("/pieces/\(privateID)/0")
                #expect(anonymous.status == 403)
                #expect(anonymous.body.count < 200)
                // A guessed grant, and a grant of another task, are refused.
                grants.record("grant-of-the-public-task", for: publicID)
                let wrong = try await connection.get(
                    "/pieces/\(privateID)/0",
                    headers: HTTPHeaders([(TransferGrants.headerName, "grant-of-the-public-task")]))
                #expect(wrong.status == 403)
                // The grant the scheduler handed this daemon for the task opens it.
                grants.record("the-task-grant", for: privateID)
                let granted = try await connection.get(
                    "/pieces/\(privateID)/0", headers: HTTPHeaders([(TransferGrants.headerName, "the-task-grant")]))
                #expect(granted.status == 200)
                #expect(granted.body == PieceFixture.bytes(0, length: 1000))
            }
        }
    }

    @Test func grantsAreBoundedPerTaskAndCompareExactly() {
        let grants = TransferGrants()
        let id = PieceFixture.taskID("bounded")
        #expect(grants.current(for: id).isEmpty)
        for index in 0..<10 { grants.record("g\(index)", for: id) }
        #expect(grants.current(for: id) == "g9")
        #expect(grants.accepts("g9", for: id))
        #expect(grants.accepts("g6", for: id))
        #expect(!grants.accepts("g5", for: id))  // only the newest four are kept
        #expect(!grants.accepts("", for: id))
        #expect(!grants.accepts("g9 ", for: id))
        grants.record(String(repeating: "x", count: TransferGrants.maximumGrantLength + 1), for: id)
        #expect(grants.current(for: id) == "g9")
        #expect(grants.mayServe(id, headers: [:], presented: ""))
        #expect(!grants.mayServe(id, headers: ["x-dragonfly-private": "1"], presented: ""))
        #expect(grants.mayServe(id, headers: ["x-dragonfly-private": "1"], presented: "g8"))
    }
}
