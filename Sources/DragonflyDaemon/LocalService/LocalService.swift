package import DragonflyCore
package import DragonflyProto
import DragonflyRPC
package import DragonflyStorage
package import GRPCCore
package import Logging
import NIOCore
package import SwiftProtobuf

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// The Local service (DESIGN §5), served on the daemon's unix socket only (never on TCP). `get` and the SDK use
/// it to fill the daemon's cache and read it back; the daemon never writes a file a caller names (a request
/// with `output_path` is refused: `dragonfly get` writes its own output as its own user) and never reads a
/// local path for a caller (`file://` is refused: `get` reads it itself).
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
                try Self.checkCallerRequest(request.download)
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
        try await rpcErrors {
            try Self.checkCallerRequest(request.download)
            throw DragonflyError(
                code: .invalidArgument,
                message: "the daemon never writes files for callers; read the task with ReadTask and write it yourself")
        }
    }

    /// Streams bytes of a cached task in order, in chunks of at most 1 MiB, as the response writer takes them
    /// (so a slow reader holds at most a chunk or two in memory). Only held pieces are read: the stream ends
    /// with `notFound` at the first piece the cache does not hold.
    package func readTask(
        request: Dragonfly_V1_ReadTaskRequest,
        response: RPCWriter<Dragonfly_V1_ReadTaskChunk>,
        context: ServerContext
    ) async throws {
        try await tracked {
            try await rpcErrors {
                let taskID = try TaskID.validated(request.taskID)
                guard let info = store.taskInfo(taskID: taskID) else {
                    throw DragonflyError(code: .notFound, message: "task \(taskID) is not in the cache")
                }
                let start = Int64(clamping: request.offset)
                var end = request.hasLength ? start &+ Int64(clamping: request.length) : (info.contentLength ?? .max)
                if end < start { end = .max }
                if let length = info.contentLength { end = min(end, length) }
                guard end != .max else {
                    throw DragonflyError(
                        code: .failedPrecondition, message: "the length of task \(taskID) is not known yet")
                }
                guard start <= end else {
                    throw DragonflyError(
                        code: .invalidArgument, message: "offset \(start) is beyond the end of task \(taskID)")
                }
                var position = start
                try await store.readRange(taskID: taskID, range: start..<end) { buffer in
                    var rest = buffer
                    while rest.readableBytes > 0 {
                        let count = min(rest.readableBytes, Self.readChunkLimit)
                        guard let slice = rest.readSlice(length: count) else { break }
                        var chunk = Dragonfly_V1_ReadTaskChunk()
                        chunk.offset = UInt64(position)
                        chunk.data = Data(slice.readableBytesView)
                        try await response.write(chunk)
                        position += Int64(count)
                    }
                }
            }
        }
    }

    /// The most bytes one `ReadTaskChunk` carries.
    static let readChunkLimit = 1 << 20

    package func listTaskEntries(
        request: Dragonfly_V1_ListTaskEntriesRequest,
        context: ServerContext
    ) async throws -> Dragonfly_V1_ListTaskEntriesResponse {
        throw RPCError(code: .unimplemented, message: "recursive downloads are not supported yet")
    }

    /// Refuses what the daemon never does for a caller: writing a path it names (`output_path`), or reading a
    /// local path (`file://`). Both would act with the daemon's user's rights, not the caller's.
    static func checkCallerRequest(_ download: Dragonfly_V1_Download) throws(DragonflyError) {
        if download.hasOutputPath {
            throw DragonflyError(
                code: .invalidArgument,
                message:
                    "the daemon never writes files for callers; drop output_path (dragonfly get writes its own output)")
        }
        if download.url.lowercased().hasPrefix("file:") {
            throw DragonflyError(
                code: .invalidArgument,
                message: "the daemon never reads local files for callers; read file:// URLs in your own process")
        }
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
