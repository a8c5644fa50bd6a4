import DragonflyCore
import DragonflyDaemon
import DragonflyStorage
import DragonflyTelemetry
import DragonflyTestSupport
import Logging
import NIOCore
import NIOHTTP1
import ServiceLifecycle
import Testing

/// The piece data plane over real sockets on 127.0.0.1:0 with a real store.
@Suite struct PieceServerTests {
    static let pieceLength: Int64 = 64 << 10
    static let contentLength: Int64 = 3 * pieceLength - 1000

    /// Runs a piece server over `fixture`'s store.
    static func withServer<T: Sendable>(
        _ fixture: PieceFixture,
        slots: Int = 4,
        rateLimit: Int64 = 0,
        telemetry: Telemetry = Telemetry(role: "daemon"),
        _ body: (PieceServer, String) async throws -> T
    ) async throws -> T {
        let server = PieceServer(
            configuration: PieceServerConfiguration(address: ListenAddress(host: "127.0.0.1", port: 0)),
            store: fixture.store,
            limiter: UploadLimiter(slots: slots, rateLimit: rateLimit),
            metrics: DaemonMetrics(telemetry: telemetry),
            logger: Logger(label: "test")
        )
        return try await withRunningService(server) {
            let address = try await server.listener.value()
            return try await body(server, address)
        }
    }

    @Test(.timeLimit(.minutes(1)), arguments: [false, true])
    func servesPiecesWithDigestsOverOneKeepAliveConnection(memory: Bool) async throws {
        try await PieceFixture.with(memory: memory) { fixture in
            let id = PieceFixture.taskID("keepalive")
            try await fixture.open(id, contentLength: Self.contentLength, pieceLength: Self.pieceLength)
            var announced: [AnnouncedPiece] = []
            for number in 0..<3 {
                announced.append(
                    try await fixture.write(
                        id, number, contentLength: Self.contentLength, pieceLength: Self.pieceLength))
            }
            let telemetry = Telemetry(role: "daemon")
            try await Self.withServer(fixture, telemetry: telemetry) { server, address in
                try await HTTPTestConnection.with(address) { connection in
                    for piece in announced.reversed() + announced {
                        let response = try await connection.get("/pieces/\(id)/\(piece.number)")
                        #expect(response.status == 200)
                        #expect(response.headers["Content-Length"] == ["\(piece.length)"])
                        #expect(response.headers["X-Dragonfly-Piece-Digest"] == [piece.digest])
                        #expect(response.body == PieceFixture.bytes(piece.number, length: Int(piece.length)))
                    }
                }
                #expect(server.acceptedConnections == 1)
                // The server counts once its write completed, which may be just after the client has the bytes.
                try await poll(timeLimit: .seconds(10), description: "six uploads counted") {
                    server.limiter.uploadCount == 6 && server.limiter.slotsInUse == 0
                }
                let total = announced.reduce(0) { $0 + $1.length } * 2
                #expect(uploadBytes(telemetry) == total)
            }
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func sendsALargePieceWholeWithSendfile() async throws {
        try await PieceFixture.with { fixture in
            let id = PieceFixture.taskID("large")
            let length: Int64 = 8 << 20
            try await fixture.open(id, contentLength: length, pieceLength: length)
            let piece = try await fixture.write(id, 0, contentLength: length, pieceLength: length)
            try await Self.withServer(fixture) { _, address in
                try await HTTPTestConnection.with(address) { connection in
                    let response = try await connection.get("/pieces/\(id)/0")
                    #expect(response.status == 200)
                    #expect(response.headers["X-Dragonfly-Piece-Digest"] == [piece.digest])
                    #expect(response.body.count == Int(length))
                    #expect(response.body == PieceFixture.bytes(0, length: Int(length)))
                }
            }
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func answersBadRequestsWithoutTouchingTheStore() async throws {
        try await PieceFixture.with { fixture in
            let id = PieceFixture.taskID("errors")
            try await fixture.open(id, contentLength: Self.contentLength, pieceLength: Self.pieceLength)
            try await fixture.write(id, 0, contentLength: Self.contentLength, pieceLength: Self.pieceLength)
            let unknown = PieceFixture.taskID("unknown")
            try await Self.withServer(fixture) { server, address in
                try await HTTPTestConnection.with(address) { connection in
                    let cases: [(String, HTTPMethod, Int)] = [
                        ("/pieces/../../etc/0", .GET, 400),
                        ("/pieces/../../etc/passwd", .GET, 400),
                        ("/pieces/\(id.rawValue.uppercased())/0", .GET, 400),
                        ("/pieces/\(id)/abc", .GET, 400),
                        ("/pieces/\(id)/-1", .GET, 400),
                        ("/pieces/\(id)/99999999999999999999", .GET, 400),
                        ("/pieces/\(id)", .GET, 400),
                        ("/pieces/\(id)/3", .GET, 416),
                        ("/pieces/\(id)/1", .GET, 404),
                        ("/pieces/\(unknown)/0", .GET, 404),
                        ("/pieces/\(id)/0", .POST, 405),
                        ("/other", .GET, 404),
                        ("/pieces/\(id)/0?x=1", .GET, 200),
                    ]
                    for (path, method, status) in cases {
                        let response = try await connection.get(path, method: method)
                        #expect(response.status == status, "\(method) \(path)")
                    }
                }
                #expect(server.acceptedConnections == 1)
            }
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func garbageGetsAnErrorAndTheServerKeepsServing() async throws {
        try await PieceFixture.with { fixture in
            let id = PieceFixture.taskID("garbage")
            try await fixture.open(id, contentLength: Self.contentLength, pieceLength: Self.pieceLength)
            try await fixture.write(id, 0, contentLength: Self.contentLength, pieceLength: Self.pieceLength)
            try await Self.withServer(fixture) { _, address in
                for garbage in [
                    "GARBAGE\r\n\r\n", "\u{1}\u{2}\u{3}\u{4} / HTTP/9.9\r\n\r\n",
                    "GET /pieces/\(id)/0 HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
                    String(repeating: "A", count: 200_000),
                ] {
                    let answer = String(decoding: try await exchangeRaw(address, garbage), as: UTF8.self)
                    #expect(answer.isEmpty || answer.hasPrefix("HTTP/1.1 400"), "\(answer.prefix(100))")
                }
                try await HTTPTestConnection.with(address) { connection in
                    let response = try await connection.get("/pieces/\(id)/0")
                    #expect(response.status == 200)
                }
            }
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func answers429WhenEverySlotIsBusy() async throws {
        try await PieceFixture.with { fixture in
            let id = PieceFixture.taskID("slots")
            try await fixture.open(id, contentLength: Self.contentLength, pieceLength: Self.pieceLength)
            try await fixture.write(id, 0, contentLength: Self.contentLength, pieceLength: Self.pieceLength)
            // One slot, and a rate limit far below a piece a second: the first response holds its slot while
            // it waits for tokens.
            try await Self.withServer(fixture, slots: 1, rateLimit: 1024) { server, address in
                try await HTTPTestConnection.with(address) { holder in
                    try await holder.send("/pieces/\(id)/0")
                    try await poll(timeLimit: .seconds(10), description: "one upload slot in use") {
                        server.limiter.slotsInUse == 1
                    }
                    try await HTTPTestConnection.with(address) { other in
                        let response = try await other.get("/pieces/\(id)/0")
                        #expect(response.status == 429)
                        #expect(response.headers["Retry-After"] == ["1"])
                        // Errors that need no slot are still answered.
                        let missing = try await other.get("/pieces/\(id)/1")
                        #expect(missing.status == 404)
                    }
                }  // closes the holder's connection
                try await poll(timeLimit: .seconds(10), description: "the slot is released") {
                    server.limiter.slotsInUse == 0
                }
                #expect(server.limiter.failedCount == 1)
                #expect(server.limiter.uploadCount == 0)
            }
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func gracefulShutdownLetsTheResponseInFlightFinish() async throws {
        try await PieceFixture.with { fixture in
            let id = PieceFixture.taskID("shutdown")
            let length: Int64 = 192 << 10
            try await fixture.open(id, contentLength: length, pieceLength: length)
            try await fixture.write(id, 0, contentLength: length, pieceLength: length)
            let server = PieceServer(
                configuration: PieceServerConfiguration(address: ListenAddress(host: "127.0.0.1", port: 0)),
                store: fixture.store,
                // The bucket holds 64 KiB: the response waits about two seconds for the rest of its tokens.
                limiter: UploadLimiter(slots: 4, rateLimit: 64 << 10),
                metrics: nil,
                logger: Logger(label: "test")
            )
            let group = ServiceGroup(
                configuration: ServiceGroupConfiguration(services: [server], logger: Logger(label: "test")))
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                tasks.addTask { try await group.run() }
                let address = try await server.listener.value()
                try await HTTPTestConnection.with(address) { connection in
                    try await connection.send("/pieces/\(id)/0")
                    try await poll(timeLimit: .seconds(10), description: "the response is in flight") {
                        server.limiter.slotsInUse == 1
                    }
                    await group.triggerGracefulShutdown()
                    let received = try await connection.receive()
                    let response = try #require(received)
                    #expect(response.status == 200)
                    #expect(response.body == PieceFixture.bytes(0, length: Int(length)))
                    // Then the server closes the connection.
                    let next = try? await connection.receive()
                    #expect(next == nil)
                }
                try await tasks.waitForAll()
                #expect(server.limiter.uploadCount == 1)
                await #expect(throws: (any Error).self) {
                    try await HTTPTestConnection.with(address) { connection in
                        _ = try await connection.get("/pieces/\(id)/0")
                    }
                }
            }
        }
    }

    @Test(.timeLimit(.minutes(1)), arguments: [false, true])
    func compressesCompressiblePiecesForClientsThatAcceptLZ4(memory: Bool) async throws {
        try await PieceFixture.with(memory: memory) { fixture in
            let id = PieceFixture.taskID("lz4")
            try await fixture.open(id, contentLength: 2 * Self.pieceLength, pieceLength: Self.pieceLength)
            let regular = try await fixture.write(
                id, 0, contentLength: 2 * Self.pieceLength, pieceLength: Self.pieceLength)
            var generator = SystemRandomNumberGenerator()
            let noise = (0..<Int(Self.pieceLength)).map { _ in UInt8.random(in: 0...255, using: &generator) }
            let noiseDigest = try await fixture.store.writePiece(taskID: id, number: 1, bytes: ByteBuffer(bytes: noise))
            try await Self.withServer(fixture) { _, address in
                try await HTTPTestConnection.with(address) { connection in
                    let accept: HTTPHeaders = ["Accept-Encoding": "gzip, lz4"]
                    try await connection.send("/pieces/\(id)/0", headers: accept)
                    let received = try await connection.receive()
                    let compressed = try #require(received)
                    #expect(compressed.status == 200)
                    #expect(compressed.headers["Content-Encoding"] == ["lz4"])
                    #expect(compressed.headers["X-Dragonfly-Piece-Length"] == ["\(regular.length)"])
                    #expect(compressed.headers["X-Dragonfly-Piece-Digest"] == [regular.digest])
                    #expect(compressed.body.count < Int(regular.length) / 2)
                    let piece = try PieceCompression.decompress(
                        ByteBuffer(bytes: compressed.body), pieceLength: Int(regular.length))
                    #expect(Array(piece.readableBytesView) == PieceFixture.bytes(0, length: Int(regular.length)))

                    try await connection.send("/pieces/\(id)/1", headers: accept)
                    let receivedNoise = try await connection.receive()
                    let plain = try #require(receivedNoise)
                    #expect(plain.status == 200)
                    #expect(plain.headers["Content-Encoding"].isEmpty)
                    #expect(plain.headers["X-Dragonfly-Piece-Digest"] == [noiseDigest])
                    #expect(plain.body == noise)

                    // Without Accept-Encoding the compressible piece goes as it is.
                    let asIs = try await connection.get("/pieces/\(id)/0")
                    #expect(asIs.headers["Content-Encoding"].isEmpty)
                    #expect(asIs.body == PieceFixture.bytes(0, length: Int(regular.length)))
                }
            }
        }
    }

    @Test func compressionHelpers() throws {
        #expect(PieceCompression.isAccepted(by: ["lz4"]))
        #expect(PieceCompression.isAccepted(by: ["gzip, LZ4;q=0.5"]))
        #expect(!PieceCompression.isAccepted(by: ["gzip", "br"]))
        #expect(!PieceCompression.isAccepted(by: ["lz4;q=0"]))
        #expect(!PieceCompression.isAccepted(by: []))
        let bytes = ByteBuffer(bytes: PieceFixture.bytes(3, length: 100_000))
        let compressed = try #require(PieceCompression.compress(bytes))
        #expect(try PieceCompression.decompress(compressed, pieceLength: 100_000) == bytes)
        #expect(throws: DragonflyError.self) { try PieceCompression.decompress(compressed, pieceLength: 99_999) }
        #expect(throws: DragonflyError.self) {
            try PieceCompression.decompress(ByteBuffer(bytes: [0xff, 0x00, 0x01]), pieceLength: 100)
        }
    }

    @Test func slotAccounting() {
        let limiter = UploadLimiter(slots: 2, rateLimit: 0)
        #expect(limiter.tryAcquireSlot())
        #expect(limiter.tryAcquireSlot())
        #expect(!limiter.tryAcquireSlot())
        limiter.releaseSlot(succeeded: true)
        #expect(limiter.slotsInUse == 1)
        #expect(limiter.tryAcquireSlot())
        limiter.releaseSlot(succeeded: false)
        limiter.releaseSlot(succeeded: true)
        #expect(limiter.slotsInUse == 0)
        #expect(limiter.uploadCount == 2)
        #expect(limiter.failedCount == 1)
        #expect(limiter.bucket == nil)
        #expect(UploadLimiter(slots: 1, rateLimit: 100).bucket?.rate == 100)
    }

    @Test func requestParsing() {
        let id = PieceFixture.taskID("parse")
        #expect(PieceRequest(method: "GET", uri: "/pieces/\(id)/7") == .piece(id, number: 7))
        #expect(PieceRequest(method: "GET", uri: "/pieces/\(id)/007?a=b") == .piece(id, number: 7))
        #expect(PieceRequest(method: "HEAD", uri: "/pieces/\(id)/7") == .methodNotAllowed)
        #expect(PieceRequest(method: "GET", uri: "/healthy") == .unknownPath)
        #expect(PieceRequest(method: "GET", uri: "/pieces") == .unknownPath)
        for bad in [
            "/pieces/", "/pieces/\(id)/", "/pieces/\(id)/1/2", "/pieces/\(id)/+1", "/pieces/\(id)/1e3",
            "/pieces/%2e%2e/0", "/pieces/\(id)/\(Int.max)", "/pieces/\(id)/\(PieceRequest.maximumPieceNumber + 1)",
        ] {
            guard case .malformed = PieceRequest(method: "GET", uri: bad) else {
                Issue.record("\(bad) should be malformed")
                continue
            }
        }
    }
}
