package import DragonflyCore
import DragonflyRPC
package import DragonflyTelemetry
package import Logging
import ServiceLifecycle

/// Builds the services of `dragonfly manager`: the REST/console listener (with `/healthy` and `/metrics`) and
/// the gRPC Manager service with the keep-alive expiry sweep, over the store (SQLite in the data dir, or PostgreSQL), migrated at start. Takes
/// the data-dir lock first, so a second manager on the same dir exits 1.
package func makeManagerServices(
    config: ManagerConfig,
    telemetry: Telemetry,
    logger: Logger
) throws -> RoleServices {
    let dataDirectory = RolePaths.resolve(config.dataDir, default: RolePaths.defaultDataDirectory(role: "manager"))
    let lock = try DataDirectoryLock(directory: dataDirectory)
    let store = StoreService(config: config, dataDirectory: dataDirectory, logger: logger)
    let http = HTTPListenerService.endpoints(name: "http", address: config.listen, telemetry: telemetry, logger: logger)
    var services: [ServiceGroupConfiguration.ServiceConfiguration] = [.init(service: store), .init(service: http)]
    var listeners = [http.listener]
    let grpc = try GRPCServerService(
        address: .tcp(host: config.grpcListen.host, port: config.grpcListen.port),
        services: [ManagerService(store: { try await store.ready() }, logger: logger)],
        logger: logger
    )
    services.append(.init(service: grpc))
    services.append(
        .init(
            service: MemberExpiryService(store: { try await store.ready() }, config: config.keepAlive, logger: logger)))
    listeners.append(grpc.listener)
    return RoleServices(
        role: "manager",
        services: services,
        listeners: listeners,
        readiness: { _ = try await store.ready() },
        retained: [lock]
    )
}
