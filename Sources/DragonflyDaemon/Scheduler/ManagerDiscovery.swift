package import DragonflyCore
package import DragonflyProto
package import DragonflyRPC
import GRPCCore
package import Logging
import NIOPosix
package import ServiceLifecycle

#if canImport(FoundationEssentials)
package import FoundationEssentials
#else
package import Foundation
#endif

/// The scheduler list a daemon or cdn last got from the manager, as saved in its data dir.
package struct SavedSchedulerList: Codable, Sendable, Hashable {
    /// One scheduler.
    package struct Entry: Codable, Sendable, Hashable {
        package var id: UInt64
        package var clusterID: UInt64
        package var hostname: String
        package var address: String
    }

    /// The file name inside the data dir.
    package static let fileName = "schedulers.json"
    /// Largest file read back; a bigger one is ignored.
    static let maxFileSize = 1 << 20

    package var manager: String
    package var savedAt: Date
    package var schedulers: [Entry]

    package var addresses: [String] { schedulers.map(\.address) }
}

/// Finds the daemon's schedulers through the manager (`manager.address`, DESIGN §10): `ListSchedulers` with
/// this host's identity at start, again every `manager.refreshInterval` (every 2 s while the answer is empty),
/// keeping the best-ranked cluster's active schedulers in the ``SchedulerPool``.
///
/// Every good, non-empty list is written atomically to `<data dir>/schedulers.json`; when the manager cannot be
/// reached at start, that saved list is used until it answers. With neither, the static `scheduler.addresses`
/// stay in use. A failed refresh keeps the current list.
package final class ManagerDiscovery: Service, Sendable {
    /// Deadline of one `ListSchedulers` call.
    static let callTimeout: Duration = .seconds(5)
    /// Pause between asks while the manager gives no scheduler (DESIGN §15).
    static let emptyRetryInterval: Duration = .seconds(2)

    private let target: String
    private let client: RPCClient
    private let pool: SchedulerPool
    private let identity: Published<HostIdentity>
    private let refreshInterval: Duration
    private let savedListPath: String
    private let logger: Logger

    package init(
        config: DaemonConfig,
        dataDirectory: String,
        pool: SchedulerPool,
        identity: Published<HostIdentity>,
        logger: Logger
    ) throws(DragonflyError) {
        target = config.manager.address
        client = try makeRPCClient(
            target: target,
            options: RPCClientOptions(defaultTimeout: Self.callTimeout, maxReconnectBackoff: .seconds(10)),
            logger: logger)
        self.pool = pool
        self.identity = identity
        refreshInterval = config.manager.refreshInterval.duration
        let base = dataDirectory.hasSuffix("/") ? String(dataDirectory.dropLast()) : dataDirectory
        savedListPath = base + "/" + SavedSchedulerList.fileName
        var logger = logger
        logger[metadataKey: "df.manager"] = "\(target)"
        self.logger = logger
        pool.expectDiscovery()
    }

    package func run() async throws {
        try await withThrowingDiscardingTaskGroup { group in
            group.addTask { try await self.client.runConnections() }
            await cancelWhenGracefulShutdown { await self.discover() }
            client.beginGracefulShutdown()
        }
    }

    private func discover() async {
        guard let identity = try? await identity.value() else { return }
        if await !refresh(identity) {
            if let saved = await loadSavedList(), !saved.schedulers.isEmpty {
                pool.update(addresses: saved.addresses)
                logger.info(
                    "manager unreachable; using the saved scheduler list",
                    metadata: ["df.schedulers": "\(saved.addresses.joined(separator: ","))"])
            } else if !pool.isEmpty {
                logger.info("manager unreachable and no saved scheduler list; using scheduler.addresses")
            }
        }
        while !Task.isCancelled {
            let pause = pool.isEmpty ? Self.emptyRetryInterval : refreshInterval
            do { try await Task.sleep(for: pause) } catch { return }
            await refresh(identity)
        }
    }

    /// Asks the manager once; on a non-empty answer updates the pool and the saved list. Returns whether the
    /// manager answered with schedulers.
    @discardableResult
    private func refresh(_ identity: HostIdentity) async -> Bool {
        var request = Dragonfly_V1_ListSchedulersRequest()
        request.sourceType = identity.isSeed ? .seedPeer : .peer
        request.hostname = identity.hostname
        request.ip = identity.ip
        request.idc = identity.idc
        request.location = identity.location
        request.hostID = identity.hostID
        var build = Dragonfly_V1_Build()
        build.version = DragonflyVersion.current
        request.build = build
        let response: Dragonfly_V1_ListSchedulersResponse
        do {
            var options = CallOptions.defaults
            options.timeout = Self.callTimeout
            response = try await Dragonfly_V1_Manager.Client(wrapping: client).listSchedulers(request, options: options)
        } catch {
            logger.debug("ListSchedulers failed; keeping the current schedulers", metadata: ["df.error": "\(error)"])
            return false
        }
        let entries = Self.bestCluster(of: response.schedulers)
        guard !entries.isEmpty else {
            logger.debug("the manager knows no active scheduler for this host")
            return false
        }
        let addresses = entries.map(\.address)
        if pool.update(addresses: addresses) {
            logger.info(
                "scheduler list from the manager", metadata: ["df.schedulers": "\(addresses.joined(separator: ","))"])
        }
        await save(SavedSchedulerList(manager: target, savedAt: Date(), schedulers: entries))
        return true
    }

    /// The schedulers of the first (best-ranked) cluster of a `ListSchedulers` answer, at most
    /// ``SchedulerPool/maxSchedulers``.
    package static func bestCluster(of schedulers: [Dragonfly_V1_SchedulerInfo]) -> [SavedSchedulerList.Entry] {
        guard let first = schedulers.first else { return [] }
        return schedulers.lazy
            .filter { $0.schedulerClusterID == first.schedulerClusterID && $0.state == .active }
            .filter { !$0.ip.isEmpty && (1...65535).contains($0.port) }
            .prefix(SchedulerPool.maxSchedulers)
            .map { info in
                SavedSchedulerList.Entry(
                    id: info.id, clusterID: info.schedulerClusterID, hostname: info.hostname,
                    address: HostNetwork.join(ip: info.ip, port: Int(info.port)))
            }
    }

    // MARK: The saved list

    private func save(_ list: SavedSchedulerList) async {
        if let saved = await loadSavedList(), saved.schedulers == list.schedulers { return }
        let path = savedListPath
        do {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            encoder.dateEncodingStrategy = .iso8601
            let bytes = Array(try encoder.encode(list))
            try await NIOThreadPool.singleton.runIfActive { try AtomicFile.write(bytes, to: path) }
        } catch {
            logger.warning(
                "cannot save the scheduler list", metadata: ["df.path": "\(path)", "df.error": "\(error)"])
        }
    }

    /// The saved list, or `nil` when there is none or it cannot be read (logged).
    package func loadSavedList() async -> SavedSchedulerList? {
        let path = savedListPath
        do {
            let data: Data? = try await NIOThreadPool.singleton.runIfActive {
                guard FileManager.default.fileExists(atPath: path) else { return nil }
                return try Data(contentsOf: URL(fileURLWithPath: path))
            }
            guard let data else { return nil }
            guard data.count <= SavedSchedulerList.maxFileSize else {
                throw DragonflyError(code: .dataLoss, message: "\(path) is larger than 1 MiB")
            }
            let decoder = JSONDecoder()
            decoder.dateDecodingStrategy = .iso8601
            var list = try decoder.decode(SavedSchedulerList.self, from: data)
            list.schedulers = Array(
                list.schedulers.filter { (try? RPCAddress(parsing: $0.address)) != nil }.prefix(
                    SchedulerPool.maxSchedulers))
            return list
        } catch {
            logger.warning(
                "ignoring an unreadable saved scheduler list", metadata: ["df.path": "\(path)", "df.error": "\(error)"])
            return nil
        }
    }
}

/// Builds the cdn's seed-peer membership with the manager: it registers (hostname, advertised IP, peer and
/// piece ports, IDC, location, type super, `manager.seedPeerClusterID`) once its listeners are bound, keeps
/// alive every `manager.keepAliveInterval` and registers again whenever the manager was away.
package func makeSeedPeerMembership(
    config: DaemonConfig,
    identity: Published<HostIdentity>,
    logger: Logger
) throws(DragonflyError) -> ManagerMembership {
    let clusterID = config.manager.seedPeerClusterID
    return try ManagerMembership(
        target: config.manager.address,
        sourceType: .seedPeer,
        keepAliveInterval: config.manager.keepAliveInterval.duration,
        clusterSecret: ClusterSecret(secret: try config.security.resolvedClusterSecret()),
        logger: logger
    ) { manager, options in
        let host = try await identity.value()
        var request = Dragonfly_V1_RegisterSeedPeerRequest()
        request.hostname = host.hostname
        request.ip = host.ip
        request.port = UInt32(clamping: host.peerPort)
        request.pieceDataPort = UInt32(clamping: host.piecePort)
        request.idc = host.idc
        request.location = host.location
        request.type = .super
        if clusterID > 0 { request.seedPeerClusterID = UInt64(clusterID) }
        var build = Dragonfly_V1_Build()
        build.version = DragonflyVersion.current
        request.build = build
        let info = try await manager.registerSeedPeer(request, options: options)
        return ManagerRegistration(id: info.id, clusterID: info.seedPeerClusterID, hostname: info.hostname, ip: info.ip)
    }
}
