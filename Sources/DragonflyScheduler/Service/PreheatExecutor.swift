import DragonflyCore
package import DragonflyProto
package import DragonflyRPC
import GRPCCore
package import Logging
import SwiftProtobuf

/// Runs a preheat job in this scheduler's cluster (DESIGN §10): picks the target hosts — one seed peer per URL
/// by rendezvous hash (`single_seed_peer`), every seed peer (`all_seed_peers`), or normal hosts chosen by `ips`,
/// else `count`, else `percentage` (`all_peers`) — and asks each to download each URL into its cache (Peer
/// `DownloadTask` without an output path), at most `concurrency` at once, within the job's timeout.
package struct PreheatExecutor: Sendable {
    /// Target hosts: the seed hosts when `true`, else the normal ones.
    package typealias Hosts = @Sendable (_ seeds: Bool) -> [PeerHost]

    private let hosts: Hosts
    private let options: RPCClientOptions
    private let concurrency: Int
    /// Attach the cluster secret to `DownloadTask` calls: a seed refuses them without it when it has one.
    private let interceptors: [any ClientInterceptor]
    private let logger: Logger

    package init(
        hosts: @escaping Hosts, options: RPCClientOptions = .defaults, concurrency: Int = 8,
        clusterSecret: ClusterSecret? = nil, logger: Logger
    ) {
        self.hosts = hosts
        self.interceptors = clusterSecret.map { [ClusterSecretClientInterceptor(secret: $0)] } ?? []
        self.options = options
        self.concurrency = max(concurrency, 1)
        self.logger = logger
    }

    /// Runs `job` and returns its result for this cluster: SUCCESS when every URL reached every target host.
    package func run(_ job: Dragonfly_V1_Job) async -> Dragonfly_V1_JobResult {
        var result = Dragonfly_V1_JobResult()
        result.jobID = job.id
        result.schedulerClusterID = job.schedulerClusterID
        guard case .preheat(let preheat)? = job.args else {
            result.state = .failure
            result.reason = "this scheduler runs preheat jobs only"
            return result
        }
        let targets = Self.targets(preheat, seeds: hosts(true), normal: hosts(false), jobID: job.id)
        guard !targets.isEmpty else {
            result.state = .failure
            result.reason =
                preheat.targets.scope == .allPeers
                ? "no host of scheduler cluster \(job.schedulerClusterID) matches the job's targets"
                : "scheduler cluster \(job.schedulerClusterID) has no seed peer"
            for download in preheat.downloads {
                var task = Dragonfly_V1_JobTaskResult()
                task.url = Redaction.url(download.url)
                task.reason = result.reason
                result.failureTasks.append(task)
            }
            return result
        }
        // A download asked over the network never reads a local path: only network sources are preheated.
        if let refused = preheat.downloads.first(where: { !ScheduledSchemes.isAllowed($0.url) }) {
            result.state = .failure
            result.reason = ScheduledSchemes.refusal(for: refused.url).message
            for download in preheat.downloads {
                var task = Dragonfly_V1_JobTaskResult()
                task.url = Redaction.url(download.url)
                task.reason = result.reason
                result.failureTasks.append(task)
            }
            return result
        }
        let timeout: Duration =
            job.hasTimeout && (job.timeout.seconds > 0 || job.timeout.nanos > 0)
            ? .seconds(job.timeout.seconds) + .nanoseconds(Int64(job.timeout.nanos)) : .seconds(30 * 60)
        let deadline = ContinuousClock.now + timeout
        let pairs = targets.flatMap { pair in pair.hosts.map { (pair.download, $0) } }
        logger.info(
            "preheat started", metadata: ["df.job": "\(job.id)", "df.downloads": "\(pairs.count)"])
        var outcomes: [(Dragonfly_V1_JobTaskResult, Bool)] = []
        await withTaskGroup(of: (Dragonfly_V1_JobTaskResult, Bool).self) { group in
            var next = 0
            func start() {
                let (download, host) = pairs[next]
                next += 1
                group.addTask { await self.download(download, on: host, deadline: deadline) }
            }
            while next < min(concurrency, pairs.count) { start() }
            for await outcome in group {
                outcomes.append(outcome)
                if next < pairs.count { start() }
            }
        }
        result.successTasks = outcomes.filter(\.1).map(\.0)
        result.failureTasks = outcomes.filter { !$0.1 }.map(\.0)
        result.state = result.failureTasks.isEmpty ? .success : .failure
        if !result.failureTasks.isEmpty {
            result.reason = "\(result.failureTasks.count) of \(outcomes.count) downloads failed"
        }
        logger.info(
            "preheat finished",
            metadata: [
                "df.job": "\(job.id)", "df.succeeded": "\(result.successTasks.count)",
                "df.failed": "\(result.failureTasks.count)",
            ])
        return result
    }

    /// One download on one host; `true` when the host reported it done.
    private func download(_ download: Dragonfly_V1_Download, on host: PeerHost, deadline: ContinuousClock.Instant)
        async -> (Dragonfly_V1_JobTaskResult, Bool)
    {
        var task = Dragonfly_V1_JobTaskResult()
        // Job results are shown to the manager's users: never a query value or userinfo.
        task.url = Redaction.url(download.url)
        task.hostname = host.hostname
        task.ip = host.ip
        task.hostID = host.id
        let remaining = deadline - ContinuousClock.now
        guard remaining > .zero else {
            task.reason = "the job timed out before this download started"
            return (task, false)
        }
        do {
            let last = try await withRPCClient(
                target: host.peerAddress, options: options, interceptors: interceptors, logger: logger
            ) { client in
                let peer = Dragonfly_V1_Peer.Client(wrapping: client)
                var request = Dragonfly_V1_DownloadTaskRequest()
                request.download = download
                var callOptions = CallOptions.defaults
                callOptions.timeout = remaining
                return try await peer.downloadTask(request, options: callOptions) { response in
                    var last: Dragonfly_V1_DownloadProgress?
                    for try await progress in response.messages { last = progress }
                    return last
                }
            }
            let done = last?.done == true
            task.taskID = last?.taskID ?? ""
            if !done { task.reason = "the host ended the download without finishing it" }
            return (task, done)
        } catch {
            task.reason = Redaction.message(DragonflyError(converting: error).message)
            return (task, false)
        }
    }

    /// The hosts each download goes to.
    static func targets(
        _ preheat: Dragonfly_V1_PreheatJob,
        seeds: [PeerHost],
        normal: [PeerHost],
        jobID: UInt64
    ) -> [(download: Dragonfly_V1_Download, hosts: [PeerHost])] {
        let selection = preheat.targets
        switch selection.scope {
        case .allSeedPeers:
            return seeds.isEmpty ? [] : preheat.downloads.map { ($0, seeds) }
        case .allPeers:
            var chosen: [PeerHost]
            if !selection.ips.isEmpty {
                let ips = Set(selection.ips)
                chosen = normal.filter { ips.contains($0.ip) }
            } else {
                // A stable, job-specific order, so `count` and `percentage` spread jobs over different hosts.
                let ordered = normal.sorted { score("\(jobID)", $0.id) > score("\(jobID)", $1.id) }
                if selection.hasCount {
                    chosen = Array(ordered.prefix(Int(selection.count)))
                } else if selection.hasPercentage {
                    let wanted = (ordered.count * Int(min(selection.percentage, 100)) + 99) / 100
                    chosen = Array(ordered.prefix(wanted))
                } else {
                    chosen = ordered
                }
            }
            return chosen.isEmpty ? [] : preheat.downloads.map { ($0, chosen) }
        default:
            guard !seeds.isEmpty else { return [] }
            return preheat.downloads.compactMap { download in
                guard let best = seeds.max(by: { score(download.url, $0.id) < score(download.url, $1.id) }) else {
                    return nil
                }
                return (download, [best])
            }
        }
    }

    /// Rendezvous-hash weight of `host` for `key`.
    /// (FNV-1a over the bytes, then a 64-bit finaliser: stable across processes, unlike `Hasher`.)
    static func score(_ key: String, _ host: String) -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in "\(key)\u{0}\(host)".utf8 {
            hash = (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01b3
        }
        hash = (hash ^ (hash >> 30)) &* 0xbf58_476d_1ce4_e5b9
        hash = (hash ^ (hash >> 27)) &* 0x94d0_49bb_1331_11eb
        return hash ^ (hash >> 31)
    }
}
