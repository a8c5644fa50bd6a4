package import DragonflyCore
import DragonflyRPC
package import DragonflyTelemetry
package import Logging
import ServiceLifecycle

/// Builds the services of `dragonfly scheduler`: the gRPC Scheduler service, the metrics listener and, with
/// `--manager`, the registration with the manager (ready once the manager acknowledged it, or after 10 s) and
/// the manager's command channel (preheat jobs, host reports).
package func makeSchedulerServices(
    config: SchedulerConfig,
    registry: PluginRegistry,
    telemetry: Telemetry,
    logger: Logger
) throws -> RoleServices {
    // Fail fast on a strategy name nobody registered.
    let strategy = try registry.strategy(named: config.scheduling.strategy)
    let clusterSecret = ClusterSecret(secret: try config.security.resolvedClusterSecret())
    if clusterSecret == nil {
        logger.warning(
            "no cluster secret configured (security.clusterSecret): a seed peer is trusted only when listed in seedPeers or by the manager, and anyone may list hosts"
        )
    }
    let scheduler = SchedulerService(
        config: config, strategy: strategy, telemetry: telemetry, clusterSecret: clusterSecret, logger: logger)
    let metrics = HTTPListenerService.endpoints(
        name: "metrics", address: config.metricsListen, telemetry: telemetry, logger: logger)
    var services: [ServiceGroupConfiguration.ServiceConfiguration] = [.init(service: metrics)]
    var listeners = [metrics.listener]
    let grpc = try GRPCServerService(
        address: .tcp(host: config.listen.host, port: config.listen.port),
        services: [scheduler],
        interceptors: [
            SchedulerCallerInterceptor(secret: clusterSecret, protectedMethods: SchedulerService.protectedMethods)
        ],
        logger: logger
    )
    services.append(.init(service: grpc))
    listeners.append(grpc.listener)
    // After the server in the group, so it stops first on shutdown.
    services.append(.init(service: scheduler.makeMaintenanceService()))
    guard
        let membership = try makeSchedulerMembership(
            config: config, grpcListener: grpc.listener, clusterSecret: clusterSecret,
            seedPeers: { [roster = scheduler.seedRoster] in roster.replaceLearnt($0) }, logger: logger)
    else {
        return RoleServices(role: "scheduler", services: services, listeners: listeners)
    }
    // Before the server in the group, so it leaves the manager (ending its keep-alive stream) after the server
    // stopped taking work.
    services.insert(.init(service: membership), at: 0)
    // The jobs the manager sends (preheat) run against the hosts this scheduler knows.
    let commands = ManagerCommandChannel(
        managerAddress: config.manager.address,
        identity: .init(
            clusterID: UInt64(max(config.manager.schedulerClusterID, 0)),
            hostname: config.hostname.isEmpty ? HostNetwork.systemHostname() : config.hostname,
            ip: config.advertiseIP),
        executor: PreheatExecutor(
            hosts: { scheduler.hosts(seeds: $0) }, clusterSecret: clusterSecret, logger: logger),
        hosts: { scheduler.reportedHosts() },
        clusterSecret: clusterSecret,
        logger: logger)
    services.insert(.init(service: commands), at: 0)
    return RoleServices(
        role: "scheduler",
        services: services,
        listeners: listeners,
        readiness: {
            if !(await membership.waitUntilRegistered(timeLimit: schedulerReadyTimeLimit)) {
                logger.warning(
                    "the manager has not acknowledged the registration yet; ready anyway, still retrying",
                    metadata: ["df.manager": "\(config.manager.address)"])
            }
        }
    )
}

/// How long start-up waits for the manager's registration before the scheduler becomes ready anyway (DESIGN §15).
let schedulerReadyTimeLimit: Duration = .seconds(10)
