import DragonflyCore
import DragonflyDaemon
import DragonflyStorage
import DragonflyTelemetry
import DragonflyTestSupport
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import ServiceLifecycle
import Testing

/// A real store in a temporary directory, with helpers to put pieces in it.
struct PieceFixture: Sendable {
    let store: PieceStore

    /// Runs `body` with a store on the disk medium (or in memory).
    static func with<T: Sendable>(
        memory: Bool = false,
        _ body: (PieceFixture) async throws -> T
    ) async throws -> T {
        try await withTemporaryDirectory { dir in
            let data = dir.appending("data")
            let medium: any StorageMedium = memory ? MemoryMedium(capacity: 1 << 30) : DiskMedium(dataDirectory: data)
            let store = PieceStore(dataDirectory: data, medium: medium, logger: Logger(label: "test"))
            return try await body(PieceFixture(store: store))
        }
    }

    /// A task ID made from `name`.
    static func taskID(_ name: String) -> TaskID { TaskID.make(url: "https://example.com/\(name)") }

    /// Deterministic bytes of piece `number` of a task.
    static func bytes(_ number: Int, length: Int) -> [UInt8] {
        (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ number &* 7 &+ 1) }
    }

    /// Opens a task of `contentLength` bytes in `pieceLength` pieces (the writer stays registered).
    func open(_ id: TaskID, contentLength: Int64?, pieceLength: Int64) async throws {
        try await store.openTask(
            id: id, url: "https://example.com/x", contentLength: contentLength, pieceLength: pieceLength)
    }

    /// Writes piece `number` and returns the announcement the conductor would publish.
    @discardableResult
    func write(_ id: TaskID, _ number: Int, contentLength: Int64, pieceLength: Int64) async throws -> AnnouncedPiece {
        let offset = Int64(number) * pieceLength
        let length = min(pieceLength, contentLength - offset)
        let digest = try await store.writePiece(
            taskID: id, number: number, bytes: ByteBuffer(bytes: Self.bytes(number, length: Int(length))))
        let count = Int((contentLength + pieceLength - 1) / pieceLength)
        let held = (try? store.finishedPieces(taskID: id).count) ?? 0
        return AnnouncedPiece(
            number: number, offset: offset, length: length, digest: digest, contentLength: contentLength,
            isLast: held == count)
    }
}

/// Runs `service` in a ServiceGroup while `body` runs, then shuts it down gracefully.
func withRunningService<T: Sendable>(
    _ service: some Service,
    _ body: () async throws -> T
) async throws -> T {
    let logger = Logger(label: "test")
    let group = ServiceGroup(configuration: ServiceGroupConfiguration(services: [service], logger: logger))
    return try await withThrowingTaskGroup(of: Void.self) { tasks in
        tasks.addTask { try await group.run() }
        let result: T
        do {
            result = try await body()
        } catch {
            await group.triggerGracefulShutdown()
            try? await tasks.waitForAll()
            throw error
        }
        await group.triggerGracefulShutdown()
        try await tasks.waitForAll()
        return result
    }
}

/// One HTTP response as read by ``HTTPTestConnection``.
struct TestResponse: Sendable {
    var status: Int
    var headers: HTTPHeaders
    var body: [UInt8]
}

/// One client HTTP/1.1 connection, so tests control keep-alive and see exactly what the server sends.
struct HTTPTestConnection {
    typealias Channel = NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>

    /// Connects to `address` (`IP:port`) and runs `body` with the connection, then closes it.
    static func with<T: Sendable>(
        _ address: String,
        _ body: (inout HTTPTestConnection) async throws -> T
    ) async throws -> T {
        let parsed = try #require(ListenAddress(parsing: address))
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connect(host: parsed.host, port: parsed.port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    return try Channel(wrappingChannelSynchronously: channel)
                }
            }
        return try await channel.executeThenClose { inbound, outbound in
            var connection = HTTPTestConnection(
                channel: channel.channel, iterator: inbound.makeAsyncIterator(), outbound: outbound)
            return try await body(&connection)
        }
    }

    let channel: any NIOCore.Channel
    var iterator: NIOAsyncChannelInboundStream<HTTPClientResponsePart>.AsyncIterator
    let outbound: NIOAsyncChannelOutboundWriter<HTTPClientRequestPart>

    /// Sends a request without waiting for the answer.
    func send(_ path: String, method: HTTPMethod = .GET, headers: HTTPHeaders = [:]) async throws {
        var head = HTTPRequestHead(version: .http1_1, method: method, uri: path, headers: headers)
        head.headers.add(name: "Host", value: "test")
        try await outbound.write(.head(head))
        try await outbound.write(.end(nil))
    }

    /// Reads the next response; nil when the server closed the connection first.
    mutating func receive(limit: Int = 64 << 20) async throws -> TestResponse? {
        var response: TestResponse?
        while let part = try await iterator.next() {
            switch part {
            case .head(let head):
                response = TestResponse(status: Int(head.status.code), headers: head.headers, body: [])
            case .body(let buffer):
                response?.body += buffer.readableBytesView
                if let count = response?.body.count, count > limit {
                    throw TestFailure(message: "response larger than \(limit) bytes")
                }
            case .end:
                return response
            }
        }
        return nil
    }

    /// Sends a request and reads its response.
    mutating func get(_ path: String, method: HTTPMethod = .GET, headers: HTTPHeaders = [:]) async throws
        -> TestResponse
    {
        try await send(path, method: method, headers: headers)
        let received = try await receive()
        return try #require(received)
    }
}

/// A test precondition that did not hold.
struct TestFailure: Error {
    var message: String
}

/// Sends raw bytes on a fresh connection and returns everything the server sends until it closes (at most 1 MiB).
func exchangeRaw(_ address: String, _ bytes: String) async throws -> [UInt8] {
    let parsed = try #require(ListenAddress(parsing: address))
    let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
        .connect(host: parsed.host, port: parsed.port) { channel in
            channel.eventLoop.makeCompletedFuture {
                try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
            }
        }
    return try await channel.executeThenClose { inbound, outbound in
        // The server may close before it read everything; then the write fails and the answer still counts.
        try? await outbound.write(ByteBuffer(string: bytes))
        var received: [UInt8] = []
        do {
            for try await buffer in inbound {
                received += buffer.readableBytesView
                if received.count > 1 << 20 { break }
            }
        } catch {
            // A reset after the error response is fine: what arrived is what counts.
        }
        return received
    }
}

/// The value of `dragonfly_daemon_upload_bytes_total` in `telemetry`'s exposition.
func uploadBytes(_ telemetry: Telemetry) -> Int64 {
    let text = String(decoding: telemetry.exposition(), as: UTF8.self)
    for line in text.split(separator: "\n") where line.hasPrefix("dragonfly_daemon_upload_bytes_total") {
        if let value = line.split(separator: " ").last.flatMap({ Double($0) }) { return Int64(value) }
    }
    return -1
}
