package import DragonflyCore
import DragonflyRPC
package import DragonflyTelemetry
import Hummingbird
package import Logging
import ServiceLifecycle

/// Whether a daemon process runs as a normal peer or as a seed peer (`dragonfly cdn`).
package enum DaemonMode: String, Sendable {
    case normal = "daemon"
    case seed = "cdn"
}

/// Builds the services of `dragonfly daemon` (and, in seed mode, `dragonfly cdn`): the peer gRPC service, the
/// local API on its unix socket, the proxy, metrics, health and piece listeners. Takes the data-dir lock first.
package func makeDaemonServices(
    config: DaemonConfig,
    mode: DaemonMode,
    registry: PluginRegistry,
    telemetry: Telemetry,
    logger: Logger
) throws -> RoleServices {
    let role = mode.rawValue
    let dataDirectory = RolePaths.resolve(config.dataDir, default: RolePaths.defaultDataDirectory(role: role))
    let socket = RolePaths.resolve(config.socket, default: RolePaths.defaultSocket(role: role))
    let lock = try DataDirectoryLock(directory: dataDirectory)

    let metrics = HTTPListenerService.endpoints(
        name: "metrics", address: config.listen.metrics, telemetry: telemetry, logger: logger)
    let health = HTTPListenerService.endpoints(
        name: "health", address: config.listen.health, telemetry: nil, logger: logger)
    let proxy = HTTPListenerService(name: "proxy", address: config.listen.proxy, logger: logger) { router in
        router.get("/healthy") { _, _ in "OK" }
    }
    let piece = HTTPListenerService(name: "piece", address: config.listen.piece, logger: logger) { router in
        router.get("/pieces/:task/:number") { _, context -> Response in
            let task = context.parameters.get("task") ?? ""
            guard TaskID(task) != nil else {
                throw HTTPError(
                    .badRequest, message: "'\(task.prefix(80))' is not a task ID (64 lowercase hex characters)")
            }
            guard let number = context.parameters.get("number", as: Int.self), number >= 0 else {
                throw HTTPError(.badRequest, message: "piece number must be a non-negative integer")
            }
            throw HTTPError(.notFound, message: "piece \(number) of task \(task) is not here")
        }
    }
    var services: [ServiceGroupConfiguration.ServiceConfiguration] = [
        .init(service: metrics), .init(service: health), .init(service: proxy), .init(service: piece),
    ]
    var listeners = [metrics.listener, health.listener, proxy.listener, piece.listener]
    let peer = try GRPCServerService(
        address: .tcp(host: config.listen.peer.host, port: config.listen.peer.port),
        services: [],
        listenerName: "peer",
        logger: logger
    )
    // The Local service lives on the unix socket only: it can write files as the daemon's user.
    let local = try GRPCServerService(
        address: .unixDomainSocket(path: socket),
        services: [],
        listenerName: "local",
        logger: logger
    )
    services += [.init(service: peer), .init(service: local)]
    listeners.append(peer.listener)
    let localListener = local.listener
    return RoleServices(
        role: role,
        services: services,
        listeners: listeners,
        socket: socket,
        readiness: { _ = try await localListener.value() },
        retained: [lock]
    )
}
