import DragonflyCore
package import DragonflyProto
package import DragonflyRPC
import GRPCCore
package import Logging
import ServiceLifecycle

/// The scheduler's end of the manager's `CommandChannel` (DESIGN §5): opens it with the scheduler's cluster,
/// runs the jobs the manager sends (preheat, through ``PreheatExecutor``; at most ``maxConcurrentJobs`` at once,
/// at most ``maxQueuedJobs`` waiting) and streams each result back, with a full report of the hosts it knows
/// every minute. Reconnects with backoff (1 s doubling to 30 s) while the manager is away; a job that was running
/// when the channel broke is sent again by the manager to the next channel.
package struct ManagerCommandChannel: Service {
    static let maxConcurrentJobs = 16
    /// Jobs waiting for a worker at most.
    static let maxQueuedJobs = 256

    package struct Identity: Sendable {
        package var clusterID: UInt64
        package var hostname: String
        package var ip: String
        /// The ID the scheduler's registration returned, 0 when unknown.
        package var schedulerID: UInt64

        package init(clusterID: UInt64, hostname: String, ip: String, schedulerID: UInt64 = 0) {
            self.clusterID = clusterID
            self.hostname = hostname
            self.ip = ip
            self.schedulerID = schedulerID
        }
    }

    /// Hosts sent in one report at most.
    static let maxReportedHosts = 10_000

    private let managerAddress: String
    private let identity: Identity
    private let executor: PreheatExecutor
    private let hosts: @Sendable () -> [Dragonfly_V1_Host]
    private let hostsReportInterval: Duration
    /// Attach the cluster secret: the manager opens command channels only for callers that hold it.
    private let interceptors: [any ClientInterceptor]
    private let logger: Logger

    /// - Parameters:
    ///   - hosts: The hosts this scheduler knows, reported in full when the channel opens and every
    ///     `hostsReportInterval` (the manager's host list, `GET /api/v1/hosts`).
    package init(
        managerAddress: String,
        identity: Identity,
        executor: PreheatExecutor,
        hosts: @escaping @Sendable () -> [Dragonfly_V1_Host],
        hostsReportInterval: Duration = .seconds(60),
        clusterSecret: ClusterSecret? = nil,
        logger: Logger
    ) {
        self.interceptors = clusterSecret.map { [ClusterSecretClientInterceptor(secret: $0)] } ?? []
        self.managerAddress = managerAddress
        self.identity = identity
        self.executor = executor
        self.hosts = hosts
        self.hostsReportInterval = hostsReportInterval
        self.logger = logger
    }

    package func run() async throws {
        var backoff: Duration = .seconds(1)
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            let opened = ContinuousClock.now
            do {
                try await cancelWhenGracefulShutdown { try await self.session() }
            } catch {
                if Task.isCancelled || Task.isShuttingDownGracefully { break }
                logger.warning(
                    "command channel to the manager broke",
                    metadata: [
                        "df.manager": "\(managerAddress)", "df.error": "\(DragonflyError(converting: error).message)",
                    ])
            }
            // A channel that stayed up a while starts the backoff over.
            if ContinuousClock.now - opened > .seconds(60) { backoff = .seconds(1) }
            let pause = backoff
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: pause) }
            backoff = min(backoff * 2, .seconds(30))
        }
    }

    /// One channel, until it ends.
    private func session() async throws {
        var options = RPCClientOptions.defaults
        options.defaultTimeout = nil
        try await withRPCClient(
            target: managerAddress, options: options, interceptors: interceptors, logger: logger
        ) { client in
            let manager = Dragonfly_V1_Manager.Client(wrapping: client)
            let (outgoing, sink) = AsyncStream.makeStream(
                of: Dragonfly_V1_CommandChannelRequest.OneOf_Request.self,
                bufferingPolicy: .bufferingOldest(4 * Self.maxConcurrentJobs))
            let identity = self.identity
            let executor = self.executor
            let logger = self.logger
            let hosts = self.hosts
            let hostsReportInterval = self.hostsReportInterval
            try await manager.commandChannel(
                requestProducer: { writer in
                    var start = Dragonfly_V1_CommandChannelStartRequest()
                    start.schedulerClusterID = identity.clusterID
                    start.hostname = identity.hostname
                    start.ip = identity.ip
                    var first = Dragonfly_V1_CommandChannelRequest()
                    first.schedulerID = identity.schedulerID
                    first.start = start
                    try await writer.write(first)
                    for await request in outgoing {
                        var message = Dragonfly_V1_CommandChannelRequest()
                        message.schedulerID = identity.schedulerID
                        message.request = request
                        try await writer.write(message)
                    }
                },
                onResponse: { response in
                    defer { sink.finish() }
                    try await withThrowingDiscardingTaskGroup { group in
                        group.addTask {
                            while !Task.isCancelled {
                                var report = Dragonfly_V1_HostsReport()
                                report.hosts = Array(hosts().prefix(Self.maxReportedHosts))
                                report.isFull = true
                                sink.yield(.hostsReport(report))
                                try? await Task.sleep(for: hostsReportInterval)
                            }
                        }
                        // Jobs run on at most maxConcurrentJobs workers; up to maxQueuedJobs wait their turn, a job
                        // beyond that fails at once ("busy") instead of piling up.
                        let (queue, enqueue) = AsyncStream.makeStream(
                            of: Dragonfly_V1_Job.self, bufferingPolicy: .bufferingOldest(Self.maxQueuedJobs))
                        for _ in 0..<Self.maxConcurrentJobs {
                            group.addTask {
                                for await job in queue {
                                    sink.yield(.jobResult(await executor.run(job)))
                                }
                            }
                        }
                        defer { enqueue.finish() }
                        for try await message in response.messages {
                            guard case .job(let job)? = message.response else { continue }
                            logger.info("job received", metadata: ["df.job": "\(job.id)"])
                            if case .dropped = enqueue.yield(job) {
                                var busy = Dragonfly_V1_JobResult()
                                busy.jobID = job.id
                                busy.schedulerClusterID = job.schedulerClusterID
                                busy.state = .failure
                                busy.reason = "the scheduler has \(Self.maxQueuedJobs) jobs waiting already"
                                sink.yield(.jobResult(busy))
                            }
                        }
                        group.cancelAll()
                    }
                })
        }
    }
}
