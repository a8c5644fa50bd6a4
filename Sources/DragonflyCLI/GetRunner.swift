import DragonflyClient
import DragonflyCore
import DragonflySource
import DragonflyStorage
import Foundation
import Logging
import Synchronization
import UnixSignals

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Runs `dragonfly get`: through the local daemon (starting one when none answers) or, with `--no-daemon` and
/// as the fallback when no daemon can serve, straight from the origin; races the download against `--timeout`
/// and SIGINT/SIGTERM, shows progress, and turns the outcome into an exit code (DESIGN §15: 0, 1 with one line
/// naming the cause, 2 for an invalid daemon configuration, 130/143 when interrupted — the output is untouched
/// and no temporary is left).
enum GetRunner {
    /// How to run the download, from the command line.
    struct Settings: Sendable {
        /// False for `--no-daemon`.
        var useDaemon: Bool
        /// `--data-dir`: the auto-started daemon's data dir, or the `--no-daemon` cache.
        var dataDirectory: String?
        /// `--socket`.
        var socket: String?
        /// `--daemon-config` (or `DRAGONFLY_DAEMON_CONFIG`).
        var daemonConfig: String?
        /// `--daemon-idle-exit`.
        var daemonIdleExit: Duration
        /// `--priority`.
        var priority: Int
        var showProgress: Bool
    }

    /// The system daemon's socket and data directory (the defaults of a daemon run as root).
    static let systemSocket = "/var/run/dragonfly/dfdaemon.sock"
    static let systemDataDirectory = "/var/lib/dragonfly/daemon"

    /// How long `get` waits for a daemon it started to answer on its socket.
    static let daemonStartTimeLimit: Duration = .seconds(10)

    private struct Finished: Sendable {
        var summary: GetSummary
        /// Bytes from peers; nil when the origin path ran.
        var peerBytes: Int64?
    }

    private enum Outcome: Sendable {
        case finished(Finished)
        case failed(DragonflyError)
        case timedOut(Duration)
        case interrupted(Int32)
    }

    static func run(_ request: GetRequest, settings: Settings) async -> Int32 {
        let logger = Logger(label: "dragonfly.get")
        let display = ProgressDisplay(url: request.url, isTerminal: settings.showProgress)
        let outcome: Outcome = await withTaskGroup(of: Outcome?.self) { group in
            group.addTask {
                do {
                    return .finished(try await download(request, settings: settings, display: display, logger: logger))
                } catch let error as DragonflyError {
                    return error.code == .cancelled && Task.isCancelled ? nil : .failed(error)
                } catch is CancellationError {
                    return nil
                } catch {
                    return .failed(DragonflyError(code: .internalError, message: "\(error)"))
                }
            }
            if let timeout = request.timeout {
                group.addTask {
                    try? await Task.sleep(for: timeout)
                    return Task.isCancelled ? nil : .timedOut(timeout)
                }
            }
            group.addTask {
                let signals = await UnixSignalsSequence(trapping: .sigint, .sigterm)
                for await signal in signals {
                    return .interrupted(signal == .sigint ? 130 : 143)
                }
                return nil
            }
            var result: Outcome = .failed(
                DragonflyError(code: .internalError, message: "download ended without a result"))
            for await outcome in group {
                if let outcome {
                    result = outcome
                    break
                }
            }
            group.cancelAll()
            // Wait for the download to unwind (its temporaries are removed by then).
            for await _ in group {}
            return result
        }
        display.finish()
        switch outcome {
        case .finished(let finished):
            writeToStandardError(
                display.summaryLine(finished.summary, output: request.output, peerBytes: finished.peerBytes) + "\n")
            return 0
        case .failed(let error):
            writeToStandardError("dragonfly: \(Redaction.message(error.message))\n")
            return error.code.exitCode
        case .timedOut(let limit):
            writeToStandardError(
                "dragonfly: download of \(Redaction.url(request.url)) timed out after \(ConfigDuration(milliseconds: limit.milliseconds))\n"
            )
            return 1
        case .interrupted(let code):
            writeToStandardError("dragonfly: interrupted; \(request.output ?? "standard output") left as it was\n")
            return code
        }
    }

    private static func download(
        _ request: GetRequest,
        settings: Settings,
        display: ProgressDisplay,
        logger: Logger
    ) async throws -> Finished {
        // A file:// URL is read by this process, as the calling user: no daemon ever reads a local path for a
        // caller.
        guard settings.useDaemon, !request.url.lowercased().hasPrefix("file:") else {
            let summary = try await originDownload(
                request, workspace: try GetWorkspace.open(settings.dataDirectory), settings: settings,
                display: display, logger: logger)
            return Finished(summary: summary, peerBytes: nil)
        }
        let reason: DragonflyError
        switch await daemonDownload(request, settings: settings, display: display, logger: logger) {
        case .success(let finished):
            return finished
        case .failure(let error) where DaemonClient.isDaemonUnavailable(error):
            reason = error
        case .failure(let error):
            throw error
        }
        guard !request.disableBackToSource else {
            throw DragonflyError(
                code: .unavailable,
                message:
                    "the local daemon cannot serve \(Redaction.url(request.url)) and back-to-source is disabled: \(reason.message)"
            )
        }
        logger.warning(
            "the local daemon cannot serve; downloading from the origin",
            metadata: ["df.daemon.error": "\(reason.message)"])
        let summary = try await originDownload(
            request, workspace: try GetWorkspace.openForFallback(settings.dataDirectory), settings: settings,
            display: display, logger: logger)
        return Finished(summary: summary, peerBytes: nil)
    }

    /// Downloads through the daemon at the socket, starting one first when none answers. A failure that
    /// ``DaemonClient/isDaemonUnavailable(_:)`` accepts means the origin path may run instead (nothing was
    /// written yet).
    private static func daemonDownload(
        _ request: GetRequest,
        settings: Settings,
        display: ProgressDisplay,
        logger: Logger
    ) async -> Result<Finished, DragonflyError> {
        var launch = DaemonLaunchConfiguration(
            executablePath: "",
            socketPath: settings.socket ?? DaemonSocket.defaultPath,
            dataDirectory: settings.dataDirectory,
            configPath: settings.daemonConfig,
            idleExit: settings.daemonIdleExit
        )
        // An invalid daemon configuration is the caller's error (exit 2), whether or not a daemon must start.
        let config: DaemonConfig
        switch Result(catching: { () throws(DragonflyError) in try launch.loadDaemonConfig().config }) {
        case .success(let loaded): config = loaded
        case .failure(let error): return .failure(error)
        }
        if settings.socket == nil, !config.socket.isEmpty {
            launch.socketPath = config.socket
        } else if settings.socket == nil, settings.dataDirectory == nil, settings.daemonConfig == nil,
            !RolePaths.isRoot,
            DaemonSocket.isAnswering(path: systemSocket)
        {
            // A user's get shares the system daemon (its cache and swarm) when its socket lets the user in; the
            // output is still written by this process, as the user. Only otherwise does a per-user daemon start.
            launch.socketPath = systemSocket
            launch.dataDirectory = systemDataDirectory
        }
        switch Result(catching: { () throws(DragonflyError) in try DaemonLauncher.currentExecutablePath() }) {
        case .success(let path): launch.executablePath = path
        case .failure(let error): return .failure(DragonflyError(code: .unavailable, message: error.message))
        }
        // Two attempts: a daemon that reached its idle exit just after answering the probe is started again.
        var attempt = 1
        while true {
            let started = await capture { () async throws(DragonflyError) in
                try await DaemonLauncher.ensureRunning(launch, timeLimit: daemonStartTimeLimit, logger: logger)
            }
            if case .failure(let error) = started {
                let isFatal = error.code == .configuration || error.code == .cancelled
                return .failure(isFatal ? error : DragonflyError(code: .unavailable, message: error.message))
            }
            let client = DaemonClient(socketPath: launch.socketPath, logger: logger)
            let download = DaemonDownload(
                request: request,
                client: client,
                priority: settings.priority,
                dataDirectory: try? launch.effectiveDataDirectory()
            )
            let result = await capture { () async throws(DragonflyError) in
                try await download.run { progress in
                    display.update(progress.getProgress, peerBytes: progress.bytesFromPeers)
                }
            }
            switch result {
            case .success(let result):
                return .success(Finished(summary: result.summary, peerBytes: result.peerBytes))
            case .failure(let error) where DaemonClient.isDaemonUnavailable(error):
                if download.hasWrittenToStandardOutput {
                    // Part of the stream is out: starting again elsewhere would corrupt it.
                    return .failure(DragonflyError(code: .failedPrecondition, message: error.message))
                }
                if attempt == 1, error.code == .unavailable, !DaemonSocket.isAnswering(path: launch.socketPath) {
                    logger.debug("the daemon went away; starting it again", metadata: ["df.daemon.error": "\(error)"])
                    attempt += 1
                    continue
                }
                return .failure(
                    DragonflyError(
                        code: error.code, message: "the daemon at \(launch.socketPath) failed: \(error.message)"))
            case .failure(let error):
                return .failure(error)
            }
        }
    }

    /// The outcome of `body` as a value.
    private static func capture<Value>(
        _ body: () async throws(DragonflyError) -> Value
    ) async -> Result<Value, DragonflyError> {
        do {
            return .success(try await body())
        } catch {
            return .failure(error)
        }
    }

    /// Downloads in this process into the workspace's cache, which then gets the daemon's garbage collection
    /// (TTL and watermarks of `storage.*` in `--daemon-config`, else the defaults), so it never grows unbounded.
    private static func originDownload(
        _ request: GetRequest,
        workspace: GetWorkspace,
        settings: Settings,
        display: ProgressDisplay,
        logger: Logger
    ) async throws -> GetSummary {
        defer { workspace.close() }
        let storage = try DaemonLaunchConfiguration(
            executablePath: "", socketPath: "", configPath: settings.daemonConfig
        ).loadDaemonConfig().config.storage
        let registry = PluginRegistry()
        try registerBuiltinMedia(into: registry)
        let sources = try registerBuiltinSources(into: registry)
        let medium = try registry.makeMedium(
            named: "disk",
            context: StorageMediumContext(dataDirectory: workspace.path, capacity: 0)
        )
        let store = PieceStore(
            dataDirectory: workspace.path, medium: medium, configuration: PieceStoreConfiguration(storage: storage),
            logger: logger)
        do {
            _ = try await store.reload()
            let summary = try await OriginDownload(request: request, registry: registry, store: store, logger: logger)
                .run { progress in display.update(progress) }
            if !workspace.isTemporary {
                let report = try await store.collectGarbage()
                logger.debug(
                    "collected the cache's garbage",
                    metadata: ["df.gc.freed": "\(report.freedBytes)", "df.gc.used": "\(report.usedBytes)"])
            }
            try await store.close()
            try await sources.shutdown()
            return summary
        } catch {
            try? await store.close()
            try? await sources.shutdown()
            throw error
        }
    }
}

extension Duration {
    /// Whole milliseconds.
    var milliseconds: Int64 { components.seconds * 1000 + components.attoseconds / 1_000_000_000_000_000 }
}

/// The data directory of a `--no-daemon` download: the given one, else a private cache that later runs reuse
/// (resuming interrupted downloads). When that cache is locked by a concurrent run, a temporary directory is
/// used and removed afterwards.
struct GetWorkspace {
    let path: String
    let lock: DataDirectoryLock
    let isTemporary: Bool

    static func open(_ requested: String?) throws -> GetWorkspace {
        if let requested {
            return GetWorkspace(path: requested, lock: try DataDirectoryLock(directory: requested), isTemporary: false)
        }
        let shared = RolePaths.defaultDataDirectory(role: "get")
        if let lock = try? DataDirectoryLock(directory: shared) {
            return GetWorkspace(path: shared, lock: lock, isTemporary: false)
        }
        return try openTemporary()
    }

    /// The data directory of the origin fallback: like ``open(_:)``, but a given directory that another process
    /// holds (the daemon that could not serve) is replaced by a temporary one.
    static func openForFallback(_ requested: String?) throws -> GetWorkspace {
        guard let requested else { return try open(nil) }
        if let lock = try? DataDirectoryLock(directory: requested) {
            return GetWorkspace(path: requested, lock: lock, isTemporary: false)
        }
        return try openTemporary()
    }

    private static func openTemporary() throws -> GetWorkspace {
        var template = Array("/tmp/dragonfly-get-XXXXXX".utf8CString)
        let created = template.withUnsafeMutableBufferPointer { buffer in
            buffer.baseAddress.map { mkdtemp($0) != nil } ?? false
        }
        guard created else {
            throw AtomicFile.posixError("cannot create a temporary data directory")
        }
        let path = String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return GetWorkspace(path: path, lock: try DataDirectoryLock(directory: path), isTemporary: true)
    }

    func close() {
        lock.release()
        if isTemporary { try? FileManager.default.removeItem(atPath: path) }
    }
}
