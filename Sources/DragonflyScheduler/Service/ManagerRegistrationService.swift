package import DragonflyCore
import DragonflyProto
package import DragonflyRPC
import GRPCCore
package import Logging

/// Builds the scheduler's membership with the manager (`--manager`): it registers with its cluster ID,
/// hostname, advertised IP, bound gRPC port, IDC and location, then keeps alive every
/// `manager.keepAliveInterval`, and registers again whenever the manager was away. Every call carries the
/// cluster secret when one is configured; the seed peers the manager lists for the cluster at each registration
/// go to `seedPeers` (the scheduler's ``SeedRoster``).
package func makeSchedulerMembership(
    config: SchedulerConfig,
    grpcListener: ListenerAddress,
    clusterSecret: ClusterSecret? = nil,
    seedPeers: (@Sendable ([String]) -> Void)? = nil,
    logger: Logger
) throws(DragonflyError) -> ManagerMembership? {
    guard !config.manager.address.isEmpty else { return nil }
    let hostname = config.hostname.isEmpty ? HostNetwork.systemHostname() : config.hostname
    let clusterID = config.manager.schedulerClusterID
    let advertiseIP = config.advertiseIP
    let idc = config.idc
    let location = config.location
    return try ManagerMembership(
        target: config.manager.address,
        sourceType: .scheduler,
        keepAliveInterval: config.manager.keepAliveInterval.duration,
        clusterSecret: clusterSecret,
        logger: logger
    ) { manager, options in
        let (boundIP, port) = HostNetwork.split(try await grpcListener.value())
        var request = Dragonfly_V1_RegisterSchedulerRequest()
        request.hostname = hostname
        request.ip = HostNetwork.advertisedIP(configured: advertiseIP, boundIP: boundIP)
        request.port = UInt32(clamping: port)
        request.idc = idc
        request.location = location
        if clusterID > 0 { request.schedulerClusterID = UInt64(clusterID) }
        var build = Dragonfly_V1_Build()
        build.version = DragonflyVersion.current
        request.build = build
        request.features = ["schedule"]
        let info = try await manager.registerScheduler(request, options: options)
        seedPeers?(info.seedPeers.map { SeedRoster.address(ip: $0.ip, port: Int($0.port)) })
        return ManagerRegistration(
            id: info.id, clusterID: info.schedulerClusterID, hostname: info.hostname, ip: info.ip)
    }
}
