package import DragonflyCore
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
    // GRPC-SLOT
    return RoleServices(role: "scheduler", services: services, listeners: listeners)
}
