package import DragonflyCore
package import DragonflyProto
import DragonflyRPC
import GRPCCore
package import Logging
import SwiftProtobuf

#if canImport(FoundationEssentials)
package import FoundationEssentials
#else
package import Foundation
#endif

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Talks to the local daemon's **Local** gRPC service over its unix socket (DESIGN §5): downloads through the
/// daemon (P2P, with the daemon's cache) and asks what the daemon knows of a task.
///
/// Each call opens its own connection to the socket and closes it when the call ends; the socket is local, so
/// this costs little and a client value can be kept and shared freely.
///
/// ```swift
/// let client = DaemonClient(socketPath: DaemonSocket.defaultPath)
/// let request = GetRequest(url: "https://example.com/model.safetensors", output: "model.safetensors")
/// let final = try await client.download(request) { progress in
///     print("\(progress.bytesDownloaded) of \(progress.contentLength ?? 0) bytes")
/// }
/// print("\(final.bytesFromPeers) bytes came from peers")
/// let stat = try await client.stat(taskID: request.taskID)
/// print(stat.local?.state ?? "not cached")
/// ```
///
/// Errors are `DragonflyError`s carrying the daemon's code (``DragonflyError/init(converting:)``): an origin
/// refusal arrives as `.originError` with the origin's status in the message; ``isDaemonUnavailable(_:)`` tells
/// the errors that mean "this daemon cannot serve" (no socket, an older daemon, a daemon fault) apart from
/// those about the download itself.
package struct DaemonClient: Sendable {
    /// The daemon's unix socket.
    package let socketPath: String
    private let logger: Logger

    /// A client of the daemon listening on `socketPath` (nothing is connected until a call).
    package init(socketPath: String, logger: Logger = Logger(label: "dragonfly.client")) {
        self.socketPath = socketPath
        self.logger = logger
    }

    /// Downloads `request` into the daemon's cache and returns its final progress report (`isDone` set).
    ///
    /// The daemon never writes a caller's file: `request.output` is not sent (``DaemonDownload`` writes the
    /// output from the cache). `progress` is called for every report, in order; an error it throws ends the call.
    ///
    /// - Parameters:
    ///   - priority: The download's priority, 0–6.
    /// - Throws: `DragonflyError` — the daemon's error, or `.unavailable` when nothing answers on the socket.
    package func download(
        _ request: GetRequest,
        priority: Int = 0,
        progress: @escaping @Sendable (DaemonDownloadProgress) async throws -> Void = { _ in }
    ) async throws(DragonflyError) -> DaemonDownloadProgress {
        var message = Dragonfly_V1_DownloadTaskRequest()
        message.download = try Self.makeDownload(request, priority: priority)
        let url = request.url
        return try await convertingRPCErrors {
            try await withRPCClient(
                target: RPCAddress.unixPrefix + socketPath,
                options: RPCClientOptions(defaultTimeout: nil),
                logger: logger
            ) { client in
                try await Dragonfly_V1_Local.Client(wrapping: client).downloadTask(message) { response in
                    var last: DaemonDownloadProgress?
                    for try await report in response.messages {
                        let converted = DaemonDownloadProgress(report)
                        try await progress(converted)
                        last = converted
                        if converted.isDone { break }
                    }
                    guard let last, last.isDone else {
                        throw DragonflyError(
                            code: .internalError,
                            message:
                                "the daemon at \(socketPath) ended the download of \(Redaction.url(url)) without finishing it"
                        )
                    }
                    return last
                }
            }
        }
    }

    /// Streams bytes `[offset, offset + length)` (to the end without `length`) of a task the daemon holds, in
    /// order; `body` gets each chunk's offset in the task and its bytes (at most 1 MiB), one at a time.
    ///
    /// - Throws: `DragonflyError` — `.notFound` when the daemon does not hold a piece the range needs,
    ///   `.unimplemented` from a daemon without `ReadTask`, `.unavailable` when nothing answers.
    package func readTask(
        taskID: TaskID,
        offset: Int64,
        length: Int64?,
        body: @escaping @Sendable (Int64, Data) async throws -> Void
    ) async throws(DragonflyError) {
        var message = Dragonfly_V1_ReadTaskRequest()
        message.taskID = taskID.rawValue
        message.offset = UInt64(max(offset, 0))
        if let length { message.length = UInt64(max(length, 0)) }
        let socketPath = socketPath
        try await convertingRPCErrors {
            try await withRPCClient(
                target: RPCAddress.unixPrefix + socketPath,
                options: RPCClientOptions(defaultTimeout: nil),
                logger: logger
            ) { client in
                try await Dragonfly_V1_Local.Client(wrapping: client).readTask(message) { response in
                    var next = offset
                    for try await chunk in response.messages {
                        guard chunk.offset == UInt64(next) else {
                            throw DragonflyError(
                                code: .internalError,
                                message: "the daemon at \(socketPath) sent byte \(chunk.offset) where \(next) was due")
                        }
                        try await body(next, chunk.data)
                        next += Int64(chunk.data.count)
                    }
                    if let length, next != offset + length {
                        throw DragonflyError(
                            code: .internalError,
                            message: "the daemon at \(socketPath) ended task \(taskID) at byte \(next)")
                    }
                }
            }
        }
    }

    /// What the daemon (and, with `askScheduler`, its scheduler) knows of a task.
    ///
    /// - Parameters:
    ///   - timeout: The deadline of the call, connection included.
    /// - Throws: `DragonflyError` — `.unavailable` when nothing answers, `.deadlineExceeded` after `timeout`.
    package func stat(
        taskID: TaskID,
        askScheduler: Bool = true,
        timeout: Duration = .seconds(5)
    ) async throws(DragonflyError) -> DaemonTaskStat {
        var message = Dragonfly_V1_StatLocalTaskRequest()
        message.taskID = taskID.rawValue
        message.askScheduler = askScheduler
        var options = CallOptions.defaults
        options.timeout = timeout
        return try await convertingRPCErrors {
            try await withRPCClient(
                target: RPCAddress.unixPrefix + socketPath,
                options: RPCClientOptions(defaultTimeout: timeout),
                logger: logger
            ) { client in
                let response = try await Dragonfly_V1_Local.Client(wrapping: client).statTask(
                    message, options: options)
                return DaemonTaskStat(response)
            }
        }
    }

    /// Whether `error` means that the daemon cannot serve at all — nothing listens on the socket, the daemon
    /// does not implement the call, or it failed internally — rather than that the download itself failed
    /// (an origin error such as 404 or a refused connection, a digest mismatch, a timeout). `get` falls back to
    /// the origin only then: an origin the daemon could not reach is not read a second time.
    package static func isDaemonUnavailable(_ error: DragonflyError) -> Bool {
        switch error.code {
        case .unimplemented, .internalError: true
        // UNAVAILABLE answered by the daemon's handler (with its dragonfly code) is about the origin or a
        // peer; without one it is the socket itself.
        case .unavailable: !answeredByDaemon(error)
        default: false
        }
    }

    /// Whether the daemon's own handler produced `error` (it carries the dragonfly code in its metadata).
    static func answeredByDaemon(_ error: DragonflyError) -> Bool {
        guard let rpcError = error.cause as? RPCError else { return false }
        return rpcError.metadata[stringValues: DragonflyError.codeMetadataKey].contains { _ in true }
    }

    /// The Local service's `Download` for `request` (without the output, which the daemon never writes): headers as a map (repeated names joined with ", "), no timeout as a zero duration.
    ///
    /// - Throws: `DragonflyError` when `priority` is not 0–6.
    package static func makeDownload(_ request: GetRequest, priority: Int = 0) throws(DragonflyError)
        -> Dragonfly_V1_Download
    {
        guard let level = Dragonfly_V1_Priority(rawValue: priority), (0...6).contains(priority) else {
            throw DragonflyError(code: .invalidArgument, message: "priority \(priority) is not 0-6")
        }
        var download = Dragonfly_V1_Download()
        download.url = request.url
        if let digest = request.digest {
            download.digest = digest.description
        }
        if let range = request.range {
            var wanted = Dragonfly_V1_Range()
            wanted.start = UInt64(max(range.start, 0))
            if let length = range.length {
                wanted.length = UInt64(max(length, 0))
            }
            download.range = wanted
        }
        download.tag = request.tag
        download.application = request.application
        download.priority = level
        download.filteredQueryParams = request.filteredQueryParams ?? []
        var headers: [String: String] = [:]
        for field in request.headers {
            if let existing = headers[field.name] {
                headers[field.name] = existing + ", " + field.value
            } else {
                headers[field.name] = field.value
            }
        }
        download.requestHeader = headers
        if let pieceLength = request.pieceLength {
            download.pieceLength = UInt64(max(pieceLength, 0))
        }
        // Absent would mean the daemon's default (2 h); the caller's choice always travels, zero meaning none.
        download.timeout = Google_Protobuf_Duration(rounding: request.timeout ?? .zero)
        download.disableBackToSource = request.disableBackToSource
        if let rateLimit = request.rateLimit {
            download.rateLimit = UInt64(max(rateLimit, 0))
        }
        return download
    }

    /// `path` if absolute, else resolved against the working directory.
    static func absolutePath(_ path: String) throws(DragonflyError) -> String {
        if path.hasPrefix("/") { return path }
        var buffer = [CChar](repeating: 0, count: 4096)
        guard getcwd(&buffer, buffer.count) != nil else {
            throw AtomicFile.posixError("cannot read the working directory")
        }
        let cwd = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return (cwd.hasSuffix("/") ? cwd : cwd + "/") + path
    }
}

/// A piece that landed in the daemon's cache, from a progress report.
package struct DaemonPiece: Sendable, Hashable {
    /// Piece number, from 0.
    package var number: Int
    /// Offset of its first byte in the task.
    package var offset: Int64
    /// Length in bytes.
    package var length: Int64
    /// `sha256:<hex>`, or empty when the daemon did not say.
    package var digest: String

    package init(number: Int, offset: Int64, length: Int64, digest: String = "") {
        self.number = number
        self.offset = offset
        self.length = length
        self.digest = digest
    }
}

/// One progress report of a download through the daemon.
package struct DaemonDownloadProgress: Sendable, Hashable {
    /// Task ID.
    package var taskID: String
    /// The object's length, once known.
    package var contentLength: Int64?
    /// Piece length in use (0 while unknown).
    package var pieceLength: Int64
    /// Bytes of the wanted range held so far.
    package var bytesDownloaded: Int64
    /// The piece this report is about, if any.
    package var piece: DaemonPiece?
    /// Bytes fetched from peers by this download.
    package var bytesFromPeers: Int64
    /// Bytes read from the origin by this download.
    package var bytesFromOrigin: Int64
    /// Bytes that were already in the daemon's cache.
    package var bytesFromLocal: Int64
    /// The download is complete and the output, if any, is in place.
    package var isDone: Bool

    package init(
        taskID: String,
        contentLength: Int64? = nil,
        pieceLength: Int64 = 0,
        bytesDownloaded: Int64 = 0,
        piece: DaemonPiece? = nil,
        bytesFromPeers: Int64 = 0,
        bytesFromOrigin: Int64 = 0,
        bytesFromLocal: Int64 = 0,
        isDone: Bool = false
    ) {
        self.taskID = taskID
        self.contentLength = contentLength
        self.pieceLength = pieceLength
        self.bytesDownloaded = bytesDownloaded
        self.piece = piece
        self.bytesFromPeers = bytesFromPeers
        self.bytesFromOrigin = bytesFromOrigin
        self.bytesFromLocal = bytesFromLocal
        self.isDone = isDone
    }

    init(_ message: Dragonfly_V1_DownloadProgress) {
        self.init(
            taskID: message.taskID,
            contentLength: message.hasContentLength ? Int64(clamping: message.contentLength) : nil,
            pieceLength: Int64(clamping: message.pieceLength),
            bytesDownloaded: Int64(clamping: message.bytesDownloaded),
            piece: message.hasPiece
                ? DaemonPiece(
                    number: Int(message.piece.number),
                    offset: Int64(clamping: message.piece.offset),
                    length: Int64(clamping: message.piece.length),
                    digest: message.piece.digest
                ) : nil,
            bytesFromPeers: Int64(clamping: message.bytesFromPeers),
            bytesFromOrigin: Int64(clamping: message.bytesFromOrigin),
            bytesFromLocal: Int64(clamping: message.bytesFromLocal),
            isDone: message.done
        )
    }

    /// As `get`'s progress (peer bytes count as fetched, like origin bytes).
    package var getProgress: GetProgress {
        GetProgress(
            completedBytes: bytesDownloaded,
            totalBytes: contentLength,
            originBytes: bytesFromOrigin,
            cachedBytes: bytesFromLocal
        )
    }
}

/// What a daemon or scheduler knows of a task (the parts `dragonfly stat` prints).
package struct DaemonTaskInfo: Sendable, Hashable {
    package var id: String
    package var url: String
    /// `pending`, `running`, `succeeded`, `failed` or `leave`.
    package var state: String
    package var contentLength: Int64?
    package var pieceLength: Int64
    package var pieceCount: Int?
    /// Pieces held (daemon) or known with digests (scheduler).
    package var heldPieces: Int
    /// Peers of the task at the scheduler.
    package var peerCount: Int
    /// Peers that can serve pieces now.
    package var availablePeerCount: Int
    /// The first held piece that has a digest.
    package var firstPiece: DaemonPiece?

    init(_ info: Dragonfly_V1_TaskInfo) {
        id = info.id
        url = info.url
        state =
            switch info.state {
            case .pending: "pending"
            case .running: "running"
            case .succeeded: "succeeded"
            case .failed: "failed"
            case .leave: "leave"
            default: "unknown"
            }
        contentLength = info.hasContentLength ? Int64(clamping: info.contentLength) : nil
        pieceLength = Int64(clamping: info.pieceLength)
        pieceCount = info.hasPieceCount ? Int(info.pieceCount) : nil
        heldPieces = info.pieces.count
        peerCount = Int(info.peerCount)
        availablePeerCount = Int(info.availablePeerCount)
        firstPiece = info.pieces.first { !$0.digest.isEmpty }.map {
            DaemonPiece(
                number: Int($0.number), offset: Int64(clamping: $0.offset), length: Int64(clamping: $0.length),
                digest: $0.digest)
        }
    }
}

/// The answer of the Local service's `StatTask`.
package struct DaemonTaskStat: Sendable, Hashable {
    /// The task in the daemon's cache; nil when not cached.
    package var local: DaemonTaskInfo?
    /// The scheduler's view; nil when not asked or unknown there.
    package var scheduler: DaemonTaskInfo?
    /// Why the scheduler could not be asked; empty when it answered or was not asked.
    package var schedulerError: String

    init(_ response: Dragonfly_V1_StatLocalTaskResponse) {
        local = response.hasLocal ? DaemonTaskInfo(response.local) : nil
        scheduler = response.hasScheduler ? DaemonTaskInfo(response.scheduler) : nil
        schedulerError = response.schedulerError
    }
}
