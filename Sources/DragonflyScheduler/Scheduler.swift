package import DragonflyCore
import DragonflyRPC
package import DragonflyTelemetry
package import Logging
import ServiceLifecycle

/// Builds the services of `dragonfly scheduler`: the gRPC Scheduler service and the metrics listener.
package func makeSchedulerServices(
    config: SchedulerConfig,
    registry: PluginRegistry,
    telemetry: Telemetry,
    logger: Logger
) throws -> RoleServices {
    // Fail fast on a strategy name nobody registered.
    _ = try registry.strategy(named: config.scheduling.strategy)
    let metrics = HTTPListenerService.endpoints(
        name: "metrics", address: config.metricsListen, telemetry: telemetry, logger: logger)
    var services: [ServiceGroupConfiguration.ServiceConfiguration] = [.init(service: metrics)]
    var listeners = [metrics.listener]
    // The Scheduler service's handlers are registered here as they are built (P2P core).
    let grpc = try GRPCServerService(
        address: .tcp(host: config.listen.host, port: config.listen.port),
        services: [],
        logger: logger
    )
    services.append(.init(service: grpc))
    listeners.append(grpc.listener)
    return RoleServices(role: "scheduler", services: services, listeners: listeners)
}
