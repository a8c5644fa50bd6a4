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
    let strategy = try registry.strategy(named: config.scheduling.strategy)
    let scheduler = SchedulerService(config: config, strategy: strategy, telemetry: telemetry, logger: logger)
    let metrics = HTTPListenerService.endpoints(
        name: "metrics", address: config.metricsListen, telemetry: telemetry, logger: logger)
    var services: [ServiceGroupConfiguration.ServiceConfiguration] = [.init(service: metrics)]
    var listeners = [metrics.listener]
    let grpc = try GRPCServerService(
        address: .tcp(host: config.listen.host, port: config.listen.port),
        services: [scheduler],
        logger: logger
    )
    services.append(.init(service: grpc))
    listeners.append(grpc.listener)
    // After the server in the group, so it stops first on shutdown.
    services.append(.init(service: scheduler.makeMaintenanceService()))
    return RoleServices(role: "scheduler", services: services, listeners: listeners)
}
