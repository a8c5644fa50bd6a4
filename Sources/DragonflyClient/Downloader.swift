import DragonflyCore

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// The public face of the `DragonflyClient` library: download a URL through the local `dragonfly daemon`, which
/// fetches it P2P and verifies every piece into its cache; this process then writes the file atomically, as its
/// own user (the daemon never writes a caller's file).
///
/// ```swift
/// import DragonflyClient
///
/// let downloader = Downloader()  // the daemon's default socket; Downloader(socketPath:) names another
/// var options = DownloadOptions()
/// options.digest = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
/// options.headers = ["Authorization": "Bearer …"]
/// let result = try await downloader.download(
///     "https://example.com/model.safetensors", to: "/data/model.safetensors", options: options
/// ) { progress in
///     print("\(progress.completedBytes) of \(progress.totalBytes ?? 0) bytes, \(progress.bytesFromPeers) from peers")
/// }
/// print("task \(result.taskID): \(result.bytesFromPeers) bytes from peers, \(result.bytesFromOrigin) from the origin")
/// ```
///
/// Unlike `dragonfly get`, the library never starts a daemon and never reads the origin itself: a
/// ``DownloaderError`` with ``DownloaderError/isDaemonUnavailable`` tells the caller to fall back.
public struct Downloader: Sendable {
    /// The daemon's unix socket.
    public let socketPath: String

    /// A downloader talking to the daemon on `socketPath`, by default the daemon's (DESIGN §2:
    /// `/var/run/dragonfly/dfdaemon.sock` as root, else under `$XDG_RUNTIME_DIR/dragonfly/`).
    public init(socketPath: String? = nil) {
        self.socketPath = socketPath ?? DaemonSocket.defaultPath
    }

    /// The task ID the daemon and its scheduler use for `url` (DESIGN §4): the same for every host that asks.
    public func taskID(for url: String, options: DownloadOptions = DownloadOptions()) -> String {
        TaskID.make(url: url, tag: options.tag, application: options.application).rawValue
    }

    /// Downloads `url` to `outputPath` through the daemon. The file appears atomically, only complete and, with
    /// ``DownloadOptions/digest``, only when it matches; on failure the destination is left as it was.
    ///
    /// - Parameters:
    ///   - outputPath: Where the file goes; a relative path is resolved against the current directory.
    ///   - progress: Called for every progress report, in order.
    /// - Throws: ``DownloaderError``.
    @discardableResult
    public func download(
        _ url: String,
        to outputPath: String,
        options: DownloadOptions = DownloadOptions(),
        progress: @escaping @Sendable (DownloadProgress) -> Void = { _ in }
    ) async throws(DownloaderError) -> DownloadResult {
        let digest: FileDigest?
        do {
            digest = try options.digest.map { text throws(DragonflyError) in try FileDigest(parsing: text) }
        } catch {
            throw DownloaderError(message: error.message, isDaemonUnavailable: false)
        }
        let output: String
        do {
            output = try DaemonClient.absolutePath(outputPath)
        } catch {
            throw DownloaderError(message: error.message, isDaemonUnavailable: false)
        }
        let request = GetRequest(
            url: url,
            output: output,
            digest: digest,
            headers: options.headers.sorted { $0.key < $1.key }.map { HeaderField(name: $0.key, value: $0.value) },
            tag: options.tag,
            application: options.application,
            disableBackToSource: options.disableBackToSource
        )
        do {
            let download = DaemonDownload(
                request: request, client: DaemonClient(socketPath: socketPath), dataDirectory: nil)
            let result = try await download.run { report in progress(DownloadProgress(report)) }
            return DownloadResult(
                taskID: result.summary.taskID.rawValue, contentLength: result.summary.contentLength,
                bytesFromPeers: result.peerBytes, bytesFromOrigin: result.summary.originBytes,
                bytesFromCache: result.summary.cachedBytes)
        } catch {
            throw DownloaderError(message: error.message, isDaemonUnavailable: DaemonClient.isDaemonUnavailable(error))
        }
    }
}

/// What a download asks for besides its URL.
public struct DownloadOptions: Sendable, Hashable {
    /// `sha256:<hex>`, `sha512:<hex>` or `md5:<hex>`: the file appears only when it matches.
    public var digest: String?
    /// Headers sent to the origin (credentials included; they never appear in a command line).
    public var headers: [String: String]
    /// Part of the task ID: different tags of one URL are different tasks.
    public var tag: String
    /// Part of the task ID, and the application the bytes are accounted to.
    public var application: String
    /// Never read the origin, even when no peer holds the file.
    public var disableBackToSource: Bool

    public init(
        digest: String? = nil, headers: [String: String] = [:], tag: String = "", application: String = "",
        disableBackToSource: Bool = false
    ) {
        self.digest = digest
        self.headers = headers
        self.tag = tag
        self.application = application
        self.disableBackToSource = disableBackToSource
    }
}

/// One progress report of a download.
public struct DownloadProgress: Sendable, Hashable {
    /// Bytes held so far.
    public let completedBytes: Int64
    /// The file's size, once known.
    public let totalBytes: Int64?
    /// Bytes fetched from other peers so far.
    public let bytesFromPeers: Int64
    /// Bytes read from the origin so far.
    public let bytesFromOrigin: Int64

    init(_ report: DaemonDownloadProgress) {
        completedBytes = report.bytesDownloaded
        totalBytes = report.contentLength
        bytesFromPeers = report.bytesFromPeers
        bytesFromOrigin = report.bytesFromOrigin
    }
}

/// A finished download.
public struct DownloadResult: Sendable, Hashable {
    /// The task ID (64 lowercase hex characters).
    public let taskID: String
    /// The file's size in bytes.
    public let contentLength: Int64
    /// Bytes fetched from other peers.
    public let bytesFromPeers: Int64
    /// Bytes read from the origin.
    public let bytesFromOrigin: Int64
    /// Bytes the daemon already held.
    public let bytesFromCache: Int64
}

/// Why a download failed.
public struct DownloaderError: Error, Sendable, Hashable, CustomStringConvertible {
    /// What went wrong, e.g. `the origin answered HTTP 404 for https://…`.
    public let message: String
    /// No daemon answered on the socket (or it cannot serve): start one, or read the origin yourself.
    public let isDaemonUnavailable: Bool

    public var description: String { message }
}
