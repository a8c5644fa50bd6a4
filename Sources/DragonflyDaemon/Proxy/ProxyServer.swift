import AsyncHTTPClient
package import DragonflyCore
import DragonflyProto
import DragonflyRPC
package import DragonflySource
package import DragonflyStorage
package import Logging
package import NIOCore
import NIOHTTP1
import NIOPosix
import Prometheus
import ServiceLifecycle
import Synchronization

/// Settings of a ``ProxyServer``, from the daemon's `listen.proxy` and `proxy.*`.
package struct ProxyServerConfiguration: Sendable {
    /// Where to listen; port 0 binds any free port.
    package var address: ListenAddress
    /// Requests handled at once; more are answered 429.
    package var maximumConcurrentRequests: Int
    /// Open connections; more are closed at once.
    package var maximumConnections: Int
    /// A keep-alive connection with no request for this long is closed.
    package var idleTimeout: Duration
    /// A connection whose request head is not complete this long after it opened (or after its last response)
    /// is closed.
    package var headerTimeout: Duration
    /// A `CONNECT` tunnel silent both ways for this long is closed.
    package var tunnelIdleTimeout: Duration
    /// Which addresses forwards, P2P fetches and tunnels may reach.
    var destinations: DestinationPolicy
    /// Clients whose task-identity headers (`X-Dragonfly-Tag`, `-Application`, `-Filtered-Query-Params`) are
    /// honoured.
    package var trustedIdentityClients: [AddressPattern]
    /// Bytes of a request line plus headers; larger heads are answered 431.
    package var maximumHeaderBytes: Int
    /// Which absolute-URI requests go P2P.
    package var rules: ProxyRuleSet
    /// Upstreams of registry mirror requests.
    package var mirror: RegistryMirror
    /// The `Proxy-Authorization` value required of proxy requests, or nil when none is.
    package var requiredAuthorization: String?
    /// Intercepts the `CONNECT`s of `proxy.hijackHTTPS.hosts`; nil when none is intercepted.
    package var interceptor: HTTPSInterceptor?
    /// Trust for HTTPS origins of direct requests (`tls.*`, as the source client's).
    package var originTLS: OriginTLS

    package init(config: DaemonConfig) throws(DragonflyError) {
        address = config.listen.proxy
        maximumConcurrentRequests = config.proxy.maxConcurrentRequests
        maximumConnections = config.proxy.maxConnections
        idleTimeout = config.proxy.idleTimeout.duration
        headerTimeout = config.proxy.headerTimeout.duration
        tunnelIdleTimeout = config.proxy.tunnelIdleTimeout.duration
        destinations = DestinationPolicy(allowed: config.proxy.allowedDestinations)
        trustedIdentityClients = config.proxy.trustedIdentityHeaders.compactMap { AddressPattern(parsing: $0) }
        maximumHeaderBytes = Int(config.proxy.maxHeaderBytes.bytes)
        rules = try ProxyRuleSet(rules: config.proxy.rules)
        mirror = RegistryMirror(config: config.proxy.registryMirror)
        let auth = config.proxy.basicAuth
        requiredAuthorization =
            auth.username.isEmpty
            ? nil : "Basic " + ProxyAuthorization.base64(Array("\(auth.username):\(auth.password)".utf8))
        interceptor = try HTTPSInterceptor(config: config.proxy.hijackHTTPS)
        do {
            originTLS = try OriginTLS(caCertificates: config.tls.caCerts, insecureHosts: config.tls.insecureHosts)
        } catch let error as DragonflyError {
            throw error
        } catch {
            throw DragonflyError(code: .configuration, message: "tls: \(error)")
        }
    }
}

/// The daemon's HTTP proxy and registry mirror (DESIGN §8, default `:4001`).
///
/// - Absolute-URI requests (`GET http://host/path`) are proxied: the first ``ProxyRuleSet`` rule matching the
///   URL decides; a GET that goes P2P is served from the task of that URL (the daemon's ``TaskDownloading``, so
///   the bytes come from peers, the cache or the origin as for `get`), streamed in order as pieces are stored,
///   at most two store chunks in flight with the socket's backpressure (memory does not grow with the file). Every
///   other request is forwarded to the origin as it is, body streamed both ways.
/// - Origin-form requests (`GET /v2/…`) are registry mirror requests: the upstream comes from
///   `X-Dragonfly-Registry`, else `ns`, else `proxy.registryMirror.url`; blob GETs go P2P, the rest (pings,
///   manifests, tags, tokens, HEAD) is forwarded with status and headers unchanged.
/// - `Range` on a P2P GET → 206 with the exact `Content-Range`/`Content-Length` from the task's pieces, or 416.
/// - P2P responses carry `X-Dragonfly-Task-ID`; an origin error comes back with the origin's status and headers.
/// - `CONNECT host:port` as a connection's first request opens a tunnel (``ProxyTunnel``): bytes relayed
///   untouched both ways — unless the host matches `proxy.hijackHTTPS.hosts`: then the proxy ends TLS itself
///   with a leaf certificate from its CA (``HTTPSInterceptor``) and serves the requests inside as absolute-URI
///   requests to `https://host[:port]` (rules, P2P, direct forwarding over verified TLS).
/// - Limits: `maximumConcurrentRequests` (429 beyond; tunnels count), `maximumConnections`, the head size (431),
///   the idle timeout, optional basic auth (407). Malformed requests get 400 from NIO's HTTP error handler.
package struct ProxyServer: Service {
    /// The bound `IP:port`, named `proxy`.
    package let listener: ListenerAddress
    private let configuration: ProxyServerConfiguration
    private let downloader: any TaskDownloading
    private let store: PieceStore
    private let metrics: DaemonMetrics?
    private let group: any EventLoopGroup
    private let logger: Logger
    private let counters = ProxyCounters()

    package init(
        configuration: ProxyServerConfiguration,
        downloader: any TaskDownloading,
        store: PieceStore,
        metrics: DaemonMetrics?,
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger
    ) {
        self.listener = ListenerAddress(name: "proxy")
        self.configuration = configuration
        self.downloader = downloader
        self.store = store
        self.metrics = metrics
        self.group = eventLoopGroup
        self.logger = logger
    }

    /// Requests being handled now.
    package var requestsInFlight: Int { counters.requests.load(ordering: .relaxed) }

    package func run() async throws {
        let address = configuration.address
        let idle = TimeAmount(configuration.idleTimeout)
        let headerTimeout = TimeAmount(configuration.headerTimeout)
        let tunnelIdle = TimeAmount(configuration.tunnelIdleTimeout)
        let counters = self.counters
        let maximumConnections = configuration.maximumConnections
        let refusalLogger = logger
        let serverChannel: NIOAsyncChannel<EventLoopFuture<ProxyChannel>, Never>
        let maximumHeadBytes = configuration.maximumHeaderBytes
        let interceptor = configuration.interceptor
        let requiredAuthorization = configuration.requiredAuthorization
        do {
            serverChannel = try await ServerBootstrap(group: group)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .serverChannelOption(.backlog, value: 256)
                .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
                .bind(host: address.host, port: address.port) { channel in
                    // The cap counts every accepted connection until it closes, whatever it turns out to be; one
                    // over it is closed at once, before it can hold anything.
                    let open = counters.connections.add(1, ordering: .relaxed).newValue
                    channel.closeFuture.whenComplete { _ in counters.connections.subtract(1, ordering: .relaxed) }
                    guard open <= maximumConnections else {
                        refusalLogger.debug("proxy refuses a connection over the limit")
                        channel.close(promise: nil)
                        return channel.eventLoop.makeSucceededFuture(
                            channel.eventLoop.makeSucceededFuture(ProxyChannel.refused))
                    }
                    return channel.eventLoop.makeCompletedFuture {
                        // The connection's kind (HTTP or CONNECT tunnel) is known after its first bytes.
                        let promise = channel.eventLoop.makePromise(of: ProxyChannel.self)
                        try channel.pipeline.syncOperations.addHandler(
                            ProxyProtocolSniffer(
                                maximumHeadBytes: maximumHeadBytes, idleTimeout: idle, headerTimeout: headerTimeout,
                                tunnelIdleTimeout: tunnelIdle, interceptor: interceptor,
                                requiredAuthorization: requiredAuthorization, promise: promise))
                        return promise.futureResult
                    }
                }
        } catch {
            throw listener.bindFailure(error, address: address, name: "proxy")
        }
        let logger = listener.publishBound(serverChannel.channel.localAddress, logger: self.logger)
        logger.debug("proxy listening")
        defer { logger.debug("proxy stopped") }

        var clientConfiguration = HTTPClient.Configuration()
        clientConfiguration.connectionPool = .init(
            idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: 16)
        clientConfiguration.timeout = .init(connect: .seconds(10), read: .seconds(120))
        clientConfiguration.decompression = .disabled
        clientConfiguration.tlsConfiguration = configuration.originTLS.verified
        // Redirects reach the client, which follows them through the proxy again.
        clientConfiguration.redirectConfiguration = .disallow
        let http = HTTPClient(eventLoopGroupProvider: .singleton, configuration: clientConfiguration)
        let context = ProxyContext(
            configuration: configuration, downloader: downloader, store: store, metrics: metrics, http: http,
            counters: counters)
        do {
            try await withThrowingDiscardingTaskGroup { group in
                try await serverChannel.executeThenClose { inbound in
                    for try await kind in inbound.cancelOnGracefulShutdown() {
                        group.addTask {
                            switch try? await kind.get() {
                            case .http(let connection, let activity, let origin):
                                if origin != nil { context.metrics?.proxyIntercepted.increment() }
                                await ProxyConnection(
                                    connection: connection, activity: activity, origin: origin, context: context,
                                    logger: logger
                                ).serve()
                            case .tunnel(let client, let authority, let authorization):
                                await ProxyTunnel(
                                    client: client, authority: authority, authorization: authorization,
                                    context: context, logger: logger
                                ).run()
                            case .refused, nil:
                                break
                            }
                        }
                    }
                }
            }
        } catch {
            try? await http.shutdown()
            throw error
        }
        try? await http.shutdown()
    }
}

/// Counters shared by a proxy's connections.
final class ProxyCounters: Sendable {
    /// Accepted connections not yet closed.
    let connections = Atomic<Int>(0)
    let requests = Atomic<Int>(0)
}

/// What every connection of one proxy shares.
struct ProxyContext: Sendable {
    let configuration: ProxyServerConfiguration
    let downloader: any TaskDownloading
    let store: PieceStore
    let metrics: DaemonMetrics?
    let http: HTTPClient
    let counters: ProxyCounters

    /// A request to the origin `url` for ``http``, unverified when `tls.insecureHosts` names its host.
    func originRequest(url: String, method: HTTPMethod, headers: HTTPHeaders) -> HTTPClientRequest {
        var request = HTTPClientRequest(url: url)
        request.method = method
        request.headers = headers
        if url.lowercased().hasPrefix("https://") {
            request.tlsConfiguration = configuration.originTLS.override(
                forHost: ProxyProtocolSniffer.host(ofAuthority: DirectForward.authority(of: url)))
        }
        return request
    }
}
