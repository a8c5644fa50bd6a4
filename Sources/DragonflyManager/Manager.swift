import AsyncHTTPClient
package import DragonflyCore
import DragonflyRPC
package import DragonflyTelemetry
import Glibc
package import Logging
import ServiceLifecycle

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Builds the services of `dragonfly manager`: the HTTP listener (`/healthy`, `/metrics`, the REST API
/// `/api/v1` and the open API `/oapi/v1`), the job timeout checker, the gRPC Manager service (registration,
/// keep-alive, scheduler search, the schedulers' command channels) with the keep-alive expiry sweep, over the
/// store (SQLite in the data dir, or PostgreSQL), migrated at start. Takes
/// the data-dir lock first, so a second manager on the same dir exits 1, and narrows the data dir to 0700.
///
/// Every gRPC method but `ListSchedulers` (the daemons' read-only discovery) needs the cluster secret
/// (`security.clusterSecret`) when one is configured; without one the manager runs as a lab cluster and warns.
package func makeManagerServices(
    config: ManagerConfig,
    telemetry: Telemetry,
    logger: Logger
) throws -> RoleServices {
    let dataDirectory = RolePaths.resolve(config.dataDir, default: RolePaths.defaultDataDirectory(role: "manager"))
    let lock = try DataDirectoryLock(directory: dataDirectory)
    guard chmod(dataDirectory, 0o700) == 0 else {
        throw DragonflyError(
            code: .failedPrecondition, message: "cannot chmod 700 the data dir \(dataDirectory); check its owner")
    }
    let clusterSecret = ClusterSecret(secret: try config.security.resolvedClusterSecret())
    if clusterSecret == nil {
        logger.warning(
            "no cluster secret configured: anyone who reaches the gRPC port can register schedulers and seed peers and receive preheat jobs; set security.clusterSecret"
        )
    }
    let sealing = try SessionKeySealing.resolve(config: config, dataDirectory: dataDirectory)
    if sealing == nil {
        logger.warning(
            "the session signing key is kept in the database in clear; set api.sessionKeyEncryptionFile or DRAGONFLY_MANAGER_ENCRYPTION_KEY"
        )
    }
    let store = StoreService(config: config, dataDirectory: dataDirectory, logger: logger)
    let api = ManagerAPI(store: store, config: config, sealing: sealing, logger: logger)
    let limits = HTTPListenerLimits(
        maxConnections: config.api.maxConnections, idleTimeout: config.api.idleTimeout.duration)
    let http = HTTPListenerService(name: "http", address: config.listen, limits: limits, logger: logger) { router in
        HTTPListenerService.addEndpoints(to: router, telemetry: telemetry)
        api.addRoutes(to: router)
    }
    let timeouts = JobTimeoutService(store: store, interval: config.api.jobTimeoutCheck.duration, logger: logger)
    var services: [ServiceGroupConfiguration.ServiceConfiguration] = [
        .init(service: store), .init(service: http), .init(service: timeouts),
    ]
    var listeners = [http.listener]
    let dispatcher = JobDispatcher(
        store: store, replica: replicaName(), resolver: ImageManifestResolver(client: .shared), logger: logger)
    let grpc = try GRPCServerService(
        address: .tcp(host: config.grpcListen.host, port: config.grpcListen.port),
        services: [
            ManagerService(
                store: { try await store.ready() }, dispatcher: dispatcher, memberLimit: config.keepAlive.maxMembers,
                logger: logger)
        ],
        interceptors: [
            ClusterSecretInterceptor(secret: clusterSecret, protectedMethods: ManagerService.protectedMethods)
        ],
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
        readiness: {
            _ = try await store.ready()
            try await api.bootstrap()
        },
        retained: [lock]
    )
}

/// This replica's name in job claims: host name, process ID and a random suffix (unique across restarts).
private func replicaName() -> String {
    "\(ProcessInfo.processInfo.hostName)-\(ProcessInfo.processInfo.processIdentifier)-\(UInt32.random(in: 0 ... .max))"
}
