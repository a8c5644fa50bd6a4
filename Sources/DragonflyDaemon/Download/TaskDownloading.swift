package import DragonflyProto

/// Runs downloads for the daemon's RPC services: the Local service (`get`, the SDK), the Peer service's
/// `DownloadTask` (a scheduler's seed trigger or preheat) and the proxy.
///
/// One download runs per task at a time; a second caller for the same task joins it. Cancelling a caller only
/// stops its wait (and its export); the download itself goes on for the other callers and for the cache.
package protocol TaskDownloading: Sendable {
    /// Downloads `download` into the cache and, when it names an output path, exports it there atomically.
    ///
    /// - Parameter progress: Called as pieces land, in order, from one task at a time.
    /// - Returns: The final progress (`done` set).
    /// - Throws: `DragonflyError` naming the cause (the origin's status for an origin error).
    func download(
        _ download: Dragonfly_V1_Download,
        progress: @escaping @Sendable (Dragonfly_V1_DownloadProgress) async -> Void
    ) async throws -> Dragonfly_V1_DownloadProgress
}
