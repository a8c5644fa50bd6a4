import AsyncHTTPClient
package import DragonflyCore
package import DragonflyProto
import DragonflyRPC
package import DragonflyStorage
package import Logging
import NIOCore
import Prometheus
import SwiftProtobuf
import Synchronization

/// Runs the daemon's downloads (DESIGN §6): one run per task at a time, shared by every caller of that task.
///
/// A task already complete in the store is exported at once. Otherwise a ``TaskRun`` fetches it: through the
/// scheduler that owns the task on the hash ring (pieces from parents, or from the origin when the scheduler
/// says so), failing over to the next scheduler when one dies, and straight from the origin when no scheduler
/// answers (unless back-to-source is disabled). Callers that name an output path get the file written
/// atomically once every piece is held and the digest, if any, matches.
package final class DownloadConductor: TaskDownloading {
    /// Runs in progress at once; more callers are refused with `resourceExhausted`.
    package static let maximumRuns = 256

    let context: RunContext
    private let runs = Mutex<[TaskID: RunHandle]>([:])
    /// Published once the store has reloaded the tasks of an earlier run; downloads wait for it, so a task
    /// left unfinished by a crash resumes from its verified pieces instead of starting over on top of them.
    private let storeLoaded: Published<Void>?

    /// - Parameter storeLoaded: Published when the store's ``PieceStore/reload()`` is done; nil when the
    ///   caller reloaded it already (or never will).
    package init(
        store: PieceStore,
        announcer: PieceAnnouncer,
        metrics: DaemonMetrics,
        registry: PluginRegistry,
        config: DaemonConfig,
        schedulers: SchedulerPool,
        identity: Published<HostIdentity>,
        storeLoaded: Published<Void>? = nil,
        logger: Logger
    ) {
        self.storeLoaded = storeLoaded
        context = RunContext(
            store: store,
            announcer: announcer,
            metrics: metrics,
            registry: registry,
            config: config,
            schedulers: schedulers,
            identity: identity,
            http: HTTPClient(eventLoopGroupProvider: .singleton, configuration: Self.httpConfiguration(config)),
            logger: logger
        )
    }

    private static func httpConfiguration(_ config: DaemonConfig) -> HTTPClient.Configuration {
        var configuration = HTTPClient.Configuration()
        configuration.connectionPool = .init(idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: 8)
        // No read timeout: AsyncHTTPClient re-arms it on every socket read (a profile of the swarm benchmark put
        // that at ~9 % of the daemon's CPU). Stalls are the dispatcher's call, which cancels the request.
        configuration.timeout = .init(connect: .seconds(5), read: nil)
        configuration.decompression = .disabled
        configuration.redirectConfiguration = .disallow
        return configuration
    }

    /// Cancels every run (each closes its task in the store, keeping the verified pieces for a later resume,
    /// and ends its scheduler stream), waits for them to end, and closes the HTTP client used for parents;
    /// call once on shutdown.
    package func shutdown() async {
        let handles = runs.withLock { Array($0.values) }
        for handle in handles { handle.cancel() }
        // A run's progress stream ends when the run does; a run slow to stop gets at most the grace period.
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                for handle in handles {
                    let subscription = handle.hub.subscribe()
                    for await _ in subscription {}
                    handle.hub.unsubscribe(subscription)
                }
            }
            group.addTask { try? await Task.sleep(for: Self.shutdownGrace) }
            await group.next()
            group.cancelAll()
        }
        try? await context.http.shutdown()
    }

    /// How long ``shutdown()`` waits for cancelled runs to close their tasks.
    static let shutdownGrace: Duration = .seconds(2)

    /// The tasks being downloaded now.
    package var runningTasks: [TaskID] { runs.withLock { Array($0.keys) } }

    package func download(
        _ download: Dragonfly_V1_Download,
        progress: @escaping @Sendable (Dragonfly_V1_DownloadProgress) async -> Void
    ) async throws -> Dragonfly_V1_DownloadProgress {
        let request = try TaskRequest(download)
        if let storeLoaded {
            do {
                try await storeLoaded.value()
            } catch {
                throw DragonflyError(code: .unavailable, message: "the local cache could not be loaded", cause: error)
            }
        }
        var logger = context.logger
        logger[metadataKey: "df.task.id"] = "\(request.taskID)"
        // A run that ends with pieces still missing (another caller's range, a cancelled run) is followed by
        // another; bounded so a task that never completes cannot loop.
        // The newest report of a run this caller followed: the final report carries its per-source byte counts.
        var latest: Dragonfly_V1_DownloadProgress?
        for _ in 0..<3 {
            if let done = try await exportIfHeld(request, after: latest, progress: progress) { return done }
            let handle = try joinOrStart(request)
            // A range caller's pieces go first, once the task's layout is known (now, or from a report).
            var isUrgent = request.range == nil || markUrgent(request, in: handle)
            // The subscription ends when the run ends or when this caller is cancelled (which only ends its wait).
            let subscription = handle.hub.subscribe()
            defer { handle.hub.unsubscribe(subscription) }
            for await update in subscription {
                latest = update
                if !isUrgent { isUrgent = markUrgent(request, in: handle) }
                await progress(update)
                // A range caller is done once its pieces are held; the run goes on for the rest of the task.
                if request.range != nil, update.hasPiece,
                    let done = try await exportIfHeld(request, after: latest, progress: progress)
                {
                    return done
                }
            }
            try Task.checkCancellation()
            do {
                try await handle.wait()
            } catch {
                throw DragonflyError(converting: error)
            }
        }
        if let done = try await exportIfHeld(request, after: latest, progress: progress) { return done }
        throw DragonflyError(
            code: .unavailable, message: "the download of \(Redaction.url(request.url)) ended with pieces still missing"
        )
    }

    /// Adds the pieces of a range request to the run's urgent pieces; false while the task's layout is unknown.
    private func markUrgent(_ request: TaskRequest, in handle: RunHandle) -> Bool {
        guard let info = context.store.taskInfo(taskID: request.taskID), let length = info.contentLength else {
            return false
        }
        let range = request.outputRange(contentLength: length)
        if let pieces = PieceMath.pieces(covering: range, contentLength: length, pieceLength: info.pieceLength) {
            let store = context.store
            handle.urgent.remove { store.hasPiece(taskID: request.taskID, number: $0) }
            handle.urgent.add(pieces.filter { !store.hasPiece(taskID: request.taskID, number: $0) })
        }
        return true
    }

    /// Exports (or just reports) the task when every piece the caller needs is held; nil otherwise. The final
    /// report takes its bytes from peers, origin and cache from `latest`, the run's last report; without one
    /// every byte came from the cache.
    private func exportIfHeld(
        _ request: TaskRequest,
        after latest: Dragonfly_V1_DownloadProgress?,
        progress: @Sendable (Dragonfly_V1_DownloadProgress) async -> Void
    ) async throws -> Dragonfly_V1_DownloadProgress? {
        let store = context.store
        guard let info = store.taskInfo(taskID: request.taskID), let length = info.contentLength else { return nil }
        let range = request.outputRange(contentLength: length)
        if !info.isFinished {
            guard request.range != nil,
                let pieces = PieceMath.pieces(covering: range, contentLength: length, pieceLength: info.pieceLength),
                pieces.allSatisfy({ store.hasPiece(taskID: request.taskID, number: $0) })
            else { return nil }
        }
        var written = Int64(range.count)
        if let output = request.outputPath {
            if request.range == nil {
                written = try await store.export(
                    taskID: request.taskID, to: output, hardLink: request.hardLink, verify: request.digest)
            } else {
                written = try await store.export(
                    taskID: request.taskID, range: range, to: output, verify: request.digest)
            }
        }
        var done = Dragonfly_V1_DownloadProgress()
        done.taskID = request.taskID.rawValue
        done.hostID = context.identity.current?.hostID ?? ""
        done.contentLength = UInt64(length)
        done.pieceLength = UInt64(info.pieceLength)
        if let count = info.pieceCount { done.pieceCount = UInt32(count) }
        done.bytesDownloaded = UInt64(written)
        if let latest {
            done.bytesFromPeers = latest.bytesFromPeers
            done.bytesFromOrigin = latest.bytesFromOrigin
            done.bytesFromLocal = latest.bytesFromLocal
        } else {
            done.bytesFromLocal = UInt64(written)
        }
        done.responseHeader = info.headers
        done.done = true
        await progress(done)
        return done
    }

    private func joinOrStart(_ request: TaskRequest) throws -> RunHandle {
        try runs.withLock { runs in
            if let existing = runs[request.taskID] { return existing }
            guard runs.count < Self.maximumRuns else {
                throw DragonflyError(
                    code: .resourceExhausted,
                    message: "\(Self.maximumRuns) downloads are running; try again when one finishes")
            }
            let handle = RunHandle()
            let run = TaskRun(request: request, context: context, hub: handle.hub, urgent: handle.urgent)
            // Started under the lock so that every caller that finds the handle can await its task.
            handle.start(
                Task { [self] in
                    defer {
                        self.runs.withLock { _ = $0.removeValue(forKey: request.taskID) }
                        handle.hub.finish()
                    }
                    try await run.run()
                })
            runs[request.taskID] = handle
            return handle
        }
    }
}

/// What every run of the daemon shares.
struct RunContext: Sendable {
    let store: PieceStore
    let announcer: PieceAnnouncer
    let metrics: DaemonMetrics
    let registry: PluginRegistry
    let config: DaemonConfig
    let schedulers: SchedulerPool
    let identity: Published<HostIdentity>
    let http: HTTPClient
    let logger: Logger
}

/// A run in progress and the progress it broadcasts to its callers.
final class RunHandle: Sendable {
    let hub = ProgressHub()
    /// Pieces range callers wait for, fetched first.
    let urgent = UrgentPieces()
    private let taskBox = Mutex<Task<Void, any Error>?>(nil)

    /// Set once, right after the handle is registered and before anyone can await it.
    func start(_ task: Task<Void, any Error>) { taskBox.withLock { $0 = task } }

    /// Cancels the run.
    func cancel() { taskBox.withLock { $0 }?.cancel() }

    /// Waits for the run to end.
    func wait() async throws {
        guard let task = taskBox.withLock({ $0 }) else { return }
        try await task.value
    }
}

/// Broadcasts a run's progress to its callers; each keeps only the newest few updates when slow.
final class ProgressHub: Sendable {
    private struct State {
        var subscribers: [ObjectIdentifier: AsyncStream<Dragonfly_V1_DownloadProgress>.Continuation] = [:]
        var latest: Dragonfly_V1_DownloadProgress?
        var finished = false
    }
    private let state = Mutex(State())
    /// The most callers of one run.
    static let maximumSubscribers = 1024

    final class Subscription: AsyncSequence, Sendable {
        typealias Element = Dragonfly_V1_DownloadProgress
        let stream: AsyncStream<Dragonfly_V1_DownloadProgress>
        init(_ stream: AsyncStream<Dragonfly_V1_DownloadProgress>) { self.stream = stream }
        func makeAsyncIterator() -> AsyncStream<Dragonfly_V1_DownloadProgress>.Iterator { stream.makeAsyncIterator() }
    }

    func subscribe() -> Subscription {
        let (stream, continuation) = AsyncStream.makeStream(
            of: Dragonfly_V1_DownloadProgress.self, bufferingPolicy: .bufferingNewest(16))
        let subscription = Subscription(stream)
        state.withLock { state in
            if state.finished || state.subscribers.count >= Self.maximumSubscribers {
                continuation.finish()
                return
            }
            if let latest = state.latest { continuation.yield(latest) }
            state.subscribers[ObjectIdentifier(subscription)] = continuation
        }
        return subscription
    }

    func unsubscribe(_ subscription: Subscription) {
        let continuation = state.withLock { $0.subscribers.removeValue(forKey: ObjectIdentifier(subscription)) }
        continuation?.finish()
    }

    func publish(_ progress: Dragonfly_V1_DownloadProgress) {
        state.withLock { state in
            state.latest = progress
            for continuation in state.subscribers.values { continuation.yield(progress) }
        }
    }

    func finish() {
        let continuations = state.withLock { state in
            state.finished = true
            defer { state.subscribers = [:] }
            return Array(state.subscribers.values)
        }
        for continuation in continuations { continuation.finish() }
    }
}

/// A validated `Download`.
struct TaskRequest: Sendable {
    let download: Dragonfly_V1_Download
    let url: String
    let taskID: TaskID
    let outputPath: String?
    let digest: FileDigest?
    let range: ByteRange?
    let pieceLength: Int64?
    let headers: [HeaderField]
    let hardLink: Bool
    let timeout: Duration?

    init(_ download: Dragonfly_V1_Download) throws(DragonflyError) {
        guard !download.url.isEmpty else {
            throw DragonflyError(code: .invalidArgument, message: "the download has no URL")
        }
        self.download = download
        url = download.url
        if download.hasOutputPath {
            guard download.outputPath.hasPrefix("/") else {
                throw DragonflyError(
                    code: .invalidArgument, message: "output path '\(download.outputPath)' must be absolute")
            }
            outputPath = download.outputPath
        } else {
            outputPath = nil
        }
        digest = download.hasDigest ? try FileDigest(parsing: download.digest) : nil
        range =
            download.hasRange
            ? ByteRange(
                start: Int64(download.range.start),
                length: download.range.hasLength ? Int64(download.range.length) : nil) : nil
        if download.hasPieceLength {
            let length = Int64(clamping: download.pieceLength)
            guard PieceMath.isValidFixedPieceLength(length) else {
                throw DragonflyError(
                    code: .invalidArgument, message: "piece length \(length) is not a power of two in 4–64 MiB")
            }
            pieceLength = length
        } else {
            pieceLength = nil
        }
        taskID = TaskID.make(
            url: download.url,
            tag: download.tag,
            application: download.application,
            pieceLength: pieceLength,
            filteredQueryParams: download.filteredQueryParams.isEmpty ? nil : download.filteredQueryParams
        )
        headers = download.requestHeader.sorted { $0.key < $1.key }.map { HeaderField(name: $0.key, value: $0.value) }
        hardLink = download.hardLink
        if download.hasTimeout {
            let value = Duration(
                secondsComponent: download.timeout.seconds,
                attosecondsComponent: Int64(download.timeout.nanos) * 1_000_000_000)
            timeout = value > .zero ? value : nil
        } else {
            timeout = nil
        }
    }

    /// The bytes to output, clamped to the object.
    func outputRange(contentLength: Int64) -> Range<Int64> {
        guard let range else { return 0..<contentLength }
        let start = min(range.start, contentLength)
        let end = min(range.length.map { range.start + $0 } ?? contentLength, contentLength)
        return start..<max(end, start)
    }
}
