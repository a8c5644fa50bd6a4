package import DragonflyCore
package import Hummingbird
import HummingbirdCore
package import Logging
package import NIOCore
import ServiceLifecycle

/// How much one HTTP listener lets its callers hold: open connections and the time a connection may sit
/// without a complete request.
///
/// A listener at ``maxConnections`` stops accepting (new connections wait in the kernel's backlog, which costs
/// the process no file descriptor) until one of its connections closes. ``idleTimeout`` closes a connection
/// that has not sent a complete request head within that time of opening or of its last response, so it also
/// bounds a half-sent (slowloris) head; together they keep a flood of idle connections from starving the
/// process of file descriptors or the listener of its health checks.
package struct HTTPListenerLimits: Sendable, Equatable {
    /// Connections served at once.
    package var maxConnections: Int
    /// Longest wait for a request head, from connection start or from the end of the last response.
    package var idleTimeout: Duration

    package init(maxConnections: Int, idleTimeout: Duration) {
        self.maxConnections = maxConnections
        self.idleTimeout = idleTimeout
    }

    /// The `/healthy` and `/metrics` listeners of every role: a scraper or a probe needs one connection.
    package static let endpoints = HTTPListenerLimits(maxConnections: 128, idleTimeout: .seconds(10))
}

/// The request context of dragonfly's HTTP listeners: Hummingbird's basic context plus the caller's address.
package struct ListenerRequestContext: RequestContext, RemoteAddressRequestContext {
    package var coreContext: CoreRequestContextStorage
    /// The address of the connection's peer, when the socket knows it.
    package let remoteAddress: SocketAddress?

    package init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        remoteAddress = source.channel.remoteAddress
    }
}

/// A Hummingbird HTTP/1.1 listener that publishes its bound address and stops on graceful shutdown.
///
/// The metrics and health listeners of every role (DESIGN §15) are instances made by
/// ``endpoints(name:address:telemetry:limits:logger:)``; roles add their own routes for other listeners. Every
/// listener is bounded by ``HTTPListenerLimits``.
package struct HTTPListenerService: Service {
    private let address: ListenAddress
    private let limits: HTTPListenerLimits
    private let logger: Logger
    private let responder: RouterResponder<ListenerRequestContext>
    /// Receives the bound `IP:port`.
    package let listener: ListenerAddress

    /// A listener named `name` on `address`, bounded by `limits`; `routes` adds the handlers.
    package init(
        name: String,
        address: ListenAddress,
        limits: HTTPListenerLimits = .endpoints,
        logger: Logger,
        routes: (Router<ListenerRequestContext>) -> Void
    ) {
        self.address = address
        self.limits = limits
        self.logger = logger
        self.listener = ListenerAddress(name: name)
        let router = Router(context: ListenerRequestContext.self)
        routes(router)
        self.responder = router.buildResponder()
    }

    /// `/healthy` (200 `OK`) and, when `telemetry` is given, `/metrics` (Prometheus text).
    package static func endpoints(
        name: String,
        address: ListenAddress,
        telemetry: Telemetry?,
        limits: HTTPListenerLimits = .endpoints,
        logger: Logger
    ) -> HTTPListenerService {
        HTTPListenerService(name: name, address: address, limits: limits, logger: logger) { router in
            addEndpoints(to: router, telemetry: telemetry)
        }
    }

    /// Adds `/healthy` and, with telemetry, `/metrics` to `router`.
    package static func addEndpoints(to router: Router<ListenerRequestContext>, telemetry: Telemetry?) {
        router.get("/healthy") { _, _ in "OK" }
        guard let telemetry else { return }
        router.get("/metrics") { _, _ -> Response in
            Response(
                status: .ok,
                headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                body: ResponseBody(byteBuffer: ByteBuffer(bytes: telemetry.exposition()))
            )
        }
    }

    package func run() async throws {
        let listener = self.listener
        let app = Application(
            responder: responder,
            server: .http1(configuration: .init(idleTimeout: TimeAmount(limits.idleTimeout))),
            configuration: .init(
                address: .hostname(address.host, port: address.port),
                serverName: "dragonfly",
                availableConnectionsDelegate: MaximumAvailableConnections(max(1, limits.maxConnections), logger: logger)
            ),
            onServerRunning: { channel in
                listener.fulfil(Self.describe(channel.localAddress))
            },
            logger: logger
        )
        do {
            try await app.run()
        } catch {
            let failure = DragonflyError(
                code: .unavailable, message: "cannot listen on \(address) (\(listener.name) listener)", cause: error)
            listener.fail(failure)
            throw failure
        }
    }

    /// `IP:port` of a bound socket address.
    package static func describe(_ address: SocketAddress?) -> String {
        guard let address else { return "unknown" }
        let ip = address.ipAddress ?? "unknown"
        let port = address.port ?? 0
        return ip.contains(":") ? "[\(ip)]:\(port)" : "\(ip):\(port)"
    }
}
