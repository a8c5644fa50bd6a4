package import DragonflyCore
import Logging
import NIOCore
import NIOPosix
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

extension PieceStore {
    /// Writes the complete task to `destination` (DESIGN §6 step 7).
    ///
    /// The output appears atomically and only once complete: the bytes go to an anonymous `O_TMPFILE` in the
    /// destination's directory (a hidden named temporary where the file system lacks it) by `copy_file_range`
    /// (or `pread`/`pwrite`, or from a non-file medium piece by piece), are synced, verified against `digest`
    /// by reading the temporary back, then linked under a hidden name and renamed over `destination`. So an
    /// existing destination is replaced in one step, and any failure leaves it byte-for-byte as it was, with
    /// no temporary file in its directory. A replaced file's permission bits are kept.
    ///
    /// With `hardLink`, the output is a hard link to the cached data file (after verification, if asked):
    /// instant, but the two share bytes, so editing the output in place would corrupt the cache. When the
    /// destination is on another file system, it is copied instead.
    ///
    /// - Throws: `notFound` for an unknown task or a missing output directory (nothing is created),
    ///   `invalidArgument` when `destination` is a directory, `failedPrecondition` for an unfinished task,
    ///   `dataLoss` when the digest does not match.
    /// - Returns: The bytes written.
    @discardableResult
    package func export(
        taskID id: TaskID,
        to destination: String,
        hardLink: Bool = false,
        verify digest: FileDigest? = nil
    ) async throws -> Int64 {
        let metadata = try beginOperation(id)
        defer { endOperation(id) }
        guard metadata.isFinished, let length = metadata.contentLength else {
            let missing = metadata.pieces.missingSlots.count
            throw DragonflyError(
                code: .failedPrecondition,
                message: "task \(id) is not complete (\(missing) pieces missing); finish the download first")
        }
        let target = try await threadPool.runIfActive { try ExportTarget(destination: destination) }
        if hardLink, length > 0, let fileMedium {
            if let digest {
                try await fileMedium.withDataFile(taskID: id) { descriptor in
                    try await verify(descriptor: descriptor, length: length, digest: digest, name: destination)
                }
            }
            let dataPath = fileMedium.dataFilePath(taskID: id)
            let linked = try await threadPool.runIfActive { try target.publishHardLink(of: dataPath, length: length) }
            if linked {
                logger.debug("exported task as a hard link", metadata: ["df.task.id": "\(id)"])
                return length
            }
            logger.debug("cannot hard-link the export; copying", metadata: ["df.task.id": "\(id)"])
        }
        try await writeOutput(id, source: 0..<length, to: target, digest: digest)
        logger.debug("exported task", metadata: ["df.task.id": "\(id)"])
        return length
    }

    /// Writes bytes `range` of the task to `destination` (`--range` with an output file), with the same
    /// guarantees as ``export(taskID:to:hardLink:verify:)``: the output appears atomically, only once complete
    /// and, with `digest`, only when the range's bytes match it. The task need not be finished, but every piece
    /// the range touches must be held (else `failedPrecondition`).
    ///
    /// - Returns: The bytes written.
    @discardableResult
    package func export(
        taskID id: TaskID,
        range: Range<Int64>,
        to destination: String,
        verify digest: FileDigest? = nil
    ) async throws -> Int64 {
        let metadata = try beginOperation(id)
        defer { endOperation(id) }
        guard range.lowerBound >= 0, range.upperBound <= (metadata.contentLength ?? .max) else {
            throw DragonflyError(
                code: .invalidArgument,
                message: "range \(range.lowerBound)..<\(range.upperBound) is outside task \(id)'s "
                    + "\(metadata.contentLength.map(String.init) ?? "unknown") bytes")
        }
        if let gap = Self.firstGap(in: metadata, range: range) {
            throw DragonflyError(
                code: .failedPrecondition,
                message: "piece \(gap) of task \(id) is not held; download the range before exporting it")
        }
        let target = try await threadPool.runIfActive { try ExportTarget(destination: destination) }
        try await writeOutput(id, source: range, to: target, digest: digest)
        logger.debug("exported task range", metadata: ["df.task.id": "\(id)"])
        return Int64(range.count)
    }

    /// The first piece `range` needs that is not (entirely) held.
    private static func firstGap(in metadata: TaskMetadata, range: Range<Int64>) -> Int? {
        guard !range.isEmpty else { return nil }
        let first = Int(range.lowerBound / metadata.pieceLength)
        let last = Int((range.upperBound - 1) / metadata.pieceLength)
        for number in first...last {
            let end = Int64(number) * metadata.pieceLength + metadata.length(ofHeldPiece: number)
            if !metadata.pieces.contains(number)
                || end < min(range.upperBound, Int64(number + 1) * metadata.pieceLength)
            {
                return number
            }
        }
        return nil
    }

    /// Copies `source` into a new anonymous file beside the destination, syncs it, verifies it and gives it
    /// the destination's name; on any failure the temporary disappears.
    private func writeOutput(_ id: TaskID, source: Range<Int64>, to target: ExportTarget, digest: FileDigest?)
        async throws
    {
        let output = try await threadPool.runIfActive { try ExportFile(target: target) }
        do {
            try await copy(id, source: source, into: output)
            try await threadPool.runIfActive { try output.sync() }
            if let digest {
                try await verify(
                    descriptor: output.descriptor, length: Int64(source.count), digest: digest,
                    name: target.destination)
            }
            try await threadPool.runIfActive { try output.publish() }
        } catch {
            try? await threadPool.runIfActive { output.discard() }
            throw error
        }
        try? await threadPool.runIfActive { output.discard() }
    }

    /// Copies bytes `source` of the task to the start of `output`, in thread-pool jobs of at most 64 MiB so a
    /// cancelled export stops between jobs.
    private func copy(_ id: TaskID, source: Range<Int64>, into output: ExportFile) async throws {
        guard !source.isEmpty else { return }
        let length = Int64(source.count)
        let job: Int64 = 64 << 20
        if let fileMedium {
            let dataPath = fileMedium.dataFilePath(taskID: id)
            try await fileMedium.withDataFile(taskID: id) { descriptor in
                var done: Int64 = 0
                while done < length {
                    let count = min(job, length - done)
                    try await threadPool.runIfActive { [done] in
                        try POSIX.copyRange(
                            from: descriptor, at: source.lowerBound + done, to: output.descriptor, at: done,
                            length: count, path: dataPath)
                    }
                    done += count
                }
            }
        } else {
            var done: Int64 = 0
            while done < length {
                let count = min(Int64(configuration.chunkSize), length - done)
                let bytes = try await medium.read(taskID: id, offset: source.lowerBound + done, length: Int(count))
                try await threadPool.runIfActive { [done] in
                    try bytes.withUnsafeReadableBytes { (raw) throws(DragonflyError) in
                        try POSIX.writeAll(output.descriptor, raw, at: done, path: "the output file")
                    }
                }
                done += count
            }
        }
    }

    /// Reads `length` bytes of `descriptor` and compares their digest with `digest`; `dataLoss` on mismatch.
    private func verify(descriptor: CInt, length: Int64, digest: FileDigest, name: String) async throws {
        let hasher = HasherBox(digest.makeHasher())
        let chunk = max(4096, configuration.chunkSize)
        let job: Int64 = 64 << 20
        var offset: Int64 = 0
        while offset < length {
            let end = min(length, offset + job)
            try await threadPool.runIfActive { [offset] in
                let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 16)
                defer { buffer.deallocate() }
                var position = offset
                while position < end {
                    let want = Int(min(Int64(chunk), end - position))
                    let slice = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<want])
                    let got = try POSIX.readFully(descriptor, into: slice, at: position, path: name)
                    guard got == want else {
                        throw DragonflyError(code: .dataLoss, message: "\(name) is shorter than \(length) bytes")
                    }
                    hasher.hasher.update(UnsafeRawBufferPointer(slice))
                    position += Int64(got)
                }
            }
            offset = end
        }
        let actual = hasher.hasher.finalize()
        guard actual == digest.hex else {
            throw DragonflyError(
                code: .dataLoss,
                message: "digest mismatch for \(name): expected \(digest), got \(digest.algorithm.rawValue):\(actual); "
                    + "the output was not written")
        }
    }
}

/// Carries Core's (non-`Sendable`) `FileHasher` through consecutive thread-pool jobs.
///
/// `@unchecked Sendable` is sound here: the jobs run one after another (each awaited before the next is
/// submitted, which orders their memory accesses), so the hasher is never touched by two threads at once.
private final class HasherBox: @unchecked Sendable {
    var hasher: FileHasher

    init(_ hasher: FileHasher) {
        self.hasher = hasher
    }
}

/// A validated export destination. Blocking initialiser: call on the thread pool.
struct ExportTarget: Sendable {
    let destination: String
    let directory: String
    let leaf: String
    /// Permission bits of the file being replaced.
    let existingMode: mode_t?

    init(destination: String) throws(DragonflyError) {
        guard !destination.isEmpty else {
            throw DragonflyError(code: .invalidArgument, message: "the output path is empty")
        }
        let slash = destination.lastIndex(of: "/")
        let directory = slash.map { $0 == destination.startIndex ? "/" : String(destination[..<$0]) } ?? "."
        let leaf = slash.map { String(destination[destination.index(after: $0)...]) } ?? destination
        guard let directoryInfo = POSIX.status(directory) else {
            if errno == ENOENT || errno == ENOTDIR {
                throw DragonflyError(
                    code: .notFound, message: "output directory \(directory) does not exist; create it first")
            }
            throw POSIX.error("cannot inspect output directory \(directory)")
        }
        guard POSIX.isDirectory(directoryInfo) else {
            throw DragonflyError(code: .invalidArgument, message: "\(directory) is not a directory")
        }
        let existing = POSIX.status(destination)
        if leaf.isEmpty || leaf == "." || leaf == ".." || existing.map(POSIX.isDirectory) == true {
            throw DragonflyError(
                code: .invalidArgument, message: "output \(destination) is a directory; name a file to write")
        }
        self.destination = destination
        self.directory = directory
        self.leaf = leaf
        self.existingMode = existing.map { $0.st_mode & 0o7777 }
    }

    /// A fresh hidden name beside the destination.
    func hiddenName() -> String {
        let suffix = String(UInt64.random(in: 0...UInt64.max), radix: 16)
        return directory + "/." + String(leaf.prefix(200)) + ".df-" + suffix + ".tmp"
    }

    /// Hard-links `path` as the destination (hidden name, then rename); false when the file system refuses
    /// a link here (another device, no hard links) or the file is not exactly `length` bytes.
    func publishHardLink(of path: String, length: Int64) throws(DragonflyError) -> Bool {
        guard let info = POSIX.status(path), Int64(info.st_size) == length else { return false }
        for _ in 0..<8 {
            let temporary = hiddenName()
            if link(path, temporary) == 0 {
                guard rename(temporary, destination) == 0 else {
                    let failure = POSIX.error("cannot rename \(temporary) to \(destination)")
                    unlink(temporary)
                    throw failure
                }
                POSIX.syncDirectory(directory)
                return true
            }
            switch errno {
            case EEXIST: continue
            case EXDEV, EPERM, EMLINK, EOPNOTSUPP: return false
            default: throw POSIX.error("cannot link \(path) into \(directory)")
            }
        }
        throw DragonflyError(code: .internalError, message: "no free temporary name in \(directory)")
    }
}

/// The output being written: anonymous (`O_TMPFILE`) or, where unsupported, a hidden named temporary that
/// ``discard()`` removes unless published. Blocking methods: call on the thread pool.
final class ExportFile: Sendable {
    let descriptor: CInt
    let target: ExportTarget
    private let namedPath: String?
    private let state = Mutex((published: false, closed: false))

    init(target: ExportTarget) throws(DragonflyError) {
        var descriptor: CInt = -1
        var namedPath: String?
        #if os(Linux)
        descriptor = POSIX.open(target.directory, POSIX.temporaryFileFlag | O_RDWR | O_CLOEXEC, 0o644)
        if descriptor < 0 && ![EOPNOTSUPP, EISDIR, EINVAL].contains(errno) {
            throw POSIX.error("cannot create the output in \(target.directory)")
        }
        #endif
        if descriptor < 0 {
            for _ in 0..<8 {
                let path = target.hiddenName()
                descriptor = POSIX.open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
                if descriptor >= 0 {
                    namedPath = path
                    break
                }
                if errno != EEXIST { throw POSIX.error("cannot create the output in \(target.directory)") }
            }
            guard descriptor >= 0 else {
                throw DragonflyError(code: .internalError, message: "no free temporary name in \(target.directory)")
            }
        }
        if let mode = target.existingMode {
            _ = fchmod(descriptor, mode)
        }
        self.descriptor = descriptor
        self.target = target
        self.namedPath = namedPath
    }

    func sync() throws(DragonflyError) {
        guard fsync(descriptor) == 0 else { throw POSIX.error("cannot sync the output for \(target.destination)") }
    }

    /// Gives the file its name: link under a hidden name, then rename over the destination.
    func publish() throws(DragonflyError) {
        let destination = target.destination
        if let namedPath {
            guard rename(namedPath, destination) == 0 else {
                throw POSIX.error("cannot rename \(namedPath) to \(destination)")
            }
        } else {
            var published = false
            for _ in 0..<8 where !published {
                let temporary = target.hiddenName()
                if linkat(AT_FDCWD, "/proc/self/fd/\(descriptor)", AT_FDCWD, temporary, AT_SYMLINK_FOLLOW) != 0 {
                    if errno == EEXIST { continue }
                    throw POSIX.error("cannot link the output into \(target.directory)")
                }
                guard rename(temporary, destination) == 0 else {
                    let failure = POSIX.error("cannot rename \(temporary) to \(destination)")
                    unlink(temporary)
                    throw failure
                }
                published = true
            }
            guard published else {
                throw DragonflyError(code: .internalError, message: "no free temporary name in \(target.directory)")
            }
        }
        state.withLock { $0.published = true }
        POSIX.syncDirectory(target.directory)
    }

    /// Closes the descriptor and removes an unpublished named temporary (an anonymous one vanishes with it).
    func discard() {
        let (published, wasClosed) = state.withLock { state in
            let before = state
            state.closed = true
            return (before.published, before.closed)
        }
        guard !wasClosed else { return }
        close(descriptor)
        if !published, let namedPath { unlink(namedPath) }
    }

    deinit {
        discard()
    }
}

/// Where `dragonfly get` writes its output (DESIGN §15 `-O`), decided from the path before anything is written.
package enum OutputKind: Sendable, Hashable {
    /// A regular file or a new path (after following symlinks): a new file is written beside it and renamed
    /// over it once complete and verified. A symlink stays: `path` is its final target.
    case replace(path: String)
    /// Standard output (`path` nil), a character or block device, a FIFO or a socket: the bytes are written
    /// through in order; the file itself is never unlinked or renamed over.
    case stream(path: String?)

    /// Classifies `destination` (nil: standard output), following symlinks (at most 40) to the file they name.
    /// Blocking (a few `lstat`/`readlink` calls).
    ///
    /// - Throws: `.usage` when the destination (or a link's target) is a directory, `.notFound` when its
    ///   directory does not exist, `.usage` for a symlink loop.
    package static func classify(_ destination: String?) throws(DragonflyError) -> OutputKind {
        guard var path = destination else { return .stream(path: nil) }
        for _ in 0..<40 {
            var info = stat()
            guard lstat(path, &info) == 0 else {
                guard errno == ENOENT else { throw POSIX.error("cannot inspect the output \(path)") }
                let slash = path.lastIndex(of: "/")
                let directory = slash.map { $0 == path.startIndex ? "/" : String(path[..<$0]) } ?? "."
                guard let parent = POSIX.status(directory), POSIX.isDirectory(parent) else {
                    throw DragonflyError(code: .notFound, message: "output directory \(directory) does not exist")
                }
                return .replace(path: path)
            }
            switch info.st_mode & S_IFMT {
            case S_IFREG:
                return .replace(path: path)
            case S_IFDIR:
                throw DragonflyError(code: .usage, message: "-O \(path) is a directory; name the output file")
            case S_IFLNK:
                var buffer = [CChar](repeating: 0, count: 4097)
                let count = readlink(path, &buffer, 4096)
                guard count > 0 else { throw POSIX.error("cannot read the symlink \(path)") }
                let target = String(decoding: buffer[0..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
                if target.hasPrefix("/") {
                    path = target
                } else {
                    let slash = path.lastIndex(of: "/")
                    path = (slash.map { String(path[...$0]) } ?? "") + target
                }
            default:
                return .stream(path: path)
            }
        }
        throw DragonflyError(code: .usage, message: "-O \(destination ?? "-"): too many levels of symbolic links")
    }
}

/// The output of one `dragonfly get`, written by the `get` process as the calling user — whether the bytes
/// come from its own cache (`--no-daemon`), from the daemon's data file, or from the daemon's `ReadTask`
/// stream. A ``OutputKind/replace(path:)`` output is an anonymous `O_TMPFILE` beside the destination that
/// ``publish(length:digest:)`` verifies and renames over it; a ``OutputKind/stream(path:)`` output is written
/// through in order. Until ``publish(length:digest:)`` nothing at the destination changes (for a stream, the
/// caller verifies a digest before writing the first byte). Blocking methods: call them on the thread pool.
package final class GetOutput: Sendable {
    package let kind: OutputKind
    private let file: ExportFile?
    private let descriptor: CInt
    private let closesDescriptor: Bool
    private let closed = Mutex(false)

    /// Opens the output. For a FIFO this waits until a reader opens it.
    package init(kind: OutputKind) throws(DragonflyError) {
        self.kind = kind
        switch kind {
        case .replace(let path):
            let file = try ExportFile(target: ExportTarget(destination: path))
            self.file = file
            descriptor = file.descriptor
            closesDescriptor = false
        case .stream(nil):
            file = nil
            descriptor = 1
            closesDescriptor = false
        case .stream(let path?):
            file = nil
            descriptor = try Self.openStream(path)
            closesDescriptor = true
        }
    }

    /// A stream to a descriptor the caller owns (standard output, or a test's file): never closed here.
    package init(streamingTo descriptor: CInt) {
        kind = .stream(path: nil)
        file = nil
        self.descriptor = descriptor
        closesDescriptor = false
    }

    /// A device or FIFO opened for writing (no truncation, no creation), or a unix socket connected to.
    private static func openStream(_ path: String) throws(DragonflyError) -> CInt {
        let fd = POSIX.open(path, O_WRONLY | O_CLOEXEC | O_NOCTTY)
        if fd >= 0 { return fd }
        guard errno == ENXIO, let info = POSIX.status(path), (info.st_mode & S_IFMT) == S_IFSOCK else {
            throw POSIX.error("cannot open the output \(path)")
        }
        let socketFD = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard socketFD >= 0 else { throw POSIX.error("cannot connect to the output socket \(path)") }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            POSIX.close(socketFD)
            throw DragonflyError(code: .usage, message: "the output socket path \(path) is too long")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in bytes.enumerated() { raw[index] = byte }
        }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(socketFD, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard connected == 0 else {
            let failure = POSIX.error("cannot connect to the output socket \(path)")
            POSIX.close(socketFD)
            throw failure
        }
        return socketFD
    }

    /// Whether bytes are written through in order (no verification after the fact is possible).
    package var isStream: Bool { file == nil }

    /// Writes `bytes` at `offset` of the output (a stream ignores `offset`: the caller writes in order).
    package func write(_ bytes: UnsafeRawBufferPointer, at offset: Int64) throws(DragonflyError) {
        if file != nil {
            try POSIX.writeAll(descriptor, bytes, at: offset, path: "the output file")
            return
        }
        guard let base = bytes.baseAddress else { return }
        var done = 0
        while done < bytes.count {
            let n = Glibc.write(descriptor, base + done, bytes.count - done)
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw POSIX.error("cannot write the output") }
            done += n
        }
    }

    /// Copies `length` bytes at `sourceOffset` of `source` to `offset` of the output (`copy_file_range` into a
    /// replacing output).
    package func copy(
        from source: CInt, at sourceOffset: Int64, to offset: Int64, length: Int64, sourcePath: String
    ) throws(DragonflyError) {
        if file != nil {
            try POSIX.copyRange(
                from: source, at: sourceOffset, to: descriptor, at: offset, length: length, path: sourcePath)
            return
        }
        let chunk = 1 << 20
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 16)
        defer { buffer.deallocate() }
        var done: Int64 = 0
        while done < length {
            let want = Int(min(Int64(chunk), length - done))
            let slice = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<want])
            let got = try POSIX.readFully(source, into: slice, at: sourceOffset + done, path: sourcePath)
            guard got == want else {
                throw DragonflyError(code: .dataLoss, message: "\(sourcePath) ends before byte \(sourceOffset + done)")
            }
            try write(UnsafeRawBufferPointer(slice), at: offset + done)
            done += Int64(got)
        }
    }

    /// Finishes the output: a replacing output is synced, checked to hold `length` bytes matching `digest`
    /// (if any), and renamed over the destination; a stream has nothing left to do.
    package func publish(length: Int64, digest: FileDigest?) throws(DragonflyError) {
        guard let file else { return }
        try file.sync()
        if let digest {
            try Self.check(descriptor: descriptor, length: length, digest: digest, name: file.target.destination)
        }
        try file.publish()
    }

    /// Hashes `length` bytes of `descriptor` from its start and compares them with `digest`.
    package static func check(descriptor: CInt, length: Int64, digest: FileDigest, name: String)
        throws(DragonflyError)
    {
        var hasher = digest.makeHasher()
        let chunk = 1 << 20
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 16)
        defer { buffer.deallocate() }
        var position: Int64 = 0
        while position < length {
            let want = Int(min(Int64(chunk), length - position))
            let slice = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<want])
            let got = try POSIX.readFully(descriptor, into: slice, at: position, path: name)
            guard got == want else {
                throw DragonflyError(code: .dataLoss, message: "\(name) is shorter than \(length) bytes")
            }
            hasher.update(UnsafeRawBufferPointer(slice))
            position += Int64(got)
        }
        let actual = hasher.finalize()
        guard actual == digest.hex else {
            throw DragonflyError(
                code: .dataLoss,
                message: "digest mismatch for \(name): expected \(digest), got \(digest.algorithm.rawValue):\(actual); "
                    + "the output was not written")
        }
    }

    /// Closes the output; an unpublished replacing output vanishes and the destination stays as it was.
    package func discard() {
        file?.discard()
        let wasClosed = closed.withLock { state in
            defer { state = true }
            return state
        }
        if closesDescriptor, !wasClosed { POSIX.close(descriptor) }
    }

    deinit {
        discard()
    }
}

extension PieceStore {
    /// Writes bytes `range` of the task into `output` at offset 0 (from the data file with `copy_file_range`
    /// where the medium has one); every piece the range touches must be held. Does not publish.
    package func write(taskID id: TaskID, range: Range<Int64>, into output: GetOutput) async throws {
        if output.isStream || fileMedium == nil {
            var written: Int64 = 0
            try await readRange(taskID: id, range: range) { buffer in
                try await threadPool.runIfActive { [written] in
                    try buffer.withUnsafeReadableBytes { raw in try output.write(raw, at: written) }
                }
                written += Int64(buffer.readableBytes)
            }
            return
        }
        guard let fileMedium, !range.isEmpty else { return }
        let metadata = try beginOperation(id)
        defer { endOperation(id) }
        if let gap = Self.firstGap(in: metadata, range: range) {
            throw DragonflyError(code: .failedPrecondition, message: "piece \(gap) of task \(id) is not held")
        }
        let dataPath = fileMedium.dataFilePath(taskID: id)
        let job: Int64 = 64 << 20
        try await fileMedium.withDataFile(taskID: id) { descriptor in
            var done: Int64 = 0
            while done < Int64(range.count) {
                let count = min(job, Int64(range.count) - done)
                try await threadPool.runIfActive { [done] in
                    try output.copy(
                        from: descriptor, at: range.lowerBound + done, to: done, length: count, sourcePath: dataPath)
                }
                done += count
            }
        }
    }
}

extension GetOutput {
    /// Runs blocking work of an output (opening, writing, publishing) on NIO's thread pool.
    package static func blocking<Value: Sendable>(_ body: @escaping @Sendable () throws -> Value) async throws -> Value
    {
        try await NIOThreadPool.singleton.runIfActive(body)
    }
}
