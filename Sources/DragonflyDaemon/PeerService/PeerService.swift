package import DragonflyCore
package import DragonflyProto
package import DragonflyStorage
package import GRPCCore
package import Logging

/// Settings of a ``PeerService``; every value has a default.
package struct PeerServiceConfiguration: Sendable, Equatable {
    /// How long `SyncPieces` waits for a task this host does not know to appear before answering NOT_FOUND.
    package var unknownTaskWait: Duration = .seconds(30)
    /// How often a `SyncPieces` stream re-reads the store while no piece is announced (catches pieces it
    /// missed, a task that completed, was deleted or whose download stopped).
    package var refreshInterval: Duration = .seconds(2)
    /// The most piece numbers a `SyncPieces` request may list as interested.
    package var maximumInterestedPieces: Int = 65_536
    /// Progress reports of a `DownloadTask` buffered for a slow caller (older ones are dropped; the final one
    /// never is).
    package var progressBuffer: Int = 64

    package init() {}
}

/// The Peer gRPC service of a daemon (DESIGN §5, default `:4000`), for other hosts and schedulers.
///
/// - `SyncPieces`: the pieces held, then each new one as the conductor announces it (see ``PieceSync``).
/// - `StatTask`: what the store holds of a task (NOT_FOUND when nothing).
/// - `DownloadTask`: a download into the cache for a scheduler (seed trigger, preheat, push); a request with
///   an output path is refused (INVALID_ARGUMENT) because this service never writes files — that is the Local
///   service on the unix socket. Progress is streamed without ever slowing the download.
/// - `Health`: host ID, host type and readiness.
package struct PeerService: Dragonfly_V1_Peer.SimpleServiceProtocol {
    private let store: PieceStore
    private let announcer: PieceAnnouncer
    private let downloader: any TaskDownloading
    private let hostID: @Sendable () -> String?
    private let hostType: Dragonfly_V1_HostType
    private let isReady: @Sendable () -> Bool
    private let configuration: PeerServiceConfiguration
    private let grants: TransferGrants
    private let allowedFileDirectories: [String]
    private let logger: Logger

    /// - Parameters:
    ///   - hostID: The host ID once known (it contains the bound peer port), else nil.
    ///   - hostType: `.normal` for `dragonfly daemon`, `.super` for `dragonfly cdn`.
    ///   - isReady: Whether the daemon is ready (DESIGN §15); Health reports it.
    package init(
        store: PieceStore,
        announcer: PieceAnnouncer,
        downloader: any TaskDownloading,
        hostID: @escaping @Sendable () -> String?,
        hostType: Dragonfly_V1_HostType,
        isReady: @escaping @Sendable () -> Bool = { true },
        configuration: PeerServiceConfiguration = PeerServiceConfiguration(),
        grants: TransferGrants = TransferGrants(),
        allowedFileDirectories: [String] = [],
        logger: Logger
    ) {
        self.grants = grants
        self.allowedFileDirectories = allowedFileDirectories
        self.store = store
        self.announcer = announcer
        self.downloader = downloader
        self.hostID = hostID
        self.hostType = hostType
        self.isReady = isReady
        self.configuration = configuration
        self.logger = logger
    }

    package func syncPieces(
        request: Dragonfly_V1_SyncPiecesRequest,
        response: RPCWriter<Dragonfly_V1_PieceAvailable>,
        context: ServerContext
    ) async throws {
        let id = try TaskID.validated(request.taskID)
        var logger = logger
        logger[metadataKey: "df.task.id"] = "\(id)"
        if !request.peerID.isEmpty { logger[metadataKey: "df.peer.id"] = "\(request.peerID.prefix(200))" }
        guard request.interestedPieceNumbers.count <= configuration.maximumInterestedPieces else {
            throw DragonflyError(
                code: .invalidArgument,
                message: "\(request.interestedPieceNumbers.count) interested pieces exceed the limit of "
                    + "\(configuration.maximumInterestedPieces)")
        }
        let grants = grants
        let presented = request.transferGrant
        let sync = PieceSync(
            taskID: id, interested: request.interestedPieceNumbers.map(Int.init), store: store, announcer: announcer,
            configuration: configuration, logger: logger,
            authorize: { info in grants.mayServe(id, headers: info.headers, presented: presented) })
        try await sync.run { try await response.write($0) }
    }

    package func statTask(request: Dragonfly_V1_StatTaskRequest, context: ServerContext) async throws
        -> Dragonfly_V1_TaskInfo
    {
        let id = try TaskID.validated(request.taskID)
        guard var info = store.taskInfo(taskID: id) else {
            throw DragonflyError(code: .notFound, message: "task \(id) is not on this host")
        }
        guard grants.mayServe(id, headers: info.headers, presented: request.transferGrant) else {
            throw DragonflyError(
                code: .permissionDenied,
                message: "task \(id) is private; only peers its scheduler scheduled may stat it")
        }
        info.url = Redaction.url(info.url)
        let digests = (try? store.pieceDigests(taskID: id)) ?? []
        return Dragonfly_V1_TaskInfo(stored: info, digests: digests)
    }

    package func downloadTask(
        request: Dragonfly_V1_DownloadTaskRequest,
        response: RPCWriter<Dragonfly_V1_DownloadProgress>,
        context: ServerContext
    ) async throws {
        var download = request.download
        guard !download.hasOutputPath else {
            throw DragonflyError(
                code: .invalidArgument,
                message: "the Peer service never writes files; drop output_path, or use the Local service on the "
                    + "daemon's unix socket to download to a path")
        }
        guard !download.url.isEmpty else {
            throw DragonflyError(code: .invalidArgument, message: "download.url is empty")
        }
        download.url = try NetworkDownloadPolicy(allowedFileDirectories: allowedFileDirectories).check(download.url)
        // A slow caller must not slow the download: reports go through a bounded buffer that keeps the newest.
        let (reports, continuation) = AsyncStream.makeStream(
            of: Dragonfly_V1_DownloadProgress.self, bufferingPolicy: .bufferingNewest(configuration.progressBuffer))
        let final = try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                for await report in reports { try await response.write(report) }
            }
            let final: Dragonfly_V1_DownloadProgress
            do {
                final = try await downloader.download(download) { report in continuation.yield(report) }
            } catch {
                continuation.finish()
                group.cancelAll()
                throw error
            }
            continuation.finish()
            try await group.waitForAll()
            return final
        }
        try await response.write(final)
    }

    package func health(request: Dragonfly_V1_HealthRequest, context: ServerContext) async throws
        -> Dragonfly_V1_HealthResponse
    {
        var health = Dragonfly_V1_HealthResponse()
        let id = hostID()
        health.hostID = id ?? ""
        health.type = hostType
        health.isReady = id != nil && isReady()
        var build = Dragonfly_V1_Build()
        build.version = DragonflyVersion.current
        health.build = build
        return health
    }
}

extension Dragonfly_V1_TaskInfo {
    /// What the store holds of a task, with its held pieces (`digests` as from ``PieceStore/pieceDigests(taskID:)``).
    package init(stored info: StoredTaskInfo, digests: [String?]) {
        self.init()
        id = info.taskID.rawValue
        url = info.url
        if let contentLength = info.contentLength { self.contentLength = UInt64(contentLength) }
        pieceLength = UInt64(info.pieceLength)
        if let count = info.pieceCount { pieceCount = UInt32(clamping: count) }
        sizeScope =
            info.contentLength == nil
            ? .unspecified
            : Dragonfly_V1_SizeScope(SizeScope(contentLength: info.contentLength, pieceLength: info.pieceLength))
        state = info.isFinished ? .succeeded : (info.isInUse ? .running : .pending)
        responseHeader = info.headers
        pieces = digests.enumerated().compactMap { number, digest in
            guard let digest else { return nil }
            let span = PieceSync.span(of: number, in: info)
            var piece = Dragonfly_V1_Piece()
            piece.number = UInt32(number)
            piece.offset = UInt64(span.offset)
            piece.length = UInt64(span.length)
            piece.digest = digest
            piece.source = .local
            return piece
        }
    }
}

extension Dragonfly_V1_SizeScope {
    /// The wire form of a size scope.
    package init(_ scope: SizeScope) {
        switch scope {
        case .empty: self = .empty
        case .tiny: self = .tiny
        case .small: self = .small
        case .normal: self = .normal
        }
    }
}
