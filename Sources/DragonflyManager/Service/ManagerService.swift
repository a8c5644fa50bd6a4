import DragonflyCore
package import DragonflyProto
import DragonflyRPC
package import GRPCCore
package import Logging
import ServiceLifecycle
package import SwiftProtobuf
import Synchronization

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// The gRPC Manager service (DESIGN §5, §10): schedulers and seed peers register and keep alive, daemons and
/// seed peers ask which schedulers to use, schedulers read their cluster's seed peers and dynamic config.
///
/// A member is active while keep-alives arrive: every message of a `KeepAlive` stream stamps it (at most once
/// a second per stream), ``MemberExpiryService`` marks members inactive after `keepAlive.timeout` without one,
/// and a stream that the member ends (or that breaks, e.g. the process died) marks it inactive at once unless
/// another stream kept it alive since. `CommandChannel` is served by ``JobDispatcher``; `IssueCertificate`
/// answers `UNIMPLEMENTED`.
package final class ManagerService: Dragonfly_V1_Manager.SimpleServiceProtocol, Sendable {
    /// Concurrent `KeepAlive` streams one manager accepts; more get `RESOURCE_EXHAUSTED`.
    package static let maxKeepAliveStreams = 10_000
    /// Schedulers one `ListSchedulers` answer carries at most.
    package static let maxListedSchedulers = 256
    /// The methods that need the cluster secret: all but `ListSchedulers`, which daemons use to find their
    /// schedulers and which changes nothing.
    package static let protectedMethods: Set<String> = Set(
        Dragonfly_V1_Manager.Method.descriptors
            .filter { $0 != Dragonfly_V1_Manager.Method.ListSchedulers.descriptor }
            .map(\.fullyQualifiedMethod))
    /// Least time between two keep-alive writes of one stream.
    static let keepAliveWriteInterval: Duration = .seconds(1)

    private let store: @Sendable () async throws -> ManagerStore
    private let dispatcher: JobDispatcher?
    private let logger: Logger
    private let searcher = SchedulerSearcher()
    private let openStreams = Atomic<Int>(0)
    private let memberLimit: Int

    /// - Parameters:
    ///   - store: The store once migrated (``StoreService/ready()``).
    ///   - dispatcher: Serves the schedulers' command channels; without one they are refused.
    ///   - memberLimit: Schedulers, and seed peers, kept at most (`keepAlive.maxMembers`).
    package init(
        store: @escaping @Sendable () async throws -> ManagerStore,
        dispatcher: JobDispatcher? = nil,
        memberLimit: Int = ManagerStore.defaultMemberLimit,
        logger: Logger
    ) {
        self.store = store
        self.dispatcher = dispatcher
        self.memberLimit = memberLimit
        self.logger = logger
    }

    // MARK: Registration

    package func registerScheduler(
        request: Dragonfly_V1_RegisterSchedulerRequest,
        context: ServerContext
    ) async throws -> Dragonfly_V1_SchedulerInfo {
        let registration = try MemberRegistration(
            validating: (request.hostname, request.ip, request.port, request.idc, request.location),
            clusterID: request.hasSchedulerClusterID ? request.schedulerClusterID : nil,
            clusterField: "scheduler_cluster_id")
        let store = try await self.store()
        let record: MemberRecord
        do {
            record = try await store.registerMember(.scheduler, registration, limit: memberLimit)
        } catch {
            logger.debug("scheduler registration failed", metadata: ["df.error": "\(error)"])
            throw error
        }
        logger.debug(
            "scheduler registered",
            metadata: [
                "df.scheduler.id": "\(record.id)", "df.scheduler.hostname": "\(record.hostname)",
                "df.scheduler.address": "\(record.ip):\(record.port)", "df.cluster.id": "\(record.clusterID)",
            ])
        var info = record.schedulerInfo
        info.features = request.features
        info.build = request.build
        info.seedPeers = try await activeSeedPeers(ofSchedulerCluster: record.clusterID, store: store)
        return info
    }

    package func registerSeedPeer(
        request: Dragonfly_V1_RegisterSeedPeerRequest,
        context: ServerContext
    ) async throws -> Dragonfly_V1_SeedPeerInfo {
        var registration = try MemberRegistration(
            validating: (request.hostname, request.ip, request.port, request.idc, request.location),
            clusterID: request.hasSeedPeerClusterID ? request.seedPeerClusterID : nil,
            clusterField: "seed_peer_cluster_id")
        guard request.pieceDataPort <= 65535 else {
            throw DragonflyError(
                code: .invalidArgument, message: "piece_data_port \(request.pieceDataPort) is not a port")
        }
        registration.seedPeerType = request.type == .super ? "super" : "normal"
        registration.downloadPort = Int(request.pieceDataPort)
        let record = try await store().registerMember(.seedPeer, registration, limit: memberLimit)
        logger.debug(
            "seed peer registered",
            metadata: [
                "df.seedpeer.id": "\(record.id)", "df.seedpeer.hostname": "\(record.hostname)",
                "df.seedpeer.address": "\(record.ip):\(record.port)", "df.cluster.id": "\(record.clusterID)",
            ])
        var info = record.seedPeerInfo
        info.build = request.build
        return info
    }

    // MARK: Keep-alive

    package func keepAlive(
        request: RPCAsyncSequence<Dragonfly_V1_KeepAliveRequest, any Error>,
        context: ServerContext
    ) async throws -> Google_Protobuf_Empty {
        let (_, admitted) = openStreams.add(1, ordering: .relaxed)
        defer { openStreams.subtract(1, ordering: .relaxed) }
        guard admitted <= Self.maxKeepAliveStreams else {
            throw DragonflyError(
                code: .resourceExhausted,
                message: "the manager holds \(Self.maxKeepAliveStreams) keep-alive streams already; retry later")
        }
        let store = try await self.store()
        let progress = KeepAliveProgress()
        do {
            // On the manager's graceful shutdown the stream ends at once (the member registers again, with this
            // replica when it is back or with another one) instead of holding the drain for its whole budget.
            try await cancelWhenGracefulShutdown {
                try await Self.receiveKeepAlives(request, store: store, progress: progress)
            }
        } catch {
            // A refused first message leaves the member alone; so does the manager's own shutdown.
            if case (let member, let lastKeepAlive)? = progress.current, !Task.isCancelled,
                !Task.isShuttingDownGracefully
            {
                await markInactive(member, after: lastKeepAlive, store: store, reason: "stream failed: \(error)")
            }
            throw error
        }
        // The member closed its stream (it is stopping), unless the stream ended because the manager is.
        if case (let member, let lastKeepAlive)? = progress.current, !Task.isCancelled, !Task.isShuttingDownGracefully {
            await markInactive(member, after: lastKeepAlive, store: store, reason: "stream ended")
        }
        return Google_Protobuf_Empty()
    }

    /// What one keep-alive stream has recorded: its member (after an accepted first message) and the time of
    /// its last stored keep-alive.
    private final class KeepAliveProgress: Sendable {
        private let state = Mutex<(member: (kind: ClusterKind, id: Int), lastKeepAlive: Date)?>(nil)

        var current: ((kind: ClusterKind, id: Int), Date)? {
            state.withLock { state in state.map { ($0.member, $0.lastKeepAlive) } }
        }

        func record(_ member: (kind: ClusterKind, id: Int), at date: Date) {
            state.withLock { $0 = (member, date) }
        }
    }

    private static func receiveKeepAlives(
        _ request: RPCAsyncSequence<Dragonfly_V1_KeepAliveRequest, any Error>,
        store: ManagerStore,
        progress: KeepAliveProgress
    ) async throws {
        let clock = ContinuousClock()
        var member: (kind: ClusterKind, id: Int)?
        var lastWrite: ContinuousClock.Instant?
        for try await message in request {
            let current = try Self.member(of: message)
            if let member, member != current {
                throw DragonflyError(
                    code: .invalidArgument,
                    message: "a keep-alive stream serves one member; open another stream for \(current.id)")
            }
            if member == nil {
                try await Self.checkIdentity(message, kind: current.kind, id: current.id, store: store)
                member = current
            }
            let now = clock.now
            if let lastWrite, lastWrite.duration(to: now) < Self.keepAliveWriteInterval { continue }
            let date = Date()
            try await store.keepAlive(current.kind, id: current.id, now: date)
            progress.record(current, at: date)
            lastWrite = now
        }
    }

    private static func member(of message: Dragonfly_V1_KeepAliveRequest) throws(DragonflyError) -> (
        kind: ClusterKind, id: Int
    ) {
        let kind: ClusterKind
        switch message.sourceType {
        case .scheduler: kind = .scheduler
        case .seedPeer: kind = .seedPeer
        default:
            throw DragonflyError(
                code: .invalidArgument, message: "keep-alive source_type must be SCHEDULER or SEED_PEER")
        }
        guard message.id > 0, let id = Int(exactly: message.id) else {
            throw DragonflyError(code: .invalidArgument, message: "keep-alive id \(message.id) is not a registered ID")
        }
        return (kind, id)
    }

    /// The first keep-alive must name a registered member with its hostname and IP (when given): a member
    /// deleted or re-created meanwhile is told to register again.
    private static func checkIdentity(
        _ message: Dragonfly_V1_KeepAliveRequest,
        kind: ClusterKind,
        id: Int,
        store: ManagerStore
    ) async throws(DragonflyError) {
        let record: MemberRecord
        do throws(DragonflyError) {
            record = try await store.member(kind, id: id)
        } catch  where error.code == .notFound {
            throw DragonflyError(
                code: .notFound, message: "\(kind.memberLabel) \(id) is not registered; register again")
        }
        let hostnameDiffers = !message.hostname.isEmpty && message.hostname != record.hostname
        let ipDiffers = !message.ip.isEmpty && message.ip != record.ip
        let clusterDiffers = message.clusterID != 0 && message.clusterID != UInt64(record.clusterID)
        if hostnameDiffers || ipDiffers || clusterDiffers {
            throw DragonflyError(
                code: .failedPrecondition,
                message: "\(kind.memberLabel) \(id) is registered as \(record.hostname) \(record.ip) in cluster "
                    + "\(record.clusterID), not as the keep-alive says; register again")
        }
    }

    private func markInactive(
        _ member: (kind: ClusterKind, id: Int),
        after lastKeepAlive: Date,
        store: ManagerStore,
        reason: String
    ) async {
        do {
            let changed = try await store.markInactive(member.kind, id: member.id, unlessKeptAliveAfter: lastKeepAlive)
            logger.debug(
                "keep-alive stream closed",
                metadata: [
                    "df.member.kind": "\(member.kind.memberLabel)", "df.member.id": "\(member.id)",
                    "df.member.inactive": "\(changed)", "df.reason": "\(reason)",
                ])
        } catch {
            logger.debug(
                "cannot mark a member inactive; the expiry sweep will",
                metadata: ["df.member.id": "\(member.id)", "df.error": "\(error)"])
        }
    }

    // MARK: Discovery

    package func listSchedulers(
        request: Dragonfly_V1_ListSchedulersRequest,
        context: ServerContext
    ) async throws -> Dragonfly_V1_ListSchedulersResponse {
        let host = try SearchedHost(validating: request.hostname, request.ip, request.idc, request.location)
        let store = try await self.store()
        let clusters = try await store.clusters(.scheduler)
        let schedulers = try await store.members(.scheduler, state: .active)
        let active = Dictionary(grouping: schedulers, by: \.clusterID)
        let seedPeers = try await activeSeedPeersByCluster(clusters, store: store)
        var response = Dragonfly_V1_ListSchedulersResponse()
        for cluster in searcher.rank(clusters.filter { active[$0.id] != nil }, for: host) {
            for record in active[cluster.id] ?? [] {
                guard response.schedulers.count < Self.maxListedSchedulers else { break }
                var info = record.schedulerInfo
                info.seedPeers = seedPeers[cluster.id] ?? []
                response.schedulers.append(info)
            }
        }
        logger.trace(
            "schedulers listed",
            metadata: ["df.host.ip": "\(host.ip)", "df.schedulers": "\(response.schedulers.count)"])
        return response
    }

    package func listSeedPeers(
        request: Dragonfly_V1_ListSeedPeersRequest,
        context: ServerContext
    ) async throws -> Dragonfly_V1_ListSeedPeersResponse {
        guard let clusterID = Int(exactly: request.schedulerClusterID), clusterID > 0 else {
            throw DragonflyError(code: .invalidArgument, message: "scheduler_cluster_id must name a cluster")
        }
        let store = try await self.store()
        _ = try await store.cluster(.scheduler, id: clusterID)
        var response = Dragonfly_V1_ListSeedPeersResponse()
        response.seedPeers = try await activeSeedPeers(ofSchedulerCluster: clusterID, store: store)
        return response
    }

    package func getClusterConfig(
        request: Dragonfly_V1_GetClusterConfigRequest,
        context: ServerContext
    ) async throws -> Dragonfly_V1_ClusterConfig {
        let store = try await self.store()
        let cluster: ClusterRecord
        if request.schedulerClusterID != 0 {
            guard let id = Int(exactly: request.schedulerClusterID) else {
                throw DragonflyError(
                    code: .notFound, message: "scheduler cluster \(request.schedulerClusterID) does not exist")
            }
            cluster = try await store.cluster(.scheduler, id: id)
        } else {
            let host = try SearchedHost(validating: request.hostname, request.ip, "", "")
            let clusters = try await store.clusters(.scheduler)
            guard let best = searcher.rank(clusters, for: host).first else {
                throw DragonflyError(code: .notFound, message: "there is no scheduler cluster")
            }
            cluster = best
        }
        return ClusterConfigMapping.message(for: cluster)
    }

    // MARK: Certificates and jobs

    package func issueCertificate(
        request: Dragonfly_V1_IssueCertificateRequest,
        context: ServerContext
    ) async throws -> Dragonfly_V1_IssueCertificateResponse {
        throw DragonflyError(
            code: .unimplemented, message: "IssueCertificate is not implemented yet: this manager has no CA (mTLS)")
    }

    package func commandChannel(
        request: RPCAsyncSequence<Dragonfly_V1_CommandChannelRequest, any Error>,
        response: RPCWriter<Dragonfly_V1_CommandChannelResponse>,
        context: ServerContext
    ) async throws {
        guard let dispatcher else {
            throw DragonflyError(code: .unimplemented, message: "this manager dispatches no jobs")
        }
        // On the manager's graceful shutdown the channel ends at once (its unfinished rows go back to PENDING and
        // the scheduler reconnects to another replica), so the server's drain does not wait for it.
        do {
            try await cancelWhenGracefulShutdown {
                try await dispatcher.serve(request) { try await response.write($0) }
            }
        } catch is CancellationError where Task.isShuttingDownGracefully {
            return
        }
    }

    // MARK: Seed peers of a scheduler cluster

    /// A scheduler cluster is served by the seed-peer cluster of the same name (the default clusters share
    /// their name, DESIGN §10).
    private func activeSeedPeers(
        ofSchedulerCluster clusterID: Int,
        store: ManagerStore
    ) async throws -> [Dragonfly_V1_SeedPeerInfo] {
        let cluster = try await store.cluster(.scheduler, id: clusterID)
        return try await activeSeedPeersByCluster([cluster], store: store)[clusterID] ?? []
    }

    private func activeSeedPeersByCluster(
        _ schedulerClusters: [ClusterRecord],
        store: ManagerStore
    ) async throws -> [Int: [Dragonfly_V1_SeedPeerInfo]] {
        let seedPeerClusters = try await store.clusters(.seedPeer)
        let seedClusters = Dictionary(
            seedPeerClusters.map { ($0.name, $0.id) }, uniquingKeysWith: { first, _ in first })
        let activeSeedPeers = try await store.members(.seedPeer, state: .active)
        let peers = Dictionary(grouping: activeSeedPeers, by: \.clusterID)
        var result: [Int: [Dragonfly_V1_SeedPeerInfo]] = [:]
        for cluster in schedulerClusters {
            guard let seedClusterID = seedClusters[cluster.name], let members = peers[seedClusterID] else { continue }
            result[cluster.id] = members.map(\.seedPeerInfo)
        }
        return result
    }
}

// MARK: - Validation and conversions

extension MemberRegistration {
    /// Longest hostname, IDC or location accepted.
    static let maxFieldLength = 255

    fileprivate init(
        validating fields: (hostname: String, ip: String, port: UInt32, idc: String, location: String),
        clusterID: UInt64?,
        clusterField: String
    ) throws(DragonflyError) {
        try Self.check(fields.hostname, "hostname", required: true)
        try Self.check(fields.idc, "idc", required: false)
        try Self.check(fields.location, "location", required: false)
        guard let address = IPAddressBytes(parsing: fields.ip), !address.isUnspecified else {
            throw DragonflyError(code: .invalidArgument, message: "ip '\(fields.ip.prefix(64))' is not an IP address")
        }
        guard (1...65535).contains(fields.port) else {
            throw DragonflyError(code: .invalidArgument, message: "port \(fields.port) is not a port (1-65535)")
        }
        var cluster: Int?
        if let clusterID {
            guard let id = Int(exactly: clusterID), id > 0 else {
                throw DragonflyError(code: .notFound, message: "\(clusterField) \(clusterID) does not exist")
            }
            cluster = id
        }
        self.init(
            hostname: fields.hostname, ip: fields.ip, port: Int(fields.port), idc: fields.idc,
            location: fields.location, clusterID: cluster)
    }

    private static func check(_ value: String, _ field: String, required: Bool) throws(DragonflyError) {
        if required && value.isEmpty {
            throw DragonflyError(code: .invalidArgument, message: "\(field) is required")
        }
        if value.utf8.count > maxFieldLength {
            throw DragonflyError(code: .invalidArgument, message: "\(field) is longer than \(maxFieldLength) bytes")
        }
    }
}

extension SearchedHost {
    fileprivate init(validating hostname: String, _ ip: String, _ idc: String, _ location: String)
        throws(DragonflyError)
    {
        for (value, field) in [(hostname, "hostname"), (ip, "ip"), (idc, "idc"), (location, "location")]
        where value.utf8.count > MemberRegistration.maxFieldLength {
            throw DragonflyError(
                code: .invalidArgument, message: "\(field) is longer than \(MemberRegistration.maxFieldLength) bytes")
        }
        self.init(hostname: hostname, ip: ip, idc: idc, location: location)
    }
}

extension ClusterKind {
    /// `scheduler` or `seed peer`.
    var memberLabel: String { memberName }
}

extension MemberRecord {
    var schedulerInfo: Dragonfly_V1_SchedulerInfo {
        var info = Dragonfly_V1_SchedulerInfo()
        info.id = UInt64(id)
        info.hostname = hostname
        info.ip = ip
        info.port = UInt32(clamping: port)
        info.idc = idc
        info.location = location
        info.state = state == .active ? .active : .inactive
        info.schedulerClusterID = UInt64(clusterID)
        return info
    }

    var seedPeerInfo: Dragonfly_V1_SeedPeerInfo {
        var info = Dragonfly_V1_SeedPeerInfo()
        info.id = UInt64(id)
        info.hostname = hostname
        info.ip = ip
        info.port = UInt32(clamping: port)
        info.pieceDataPort = UInt32(clamping: downloadPort ?? 0)
        info.idc = idc
        info.location = location
        info.type = seedPeerType == "super" ? .super : .normal
        info.state = state == .active ? .active : .inactive
        info.seedPeerClusterID = UInt64(clusterID)
        return info
    }
}
