package import DragonflyCore
import DragonflyProto
import DragonflyRPC
import DragonflyStorage
package import DragonflyTelemetry
import Hummingbird
package import Logging
import ServiceLifecycle

/// Whether a daemon process runs as a normal peer or as a seed peer (`dragonfly cdn`).
package enum DaemonMode: String, Sendable {
    case normal = "daemon"
    case seed = "cdn"
}

/// Builds the services of `dragonfly daemon` (and, in seed mode, `dragonfly cdn`): the piece store, the
/// schedulers' client, the peer gRPC service and piece server other hosts fetch from, the local API on its unix
/// socket, the proxy, metrics and health listeners, storage GC and (non-resident mode) the idle exit. Takes the
/// data-dir lock first.
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
    // Before anything that holds a connection pool: a bad CA or `tls.*` file ends start-up here.
    let proxyConfiguration = try ProxyServerConfiguration(config: config)

    let daemonMetrics = DaemonMetrics(telemetry: telemetry)
    let medium = try registry.makeMedium(
        named: config.storage.medium,
        context: StorageMediumContext(dataDirectory: dataDirectory, capacity: config.storage.quota.bytes))
    let store = PieceStore(
        dataDirectory: dataDirectory, medium: medium, configuration: PieceStoreConfiguration(storage: config.storage),
        logger: logger)
    let storeService = PieceStoreService(store: store, logger: logger)
    let announcer = PieceAnnouncer()
    let activity = ActivityTracker()
    let identity = Published<HostIdentity>()

    let metrics = HTTPListenerService.endpoints(
        name: "metrics", address: config.listen.metrics, telemetry: telemetry, logger: logger)
    let health = HTTPListenerService.endpoints(
        name: "health", address: config.listen.health, telemetry: nil, logger: logger)
    let limiter = UploadLimiter(config: config.upload)
    let piece = PieceServer(
        configuration: PieceServerConfiguration(address: config.listen.piece), store: store, limiter: limiter,
        metrics: daemonMetrics, grants: announcer.grants, logger: logger)
    let schedulers = try SchedulerPool(
        addresses: config.scheduler.addresses, identity: identity, config: config,
        uploadSlotsUsed: { limiter.slotsInUse }, logger: logger)
    let conductor = DownloadConductor(
        store: store, announcer: announcer, metrics: daemonMetrics, registry: registry, config: config,
        schedulers: schedulers, identity: identity, storeLoaded: storeService.loaded, logger: logger)
    let proxy = ProxyServer(
        configuration: proxyConfiguration, downloader: conductor, store: store,
        metrics: daemonMetrics, logger: logger)
    let isReady = Published<Void>()
    let peerService = PeerService(
        store: store, announcer: announcer, downloader: conductor, hostID: { identity.current?.hostID },
        hostType: mode == .seed ? .super : .normal, isReady: { isReady.current != nil }, grants: announcer.grants,
        allowedFileDirectories: config.security.allowedFileDirectories, logger: logger)
    // A download asked over the network makes this host contact an origin: with a cluster secret, only the
    // cluster's schedulers (which hold it) may ask.
    let peerSecret = ClusterSecretInterceptor(
        secret: ClusterSecret(secret: try config.security.resolvedClusterSecret()),
        protectedMethods: ["dragonfly.v1.Peer/DownloadTask"])
    let peer = try GRPCServerService(
        address: .tcp(host: config.listen.peer.host, port: config.listen.peer.port),
        services: [peerService],
        interceptors: [peerSecret],
        listenerName: "peer",
        logger: logger
    )
    // The Local service lives on the unix socket only (mode 0660, group `socketGroup`).
    let local = try GRPCServerService(
        address: .unixDomainSocket(path: socket),
        services: [
            LocalService(
                downloader: conductor, store: store, schedulers: schedulers, activity: activity, logger: logger)
        ],
        listenerName: "local",
        socketGroup: config.socketGroup.isEmpty ? nil : config.socketGroup,
        logger: logger
    )
    let identityService = IdentityService(
        config: config, isSeed: mode == .seed, peer: peer.listener, piece: piece.listener, proxy: proxy.listener,
        identity: identity)
    var services: [ServiceGroupConfiguration.ServiceConfiguration] = [
        .init(service: storeService), .init(service: identityService, successTerminationBehavior: .ignore),
        .init(service: metrics), .init(service: health), .init(service: proxy), .init(service: piece),
        .init(service: schedulers), .init(service: peer), .init(service: local),
        .init(service: StorageGCService(store: store, interval: config.storage.gcInterval.duration, logger: logger)),
        .init(service: ConductorShutdown(conductor: conductor)),
    ]
    if !config.manager.address.isEmpty {
        let discovery = try ManagerDiscovery(
            config: config, dataDirectory: dataDirectory, pool: schedulers, identity: identity, logger: logger)
        services.append(.init(service: discovery))
        if mode == .seed {
            services.append(
                .init(service: try makeSeedPeerMembership(config: config, identity: identity, logger: logger)))
        }
    }
    if config.idleExit.duration > .zero {
        services.append(
            .init(
                service: IdleExitService(idleExit: config.idleExit.duration, tracker: activity, logger: logger),
                successTerminationBehavior: .gracefullyShutdownGroup))
    }
    let listeners = [metrics.listener, health.listener, proxy.listener, piece.listener, peer.listener]
    let localListener = local.listener
    return RoleServices(
        role: role,
        services: services,
        listeners: listeners,
        socket: socket,
        readiness: {
            _ = try await localListener.value()
            try await storeService.loaded.value()
            _ = try await identity.value()
            await schedulers.waitUntilAnnounced()
            isReady.publish(())
        },
        retained: [lock]
    )
}

/// Reloads the store's tasks at start (DESIGN §7: restart keeps the cache), persists metadata batches that
/// came due without a new piece to trigger them (every `metadataBatchInterval`), and persists everything on
/// stop. Downloads wait for ``loaded``: a task opened before the reload would start over on top of its
/// verified pieces.
struct PieceStoreService: Service {
    let store: PieceStore
    let logger: Logger
    let loaded = Published<Void>()

    func run() async throws {
        do {
            let count = try await store.reload()
            logger.debug("reloaded stored tasks", metadata: ["df.tasks": "\(count)"])
            loaded.publish(())
        } catch {
            loaded.fail(error)
            throw error
        }
        if store.persistsMetadata {
            let interval = store.configuration.metadataBatchInterval
            await cancelWhenGracefulShutdown {
                while !Task.isCancelled {
                    try? await Task.sleep(for: interval)
                    await store.flushDue()
                }
            }
        } else {
            try? await gracefulShutdown()
        }
        try await store.close()
    }
}

/// Publishes the host identity once the peer, piece and proxy listeners are bound.
struct IdentityService: Service {
    let config: DaemonConfig
    let isSeed: Bool
    let peer: ListenerAddress
    let piece: ListenerAddress
    let proxy: ListenerAddress
    let identity: Published<HostIdentity>

    func run() async throws {
        do {
            let host = HostIdentity(
                config: config, isSeed: isSeed, peer: try await peer.value(), piece: try await piece.value(),
                proxy: try await proxy.value())
            identity.publish(host)
        } catch {
            identity.fail(error)
            throw error
        }
    }
}

/// Closes the conductor's HTTP client when the daemon stops.
struct ConductorShutdown: Service {
    let conductor: DownloadConductor

    func run() async throws {
        try? await gracefulShutdown()
        await conductor.shutdown()
    }
}
