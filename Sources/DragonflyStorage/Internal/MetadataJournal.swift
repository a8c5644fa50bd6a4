import DragonflyCore
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Writes one task's `meta` file, in version order.
///
/// Flushes of a task may overlap (a batch flush from a piece writer and a forced one from `finishTask`); each
/// carries the version of the snapshot it encodes. The lock serialises the file writes (``AtomicFile`` uses one
/// temporary name per process) and a write older than the one on disk is skipped, so the file never goes
/// back in time. Once retired (the task was deleted) nothing is written again.
final class MetadataJournal: Sendable {
    let path: String
    let directory: String
    private let persistedVersion: Mutex<UInt64>

    init(path: String, directory: String, persistedVersion: UInt64) {
        self.path = path
        self.directory = directory
        self.persistedVersion = Mutex(persistedVersion)
    }

    /// Writes `metadata` unless a newer version is already on disk. Blocking: call on the thread pool.
    func write(_ metadata: TaskMetadata, version: UInt64) throws(DragonflyError) {
        try persistedVersion.withLock { (persisted: inout UInt64) throws(DragonflyError) in
            guard version > persisted else { return }
            try DataDirectoryLock.makeDirectories(directory, mode: UInt32(TaskPaths.directoryMode))
            try AtomicFile.write(metadata.encoded(), to: path, mode: UInt32(TaskPaths.fileMode))
            persisted = version
        }
    }

    /// Deletes the file and refuses every later write. Blocking: call on the thread pool.
    func retire() {
        persistedVersion.withLock { persisted in
            persisted = .max
            unlink(path)
        }
    }
}
