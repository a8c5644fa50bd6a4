package import DragonflyCore

/// Tunables of a ``PieceStore``; every value has a default.
package struct PieceStoreConfiguration: Sendable, Equatable {
    /// Persist metadata after this many newly held pieces of a task…
    package var metadataBatchPieces: Int = 16
    /// …or when this long has passed since the task's last flush (checked when a piece is written, and by
    /// ``PieceStore/flushDue()``, which the daemon calls every interval).
    package var metadataBatchInterval: Duration = .seconds(1)
    /// Flushes a task may make at once, outside batches, per ``metadataBatchInterval`` (a token bucket): a
    /// slow download, or a burst of pieces that land together, is listed as soon as it is verified, so a crash
    /// loses little more than the pieces being fetched. 0 leaves only the batches.
    package var metadataFlushBurst: Int = 4
    /// The most pieces a task may have; bounds a task's bitmap and digests (32 bytes a piece) in memory.
    package var maximumPieceCount: Int = 65_536
    /// Tasks not accessed for this long are evicted.
    package var taskTTL: Duration = .seconds(6 * 3600)
    /// Evict least recently used tasks when our bytes exceed this percentage of the capacity…
    package var highWatermarkPercent: Int = 80
    /// …until they are at or under this percentage.
    package var lowWatermarkPercent: Int = 60
    /// The capacity the watermarks refer to; 0 means the size of the file system holding the data directory.
    package var quota: Int64 = 0
    /// Buffer size for copies through user space, digest verification and streaming reads.
    package var chunkSize: Int = 1 << 20

    package init() {}

    /// The store settings of a daemon or cdn configuration (`storage.*`).
    package init(storage: DaemonConfig.StorageConfig) {
        self.init()
        taskTTL = storage.taskTTL.duration
        highWatermarkPercent = storage.highWatermark
        lowWatermarkPercent = storage.lowWatermark
        quota = storage.quota.bytes
    }
}
