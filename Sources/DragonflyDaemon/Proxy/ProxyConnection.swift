import AsyncHTTPClient
import DragonflyCore
import DragonflyProto
import DragonflyRPC
import DragonflyStorage
import Logging
import NIOCore
import NIOHTTP1
import Prometheus
import ServiceLifecycle
import Synchronization

/// One client connection of the proxy: requests one after another until either side closes.
struct ProxyConnection {
    let connection: NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>
    let activity: ConnectionActivity
    /// `https://host[:port]` on an intercepted `CONNECT`: request paths are that origin's, and the proxy's
    /// credentials were checked on the `CONNECT`.
    let origin: String?
    let context: ProxyContext
    let logger: Logger

    /// Request bodies smaller than this are read and dropped when a request is answered without them (so the
    /// connection stays usable); larger ones close the connection.
    static let drainLimit = 1 << 20

    func serve() async {
        let channel = connection.channel
        let activity = activity
        await withGracefulShutdownHandler {
            await serveRequests()
        } onGracefulShutdown: {
            // An idle keep-alive connection closes now; a busy one after its response.
            if !activity.isBusy.load(ordering: .relaxed) { channel.close(promise: nil) }
        }
    }

    private func serveRequests() async {
        let presence = ClientPresence(channel: connection.channel)
        do {
            // Responses are written on the channel with completion futures (see ``Responder``), not with the
            // async writer, whose writes may still be queued when the connection closes.
            try await connection.executeThenClose { inbound, _ in
                let reader = RequestReader(inbound.makeAsyncIterator())
                while let head = try await reader.nextHead() {
                    activity.isBusy.store(true, ordering: .relaxed)
                    let keepOpen = try await respond(to: head, body: reader, presence: presence)
                    activity.isBusy.store(false, ordering: .relaxed)
                    guard keepOpen, !Task.isShuttingDownGracefully else { return }
                    guard try await reader.drain(limit: Self.drainLimit) else { return }
                }
            }
        } catch {
            logger.debug("proxy connection ended", metadata: ["df.error": "\(Redaction.message("\(error)"))"])
        }
    }

    /// Answers one request; returns whether the connection may carry another.
    private func respond(to head: HTTPRequestHead, body: RequestReader, presence: ClientPresence) async throws
        -> Bool
    {
        let responder = Responder(head: head, channel: connection.channel)
        if origin == nil, head.method == .GET, head.uri == "/healthy" {
            return try await responder.text(.ok, "OK")
        }
        let headBytes =
            head.uri.utf8.count + head.headers.reduce(0) { $0 + $1.name.utf8.count + $1.value.utf8.count + 4 }
        if headBytes > context.configuration.maximumHeaderBytes {
            return try await responder.text(
                .init(statusCode: 431, reasonPhrase: "Request Header Fields Too Large"),
                "the request head has \(headBytes) bytes; the proxy accepts \(context.configuration.maximumHeaderBytes)",
                close: true)
        }
        if head.method == .CONNECT {
            // A CONNECT is only understood as a connection's first request (see ProxyProtocolSniffer).
            context.metrics?.proxyRejected.increment()
            return try await responder.text(
                .badRequest, "CONNECT must be the first request of a connection", close: true)
        }
        let limit = context.configuration.maximumConcurrentRequests
        let running = context.counters.requests.add(1, ordering: .relaxed).newValue
        defer { context.counters.requests.subtract(1, ordering: .relaxed) }
        guard running <= limit else {
            context.metrics?.proxyRejected.increment()
            return try await responder.text(
                .tooManyRequests, "the proxy is handling \(limit) requests; retry later",
                extra: [("Retry-After", "1")])
        }

        // Every request form needs the proxy's credentials (an intercepted connection showed them on its
        // CONNECT).
        guard
            origin != nil
                || ProxyAuthorization.isAuthorized(
                    head.headers.first(name: "Proxy-Authorization"),
                    required: context.configuration.requiredAuthorization)
        else {
            context.metrics?.proxyRejected.increment()
            return try await responder.text(
                .proxyAuthenticationRequired, "the proxy needs Proxy-Authorization (basic)",
                extra: [("Proxy-Authenticate", "Basic realm=\"dragonfly\"")])
        }
        // Headers that change which task a request joins are honoured only from clients the config trusts.
        if let name = Self.identityHeaders.first(where: { head.headers.contains(name: $0) }),
            !isTrustedForIdentity
        {
            context.metrics?.proxyRejected.increment()
            return try await responder.text(
                .forbidden, "\(name) is honoured only from clients listed in proxy.trustedIdentityHeaders")
        }

        let forceP2P = head.headers.first(name: "X-Dragonfly-Use-P2P")?.lowercased() == "true"
        let route: ProxyRoute
        var isBlob = false
        var isMirror = false
        let lowered = head.uri.prefix(8).lowercased()
        if let origin, head.uri.hasPrefix("/") {
            route = context.configuration.rules.route(
                url: origin + head.uri, method: head.method.rawValue, forceP2P: forceP2P)
        } else if lowered.hasPrefix("http://") || lowered.hasPrefix("https://") {
            route = context.configuration.rules.route(
                url: head.uri, method: head.method.rawValue, forceP2P: forceP2P)
        } else if head.uri.hasPrefix("/") {
            guard head.method == .GET || head.method == .HEAD else {
                context.metrics?.proxyRejected.increment()
                return try await responder.text(
                    .methodNotAllowed, "the registry mirror serves only GET and HEAD", extra: [("Allow", "GET, HEAD")])
            }
            let upstream: String
            do {
                upstream = try context.configuration.mirror.upstreamURL(
                    target: head.uri, registryHeader: head.headers.first(name: "X-Dragonfly-Registry"))
            } catch {
                context.metrics?.proxyRejected.increment()
                return try await responder.text(
                    error.code == .permissionDenied ? .forbidden : .badRequest, Redaction.message(error.message))
            }
            isBlob = RegistryMirror.isBlob(target: head.uri)
            isMirror = true
            route = ProxyRoute(
                url: upstream, isP2P: head.method == .GET && (isBlob || forceP2P), filteredQueryParams: nil)
        } else {
            context.metrics?.proxyRejected.increment()
            return try await responder.text(
                .badRequest,
                "request target '\(Redaction.url(head.uri.prefix(80)))' is neither an absolute URL nor a path")
        }
        var routed = route
        if let filter = head.headers.first(name: "X-Dragonfly-Filtered-Query-Params") {
            routed.filteredQueryParams = URLFilter.parseList(filter)
        }
        // Mirror upstreams are the registries the config lists; every other destination is checked (and a
        // plain-HTTP forward connects to the checked address).
        var pinned: SocketAddress?
        if !isMirror {
            guard let target = DirectForward.target(of: routed.url) else {
                context.metrics?.proxyRejected.increment()
                return try await responder.text(
                    .badRequest, "'\(Redaction.url(routed.url.prefix(200)))' names no host")
            }
            do {
                pinned = try await context.configuration.destinations.resolve(host: target.host, port: target.port)
                    .first
            } catch {
                context.metrics?.proxyRejected.increment()
                logger.debug("proxy destination refused", metadata: ["df.error": "\(error.message)"])
                return try await responder.text(
                    error.code == .permissionDenied ? .forbidden : .badGateway, error.message)
            }
        }
        var logger = logger
        logger[metadataKey: "df.proxy.method"] = "\(head.method.rawValue)"
        if routed.isP2P {
            context.metrics?.proxyP2P.increment()
            let p2p = P2PResponse(
                head: head, route: routed, isBlob: isBlob, context: context, responder: responder,
                presence: presence, logger: logger)
            return try await p2p.respond()
        }
        context.metrics?.proxyDirect.increment()
        let direct = DirectForward(
            head: head, url: routed.url, pinned: pinned, body: body, context: context, responder: responder,
            logger: logger)
        return try await direct.respond()
    }

    /// Request headers that change a task's identity.
    static let identityHeaders = ["X-Dragonfly-Tag", "X-Dragonfly-Application", "X-Dragonfly-Filtered-Query-Params"]

    /// Whether the client's address is in `proxy.trustedIdentityHeaders`.
    private var isTrustedForIdentity: Bool {
        guard let text = connection.channel.remoteAddress?.ipAddress, let address = IPAddressBytes(parsing: text)
        else { return false }
        return context.configuration.trustedIdentityClients.contains { $0.matches(address: address) }
    }
}

/// Reads the parts of requests one at a time; a request's body may be lent to the forwarder's upload task.
///
/// `@unchecked Sendable`: the iterator is used by one task at a time — the connection's task between requests,
/// the forwarder's body stream during one. ``drain(limit:)`` does not touch it while a body is lent and not yet
/// read to its end (the connection is closed instead).
final class RequestReader: @unchecked Sendable {
    private var iterator: NIOAsyncChannelInboundStream<HTTPServerRequestPart>.AsyncIterator
    private let bodyEnded = Atomic<Bool>(true)
    private let bodyLent = Atomic<Bool>(false)

    init(_ iterator: NIOAsyncChannelInboundStream<HTTPServerRequestPart>.AsyncIterator) {
        self.iterator = iterator
    }

    /// The next request's head; nil when the client closed.
    func nextHead() async throws -> HTTPRequestHead? {
        while let part = try await iterator.next() {
            if case .head(let head) = part {
                bodyEnded.store(false, ordering: .relaxed)
                bodyLent.store(false, ordering: .relaxed)
                return head
            }
        }
        return nil
    }

    /// The next chunk of the current request's body; nil at its end.
    func nextBodyChunk() async throws -> ByteBuffer? {
        guard !bodyEnded.load(ordering: .acquiring) else { return nil }
        while let part = try await iterator.next() {
            switch part {
            case .body(let chunk):
                return chunk
            case .end:
                bodyEnded.store(true, ordering: .releasing)
                return nil
            case .head:
                throw DragonflyError(code: .invalidArgument, message: "a request head arrived inside a body")
            }
        }
        bodyEnded.store(true, ordering: .releasing)
        return nil
    }

    /// Marks the body as handed to another task.
    func lend() { bodyLent.store(true, ordering: .relaxed) }

    /// Reads the rest of the current request's body (at most `limit` bytes); false when the connection must
    /// close instead (a lent body not read to its end, or too large a rest).
    func drain(limit: Int) async throws -> Bool {
        if bodyEnded.load(ordering: .acquiring) { return true }
        if bodyLent.load(ordering: .relaxed) { return false }
        var drained = 0
        while let chunk = try await nextBodyChunk() {
            drained += chunk.readableBytes
            if drained > limit { return false }
        }
        return true
    }

    /// Whether the current request's body has been read to its end.
    var isBodyComplete: Bool { bodyEnded.load(ordering: .acquiring) }
}

/// Writes the response to one request straight on the channel: each body chunk is flushed at once and at most
/// two are in flight (a chunk is written while the previous one drains), so a slow client holds the sender back;
/// ``finish()`` returns once the whole response is on the socket, so closing the connection afterwards loses
/// nothing.
final class Responder {
    let head: HTTPRequestHead
    let channel: any Channel
    private var inFlight: EventLoopFuture<Void>?

    init(head: HTTPRequestHead, channel: any Channel) {
        self.head = head
        self.channel = channel
    }

    /// Whether the connection may stay open after this response.
    var keepAlive: Bool { head.isKeepAlive && !Task.isShuttingDownGracefully }

    /// A short plain-text response; returns whether the connection stays open.
    func text(
        _ status: HTTPResponseStatus,
        _ message: String,
        extra: [(String, String)] = [],
        close: Bool = false
    ) async throws -> Bool {
        var headers = HTTPHeaders()
        for (name, value) in extra { headers.add(name: name, value: value) }
        return try await text(status, message, headers: headers, close: close)
    }

    /// A short plain-text response with `headers` (framing headers replaced).
    func text(_ status: HTTPResponseStatus, _ message: String, headers: HTTPHeaders, close: Bool = false)
        async throws -> Bool
    {
        var body = ByteBuffer()
        body.writeString(message + "\n")
        var headers = headers
        headers.remove(name: "Content-Length")
        headers.remove(name: "Transfer-Encoding")
        headers.remove(name: "Content-Encoding")
        if !headers.contains(name: "Content-Type") {
            headers.add(name: "Content-Type", value: "text/plain; charset=utf-8")
        }
        headers.add(name: "Content-Length", value: String(body.readableBytes))
        let open = keepAlive && !close
        writeHead(status, headers: headers, keepAlive: open)
        if head.method != .HEAD { try await writeBody(body) }
        try await finish()
        return open
    }

    /// Queues the response head (adding `Connection: close` when the connection will close); it goes out with
    /// the first flush.
    func writeHead(_ status: HTTPResponseStatus, headers: HTTPHeaders, keepAlive: Bool) {
        var headers = headers
        headers.remove(name: "Connection")
        if !keepAlive { headers.add(name: "Connection", value: "close") }
        let part = HTTPServerResponsePart.head(
            HTTPResponseHead(version: head.version, status: status, headers: headers))
        channel.write(part, promise: nil)
    }

    /// Writes and flushes a body chunk; waits until the chunk before it is on the socket.
    func writeBody(_ chunk: ByteBuffer) async throws {
        let written = flush(HTTPServerResponsePart.body(.byteBuffer(chunk)))
        let previous = inFlight
        inFlight = written
        try await previous?.get()
    }

    /// Ends the response; returns once every byte of it is on the socket.
    func finish() async throws {
        let ended = flush(HTTPServerResponsePart.end(nil))
        inFlight = nil
        try await ended.get()
    }

    private func flush(_ part: HTTPServerResponsePart) -> EventLoopFuture<Void> {
        let promise = channel.eventLoop.makePromise(of: Void.self)
        channel.writeAndFlush(part, promise: promise)
        return promise.futureResult
    }
}

/// Header handling shared by both paths.
enum ProxyHeaders {
    /// Hop-by-hop headers (RFC 9110 §7.6.1) and the proxy's own, never forwarded.
    static let hopByHop: Set<String> = [
        "connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization", "te",
        "trailer", "transfer-encoding", "upgrade", "host",
    ]

    /// The request headers to send upstream: without hop-by-hop headers, those `Connection` names, the
    /// `X-Dragonfly-*` controls, `Content-Length` (the client library frames the body) and `Expect` (the body is
    /// streamed up as the client sends it, without an interim response).
    static func upstream(_ headers: HTTPHeaders) -> HTTPHeaders {
        let named = Set(
            headers["Connection"].flatMap { $0.split(separator: ",") }.map {
                String($0).trimmingSpaces().lowercased()
            })
        var out = HTTPHeaders()
        for (name, value) in headers {
            let lowered = name.lowercased()
            if hopByHop.contains(lowered) || named.contains(lowered) || lowered.hasPrefix("x-dragonfly-")
                || lowered == "content-length" || lowered == "expect"
            {
                continue
            }
            out.add(name: name, value: value)
        }
        return out
    }

    /// The response headers to send back: without hop-by-hop headers.
    static func downstream(_ headers: HTTPHeaders) -> HTTPHeaders {
        var out = HTTPHeaders()
        for (name, value) in headers where !hopByHop.contains(name.lowercased()) {
            out.add(name: name, value: value)
        }
        return out
    }
}
