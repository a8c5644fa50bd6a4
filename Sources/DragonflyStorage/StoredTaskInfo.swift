package import DragonflyCore

#if canImport(FoundationEssentials)
package import FoundationEssentials
#else
package import Foundation
#endif

/// What the store holds of one task.
package struct StoredTaskInfo: Sendable, Equatable {
    package var taskID: TaskID
    package var url: String
    /// Nil until known (a download of unknown length learns it at the end).
    package var contentLength: Int64?
    package var pieceLength: Int64
    /// Nil while the content length is unknown.
    package var pieceCount: Int?
    /// Pieces verified and written.
    package var finishedPieceCount: Int
    /// Bytes of the held pieces (what the garbage collector counts).
    package var heldBytes: Int64
    /// Kept response headers (`etag`, `last-modified`, `content-type`), lowercase names.
    package var headers: [String: String]
    /// Every piece is held and the content length is known.
    package var isFinished: Bool
    /// A writer has it open, or a read or export is running: garbage collection skips it.
    package var isInUse: Bool
    package var createdAt: Date
    package var accessedAt: Date
    package var finishedAt: Date?
}

/// What one garbage collection did.
package struct StorageGCReport: Sendable, Equatable {
    /// Tasks evicted because they were not accessed within the TTL.
    package var expired: [TaskID] = []
    /// Tasks evicted, least recently used first, to get under the low watermark.
    package var evicted: [TaskID] = []
    /// Bytes of the evicted tasks' pieces.
    package var freedBytes: Int64 = 0
    /// Our bytes after the collection.
    package var usedBytes: Int64 = 0
    /// The capacity the watermarks refer to.
    package var capacity: Int64 = 0

    package init() {}
}

/// An open piece of a file-backed task, for `sendfile`.
///
/// The descriptor belongs to the store and is valid only inside ``PieceStore/withPieceFile(taskID:number:_:)``.
/// To send it with NIO's `FileRegion`, wrap a `dup` of it in `NIOFileHandle`, and close that handle once the
/// write's future has completed.
package struct PieceFile: Sendable {
    /// The task's data file, open for reading.
    package var descriptor: CInt
    /// Where the piece starts in the file.
    package var offset: Int64
    /// The piece's length.
    package var length: Int
}
