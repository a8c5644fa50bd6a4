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

/// Runs `dragonfly get`: picks the data directory, races the download against `--timeout` and SIGINT/SIGTERM,
/// shows progress, and turns the outcome into an exit code (DESIGN §15: 0, 1 with one line naming the cause,
/// 130/143 when interrupted — the output is untouched and no temporary is left).
enum GetRunner {
    private enum Outcome: Sendable {
        case finished(GetSummary)
        case failed(DragonflyError)
        case timedOut(Duration)
        case interrupted(Int32)
    }

    static func run(_ request: GetRequest, dataDirectory: String?, showProgress: Bool) async -> Int32 {
        let logger = Logger(label: "dragonfly.get")
        let display = ProgressDisplay(url: request.url, isTerminal: showProgress)
        let outcome: Outcome = await withTaskGroup(of: Outcome?.self) { group in
            group.addTask {
                do {
                    return .finished(
                        try await download(request, dataDirectory: dataDirectory, display: display, logger: logger))
                } catch let error as DragonflyError {
                    return .failed(error)
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
        case .finished(let summary):
            writeToStandardError(display.summaryLine(summary, output: request.output) + "\n")
            return 0
        case .failed(let error):
            writeToStandardError("dragonfly: \(error.description)\n")
            return error.code.exitCode
        case .timedOut(let limit):
            writeToStandardError(
                "dragonfly: download of \(request.url) timed out after \(ConfigDuration(milliseconds: limit.milliseconds))\n"
            )
            return 1
        case .interrupted(let code):
            writeToStandardError("dragonfly: interrupted; \(request.output ?? "standard output") left as it was\n")
            return code
        }
    }

    private static func download(
        _ request: GetRequest,
        dataDirectory: String?,
        display: ProgressDisplay,
        logger: Logger
    ) async throws -> GetSummary {
        let registry = PluginRegistry()
        try registerBuiltinMedia(into: registry)
        let workspace = try GetWorkspace.open(dataDirectory)
        defer { workspace.close() }
        let sources = try registerBuiltinSources(into: registry)
        let medium = try registry.makeMedium(
            named: "disk",
            context: StorageMediumContext(dataDirectory: workspace.path, capacity: 0)
        )
        let store = PieceStore(dataDirectory: workspace.path, medium: medium, logger: logger)
        do {
            _ = try await store.reload()
            let summary = try await OriginDownload(request: request, registry: registry, store: store, logger: logger)
                .run { progress in display.update(progress) }
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
