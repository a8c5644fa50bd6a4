package import DragonflyCore
package import NIOCore
package import NIOPosix
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The `disk` medium: one sparse file per task at `<data>/tasks/<id[0..3]>/<id>/data`, pieces at their offsets.
///
/// Every system call runs on a `NIOThreadPool`, never on the async executor. Open descriptors are cached
/// (bounded, least recently used first out); a descriptor is closed when it has left the cache and the last
/// operation using it has finished, so eviction never pulls a descriptor from under a `pwrite` or a `sendfile`.
/// The context's capacity is not enforced here: the ``PieceStore``'s garbage collector keeps the cache under
/// its watermarks.
package final class DiskMedium: FileBackedStorageMedium {
    package let name = "disk"
    /// The data directory the task files live under.
    package let dataDirectory: String
    private let paths: TaskPaths
    private let threadPool: NIOThreadPool
    private let maximumOpenFiles: Int
    private let cache = Mutex(OpenFileCache())

    /// - Parameters:
    ///   - dataDirectory: The role's data directory.
    ///   - maximumOpenFiles: How many task files stay open between operations.
    ///   - threadPool: Where the blocking system calls run.
    package init(dataDirectory: String, maximumOpenFiles: Int = 64, threadPool: NIOThreadPool = .singleton) {
        self.paths = TaskPaths(root: dataDirectory)
        self.dataDirectory = paths.root
        self.maximumOpenFiles = max(1, maximumOpenFiles)
        self.threadPool = threadPool
    }

    package func dataFilePath(taskID: TaskID) -> String {
        paths.dataFile(taskID)
    }

    package func write(taskID: TaskID, offset: Int64, bytes: ByteBuffer) async throws {
        guard let file = try await openFile(taskID, create: true) else {
            throw DragonflyError(code: .internalError, message: "cannot create \(paths.dataFile(taskID))")
        }
        try await threadPool.runIfActive {
            try bytes.withUnsafeReadableBytes { (raw) throws(DragonflyError) in
                try POSIX.writeAll(file.descriptor, raw, at: offset, path: file.path)
            }
        }
    }

    package func read(taskID: TaskID, offset: Int64, length: Int) async throws -> ByteBuffer {
        guard let file = try await openFile(taskID, create: false) else {
            throw DragonflyError(code: .notFound, message: "task \(taskID) has no data on disk")
        }
        return try await threadPool.runIfActive {
            var buffer = ByteBufferAllocator().buffer(capacity: length)
            let got = try buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: length) {
                (raw) throws(DragonflyError) in
                try POSIX.readFully(
                    file.descriptor, into: UnsafeMutableRawBufferPointer(rebasing: raw[0..<length]), at: offset,
                    path: file.path)
            }
            guard got == length else {
                throw DragonflyError(
                    code: .dataLoss,
                    message: "\(file.path) ends at \(offset + Int64(got)), before \(offset + Int64(length))")
            }
            return buffer
        }
    }

    package func sync(taskID: TaskID) async throws {
        // Nothing written means nothing to make durable.
        guard let file = try await openFile(taskID, create: false) else { return }
        try await threadPool.runIfActive { try POSIX.syncData(file.descriptor, path: file.path) }
    }

    package func remove(taskID: TaskID) async throws {
        // The descriptor closes once no running operation uses it any more.
        _ = cache.withLock { $0.remove(taskID) }
        let paths = self.paths
        try await threadPool.runIfActive { () throws in
            if unlink(paths.dataFile(taskID)) != 0 && errno != ENOENT {
                throw POSIX.error("cannot remove \(paths.dataFile(taskID))")
            }
            // The store may still hold files there (metadata); then the directories stay.
            rmdir(paths.taskDirectory(taskID))
            rmdir(paths.shardDirectory(taskID))
        }
    }

    package func usedBytes() async throws -> Int64 {
        let paths = self.paths
        return try await threadPool.runIfActive { () throws -> Int64 in
            var total: Int64 = 0
            for shard in try POSIX.listDirectory(paths.tasksDirectory) {
                let shardPath = paths.tasksDirectory + "/" + shard
                for name in (try? POSIX.listDirectory(shardPath)) ?? [] {
                    if let info = POSIX.status(shardPath + "/" + name + "/data") {
                        total += Int64(info.st_blocks) * 512
                    }
                }
            }
            return total
        }
    }

    package func withDataFile<Result>(taskID: TaskID, _ body: (CInt) async throws -> Result) async throws -> Result {
        guard let file = try await openFile(taskID, create: false) else {
            throw DragonflyError(code: .notFound, message: "task \(taskID) has no data on disk")
        }
        // The descriptor must stay open until `body` is done with it, also when `body` throws.
        defer { withExtendedLifetime(file) {} }
        return try await body(file.descriptor)
    }

    /// The cached descriptor of the task's file, opening (and with `create`, creating) it on the thread pool;
    /// nil when it does not exist and `create` is false.
    private func openFile(_ taskID: TaskID, create: Bool) async throws -> OpenFile? {
        let generation: UInt64
        do {
            let (cached, current) = cache.withLock { ($0.file(for: taskID), $0.generation) }
            if let cached { return cached }
            generation = current
        }
        let paths = self.paths
        let opened = try await threadPool.runIfActive { () throws -> OpenFile? in
            let path = paths.dataFile(taskID)
            let flags = O_RDWR | O_CLOEXEC | (create ? O_CREAT : 0)
            // Private to the daemon's user (DESIGN §11): cached content may be private.
            var fd = POSIX.open(path, flags, TaskPaths.fileMode)
            if fd < 0 && errno == ENOENT && create {
                try DataDirectoryLock.makeDirectories(paths.taskDirectory(taskID), mode: TaskPaths.directoryMode)
                fd = POSIX.open(path, flags, TaskPaths.fileMode)
            }
            if fd < 0 {
                if errno == ENOENT && !create { return nil }
                throw POSIX.error("cannot open \(path)")
            }
            return OpenFile(descriptor: fd, path: path)
        }
        guard let opened else { return nil }
        // An evicted descriptor is released outside the lock and closes once no operation uses it.
        let (file, _) = cache.withLock {
            $0.insert(opened, for: taskID, ifGeneration: generation, limit: maximumOpenFiles)
        }
        return file
    }
}

/// An open descriptor, closed when the last reference goes away.
final class OpenFile: Sendable {
    let descriptor: CInt
    let path: String

    init(descriptor: CInt, path: String) {
        self.descriptor = descriptor
        self.path = path
    }

    deinit {
        close(descriptor)
    }
}

/// The bounded set of open task files, least recently used out first.
struct OpenFileCache {
    private var files: [TaskID: (file: OpenFile, lastUse: UInt64)] = [:]
    private var tick: UInt64 = 0
    /// Bumped by every removal: a descriptor opened before a removal is used once but not cached, so a
    /// later write never lands in an unlinked file.
    private(set) var generation: UInt64 = 0

    mutating func file(for taskID: TaskID) -> OpenFile? {
        guard let entry = files[taskID] else { return nil }
        tick += 1
        files[taskID] = (entry.file, tick)
        return entry.file
    }

    /// Caches `file` (or returns the one another opener cached first) and returns what was evicted.
    mutating func insert(_ file: OpenFile, for taskID: TaskID, ifGeneration expected: UInt64, limit: Int)
        -> (OpenFile, OpenFile?)
    {
        if let existing = self.file(for: taskID) { return (existing, nil) }
        guard expected == generation else { return (file, nil) }
        var evicted: OpenFile?
        if files.count >= limit, let oldest = files.min(by: { $0.value.lastUse < $1.value.lastUse }) {
            evicted = files.removeValue(forKey: oldest.key)?.file
        }
        tick += 1
        files[taskID] = (file, tick)
        return (file, evicted)
    }

    mutating func remove(_ taskID: TaskID) -> OpenFile? {
        generation += 1
        return files.removeValue(forKey: taskID)?.file
    }
}
