import DragonflyCore
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import Prometheus
import Synchronization

/// What a new proxy connection turned out to be, decided from its first bytes by ``ProxyProtocolSniffer``.
enum ProxyChannel: Sendable {
    /// HTTP requests (absolute-URI proxy requests and registry mirror requests); with an origin
    /// (`https://host[:port]`), the decrypted requests of an intercepted `CONNECT`, whose paths are that
    /// origin's.
    case http(NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>, ConnectionActivity, origin: String?)
    /// A `CONNECT host:port` whose head was read; the bytes after the head are raw tunnel bytes.
    case tunnel(NIOAsyncChannel<ByteBuffer, ByteBuffer>, authority: String, authorization: String?)
    /// A `CONNECT` that was answered with an error and closed by the sniffer.
    case refused
}

/// The first handler of a proxy connection: reads until it can tell a `CONNECT` from any other request, then
/// configures the pipeline for HTTP (NIO's HTTP server handlers, idle timeout), for a raw tunnel, or — for a
/// `CONNECT` the ``HTTPSInterceptor`` intercepts, once the proxy's credentials check out — answers
/// `200 Connection Established` itself and puts a TLS server handler (with a leaf certificate for the host)
/// in front of the HTTP handlers; then re-delivers the bytes it held and removes itself. Holds at most
/// `maximumHeadBytes`; a connection that says nothing for `idleTimeout` is closed.
final class ProxyProtocolSniffer: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private static let connect = Array("CONNECT ".utf8)
    private static let headEnd = Array("\r\n\r\n".utf8)

    private let maximumHeadBytes: Int
    private let idleTimeout: TimeAmount
    private let headerTimeout: TimeAmount
    private let tunnelIdleTimeout: TimeAmount
    private let promise: EventLoopPromise<ProxyChannel>
    private let interceptor: HTTPSInterceptor?
    private let requiredAuthorization: String?
    private var buffered: ByteBuffer?
    private var decided = false
    private var timer: Scheduled<Void>?

    init(
        maximumHeadBytes: Int, idleTimeout: TimeAmount, headerTimeout: TimeAmount, tunnelIdleTimeout: TimeAmount,
        interceptor: HTTPSInterceptor?, requiredAuthorization: String?, promise: EventLoopPromise<ProxyChannel>
    ) {
        self.maximumHeadBytes = maximumHeadBytes
        self.idleTimeout = idleTimeout
        self.headerTimeout = headerTimeout
        self.tunnelIdleTimeout = tunnelIdleTimeout
        self.interceptor = interceptor
        self.requiredAuthorization = requiredAuthorization
        self.promise = promise
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let channel = context.channel
        let promise = self.promise
        // The first request head (or a CONNECT's whole head) must arrive within both timeouts.
        timer = context.eventLoop.scheduleTask(in: min(idleTimeout, headerTimeout)) {
            promise.fail(DragonflyError(code: .deadlineExceeded, message: "the client sent no request"))
            channel.close(promise: nil)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
        if !decided {
            decided = true
            promise.fail(DragonflyError(code: .cancelled, message: "the connection closed before a request"))
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !decided else {
            context.fireChannelRead(data)
            return
        }
        var bytes = unwrapInboundIn(data)
        if buffered == nil {
            buffered = bytes
        } else {
            buffered?.writeBuffer(&bytes)
        }
        decide(context: context)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !decided {
            decided = true
            timer?.cancel()
            promise.fail(DragonflyError(code: .cancelled, message: "the connection closed before a request"))
        }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if !decided {
            decided = true
            timer?.cancel()
            promise.fail(error)
            context.close(promise: nil)
            return
        }
        context.fireErrorCaught(error)
    }

    private func decide(context: ChannelHandlerContext) {
        guard let buffer = buffered else { return }
        let view = buffer.readableBytesView
        let compared = min(view.count, Self.connect.count)
        guard view.prefix(compared).elementsEqual(Self.connect.prefix(compared)) else {
            becomeHTTP(context: context)
            return
        }
        guard let end = view.firstRange(of: Self.headEnd) else {
            if view.count > maximumHeadBytes { refuse(context: context, "431 Request Header Fields Too Large") }
            return
        }
        let headLength = end.upperBound - view.startIndex
        let head = String(decoding: view.prefix(headLength - 4), as: UTF8.self)
        let requestLine = head.split(separator: "\r\n", maxSplits: 1).first ?? ""
        let parts = requestLine.split(separator: " ")
        guard parts.count == 3, parts[2].hasPrefix("HTTP/1."), let authority = Self.validAuthority(parts[1]) else {
            refuse(context: context, "400 Bad Request")
            return
        }
        let authorization = head.split(separator: "\r\n").dropFirst().first {
            $0.lowercased().hasPrefix("proxy-authorization:")
        }.map { String($0.dropFirst("proxy-authorization:".count)).trimmingSpaces() }
        let leftover = buffer.getSlice(at: buffer.readerIndex + headLength, length: buffer.readableBytes - headLength)
        // An unauthorised CONNECT goes the tunnel's way, which answers 407.
        if let interceptor, interceptor.intercepts(authority: authority),
            ProxyAuthorization.isAuthorized(authorization, required: requiredAuthorization)
        {
            becomeIntercepted(context: context, authority: authority, interceptor: interceptor, leftover: leftover)
            return
        }
        becomeTunnel(
            context: context, authority: authority, authorization: authorization, leftover: leftover)
    }

    /// The origin an intercepted `CONNECT` to `authority` stands for: `https://host`, with the port unless 443
    /// (so a URL gets the task ID a client without the proxy would compute).
    static func interceptedOrigin(authority: String) -> String {
        authority.hasSuffix(":443") ? "https://" + authority.dropLast(4) : "https://" + authority
    }

    /// The host of `host:port` or `[v6]:port`.
    static func host(ofAuthority authority: String) -> String {
        var host = authority[..<(authority.lastIndex(of: ":") ?? authority.endIndex)]
        if host.hasPrefix("["), host.hasSuffix("]") { host = host.dropFirst().dropLast() }
        return String(host)
    }

    /// `host:port` with a port in 1…65535, or nil.
    static func validAuthority(_ text: Substring) -> String? {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]),
            (1...65535).contains(port), RegistryMirror.isAuthority(String(text))
        else { return nil }
        return String(text)
    }

    private func finishDecision(context: ChannelHandlerContext) {
        decided = true
        timer?.cancel()
        buffered = nil
    }

    private func becomeHTTP(context: ChannelHandlerContext) {
        let held = buffered
        finishDecision(context: context)
        do {
            try installHTTP(context: context, origin: nil, held: held)
        } catch {
            promise.fail(error)
            context.close(promise: nil)
        }
    }

    /// Answers the `CONNECT` with 200 (raw: this handler is the first), then serves HTTP over TLS with a leaf
    /// certificate for the host; 502 when no certificate can be made.
    private func becomeIntercepted(
        context: ChannelHandlerContext, authority: String, interceptor: HTTPSInterceptor, leftover: ByteBuffer?
    ) {
        let tls: NIOSSLContext
        do {
            tls = try interceptor.serverContext(for: Self.host(ofAuthority: authority))
        } catch {
            refuse(context: context, "502 Bad Gateway")
            return
        }
        finishDecision(context: context)
        context.writeAndFlush(NIOAny(ByteBuffer(string: "HTTP/1.1 200 Connection Established\r\n\r\n")), promise: nil)
        do {
            try context.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tls))
            try installHTTP(
                context: context, origin: Self.interceptedOrigin(authority: authority),
                held: leftover.flatMap { $0.readableBytes > 0 ? $0 : nil })
        } catch {
            promise.fail(error)
            context.close(promise: nil)
        }
    }

    /// Appends the HTTP server handlers, hands the connection over, re-delivers `held` and removes itself.
    private func installHTTP(context: ChannelHandlerContext, origin: String?, held: ByteBuffer?) throws {
        let pipeline = context.pipeline.syncOperations
        let activity = ConnectionActivity()
        try pipeline.configureHTTPServerPipeline(withPipeliningAssistance: false, withErrorHandling: true)
        try pipeline.addHandler(IdleStateHandler(readTimeout: idleTimeout))
        try pipeline.addHandler(IdleConnectionCloser(activity: activity))
        try pipeline.addHandler(RequestHeadDeadline(first: headerTimeout, between: max(idleTimeout, headerTimeout)))
        let channel = try NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>(
            wrappingChannelSynchronously: context.channel)
        promise.succeed(.http(channel, activity, origin: origin))
        if let held {
            context.fireChannelRead(wrapInboundOut(held))
            context.fireChannelReadComplete()
        }
        pipeline.removeHandler(context: context, promise: nil)
    }

    private func becomeTunnel(
        context: ChannelHandlerContext, authority: String, authorization: String?, leftover: ByteBuffer?
    ) {
        finishDecision(context: context)
        do {
            // A tunnel with no byte either way for the tunnel idle timeout is closed (reads by the client and
            // writes to it are both activity on this channel).
            try context.pipeline.syncOperations.addHandler(IdleStateHandler(allTimeout: tunnelIdleTimeout))
            try context.pipeline.syncOperations.addHandler(IdleTunnelCloser())
            let channel = try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: context.channel)
            promise.succeed(.tunnel(channel, authority: authority, authorization: authorization))
            if let leftover, leftover.readableBytes > 0 {
                context.fireChannelRead(wrapInboundOut(leftover))
                context.fireChannelReadComplete()
            }
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        } catch {
            promise.fail(error)
            context.close(promise: nil)
        }
    }

    private func refuse(context: ChannelHandlerContext, _ status: String) {
        finishDecision(context: context)
        promise.succeed(.refused)
        let response = "HTTP/1.1 \(status)\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        let channel = context.channel
        context.writeAndFlush(NIOAny(ByteBuffer(string: response))).whenComplete { _ in
            channel.close(promise: nil)
        }
    }
}

/// Closes a `CONNECT` tunnel on its idle event.
final class IdleTunnelCloser: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }
}

/// Closes an HTTP proxy connection whose first request head is not complete `first` after the connection was
/// handed over, or whose next head is not complete `between` after its last response ended (a client trickling
/// a head byte by byte keeps the idle timer quiet, not this one). Disarmed while a request is unanswered (a
/// pipelined head counts until its own response ends).
final class RequestHeadDeadline: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    private let first: TimeAmount
    private let between: TimeAmount
    private var timer: Scheduled<Void>?
    private var unanswered = 0

    init(first: TimeAmount, between: TimeAmount) {
        self.first = first
        self.between = between
    }

    func handlerAdded(context: ChannelHandlerContext) { arm(context: context, in: first) }

    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .head = unwrapInboundIn(data) {
            unanswered += 1
            timer?.cancel()
            timer = nil
        }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if case .end = unwrapOutboundIn(data) {
            unanswered = max(unanswered - 1, 0)
            if unanswered == 0 { arm(context: context, in: between) }
        }
        context.write(data, promise: promise)
    }

    private func arm(context: ChannelHandlerContext, in delay: TimeAmount) {
        timer?.cancel()
        let channel = context.channel
        timer = context.eventLoop.scheduleTask(in: delay) { channel.close(promise: nil) }
    }
}

/// A `CONNECT` tunnel: the client's bytes go to `host:port` and back untouched, each direction flushed chunk
/// by chunk with at most two chunks in flight, until either side closes.
struct ProxyTunnel {
    let client: NIOAsyncChannel<ByteBuffer, ByteBuffer>
    let authority: String
    /// The `CONNECT`'s `Proxy-Authorization` value.
    let authorization: String?
    let context: ProxyContext
    let logger: Logger

    func run() async {
        guard ProxyAuthorization.isAuthorized(authorization, required: context.configuration.requiredAuthorization)
        else {
            context.metrics?.proxyRejected.increment()
            await reply(
                "407 Proxy Authentication Required", "the proxy needs Proxy-Authorization (basic)",
                extra: "Proxy-Authenticate: Basic realm=\"dragonfly\"\r\n")
            return
        }
        let limit = context.configuration.maximumConcurrentRequests
        let running = context.counters.requests.add(1, ordering: .relaxed).newValue
        defer { context.counters.requests.subtract(1, ordering: .relaxed) }
        guard running <= limit else {
            context.metrics?.proxyRejected.increment()
            await reply(
                "429 Too Many Requests", "the proxy is handling \(limit) requests; retry later",
                extra: "Retry-After: 1\r\n")
            return
        }
        guard let colon = authority.lastIndex(of: ":"), let port = Int(authority[authority.index(after: colon)...])
        else { return }
        let host = ProxyProtocolSniffer.host(ofAuthority: authority)
        let addresses: [SocketAddress]
        do {
            addresses = try await context.configuration.destinations.resolve(host: host, port: port)
        } catch {
            context.metrics?.proxyRejected.increment()
            logger.debug("tunnel destination refused", metadata: ["df.error": "\(error.message)"])
            await reply(error.code == .permissionDenied ? "403 Forbidden" : "502 Bad Gateway", error.message)
            return
        }
        // Connects to the checked addresses, never to the name again.
        var connected: NIOAsyncChannel<ByteBuffer, ByteBuffer>?
        var lastError: (any Error)?
        for address in addresses.prefix(4) {
            do {
                connected = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                    .connectTimeout(.seconds(10))
                    .channelOption(.socketOption(.tcp_nodelay), value: 1)
                    .connect(to: address) { channel in
                        channel.eventLoop.makeCompletedFuture {
                            try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                        }
                    }
                break
            } catch {
                lastError = error
            }
        }
        guard let upstream = connected else {
            let reason = Redaction.message("\(lastError.map { "\($0)" } ?? "no address")")
            logger.debug("tunnel connect failed", metadata: ["df.error": "\(reason)"])
            await reply("502 Bad Gateway", "cannot connect to \(authority): \(reason)")
            return
        }
        context.metrics?.proxyTunnel.increment()
        do {
            try await Self.flush(ByteBuffer(string: "HTTP/1.1 200 Connection Established\r\n\r\n"), to: client.channel)
            try await client.executeThenClose { clientInbound, _ in
                try await upstream.executeThenClose { upstreamInbound, _ in
                    await withTaskGroup(of: Void.self) { group in
                        group.addTask { try? await Self.relay(clientInbound, to: upstream.channel) }
                        group.addTask { try? await Self.relay(upstreamInbound, to: client.channel) }
                        await group.next()
                        group.cancelAll()
                    }
                }
            }
        } catch {
            logger.debug("tunnel ended", metadata: ["df.error": "\(Redaction.message("\(error)"))"])
            try? await upstream.channel.close()
            try? await client.channel.close()
        }
    }

    /// Copies `inbound` to `channel` until it ends; returns once every byte is on `channel`'s socket.
    private static func relay(_ inbound: NIOAsyncChannelInboundStream<ByteBuffer>, to channel: any Channel)
        async throws
    {
        var inFlight: EventLoopFuture<Void>?
        for try await chunk in inbound {
            let promise = channel.eventLoop.makePromise(of: Void.self)
            channel.writeAndFlush(chunk, promise: promise)
            let previous = inFlight
            inFlight = promise.futureResult
            try await previous?.get()
        }
        try await inFlight?.get()
    }

    private static func flush(_ bytes: ByteBuffer, to channel: any Channel) async throws {
        let promise = channel.eventLoop.makePromise(of: Void.self)
        channel.writeAndFlush(bytes, promise: promise)
        try await promise.futureResult.get()
    }

    /// Answers the `CONNECT` with an error and closes.
    private func reply(_ status: String, _ message: String, extra: String = "") async {
        let body = message + "\n"
        let text =
            "HTTP/1.1 \(status)\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: \(body.utf8.count)\r\n"
            + extra + "Connection: close\r\n\r\n" + body
        try? await Self.flush(ByteBuffer(string: text), to: client.channel)
        try? await client.channel.close()
    }
}
