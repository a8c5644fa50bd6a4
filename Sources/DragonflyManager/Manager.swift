package import DragonflyCore
import DragonflyRPC
package import DragonflyTelemetry
package import Logging
import ServiceLifecycle

/// Builds the services of `dragonfly manager`: the HTTP listener (`/healthy`, `/metrics`, the REST API
/// `/api/v1` and the open API `/oapi/v1`), the job timeout checker and the gRPC Manager service, over the store (SQLite in the data dir, or PostgreSQL), migrated at start. Takes
/// the data-dir lock first, so a second manager on the same dir exits 1.
package func makeManagerServices(
    config: ManagerConfig,
    telemetry: Telemetry,
    logger: Logger
) throws -> RoleServices {
    let dataDirectory = RolePaths.resolve(config.dataDir, default: RolePaths.defaultDataDirectory(role: "manager"))
    let lock = try DataDirectoryLock(directory: dataDirectory)
    let store = StoreService(config: config, dataDirectory: dataDirectory, logger: logger)
    let api = ManagerAPI(store: store, sessionLifetime: config.api.sessionLifetime.duration, logger: logger)
    let http = HTTPListenerService(name: "http", address: config.listen, logger: logger) { router in
        HTTPListenerService.addEndpoints(to: router, telemetry: telemetry)
        api.addRoutes(to: router)
    }
    let timeouts = JobTimeoutService(store: store, interval: config.api.jobTimeoutCheck.duration, logger: logger)
    var services: [ServiceGroupConfiguration.ServiceConfiguration] = [
        .init(service: store), .init(service: http), .init(service: timeouts),
    ]
    var listeners = [http.listener]
    let grpc = try GRPCServerService(
        address: .tcp(host: config.grpcListen.host, port: config.grpcListen.port),
        services: [],
        logger: logger
    )
    services.append(.init(service: grpc))
    listeners.append(grpc.listener)
    return RoleServices(
        role: "manager",
        services: services,
        listeners: listeners,
        readiness: {
            _ = try await store.ready()
            try await api.bootstrap()
        },
        retained: [lock]
    )
}
