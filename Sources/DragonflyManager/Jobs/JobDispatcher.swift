import DragonflyCore
package import DragonflyProto
package import Logging
import SwiftProtobuf
import Synchronization

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// The manager's end of the schedulers' `CommandChannel` (DESIGN §5, §10): one channel per scheduler; the
/// first channel of a cluster on this replica claims that cluster's PENDING job rows (`FOR UPDATE SKIP LOCKED`
/// on PostgreSQL, so replicas never share a row), turns each into a `Job` (an image preheat is resolved into
/// its layer blob URLs here) and sends it; the results the scheduler streams back go to the database, where any
/// replica answers for them. Rows of a channel that closes unfinished go back to PENDING for the next channel;
/// claims are renewed every ``renewInterval``, so the rows of a replica that died are released by the others' timeout
/// checkers (``JobTimeoutService``) after ``JobTimeoutService/staleClaim`` and claimed where the scheduler
/// reconnects.
package final class JobDispatcher: Sendable {
    /// Rows in flight on one channel at most.
    static let maxInFlight = 64
    /// How often a channel renews its claims (a third of the stale-claim age).
    static let renewInterval: Duration = .seconds(10)

    private struct Channels {
        var nextID: UInt64 = 0
        /// Cluster → the channel that claims its rows.
        var owners: [Int: UInt64] = [:]
    }

    private let store: StoreService
    private let replica: String
    private let resolver: ImageManifestResolver?
    private let claimInterval: Duration
    private let logger: Logger
    private let channels = Mutex(Channels())

    /// - Parameter resolver: resolves image preheats; without one they fail with a clear reason.
    package init(
        store: StoreService,
        replica: String,
        resolver: ImageManifestResolver?,
        claimInterval: Duration = .seconds(1),
        logger: Logger
    ) {
        self.store = store
        self.replica = replica
        self.resolver = resolver
        self.claimInterval = claimInterval
        self.logger = logger
    }

    /// Serves one scheduler's channel until it closes: the first message must be `start`.
    package func serve(
        _ requests: some AsyncSequence<Dragonfly_V1_CommandChannelRequest, any Error>,
        send: @escaping @Sendable (Dragonfly_V1_CommandChannelResponse) async throws -> Void
    ) async throws {
        var iterator = requests.makeAsyncIterator()
        guard let first = try await iterator.next(), case .start(let start)? = first.request else {
            throw DragonflyError(code: .invalidArgument, message: "a command channel must open with a start message")
        }
        guard start.schedulerClusterID <= UInt64(Int.max) else {
            throw DragonflyError(
                code: .invalidArgument, message: "scheduler cluster \(start.schedulerClusterID) is out of range")
        }
        let store = try await store.ready()
        // 0: the scheduler joined the default cluster.
        let clusterID =
            start.schedulerClusterID == 0
            ? try await store.defaultCluster(.scheduler).id
            : try await store.cluster(.scheduler, id: Int(start.schedulerClusterID)).id
        let channelID = channels.withLock { channels -> UInt64 in
            channels.nextID += 1
            return channels.nextID
        }
        let inFlight = InFlightRows()
        logger.info(
            "command channel opened",
            metadata: ["df.cluster": "\(clusterID)", "df.scheduler": "\(start.hostname) \(start.ip)"])
        defer {
            channels.withLock { channels in
                if channels.owners[clusterID] == channelID { channels.owners[clusterID] = nil }
            }
        }
        do {
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask {
                    let clock = ContinuousClock()
                    var renewed = clock.now
                    while !Task.isCancelled {
                        // Claims go stale after JobTimeoutService.staleClaim (30 s): renewing every 10 s is enough,
                        // and spares the database a write per claim pass.
                        if clock.now - renewed >= Self.renewInterval {
                            try await store.renewJobClusterClaims(
                                ids: Array(inFlight.ids.withLock { $0 }), replica: self.replica)
                            renewed = clock.now
                        }
                        try await self.claimAndSend(
                            store: store, clusterID: clusterID, channelID: channelID, inFlight: inFlight, send: send)
                        try await Task.sleep(for: self.claimInterval)
                    }
                }
                while let message = try await iterator.next() {
                    switch message.request {
                    case .jobResult(let result)?:
                        try await record(result, store: store, clusterID: clusterID, inFlight: inFlight)
                    case .hostsReport(let report)?:
                        try await recordHosts(report, store: store, clusterID: clusterID)
                    default:
                        continue
                    }
                }
                group.cancelAll()
            }
        } catch {
            await Self.handBack(inFlight, store: store)
            throw error
        }
        await Self.handBack(inFlight, store: store)
        logger.info("command channel closed", metadata: ["df.cluster": "\(clusterID)"])
    }

    /// Returns a closed channel's unfinished rows to PENDING, in a task of its own so that a channel ended by
    /// cancellation still does it (if the database is gone too, the stale-claim release does it later).
    private static func handBack(_ inFlight: InFlightRows, store: ManagerStore) async {
        let ids = Array(inFlight.ids.withLock { $0 })
        guard !ids.isEmpty else { return }
        await Task { try? await store.releaseJobClusters(ids: ids) }.value
    }

    /// Claims this cluster's PENDING rows when this channel is the cluster's claimer, and sends them.
    private func claimAndSend(
        store: ManagerStore,
        clusterID: Int,
        channelID: UInt64,
        inFlight: InFlightRows,
        send: @Sendable (Dragonfly_V1_CommandChannelResponse) async throws -> Void
    ) async throws {
        let isOwner = channels.withLock { channels -> Bool in
            if channels.owners[clusterID] == nil { channels.owners[clusterID] = channelID }
            return channels.owners[clusterID] == channelID
        }
        let room = Self.maxInFlight - inFlight.ids.withLock { $0.count }
        guard isOwner, room > 0 else { return }
        let rows = try await store.claimJobClusters(replica: replica, schedulerClusterIDs: [clusterID], limit: room)
        for row in rows {
            inFlight.ids.withLock { _ = $0.insert(row.id) }
            let job = try await store.job(id: row.jobID)
            do {
                var response = Dragonfly_V1_CommandChannelResponse()
                response.job = try await message(for: job, clusterID: clusterID)
                try await send(response)
                logger.info("job sent", metadata: ["df.job": "\(job.id)", "df.cluster": "\(clusterID)"])
            } catch let error as DragonflyError {
                // The job cannot be sent (an image that does not resolve): this cluster's part fails, per URL.
                var result = Dragonfly_V1_JobResult()
                result.jobID = UInt64(job.id)
                result.schedulerClusterID = UInt64(clusterID)
                result.state = .failure
                result.reason = error.message
                for url in PreheatArgs.urls(of: job.args) {
                    var task = Dragonfly_V1_JobTaskResult()
                    task.url = url
                    task.reason = error.message
                    result.failureTasks.append(task)
                }
                try await record(result, store: store, clusterID: clusterID, inFlight: inFlight)
            }
        }
    }

    /// The `Job` message of a preheat: its downloads (image manifests resolved into layer blobs) and targets.
    func message(for job: JobRecord, clusterID: Int) async throws(DragonflyError) -> Dragonfly_V1_Job {
        guard job.type == "preheat" else {
            throw DragonflyError(code: .unimplemented, message: "job type \(job.type) cannot run here")
        }
        let args: PreheatArgs
        do {
            args = try PreheatArgs(stored: job.args)
        } catch {
            throw DragonflyError(code: .invalidArgument, message: "job \(job.id) has unreadable arguments: \(error)")
        }
        var urls = args.allURLs
        var headers = args.headers ?? [:]
        if args.type == "image" {
            guard let resolver, let manifest = urls.first else {
                throw DragonflyError(code: .unavailable, message: "this manager cannot resolve image manifests")
            }
            let resolved = try await resolver.resolve(
                manifestURL: manifest, headers: headers, platform: args.platform ?? "", username: args.username,
                password: args.password)
            urls = resolved.blobURLs
            headers = resolved.headers
        }
        var preheat = Dragonfly_V1_PreheatJob()
        let filtered = (args.filteredQueryParams ?? "").split(separator: "&").map(String.init).filter { !$0.isEmpty }
        preheat.downloads = urls.map { url in
            var download = Dragonfly_V1_Download()
            download.url = url
            download.tag = args.tag ?? ""
            download.filteredQueryParams = filtered
            download.requestHeader = headers
            return download
        }
        var targets = Dragonfly_V1_HostSelection()
        switch args.scope {
        case "all_seed_peers": targets.scope = .allSeedPeers
        case "all_peers": targets.scope = .allPeers
        default: targets.scope = .singleSeedPeer
        }
        targets.ips = args.ips ?? []
        if let count = args.count { targets.count = UInt32(clamping: count) }
        if let percentage = args.percentage { targets.percentage = UInt32(clamping: percentage) }
        preheat.targets = targets
        var message = Dragonfly_V1_Job()
        message.id = UInt64(job.id)
        message.schedulerClusterID = UInt64(clusterID)
        let nanoseconds = args.timeout ?? PreheatArgs.defaultTimeoutNanoseconds
        message.timeout = Google_Protobuf_Duration(
            seconds: nanoseconds / 1_000_000_000, nanos: Int32(nanoseconds % 1_000_000_000))
        message.createdAt = Google_Protobuf_Timestamp(date: job.createdAt)
        message.preheat = preheat
        return message
    }

    /// Hosts read from one report at most.
    static let maxReportedHosts = 10_000

    /// Upserts the hosts a scheduler reported; a full report also drops the cluster's hosts it does not list.
    private func recordHosts(_ report: Dragonfly_V1_HostsReport, store: ManagerStore, clusterID: Int) async throws {
        var listed = Set<String>()
        for host in report.hosts.prefix(Self.maxReportedHosts) where !host.id.isEmpty {
            listed.insert(host.id)
            try await store.upsertHost(
                HostReport(
                    hostID: host.id, hostname: host.hostname, ip: host.ip, port: Int(host.port),
                    downloadPort: Int(host.pieceDataPort), type: host.type == .super ? "super" : "normal",
                    idc: host.idc, location: host.location, schedulerClusterID: clusterID))
        }
        for host in report.leftHostIds { try await store.deleteHost(hostID: host) }
        guard report.isFull, report.hosts.count <= Self.maxReportedHosts else { return }
        for host in try await store.hosts(schedulerClusterID: clusterID) where !listed.contains(host.hostID) {
            try await store.deleteHost(hostID: host.hostID)
        }
    }

    /// Successful, and failed, task entries kept of one report.
    static let maxReportedTasks = 10_000

    /// Stores a cluster's result; once every cluster of the job finished, the job is SUCCESS when all of them
    /// succeeded, else FAILURE with their reasons.
    private func record(
        _ result: Dragonfly_V1_JobResult,
        store: ManagerStore,
        clusterID: Int,
        inFlight: InFlightRows
    ) async throws {
        guard result.schedulerClusterID == UInt64(clusterID), result.jobID <= UInt64(Int.max) else {
            logger.warning("a scheduler reported a job of another cluster", metadata: ["df.cluster": "\(clusterID)"])
            return
        }
        let job: JobRecord
        do {
            job = try await store.job(id: Int(result.jobID))
        } catch {
            guard error.code == .notFound else { throw error }
            return
        }
        guard let row = job.clusters.first(where: { $0.schedulerClusterID == clusterID }), !row.state.isTerminal else {
            return
        }
        let state: JobState =
            switch result.state {
            case .success: .success
            case .failure: .failure
            default: .running
            }
        func entries(_ tasks: [Dragonfly_V1_JobTaskResult], failed: Bool) -> JSONValue {
            // A scheduler reports per host; a bounded list keeps one report from filling the database.
            .array(
                tasks.prefix(Self.maxReportedTasks).map { task in
                    var entry: [String: JSONValue] = [
                        "url": .string(task.url), "hostname": .string(task.hostname), "ip": .string(task.ip),
                    ]
                    if !task.taskID.isEmpty { entry["task_id"] = .string(task.taskID) }
                    if failed { entry["description"] = .string(task.reason) }
                    return .object(entry)
                })
        }
        var fields: [String: JSONValue] = [
            "success_tasks": entries(result.successTasks, failed: false),
            "failure_tasks": entries(result.failureTasks, failed: true),
        ]
        if !result.reason.isEmpty { fields["description"] = .string(result.reason) }
        try await store.updateJobCluster(id: row.id, state: state, result: .object(fields))
        guard state.isTerminal else { return }
        inFlight.ids.withLock { _ = $0.remove(row.id) }
        let updated = try await store.job(id: job.id)
        guard updated.clusters.allSatisfy(\.state.isTerminal), !updated.state.isTerminal else { return }
        let failed = updated.clusters.filter { $0.state != .success }
        var summary: [String: JSONValue] = [:]
        if !failed.isEmpty {
            let reasons = failed.map { row -> String in
                if case .string(let reason)? = row.result?["description"] {
                    return "cluster \(row.schedulerClusterID): \(reason)"
                }
                return "cluster \(row.schedulerClusterID) failed"
            }
            summary["error"] = .string(reasons.joined(separator: "; "))
        }
        try await store.updateJob(id: job.id, state: failed.isEmpty ? .success : .failure, result: .object(summary))
        logger.info(
            "job finished", metadata: ["df.job": "\(job.id)", "df.state": "\(failed.isEmpty ? "SUCCESS" : "FAILURE")"])
    }
}

/// The job-cluster rows sent on one channel and not finished yet.
private final class InFlightRows: Sendable {
    let ids = Mutex<Set<Int>>([])
}
