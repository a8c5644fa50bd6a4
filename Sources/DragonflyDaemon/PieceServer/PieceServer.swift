package import DragonflyCore
package import DragonflyStorage
package import Logging
package import NIOCore
import NIOHTTP1
package import NIOPosix
import Prometheus
package import ServiceLifecycle
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Settings of a ``PieceServer`` beyond the upload budget (which is the ``UploadLimiter``'s).
package struct PieceServerConfiguration: Sendable, Equatable {
    /// Where to listen; port 0 binds any free port.
    package var address: ListenAddress
    /// Open connections beyond this are closed at once.
    package var maximumConnections: Int = 4096
    /// A keep-alive connection with no request for this long is closed.
    package var idleTimeout: Duration = .seconds(60)
    /// A response must go at least this fast (bytes per second) once sending, else the connection is closed,
    /// so a reader that stalls cannot hold an upload slot for ever…
    package var minimumSendRate: Int64 = 64 << 10
    /// …but every response gets at least this long.
    package var minimumSendTime: Duration = .seconds(60)
    /// Pieces compressed at once for `Accept-Encoding: lz4` (each holds the piece and its compressed copy in
    /// memory); 0 turns compression off. When all are busy, pieces go uncompressed.
    package var maximumConcurrentCompressions: Int = 4

    package init(address: ListenAddress) {
        self.address = address
    }
}

/// The piece data plane of a daemon (DESIGN §5, default `:4005`): HTTP/1.1 with keep-alive,
/// `GET /pieces/<taskID>/<number>` answered from the ``PieceStore``.
///
/// - 200 with the exact `Content-Length` and `X-Dragonfly-Piece-Digest: sha256:<hex>`; the body goes with
///   `sendfile` (a NIO `FileRegion` over a `dup` of the store's descriptor, held until the write completed) on a
///   file-backed medium, from memory otherwise.
/// - 400 for a malformed task ID or piece number (nothing malformed reaches the store), 416 for a piece number
///   at or beyond the task's piece count, 404 for a task or piece not held, 429 (with `Retry-After`) when every
///   upload slot is busy, 405 for another method on `/pieces/`, 404 for any other path.
///
/// Each response takes an upload slot and reserves its bytes from the rate limit before sending; sent bytes
/// count into `dragonfly_daemon_upload_bytes_total`. On graceful shutdown the server stops accepting, idle
/// connections close and responses in flight finish; cancellation closes the rest.
package struct PieceServer: Service {
    /// The bound `IP:port`, named `piece`.
    package let listener: ListenerAddress
    /// Upload slots, rate limit and upload counters.
    package let limiter: UploadLimiter
    private let configuration: PieceServerConfiguration
    private let store: PieceStore
    private let metrics: DaemonMetrics?
    private let group: any EventLoopGroup
    private let threadPool: NIOThreadPool
    private let logger: Logger
    private let counters = ConnectionCounters()
    /// Grants that open private tasks (DESIGN §11).
    private let grants: TransferGrants

    /// A server for `store`'s pieces; nothing is bound until ``run()``.
    ///
    /// - Parameters:
    ///   - limiter: The daemon's upload budget (``UploadLimiter/init(config:)`` from `upload.*`).
    ///   - metrics: Where sent bytes are counted; nil counts nowhere.
    ///   - grants: The transfer grants this daemon holds; a private task's pieces go only to a request whose
    ///     `X-Dragonfly-Transfer-Grant` is one of them.
    package init(
        configuration: PieceServerConfiguration,
        store: PieceStore,
        limiter: UploadLimiter,
        metrics: DaemonMetrics?,
        grants: TransferGrants = TransferGrants(),
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        threadPool: NIOThreadPool = .singleton,
        logger: Logger
    ) {
        self.threadPool = threadPool
        self.listener = ListenerAddress(name: "piece")
        self.configuration = configuration
        self.store = store
        self.limiter = limiter
        self.metrics = metrics
        self.grants = grants
        self.group = eventLoopGroup
        self.logger = logger
    }

    /// Connections accepted since start (keep-alive shows as several pieces over one connection).
    package var acceptedConnections: Int { counters.accepted.load(ordering: .relaxed) }

    /// Connections open now.
    package var openConnections: Int { counters.open.load(ordering: .relaxed) }

    package func run() async throws {
        typealias Connection = NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>
        let address = configuration.address
        let idle = TimeAmount(configuration.idleTimeout)
        let serverChannel: NIOAsyncChannel<(Connection, ConnectionActivity), Never>
        do {
            serverChannel = try await ServerBootstrap(group: group)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .serverChannelOption(.backlog, value: 256)
                .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
                .bind(host: address.host, port: address.port) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        let activity = ConnectionActivity()
                        let pipeline = channel.pipeline.syncOperations
                        try pipeline.configureHTTPServerPipeline(
                            withPipeliningAssistance: false, withErrorHandling: true)
                        try pipeline.addHandler(IdleStateHandler(readTimeout: idle))
                        try pipeline.addHandler(IdleConnectionCloser(activity: activity))
                        let connection = try Connection(wrappingChannelSynchronously: channel)
                        return (connection, activity)
                    }
                }
        } catch {
            throw listener.bindFailure(error, address: address, name: "piece")
        }
        let logger = listener.publishBound(serverChannel.channel.localAddress, logger: self.logger)
        logger.debug("piece server listening")
        defer { logger.debug("piece server stopped") }

        try await withThrowingDiscardingTaskGroup { group in
            try await serverChannel.executeThenClose { inbound in
                for try await (connection, activity) in inbound.cancelOnGracefulShutdown() {
                    counters.accepted.add(1, ordering: .relaxed)
                    let open = counters.open.add(1, ordering: .relaxed).newValue
                    guard open <= configuration.maximumConnections else {
                        counters.open.subtract(1, ordering: .relaxed)
                        logger.debug("piece server refuses a connection over the limit")
                        connection.channel.close(promise: nil)
                        continue
                    }
                    group.addTask {
                        defer { counters.open.subtract(1, ordering: .relaxed) }
                        await serve(connection, activity: activity, logger: logger)
                    }
                }
            }
        }
    }

    // MARK: - Connections

    /// Serves requests one after another until the client closes, asks to close, a response fails, or the
    /// server shuts down; closing the connection from either side cancels the response in progress.
    private func serve(
        _ connection: NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>,
        activity: ConnectionActivity,
        logger: Logger
    ) async {
        let channel = connection.channel
        await withTaskGroup(of: Void.self) { group in
            group.addTask { try? await channel.closeFuture.get() }
            group.addTask {
                do {
                    try await connection.executeThenClose { inbound, _ in
                        var request: HTTPRequestHead?
                        for try await part in inbound.cancelOnGracefulShutdown() {
                            switch part {
                            case .head(let head):
                                request = head
                            case .body:
                                continue  // a GET has no body worth reading; it is discarded as it arrives
                            case .end:
                                guard let head = request else { continue }
                                request = nil
                                activity.isBusy.store(true, ordering: .relaxed)
                                let keepOpen = try await respond(to: head, channel: channel, logger: logger)
                                activity.isBusy.store(false, ordering: .relaxed)
                                guard keepOpen else { return }
                            }
                        }
                    }
                } catch {
                    logger.debug("piece connection ended", metadata: ["df.error": "\(error)"])
                }
            }
            await group.next()
            group.cancelAll()
        }
    }

    /// Answers one request; returns whether the connection stays open.
    private func respond(to head: HTTPRequestHead, channel: any Channel, logger: Logger) async throws -> Bool {
        let keepAlive = head.isKeepAlive && !Task.isShuttingDownGracefully
        switch PieceRequest(method: head.method.rawValue, uri: head.uri) {
        case .unknownPath:
            return try await sendError(
                .notFound, "no such path; pieces are at /pieces/<task ID>/<number>", head, channel)
        case .methodNotAllowed:
            return try await sendError(
                .methodNotAllowed, "pieces are fetched with GET", head, channel, extra: [("Allow", "GET")])
        case .malformed(let reason):
            return try await sendError(.badRequest, reason, head, channel)
        case .piece(let id, let number):
            var logger = logger
            logger[metadataKey: "df.task.id"] = "\(id)"
            logger[metadataKey: "df.piece.number"] = "\(number)"
            return try await sendPiece(id, number: number, head: head, keepAlive: keepAlive, channel, logger)
        }
    }

    private func sendPiece(
        _ id: TaskID,
        number: Int,
        head: HTTPRequestHead,
        keepAlive: Bool,
        _ channel: any Channel,
        _ logger: Logger
    ) async throws -> Bool {
        guard let info = store.taskInfo(taskID: id) else {
            return try await sendError(.notFound, "task \(id) is not here", head, channel)
        }
        let presented = head.headers.first(name: TransferGrants.headerName) ?? ""
        guard grants.mayServe(id, headers: info.headers, presented: presented) else {
            logger.debug("piece of a private task refused without a valid grant")
            return try await sendError(
                .forbidden, "task \(id) is private; only peers its scheduler scheduled may fetch it", head, channel)
        }
        if let count = info.pieceCount, number >= count {
            return try await sendError(
                .rangeNotSatisfiable, "task \(id) has \(count) pieces; piece \(number) is beyond it", head, channel)
        }
        guard store.hasPiece(taskID: id, number: number) else {
            return try await sendError(.notFound, "piece \(number) of task \(id) is not here", head, channel)
        }
        guard limiter.tryAcquireSlot() else {
            logger.debug("upload slots full")
            return try await sendError(
                .tooManyRequests, "all \(limiter.slots) upload slots are busy; retry or ask another parent", head,
                channel, extra: [("Retry-After", "1")])
        }
        var succeeded = false
        defer { limiter.releaseSlot(succeeded: succeeded) }

        let digest = (try? store.pieceDigests(taskID: id)).flatMap { number < $0.count ? $0[number] : nil }
        guard let digest else {
            return try await sendError(.notFound, "piece \(number) of task \(id) is not here", head, channel)
        }
        var started = false
        var sent = 0
        do {
            if let span = compressionSpan(info, number: number, head: head),
                let compressed = try await sendCompressed(
                    id, number: number, span: span, digest: digest, head: head, keepAlive: keepAlive, channel,
                    started: &started)
            {
                sent = compressed
            } else if store.medium is any FileBackedStorageMedium {
                sent = try await store.withPieceFile(taskID: id, number: number) { file in
                    try await limiter.acquireBandwidth(Int64(file.length))
                    let handle = try Self.duplicate(file.descriptor)
                    defer { try? handle.close() }
                    let region = FileRegion(
                        fileHandle: handle, readerIndex: Int(file.offset), endIndex: Int(file.offset) + file.length)
                    started = true
                    try await send(
                        body: .fileRegion(region), length: file.length, digest: digest, head: head,
                        keepAlive: keepAlive, channel)
                    return file.length
                }
            } else {
                let bytes = try await store.readPiece(taskID: id, number: number)
                try await limiter.acquireBandwidth(Int64(bytes.readableBytes))
                started = true
                try await send(
                    body: .byteBuffer(bytes), length: bytes.readableBytes, digest: digest, head: head,
                    keepAlive: keepAlive, channel)
                sent = bytes.readableBytes
            }
        } catch let error as DragonflyError where !started && error.code == .notFound {
            // Evicted or deleted between the check and the read.
            return try await sendError(.notFound, "piece \(number) of task \(id) is not here", head, channel)
        } catch {
            if !started && !(error is CancellationError) {
                logger.debug("cannot read piece for upload", metadata: ["df.error": "\(error)"])
                return try await sendError(.internalServerError, "cannot read the piece", head, channel)
            }
            throw error
        }
        succeeded = true
        metrics?.uploadBytes.increment(by: Int64(sent))
        logger.trace("uploaded piece", metadata: ["df.piece.length": "\(sent)"])
        return keepAlive
    }

    /// Offset and length of the piece when the request accepts lz4, compression is on and a compression
    /// permit is free (the caller then owns the permit); nil to send the piece as it is.
    private func compressionSpan(_ info: StoredTaskInfo, number: Int, head: HTTPRequestHead) -> (
        offset: Int64, length: Int64
    )? {
        guard configuration.maximumConcurrentCompressions > 0,
            PieceCompression.isAccepted(by: head.headers["Accept-Encoding"]),
            let contentLength = info.contentLength,
            let span = PieceMath.span(ofPiece: number, contentLength: contentLength, pieceLength: info.pieceLength),
            span.length <= PieceCompression.maximumPieceLength
        else { return nil }
        let permitted = counters.compressions.withLock { running in
            guard running < configuration.maximumConcurrentCompressions else { return false }
            running += 1
            return true
        }
        return permitted ? span : nil
    }

    /// Sends the piece lz4-compressed when a probe of its start compresses well (releasing the permit taken
    /// by ``compressionSpan(_:number:head:)``); returns the piece length sent, or nil when the caller should
    /// send it uncompressed.
    private func sendCompressed(
        _ id: TaskID,
        number: Int,
        span: (offset: Int64, length: Int64),
        digest: String,
        head: HTTPRequestHead,
        keepAlive: Bool,
        _ channel: any Channel,
        started: inout Bool
    ) async throws -> Int? {
        defer { counters.compressions.withLock { $0 -= 1 } }
        var probe = ByteBuffer()
        let probeEnd = span.offset + min(Int64(PieceCompression.probeLength), span.length)
        try await store.readRange(taskID: id, range: span.offset..<probeEnd) { chunk in
            probe.writeImmutableBuffer(chunk)
        }
        let pool = threadPool
        let probed = probe
        guard try await pool.runIfActive({ PieceCompression.isWorthCompressing(probe: probed) }) else { return nil }
        let bytes = try await store.readPiece(taskID: id, number: number)
        let compressed = try await pool.runIfActive { PieceCompression.compress(bytes) }
        let body = compressed ?? bytes
        try await limiter.acquireBandwidth(Int64(body.readableBytes))
        started = true
        var extra: [(String, String)] = []
        if compressed != nil {
            extra = [
                ("Content-Encoding", PieceCompression.token),
                (PieceCompression.pieceLengthHeader, String(bytes.readableBytes)),
            ]
        }
        try await send(
            body: .byteBuffer(body), length: body.readableBytes, digest: digest, head: head, keepAlive: keepAlive,
            channel, extra: extra)
        return bytes.readableBytes
    }

    /// Writes a 200 with `body` and waits until it is on the wire; a reader slower than
    /// ``PieceServerConfiguration/minimumSendRate`` gets its connection closed.
    private func send(
        body: IOData,
        length: Int,
        digest: String,
        head: HTTPRequestHead,
        keepAlive: Bool,
        _ channel: any Channel,
        extra: [(String, String)] = []
    ) async throws {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Length", value: String(length))
        headers.add(name: "Content-Type", value: "application/octet-stream")
        headers.add(name: "X-Dragonfly-Piece-Digest", value: digest)
        for (name, value) in extra { headers.add(name: name, value: value) }
        if !keepAlive { headers.add(name: "Connection", value: "close") }
        let response = HTTPResponseHead(version: head.version, status: .ok, headers: headers)
        let seconds = Double(length) / Double(max(configuration.minimumSendRate, 1))
        let limit = max(configuration.minimumSendTime, .milliseconds(Int64(seconds * 1000)))
        let timer = channel.eventLoop.scheduleTask(in: TimeAmount(limit)) { channel.close(promise: nil) }
        defer { timer.cancel() }
        channel.write(HTTPServerResponsePart.head(response), promise: nil)
        channel.write(HTTPServerResponsePart.body(body), promise: nil)
        try await channel.writeAndFlush(HTTPServerResponsePart.end(nil)).get()
    }

    /// Writes a short plain-text error; returns whether the connection stays open.
    private func sendError(
        _ status: HTTPResponseStatus,
        _ reason: String,
        _ head: HTTPRequestHead,
        _ channel: any Channel,
        extra: [(String, String)] = []
    ) async throws -> Bool {
        let keepAlive = head.isKeepAlive && !Task.isShuttingDownGracefully
        var body = ByteBuffer()
        body.writeString(reason + "\n")
        var headers = HTTPHeaders()
        headers.add(name: "Content-Length", value: String(body.readableBytes))
        headers.add(name: "Content-Type", value: "text/plain; charset=utf-8")
        for (name, value) in extra { headers.add(name: name, value: value) }
        if !keepAlive { headers.add(name: "Connection", value: "close") }
        channel.write(
            HTTPServerResponsePart.head(HTTPResponseHead(version: head.version, status: status, headers: headers)),
            promise: nil)
        channel.write(HTTPServerResponsePart.body(.byteBuffer(body)), promise: nil)
        try await channel.writeAndFlush(HTTPServerResponsePart.end(nil)).get()
        return keepAlive
    }

    /// A `NIOFileHandle` owning a duplicate of the store's descriptor (the store keeps its own).
    private static func duplicate(_ descriptor: CInt) throws(DragonflyError) -> NIOFileHandle {
        let copy = dup(descriptor)
        guard copy >= 0 else {
            throw DragonflyError(
                code: .internalError, message: "cannot duplicate a piece file descriptor (errno \(errno))")
        }
        return NIOFileHandle(_deprecatedTakingOwnershipOfDescriptor: copy)
    }

    /// `IP:port` of a bound socket address.
    static func describe(_ address: SocketAddress?) -> String {
        guard let address else { return "unknown" }
        let ip = address.ipAddress ?? "unknown"
        let port = address.port ?? 0
        return ip.contains(":") ? "[\(ip)]:\(port)" : "\(ip):\(port)"
    }
}

/// Connection counts of a piece server.
private final class ConnectionCounters: Sendable {
    let accepted = Atomic<Int>(0)
    let open = Atomic<Int>(0)
    /// Pieces being compressed now.
    let compressions = Mutex(0)
}

/// Whether a connection is answering a request (then it is not idle, however long the response takes).
final class ConnectionActivity: Sendable {
    let isBusy = Atomic<Bool>(false)
}

/// Closes a keep-alive connection that has sent no request for the idle timeout, unless a response is in
/// progress (a slow response is bounded by its send deadline instead). The piece server and the proxy use it.
final class IdleConnectionCloser: ChannelInboundHandler, Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart

    private let activity: ConnectionActivity

    init(activity: ConnectionActivity) { self.activity = activity }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            if !activity.isBusy.load(ordering: .relaxed) { context.close(promise: nil) }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }
}

extension ListenerAddress {
    /// Publishes the address a listener bound (`IP:port`) and returns `logger` tagged with it.
    func publishBound(_ local: SocketAddress?, logger: Logger) -> Logger {
        let bound = PieceServer.describe(local)
        fulfil(bound)
        var logger = logger
        logger[metadataKey: "df.listener.address"] = "\(bound)"
        return logger
    }

    /// Records that the `name` listener could not bind `address`; returns the error to throw.
    func bindFailure(_ error: any Error, address: ListenAddress, name: String) -> DragonflyError {
        let failure = DragonflyError(
            code: .unavailable, message: "cannot listen on \(address) (\(name) listener)", cause: error)
        fail(failure)
        return failure
    }
}
