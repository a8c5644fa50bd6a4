package import DragonflyCore
package import Hummingbird
package import Logging
import NIOCore
import ServiceLifecycle

/// A Hummingbird HTTP/1.1 listener that publishes its bound address and stops on graceful shutdown.
///
/// The metrics and health listeners of every role (DESIGN §15) are instances made by
/// ``endpoints(name:address:telemetry:logger:)``; roles add their own routes for other listeners.
package struct HTTPListenerService: Service {
    private let address: ListenAddress
    private let logger: Logger
    private let responder: RouterResponder<BasicRequestContext>
    /// Receives the bound `IP:port`.
    package let listener: ListenerAddress

    /// A listener named `name` on `address`; `routes` adds the handlers.
    package init(
        name: String,
        address: ListenAddress,
        logger: Logger,
        routes: (Router<BasicRequestContext>) -> Void
    ) {
        self.address = address
        self.logger = logger
        self.listener = ListenerAddress(name: name)
        let router = Router()
        routes(router)
        self.responder = router.buildResponder()
    }

    /// `/healthy` (200 `OK`) and, when `telemetry` is given, `/metrics` (Prometheus text).
    package static func endpoints(name: String, address: ListenAddress, telemetry: Telemetry?, logger: Logger)
        -> HTTPListenerService
    {
        HTTPListenerService(name: name, address: address, logger: logger) { router in
            addEndpoints(to: router, telemetry: telemetry)
        }
    }

    /// Adds `/healthy` and, with telemetry, `/metrics` to `router`.
    package static func addEndpoints(to router: Router<BasicRequestContext>, telemetry: Telemetry?) {
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
            configuration: .init(address: .hostname(address.host, port: address.port), serverName: "dragonfly"),
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
