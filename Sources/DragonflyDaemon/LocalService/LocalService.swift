package import DragonflyCore
package import DragonflyProto
import DragonflyRPC
package import DragonflyStorage
package import GRPCCore
package import Logging
package import SwiftProtobuf

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// The Local service (DESIGN §5), served on the daemon's unix socket only: it can write files as the daemon's
/// user, so it is never exposed on TCP. `get`, the SDK and the proxy use it.
package struct LocalService: Dragonfly_V1_Local.SimpleServiceProtocol {
    let downloader: any TaskDownloading
    let store: PieceStore
    let schedulers: SchedulerPool?
    let activity: ActivityTracker?
    let logger: Logger

    /// - Parameter schedulers: Asked for their view of a task by `StatTask` with `ask_scheduler`.
    package init(
        downloader: any TaskDownloading, store: PieceStore, schedulers: SchedulerPool?, activity: ActivityTracker?,
        logger: Logger
    ) {
        self.downloader = downloader
        self.store = store
        self.schedulers = schedulers
        self.activity = activity
        self.logger = logger
    }

    package func downloadTask(
        request: Dragonfly_V1_DownloadTaskRequest,
        response: RPCWriter<Dragonfly_V1_DownloadProgress>,
        context: ServerContext
    ) async throws {
        try await tracked {
            try await rpcErrors {
                let final = try await downloader.download(request.download) { progress in
                    guard !progress.done else { return }
                    try? await response.write(progress)
                }
                try await response.write(final)
            }
        }
    }

    package func statTask(
        request: Dragonfly_V1_StatLocalTaskRequest,
        context: ServerContext
    ) async throws -> Dragonfly_V1_StatLocalTaskResponse {
        try await rpcErrors {
            let taskID = try TaskID.validated(request.taskID)
            var answer = Dragonfly_V1_StatLocalTaskResponse()
            if let info = store.taskInfo(taskID: taskID) {
                answer.local = Dragonfly_V1_TaskInfo(
                    stored: info, digests: (try? store.pieceDigests(taskID: taskID)) ?? [])
            }
            if request.askScheduler, let (address, client) = schedulers?.candidates(for: taskID).first {
                var stat = Dragonfly_V1_StatTaskRequest()
                stat.taskID = taskID.rawValue
                var options = CallOptions.defaults
                options.timeout = .seconds(2)
                do {
                    answer.scheduler = try await client.statTask(stat, options: options)
                } catch {
                    answer.schedulerError = "scheduler \(address): \(DragonflyError(converting: error).message)"
                }
            }
            return answer
        }
    }

    package func deleteTask(
        request: Dragonfly_V1_DeleteTaskRequest,
        context: ServerContext
    ) async throws -> Google_Protobuf_Empty {
        try await tracked {
            try await rpcErrors {
                let taskID = try TaskID.validated(request.taskID)
                guard store.taskInfo(taskID: taskID) != nil else {
                    throw DragonflyError(code: .notFound, message: "task \(taskID) is not in the cache")
                }
                try await store.deleteTask(taskID: taskID)
                return Google_Protobuf_Empty()
            }
        }
    }

    package func importTask(
        request: Dragonfly_V1_ImportTaskRequest,
        context: ServerContext
    ) async throws -> Dragonfly_V1_ImportTaskResponse {
        throw RPCError(
            code: .unimplemented, message: "importing a local file into the cache is not supported yet")
    }

    package func exportTask(
        request: Dragonfly_V1_ExportTaskRequest,
        context: ServerContext
    ) async throws -> Dragonfly_V1_ExportTaskResponse {
        try await tracked {
            try await rpcErrors {
                var download = request.download
                guard download.hasOutputPath else {
                    throw DragonflyError(code: .invalidArgument, message: "export needs an output path")
                }
                let taskID = Self.taskID(of: download)
                guard let info = store.taskInfo(taskID: taskID), info.isFinished else {
                    throw DragonflyError(code: .notFound, message: "task \(taskID) is not complete in the cache")
                }
                download.disableBackToSource = true
                _ = try await downloader.download(download) { _ in }
                var answer = Dragonfly_V1_ExportTaskResponse()
                if let info = store.taskInfo(taskID: taskID) {
                    answer.task = Dragonfly_V1_TaskInfo(
                        stored: info, digests: (try? store.pieceDigests(taskID: info.taskID)) ?? [])
                }
                return answer
            }
        }
    }

    package func listTaskEntries(
        request: Dragonfly_V1_ListTaskEntriesRequest,
        context: ServerContext
    ) async throws -> Dragonfly_V1_ListTaskEntriesResponse {
        throw RPCError(code: .unimplemented, message: "recursive downloads are not supported yet")
    }

    package func readTask(
        request: Dragonfly_V1_ReadTaskRequest,
        response: RPCWriter<Dragonfly_V1_ReadTaskChunk>,
        context: ServerContext
    ) async throws {
        // Placeholder until the client-side output writer lands (it streams held bytes to a caller that cannot
        // read the daemon's data file).
        throw RPCError(code: .unimplemented, message: "reading task bytes over the socket is not supported yet")
    }

    /// The task ID a `Download` names (DESIGN §4).
    static func taskID(of download: Dragonfly_V1_Download) -> TaskID {
        TaskID.make(
            url: download.url,
            tag: download.tag,
            application: download.application,
            pieceLength: download.hasPieceLength ? Int64(clamping: download.pieceLength) : nil,
            filteredQueryParams: download.filteredQueryParams.isEmpty ? nil : download.filteredQueryParams
        )
    }

    private func tracked<Value>(_ body: () async throws -> Value) async throws -> Value {
        activity?.begin()
        defer { activity?.end() }
        return try await body()
    }

    /// Runs `body`, turning a `DragonflyError` into the `RPCError` of the mapping in DragonflyRPC.
    private func rpcErrors<Value>(_ body: () async throws -> Value) async throws -> Value {
        do {
            return try await body()
        } catch let error as RPCError {
            throw error
        } catch {
            let converted = DragonflyError(converting: error)
            throw RPCError(
                code: converted.rpcErrorCode, message: converted.rpcErrorMessage, metadata: converted.rpcErrorMetadata)
        }
    }
}
