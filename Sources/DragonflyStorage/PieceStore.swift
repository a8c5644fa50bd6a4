import Crypto
package import DragonflyCore
package import Logging
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

#if canImport(FoundationEssentials)
package import FoundationEssentials
#else
package import Foundation
#endif

/// The local piece cache of a daemon or cdn (DESIGN §7): tasks' pieces on a ``StorageMedium`` plus, per task,
/// metadata under `<data>/tasks/<id[0..3]>/<id>/meta`.
///
/// **Verify, then publish.** ``writePiece(taskID:number:bytes:expectedDigest:)`` hashes the bytes, rejects a
/// digest mismatch or a wrong length before anything is written, writes the piece at its offset, and only then
/// marks it held. A held piece is what ``readPiece(taskID:number:)`` serves.
///
/// **Crash safety.** Metadata is persisted at once while a task has flush allowance left
/// (``PieceStoreConfiguration/metadataFlushBurst`` per interval), else in batches (every
/// ``PieceStoreConfiguration/metadataBatchPieces`` new pieces or ``PieceStoreConfiguration/metadataBatchInterval``,
/// see ``flushDue()``), and on finish, close and ``flushAll()``: the medium is synced (`fdatasync`) first, then
/// the whole `meta` file is replaced atomically (temporary file, fsync, rename, directory fsync). So after a
/// crash every piece the file lists is intact; pieces written since the last flush are simply fetched again.
/// Directories are created 0700 and files 0600 (cached content may be private); ``reload()`` tightens a store
/// an older version left readable. Metadata is persisted only for a ``FileBackedStorageMedium``; for
/// other media (``MemoryMedium``) it lives in memory, like the bytes it describes.
///
/// **Concurrency.** A final class with one `Mutex` over the in-memory index, rather than an actor: the index
/// is hit by every piece writer (16 in flight per download) and every piece upload, each critical section is
/// a few dictionary and bitmap operations, and all slow work (hashing, I/O on the `NIOThreadPool`, encoding
/// metadata) happens outside the lock, without actor hops or reentrancy. State is re-checked under the lock
/// after every suspension. Per-task metadata writes are ordered by version in a ``MetadataJournal``.
///
/// **Lifetimes.** ``openTask(id:url:contentLength:pieceLength:headers:)`` registers a writer until
/// ``finishTask(taskID:contentLength:)`` or ``closeTask(taskID:)``; reads, `sendfile`s and exports count as
/// operations while they run. Garbage collection and ``deleteTask(taskID:)`` never touch a task that has a
/// writer or a running operation.
///
/// Memory is bounded by configuration, not by file sizes: per task a bitmap and 32 bytes of digest per piece
/// (at most ``PieceStoreConfiguration/maximumPieceCount`` pieces); bytes pass through in pieces or chunks.
package final class PieceStore: Sendable {
    /// The data directory (the parent of `tasks/`).
    package let dataDirectory: String
    /// Where the bytes live.
    package let medium: any StorageMedium
    package let configuration: PieceStoreConfiguration
    let paths: TaskPaths
    let fileMedium: (any FileBackedStorageMedium)?
    let threadPool: NIOThreadPool
    let logger: Logger
    private let state = Mutex(State())
    private let clock = ContinuousClock()

    enum Phase {
        /// Usable.
        case active
        /// Starting over: old data is being removed.
        case resetting
        /// Being deleted.
        case removing
    }

    struct Entry {
        var metadata: TaskMetadata
        var journal: MetadataJournal
        var phase: Phase = .active
        /// Bumped on every change of `metadata`.
        var version: UInt64
        /// The version last handed to a flush.
        var snapshotVersion: UInt64
        var writers = 0
        var operations = 0
        /// Pieces whose bytes are being written right now.
        var writing: Set<Int> = []
        var unflushedPieces = 0
        var lastFlush: ContinuousClock.Instant
        var flushesInFlight = 0
        /// Immediate flushes the task may still make (see ``PieceStore/flush(_:force:)``).
        var allowance: FlushAllowance
        /// Position in least-recently-used order (larger is more recent).
        var accessOrder: UInt64

        var isInUse: Bool { writers > 0 || operations > 0 }

        var info: StoredTaskInfo {
            StoredTaskInfo(
                taskID: metadata.taskID, url: metadata.url, contentLength: metadata.contentLength,
                pieceLength: metadata.pieceLength, pieceCount: metadata.pieceCount,
                finishedPieceCount: metadata.pieces.heldCount, heldBytes: metadata.heldBytes,
                headers: metadata.headers, isFinished: metadata.isFinished, isInUse: isInUse,
                createdAt: metadata.createdAt, accessedAt: metadata.accessedAt, finishedAt: metadata.finishedAt)
        }
    }

    struct State {
        var entries: [TaskID: Entry] = [:]
        var accessCounter: UInt64 = 0

        mutating func nextAccess() -> UInt64 {
            accessCounter += 1
            return accessCounter
        }

        /// Records an access: LRU position and the persisted access time.
        mutating func touch(_ id: TaskID, now: Date) {
            let order = nextAccess()
            guard var entry = entries[id] else { return }
            entry.accessOrder = order
            entry.metadata.accessedAt = now
            entry.version += 1
            entries[id] = entry
        }
    }

    /// A store over `dataDirectory` keeping bytes on `medium`. Call ``reload()`` before use to pick up tasks
    /// from an earlier run. The caller holds the data directory's lock (`DataDirectoryLock`).
    package init(
        dataDirectory: String,
        medium: any StorageMedium,
        configuration: PieceStoreConfiguration = PieceStoreConfiguration(),
        threadPool: NIOThreadPool = .singleton,
        logger: Logger
    ) {
        self.paths = TaskPaths(root: dataDirectory)
        self.dataDirectory = paths.root
        self.medium = medium
        self.fileMedium = medium as? any FileBackedStorageMedium
        self.configuration = configuration
        self.threadPool = threadPool
        self.logger = logger
    }

    /// Whether metadata is written to disk (the medium keeps its bytes in files).
    package var persistsMetadata: Bool { fileMedium != nil }

    // MARK: - Tasks

    /// Adds the kept ones of `headers` to the open task `taskID`'s (e.g. marking it private once the origin
    /// was read with credentials); persisted with the task's next flush. Unknown tasks are ignored.
    package func mergeHeaders(taskID: TaskID, _ headers: [String: String]) {
        let kept = TaskMetadata.keptHeaders(headers)
        guard !kept.isEmpty else { return }
        state.withLock { state in
            guard var entry = state.entries[taskID] else { return }
            entry.metadata.headers.merge(kept) { $1 }
            entry.version += 1
            state.entries[taskID] = entry
        }
    }

    /// Opens `id` for writing and registers a writer (until ``finishTask(taskID:contentLength:)`` or
    /// ``closeTask(taskID:)``).
    ///
    /// Existing metadata is resumed, keeping its verified pieces, when it is compatible: the same piece length,
    /// the same content length (or one side unknown and the held pieces fit), and no changed `etag` or
    /// `last-modified`. Otherwise the task starts over with no pieces (refused with `failedPrecondition` while
    /// another writer or reader uses it). A content length learnt here is adopted.
    ///
    /// - Parameters:
    ///   - contentLength: Nil when the origin does not say; then any piece up to `pieceLength` is accepted and
    ///     ``finishTask(taskID:contentLength:)`` fixes the total.
    ///   - headers: Origin response headers; `etag`, `last-modified` and `content-type` are kept.
    @discardableResult
    package func openTask(
        id: TaskID,
        url: String,
        contentLength: Int64?,
        pieceLength: Int64,
        headers: [String: String] = [:]
    ) async throws -> StoredTaskInfo {
        guard pieceLength > 0 else {
            throw DragonflyError(code: .invalidArgument, message: "piece length must be positive, not \(pieceLength)")
        }
        if let contentLength {
            guard contentLength >= 0 else {
                throw DragonflyError(
                    code: .invalidArgument, message: "content length must not be negative, not \(contentLength)")
            }
            try checkPieceCount(TaskMetadata.pieceCount(contentLength: contentLength, pieceLength: pieceLength))
        }
        enum Outcome {
            case resumed(StoredTaskInfo)
            case created
            case reset(String)
        }
        let kept = TaskMetadata.keptHeaders(headers)
        let now = TaskMetadata.now()
        let fresh = TaskMetadata(
            taskID: id, url: url, contentLength: contentLength, pieceLength: pieceLength, headers: kept, now: now)
        let outcome = try state.withLock { (state) throws(DragonflyError) -> Outcome in
            guard var entry = state.entries[id] else {
                state.entries[id] = Entry(
                    metadata: fresh, journal: makeJournal(id, persistedVersion: 0), version: 1, snapshotVersion: 0,
                    writers: 1, lastFlush: clock.now, allowance: FlushAllowance(now: clock.now, burst: flushBurst),
                    accessOrder: state.nextAccess())
                return .created
            }
            guard entry.phase == .active else { throw Self.busy(id) }
            if let reason = entry.metadata.incompatibility(
                contentLength: contentLength, pieceLength: pieceLength, headers: kept)
            {
                guard !entry.isInUse else {
                    throw DragonflyError(
                        code: .failedPrecondition,
                        message: "task \(id) is in use and cannot start over (\(reason)); retry when it is released")
                }
                entry.metadata = fresh
                entry.phase = .resetting
                entry.version += 1
                entry.writers = 1
                entry.unflushedPieces = 0
                state.entries[id] = entry
                return .reset(reason)
            }
            if let contentLength, entry.metadata.contentLength == nil {
                entry.metadata.adoptContentLength(contentLength)
            }
            entry.metadata.headers.merge(kept) { $1 }
            entry.metadata.url = url
            entry.writers += 1
            state.entries[id] = entry
            state.touch(id, now: now)
            return .resumed(state.entries[id]?.info ?? entry.info)
        }
        switch outcome {
        case .resumed(let info):
            logger.debug(
                "resuming stored task",
                metadata: ["df.task.id": "\(id)", "df.piece.count": "\(info.finishedPieceCount)"])
            return info
        case .created:
            do {
                try await flush(id, force: true)
            } catch {
                state.withLock { state in
                    if state.entries[id]?.writers == 1 && state.entries[id]?.metadata.pieces.heldCount == 0 {
                        state.entries[id] = nil
                    } else {
                        state.entries[id]?.writers -= 1
                    }
                }
                throw error
            }
            logger.debug("created stored task", metadata: ["df.task.id": "\(id)"])
        case .reset(let reason):
            logger.debug("stored task starts over", metadata: ["df.task.id": "\(id)", "df.reason": "\(reason)"])
            do {
                // The new, empty metadata is durable before the old bytes go, so no crash lists them.
                try await flush(id, force: true)
                try await medium.remove(taskID: id)
            } catch {
                state.withLock { state in
                    state.entries[id]?.phase = .active
                    state.entries[id]?.writers -= 1
                }
                throw error
            }
            state.withLock { $0.entries[id]?.phase = .active }
        }
        return try requireInfo(id)
    }

    /// Marks the task complete: every piece held, content length fixed (for a task opened without one,
    /// `contentLength` or, when nil, the end of the held pieces). Persists the metadata, releases the writer
    /// registered by ``openTask(id:url:contentLength:pieceLength:headers:)`` and returns the task.
    ///
    /// Throws `failedPrecondition` while pieces are missing, `invalidArgument` for a content length that
    /// contradicts the pieces.
    @discardableResult
    package func finishTask(taskID id: TaskID, contentLength: Int64? = nil) async throws -> StoredTaskInfo {
        let maximum = configuration.maximumPieceCount
        let now = TaskMetadata.now()
        try state.withLock { (state) throws(DragonflyError) in
            guard var entry = state.entries[id], entry.phase == .active else { throw Self.notFound(id) }
            var metadata = entry.metadata
            let total: Int64
            if let known = metadata.contentLength {
                if let contentLength, contentLength != known {
                    throw DragonflyError(
                        code: .invalidArgument,
                        message: "content length \(contentLength) contradicts task \(id)'s \(known) bytes")
                }
                total = known
            } else if let contentLength {
                total = contentLength
            } else if let short = metadata.shortPiece, metadata.pieces.contains(short.number) {
                total = Int64(short.number) * metadata.pieceLength + short.length
            } else {
                total = Int64((metadata.pieces.highestHeld ?? -1) + 1) * metadata.pieceLength
            }
            if metadata.contentLength == nil {
                if let problem = metadata.contentLengthProblem(total) {
                    throw DragonflyError(code: .invalidArgument, message: "cannot finish task \(id): \(problem)")
                }
                guard TaskMetadata.pieceCount(contentLength: total, pieceLength: metadata.pieceLength) <= maximum else {
                    throw DragonflyError(
                        code: .invalidArgument, message: "cannot finish task \(id): too many pieces for \(total) bytes")
                }
                metadata.adoptContentLength(total)
            }
            let count = metadata.pieceCount ?? 0
            let missing = count - metadata.pieces.heldCount
            guard missing == 0 else {
                throw DragonflyError(
                    code: .failedPrecondition, message: "task \(id) is missing \(missing) of its \(count) pieces")
            }
            if !metadata.isFinished {
                metadata.isFinished = true
                metadata.finishedAt = now
            }
            entry.metadata = metadata
            entry.writers = max(0, entry.writers - 1)
            entry.version += 1
            state.entries[id] = entry
            state.touch(id, now: now)
        }
        try await flush(id, force: true)
        logger.debug("finished stored task", metadata: ["df.task.id": "\(id)"])
        return try requireInfo(id)
    }

    /// Releases the writer registered by ``openTask(id:url:contentLength:pieceLength:headers:)`` without
    /// finishing (a failed or paused download) and persists what is held, so a later open resumes.
    package func closeTask(taskID id: TaskID) async throws {
        try state.withLock { (state) throws(DragonflyError) in
            guard let writers = state.entries[id]?.writers else { throw Self.notFound(id) }
            state.entries[id]?.writers = max(0, writers - 1)
        }
        try await flush(id, force: true)
    }

    /// Deletes the task's metadata and bytes. Refused with `failedPrecondition` while it is in use.
    package func deleteTask(taskID id: TaskID) async throws {
        let journal = try state.withLock { (state) throws(DragonflyError) -> MetadataJournal in
            guard var entry = state.entries[id], entry.phase != .removing else { throw Self.notFound(id) }
            guard entry.phase == .active, !entry.isInUse else {
                throw DragonflyError(
                    code: .failedPrecondition, message: "task \(id) is being written or read; retry when it is released"
                )
            }
            entry.phase = .removing
            state.entries[id] = entry
            return entry.journal
        }
        try await removeFiles(of: id, journal: journal)
        logger.debug("deleted stored task", metadata: ["df.task.id": "\(id)"])
    }

    /// The task, or nil when the store does not hold it.
    package func taskInfo(taskID id: TaskID) -> StoredTaskInfo? {
        state.withLock { state in
            guard let entry = state.entries[id], entry.phase != .removing else { return nil }
            return entry.info
        }
    }

    /// Every task, ordered by ID.
    package func listTasks() -> [StoredTaskInfo] {
        state.withLock { state in
            state.entries.values.filter { $0.phase != .removing }.map(\.info).sorted { $0.taskID < $1.taskID }
        }
    }

    /// Whether piece `number` is verified and written.
    package func hasPiece(taskID id: TaskID, number: Int) -> Bool {
        state.withLock { $0.entries[id]?.metadata.pieces.contains(number) ?? false }
    }

    /// The held pieces in ascending order.
    package func finishedPieces(taskID id: TaskID) throws(DragonflyError) -> [Int] {
        try withMetadata(id) { $0.pieces.heldSlots }
    }

    /// The pieces not held, in ascending order. For a task of unknown length: the gaps below the highest piece
    /// written so far.
    package func missingPieces(taskID id: TaskID) throws(DragonflyError) -> [Int] {
        try withMetadata(id) { $0.pieces.missingSlots }
    }

    /// The `sha256:<hex>` digest of each piece, nil where the piece is not held (what a seed reports).
    package func pieceDigests(taskID id: TaskID) throws(DragonflyError) -> [String?] {
        try withMetadata(id) { metadata in (0..<metadata.pieces.count).map { metadata.digest(ofPiece: $0) } }
    }

    /// Bytes of all held pieces (what the watermarks count).
    package func heldBytes() -> Int64 {
        state.withLock { state in
            state.entries.values.reduce(0) { $0 + ($1.phase == .removing ? 0 : $1.metadata.heldBytes) }
        }
    }

    // MARK: - Pieces

    /// Verifies and stores piece `number`, returning its `sha256:<hex>` digest.
    ///
    /// The bytes must be exactly the piece's length (the last piece: the remainder; unknown content length:
    /// 1 to `pieceLength` bytes, shorter only for the last piece). With `expectedDigest` (`sha256:<hex>`,
    /// learnt from the scheduler), a mismatch throws `dataLoss` and nothing becomes visible. The piece becomes
    /// held only after its bytes are written. Writing a held piece again returns its digest without rewriting;
    /// a concurrent write of the same piece throws `alreadyExists` (the first verified copy wins).
    @discardableResult
    package func writePiece(
        taskID id: TaskID,
        number: Int,
        bytes: ByteBuffer,
        expectedDigest: String? = nil
    ) async throws -> String {
        var expected: String?
        if let expectedDigest {
            let parsed: FileDigest
            do {
                parsed = try FileDigest(parsing: expectedDigest)
            } catch {
                throw DragonflyError(code: .invalidArgument, message: "bad piece digest: \(error.message)")
            }
            guard parsed.algorithm == .sha256 else {
                throw DragonflyError(
                    code: .invalidArgument, message: "piece digests are sha256, not \(parsed.algorithm.rawValue)")
            }
            expected = parsed.description
        }
        let length = Int64(bytes.readableBytes)
        let maximum = configuration.maximumPieceCount
        let early = try state.withLock { (state) throws(DragonflyError) -> String? in
            guard var entry = state.entries[id], entry.phase == .active else { throw Self.notFound(id) }
            if let stored = entry.metadata.digest(ofPiece: number) {
                if let expected, expected != stored {
                    throw Self.conflict(id, number: number, stored: stored, offered: expected)
                }
                return stored
            }
            if let problem = entry.metadata.geometryProblem(piece: number, length: length, maximumPieceCount: maximum) {
                throw DragonflyError(code: .invalidArgument, message: "task \(id): \(problem)")
            }
            entry.operations += 1
            state.entries[id] = entry
            return nil
        }
        if let early { return early }
        defer { endOperation(id) }

        let digestBytes = bytes.withUnsafeReadableBytes { raw in
            var hasher = SHA256()
            hasher.update(bufferPointer: raw)
            return Array(hasher.finalize())
        }
        let digest = "sha256:" + TaskID.hex(digestBytes)
        if let expected, expected != digest {
            logger.debug(
                "piece failed verification",
                metadata: [
                    "df.task.id": "\(id)", "df.piece.number": "\(number)", "df.digest.expected": "\(expected)",
                    "df.digest.actual": "\(digest)",
                ])
            throw DragonflyError(
                code: .dataLoss,
                message: "piece \(number) of task \(id) failed verification: expected \(expected), got \(digest)")
        }

        // Claim the piece: nobody else writes it while our bytes go to the medium.
        let claim = try state.withLock { (state) throws(DragonflyError) -> (offset: Int64, setShort: Bool)? in
            guard var entry = state.entries[id], entry.phase == .active else { throw Self.notFound(id) }
            if let stored = entry.metadata.digest(ofPiece: number) {
                guard stored == digest else {
                    throw Self.conflict(id, number: number, stored: stored, offered: digest)
                }
                return nil
            }
            guard !entry.writing.contains(number) else {
                throw DragonflyError(
                    code: .alreadyExists, message: "piece \(number) of task \(id) is being written by another peer")
            }
            if let problem = entry.metadata.geometryProblem(piece: number, length: length, maximumPieceCount: maximum) {
                throw DragonflyError(code: .invalidArgument, message: "task \(id): \(problem)")
            }
            var setShort = false
            if entry.metadata.contentLength == nil && length < entry.metadata.pieceLength
                && entry.metadata.shortPiece == nil
            {
                entry.metadata.shortPiece = TaskMetadata.ShortPiece(number: number, length: length)
                setShort = true
            }
            entry.writing.insert(number)
            state.entries[id] = entry
            return (Int64(number) * entry.metadata.pieceLength, setShort)
        }
        guard let claim else { return digest }

        do {
            try await medium.write(taskID: id, offset: claim.offset, bytes: bytes)
        } catch {
            state.withLock { state in
                state.entries[id]?.writing.remove(number)
                if claim.setShort && !(state.entries[id]?.metadata.pieces.contains(number) ?? true) {
                    state.entries[id]?.metadata.shortPiece = nil
                }
            }
            throw error
        }

        let now = TaskMetadata.now()
        let batchPieces = configuration.metadataBatchPieces
        let batchInterval = configuration.metadataBatchInterval
        let burst = flushBurst
        let shouldFlush = state.withLock { state -> Bool in
            guard var entry = state.entries[id] else { return false }
            entry.writing.remove(number)
            entry.metadata.insertPiece(number, digest: digestBytes)
            entry.version += 1
            entry.unflushedPieces += 1
            let instant = clock.now
            let due =
                entry.unflushedPieces >= batchPieces || instant - entry.lastFlush >= batchInterval
                || entry.metadata.pieces.heldCount == entry.metadata.pieceCount
                || (entry.flushesInFlight == 0
                    && entry.allowance.take(now: instant, burst: burst, per: batchInterval))
            state.entries[id] = entry
            state.touch(id, now: now)
            return due && entry.flushesInFlight == 0
        }
        logger.trace("stored piece", metadata: ["df.task.id": "\(id)", "df.piece.number": "\(number)"])
        if shouldFlush {
            do {
                try await flush(id, force: false)
            } catch is CancellationError {
                // The writer was cancelled (an endgame copy lost, a caller left): the next batch persists it.
                logger.debug("task metadata flush cancelled", metadata: ["df.task.id": "\(id)"])
            } catch {
                // The piece is stored; only its durability waits for the next batch, which retries.
                logger.warning(
                    "cannot persist task metadata", metadata: ["df.task.id": "\(id)", "df.error": "\(error)"])
            }
        }
        return digest
    }

    /// The bytes of held piece `number`; `notFound` when it is not held.
    package func readPiece(taskID id: TaskID, number: Int) async throws -> ByteBuffer {
        let (offset, length) = try beginPieceRead(id, number: number)
        defer { endOperation(id) }
        return try await medium.read(taskID: id, offset: offset, length: Int(length))
    }

    /// Runs `body` with the open data file and the range of held piece `number`, for `sendfile`; the
    /// descriptor stays open and the task protected from eviction until `body` returns, so `body` must await
    /// the end of the transfer. Throws `unimplemented` on a medium without files (use
    /// ``readPiece(taskID:number:)``).
    package func withPieceFile<Result>(
        taskID id: TaskID,
        number: Int,
        _ body: (PieceFile) async throws -> Result
    ) async throws -> Result {
        guard let fileMedium else {
            throw DragonflyError(
                code: .unimplemented, message: "the \(medium.name) medium keeps no files; read the piece instead")
        }
        let (offset, length) = try beginPieceRead(id, number: number)
        defer { endOperation(id) }
        return try await fileMedium.withDataFile(taskID: id) { descriptor in
            try await body(PieceFile(descriptor: descriptor, offset: offset, length: Int(length)))
        }
    }

    /// Streams bytes `range` of the task to `body` in order, in chunks of at most
    /// ``PieceStoreConfiguration/chunkSize`` (bounded memory, for `-O -`). Every piece the range touches must
    /// be held when it is reached, else `notFound`.
    package func readRange(
        taskID id: TaskID,
        range: Range<Int64>,
        _ body: (ByteBuffer) async throws -> Void
    ) async throws {
        let metadata = try beginOperation(id)
        defer { endOperation(id) }
        guard range.lowerBound >= 0, range.upperBound <= (metadata.contentLength ?? .max) else {
            throw DragonflyError(
                code: .invalidArgument,
                message: "range \(range.lowerBound)..<\(range.upperBound) is outside task \(id)'s "
                    + "\(metadata.contentLength.map(String.init) ?? "unknown") bytes")
        }
        let pieceLength = metadata.pieceLength
        var position = range.lowerBound
        while position < range.upperBound {
            let number = Int(position / pieceLength)
            let start = Int64(number) * pieceLength
            let held = state.withLock { state -> Int64? in
                guard let metadata = state.entries[id]?.metadata, metadata.pieces.contains(number) else { return nil }
                return metadata.length(ofHeldPiece: number)
            }
            guard let held, position < start + held else {
                throw DragonflyError(code: .notFound, message: "piece \(number) of task \(id) is not held")
            }
            let length = min(Int64(configuration.chunkSize), start + held - position, range.upperBound - position)
            let chunk = try await medium.read(taskID: id, offset: position, length: Int(length))
            try await body(chunk)
            position += length
        }
    }

    // MARK: - Persistence

    /// Persists the metadata of every task changed since its last flush (and waits for running flushes).
    package func flushAll() async throws {
        let ids = state.withLock { state in
            state.entries.filter { $0.value.version != $0.value.snapshotVersion || $0.value.flushesInFlight > 0 }
                .map(\.key)
        }
        var failure: (any Error)?
        for id in ids {
            do {
                try await flush(id, force: true)
            } catch {
                failure = failure ?? error
            }
        }
        if let failure { throw failure }
    }

    /// Persists the metadata of every task holding pieces that have waited at least
    /// ``PieceStoreConfiguration/metadataBatchInterval`` since the task's last flush. Batches are otherwise due
    /// only when a piece is written, so a task whose pieces land in bursts (or while another flush runs) would
    /// keep verified pieces unlisted until its next piece; run this every interval so a crash loses at most
    /// about one interval of verified pieces (DESIGN §7). Errors are logged; the next call retries.
    package func flushDue() async {
        let interval = configuration.metadataBatchInterval
        let now = clock.now
        let due = state.withLock { state in
            state.entries.filter { _, entry in
                entry.phase == .active && entry.unflushedPieces > 0 && entry.flushesInFlight == 0
                    && now - entry.lastFlush >= interval
            }.map(\.key)
        }
        for id in due {
            do {
                try await flush(id, force: false)
            } catch {
                logger.debug("cannot persist task metadata", metadata: ["df.task.id": "\(id)", "df.error": "\(error)"])
            }
        }
    }

    /// Persists everything (at shutdown). The store stays usable.
    package func close() async throws {
        try await flushAll()
    }

    /// Syncs the task's data, then writes a snapshot of its metadata. Without `force`, skips when another
    /// flush of the task is running or nothing changed; with it, returns only once the current state is durable.
    ///
    /// A task also flushes at once, without waiting for a batch, while it has allowance left
    /// (``PieceStoreConfiguration/metadataFlushBurst`` flushes per ``PieceStoreConfiguration/metadataBatchInterval``):
    /// a slow download, or a burst of pieces from parallel origin requests that land together, is listed as
    /// soon as it is verified, so a crash loses little more than the pieces in flight; a fast download uses up
    /// the allowance and is written in batches. Pieces that land while a flush runs are flushed right after it
    /// when allowance is left.
    func flush(_ id: TaskID, force: Bool) async throws {
        try await flushOnce(id, force: force)
        guard !force else { return }
        let interval = configuration.metadataBatchInterval
        let burst = flushBurst
        for _ in 0..<burst {
            let again = state.withLock { state -> Bool in
                guard var entry = state.entries[id], entry.phase == .active, entry.unflushedPieces > 0,
                    entry.flushesInFlight == 0, entry.allowance.take(now: clock.now, burst: burst, per: interval)
                else { return false }
                state.entries[id] = entry
                return true
            }
            guard again else { return }
            try await flushOnce(id, force: false)
        }
    }

    private var flushBurst: Int { max(configuration.metadataFlushBurst, 0) }

    private func flushOnce(_ id: TaskID, force: Bool) async throws {
        guard fileMedium != nil else { return }
        let now = clock.now
        let snapshot = state.withLock { state -> (TaskMetadata, UInt64, MetadataJournal)? in
            guard var entry = state.entries[id], entry.phase != .removing else { return nil }
            if !force && (entry.flushesInFlight > 0 || entry.version == entry.snapshotVersion) { return nil }
            entry.flushesInFlight += 1
            entry.unflushedPieces = 0
            entry.lastFlush = now
            entry.snapshotVersion = entry.version
            state.entries[id] = entry
            return (entry.metadata, entry.version, entry.journal)
        }
        guard let (metadata, version, journal) = snapshot else { return }
        logger.trace(
            "persisting task metadata",
            metadata: ["df.task.id": "\(id)", "df.piece.count": "\(metadata.pieces.heldCount)"])
        defer { state.withLock { $0.entries[id]?.flushesInFlight -= 1 } }
        do {
            // Data first: the metadata written next may list any piece written so far.
            try await medium.sync(taskID: id)
            try await threadPool.runIfActive { try journal.write(metadata, version: version) }
        } catch {
            let batch = configuration.metadataBatchPieces
            state.withLock { state in
                guard var entry = state.entries[id] else { return }
                entry.snapshotVersion = 0
                entry.unflushedPieces = max(entry.unflushedPieces, batch)
                state.entries[id] = entry
            }
            throw error
        }
    }

    /// Loads the metadata of every task under `<data>/tasks` (tasks already in memory are kept) and returns
    /// how many were added. Unreadable, corrupt or half-written entries are removed with their data; pieces a
    /// shortened data file no longer covers are dropped. Does nothing for a medium without files.
    @discardableResult
    package func reload() async throws -> Int {
        guard let fileMedium else { return 0 }
        let paths = self.paths
        let maximum = configuration.maximumPieceCount
        let logger = self.logger
        let loaded = try await threadPool.runIfActive {
            try Self.scan(paths: paths, medium: fileMedium, maximumPieceCount: maximum, logger: logger)
        }
        let now = clock.now
        let added = state.withLock { state -> Int in
            var added = 0
            for metadata in loaded.sorted(by: { $0.accessedAt < $1.accessedAt })
            where state.entries[metadata.taskID] == nil {
                state.entries[metadata.taskID] = Entry(
                    metadata: metadata, journal: makeJournal(metadata.taskID, persistedVersion: 1), version: 1,
                    snapshotVersion: 1, lastFlush: now, allowance: FlushAllowance(now: now, burst: flushBurst),
                    accessOrder: state.nextAccess())
                added += 1
            }
            return added
        }
        logger.debug("reloaded stored tasks", metadata: ["df.task.count": "\(added)"])
        return added
    }

    // MARK: - Garbage collection

    /// Evicts tasks not accessed within the TTL, then, while our bytes exceed the high watermark, the least
    /// recently used ones until they are at or under the low watermark. Tasks in use are never evicted.
    @discardableResult
    package func collectGarbage(now: Date = Date()) async throws -> StorageGCReport {
        let capacity = try await capacityBytes()
        let ttl = configuration.taskTTL.components
        let expiry = now.addingTimeInterval(-(Double(ttl.seconds) + Double(ttl.attoseconds) / 1e18))
        let high = capacity / 100 * Int64(configuration.highWatermarkPercent)
        let low = capacity / 100 * Int64(configuration.lowWatermarkPercent)
        var report = StorageGCReport()
        report.capacity = capacity
        let victims = state.withLock { state -> [(TaskID, MetadataJournal)] in
            var used = state.entries.values.reduce(Int64(0)) {
                $0 + ($1.phase == .removing ? 0 : $1.metadata.heldBytes)
            }
            var victims: [(TaskID, MetadataJournal)] = []
            func evict(_ id: TaskID) {
                guard var entry = state.entries[id] else { return }
                entry.phase = .removing
                state.entries[id] = entry
                used -= entry.metadata.heldBytes
                report.freedBytes += entry.metadata.heldBytes
                victims.append((id, entry.journal))
            }
            let evictable = state.entries.filter { $0.value.phase == .active && !$0.value.isInUse }
            for (id, entry) in evictable.sorted(by: { $0.key < $1.key }) where entry.metadata.accessedAt <= expiry {
                report.expired.append(id)
                evict(id)
            }
            if used > high {
                for (id, _) in evictable.sorted(by: { $0.value.accessOrder < $1.value.accessOrder }) {
                    guard used > low else { break }
                    guard state.entries[id]?.phase == .active else { continue }  // already expired
                    report.evicted.append(id)
                    evict(id)
                }
            }
            report.usedBytes = used
            return victims
        }
        for (id, journal) in victims {
            do {
                try await removeFiles(of: id, journal: journal)
                logger.debug("evicted stored task", metadata: ["df.task.id": "\(id)"])
            } catch {
                logger.debug("cannot remove evicted task", metadata: ["df.task.id": "\(id)", "df.error": "\(error)"])
            }
        }
        return report
    }

    /// The capacity the watermarks refer to: the quota, else the size of the data directory's file system.
    package func capacityBytes() async throws -> Int64 {
        if configuration.quota > 0 { return configuration.quota }
        let directory = dataDirectory
        return try await threadPool.runIfActive { () throws -> Int64 in
            var info = statvfs()
            guard statvfs(directory, &info) == 0 else {
                throw POSIX.error("cannot stat the file system of \(directory)")
            }
            return Int64(info.f_blocks) * Int64(info.f_frsize)
        }
    }

    // MARK: - Internals

    /// Counts a running read or export and records the access; returns the task's metadata.
    func beginOperation(_ id: TaskID) throws(DragonflyError) -> TaskMetadata {
        let now = TaskMetadata.now()
        return try state.withLock { (state) throws(DragonflyError) -> TaskMetadata in
            guard var entry = state.entries[id], entry.phase == .active else { throw Self.notFound(id) }
            entry.operations += 1
            state.entries[id] = entry
            state.touch(id, now: now)
            return entry.metadata
        }
    }

    func endOperation(_ id: TaskID) {
        state.withLock { state in
            guard let operations = state.entries[id]?.operations, operations > 0 else { return }
            state.entries[id]?.operations = operations - 1
        }
    }

    private func beginPieceRead(_ id: TaskID, number: Int) throws(DragonflyError) -> (Int64, Int64) {
        let metadata = try beginOperation(id)
        guard metadata.pieces.contains(number) else {
            endOperation(id)
            throw DragonflyError(code: .notFound, message: "piece \(number) of task \(id) is not held")
        }
        return (Int64(number) * metadata.pieceLength, metadata.length(ofHeldPiece: number))
    }

    private func withMetadata<Value>(_ id: TaskID, _ body: (TaskMetadata) -> Value) throws(DragonflyError) -> Value {
        let metadata = state.withLock { state -> TaskMetadata? in
            guard let entry = state.entries[id], entry.phase != .removing else { return nil }
            return entry.metadata
        }
        guard let metadata else { throw Self.notFound(id) }
        return body(metadata)
    }

    private func requireInfo(_ id: TaskID) throws(DragonflyError) -> StoredTaskInfo {
        guard let info = taskInfo(taskID: id) else { throw Self.notFound(id) }
        return info
    }

    private func checkPieceCount(_ count: Int) throws(DragonflyError) {
        guard count <= configuration.maximumPieceCount else {
            throw DragonflyError(
                code: .invalidArgument,
                message: "a task of \(count) pieces exceeds the limit of \(configuration.maximumPieceCount); "
                    + "use a larger piece length")
        }
    }

    private func makeJournal(_ id: TaskID, persistedVersion: UInt64) -> MetadataJournal {
        MetadataJournal(
            path: paths.metadataFile(id), directory: paths.taskDirectory(id), persistedVersion: persistedVersion)
    }

    /// Deletes metadata first (so no crash leaves it listing missing bytes), then the bytes, then the
    /// directories; the entry leaves the index in any case.
    private func removeFiles(of id: TaskID, journal: MetadataJournal) async throws {
        defer {
            state.withLock { state in
                if state.entries[id]?.phase == .removing { state.entries[id] = nil }
            }
        }
        let paths = self.paths
        let persistent = fileMedium != nil
        try await threadPool.runIfActive { journal.retire() }
        try await medium.remove(taskID: id)
        if persistent {
            try await threadPool.runIfActive {
                POSIX.removeTree(paths.taskDirectory(id))
                rmdir(paths.shardDirectory(id))
            }
        }
    }

    static func notFound(_ id: TaskID) -> DragonflyError {
        DragonflyError(code: .notFound, message: "task \(id) is not in the local store")
    }

    private static func busy(_ id: TaskID) -> DragonflyError {
        DragonflyError(code: .unavailable, message: "task \(id) is being removed or reset; retry")
    }

    private static func conflict(_ id: TaskID, number: Int, stored: String, offered: String) -> DragonflyError {
        DragonflyError(
            code: .dataLoss,
            message: "piece \(number) of task \(id) is already stored as \(stored); \(offered) conflicts with it")
    }
}

// MARK: - Reload

extension PieceStore {
    /// Reads every task directory; blocking, runs on the thread pool.
    fileprivate static func scan(
        paths: TaskPaths,
        medium: any FileBackedStorageMedium,
        maximumPieceCount: Int,
        logger: Logger
    ) throws(DragonflyError) -> [TaskMetadata] {
        var loaded: [TaskMetadata] = []
        // A store written by an older version (0755 directories, 0644 files) becomes private here.
        POSIX.restrictMode(paths.root, to: TaskPaths.directoryMode)
        POSIX.restrictMode(paths.tasksDirectory, to: TaskPaths.directoryMode)
        for shard in try POSIX.listDirectory(paths.tasksDirectory) {
            let shardPath = paths.tasksDirectory + "/" + shard
            guard let info = POSIX.status(shardPath), POSIX.isDirectory(info) else { continue }
            POSIX.restrictMode(shardPath, to: TaskPaths.directoryMode)
            for name in (try? POSIX.listDirectory(shardPath)) ?? [] {
                let taskPath = shardPath + "/" + name
                POSIX.restrictMode(taskPath, to: TaskPaths.directoryMode)
                guard let id = TaskID(name), id.shard == shard else {
                    logger.debug("ignoring a foreign entry in the task directory", metadata: ["df.path": "\(taskPath)"])
                    continue
                }
                do {
                    loaded.append(try load(id, paths: paths, medium: medium, maximumPieceCount: maximumPieceCount))
                } catch {
                    logger.debug(
                        "dropping unreadable stored task", metadata: ["df.task.id": "\(id)", "df.error": "\(error)"])
                    POSIX.removeTree(taskPath)
                }
            }
            rmdir(shardPath)  // only succeeds when empty
        }
        return loaded
    }

    private static func load(
        _ id: TaskID,
        paths: TaskPaths,
        medium: any FileBackedStorageMedium,
        maximumPieceCount: Int
    ) throws -> TaskMetadata {
        let directory = paths.taskDirectory(id)
        for name in try POSIX.listDirectory(directory) where TaskPaths.isTemporaryMetadata(name) {
            unlink(directory + "/" + name)
        }
        POSIX.restrictMode(paths.metadataFile(id), to: TaskPaths.fileMode)
        POSIX.restrictMode(medium.dataFilePath(taskID: id), to: TaskPaths.fileMode)
        let limit = (1 << 20) + maximumPieceCount * (TaskMetadata.digestSize + 1)
        let bytes = try readWholeFile(paths.metadataFile(id), limit: limit)
        var metadata = try TaskMetadata.decode(bytes, maximumPieceCount: maximumPieceCount)
        guard metadata.taskID == id else {
            throw DragonflyError(code: .dataLoss, message: "metadata names task \(metadata.taskID)")
        }
        // A data file that no longer covers a listed piece was truncated or lost behind our back.
        let size = POSIX.status(medium.dataFilePath(taskID: id)).map { Int64($0.st_size) } ?? 0
        var dropped = false
        for slot in metadata.pieces.heldSlots
        where Int64(slot) * metadata.pieceLength + metadata.length(ofHeldPiece: slot) > size {
            metadata.removePiece(slot)
            dropped = true
        }
        if dropped {
            try AtomicFile.write(metadata.encoded(), to: paths.metadataFile(id), mode: UInt32(TaskPaths.fileMode))
        }
        return metadata
    }

    private static func readWholeFile(_ path: String, limit: Int) throws -> [UInt8] {
        let fd = POSIX.open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw POSIX.error("cannot open \(path)") }
        defer { POSIX.close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw POSIX.error("cannot stat \(path)") }
        let size = Int(info.st_size)
        guard size <= limit else {
            throw DragonflyError(code: .dataLoss, message: "\(path) is larger than any valid metadata")
        }
        var bytes = [UInt8](repeating: 0, count: size)
        let got = try bytes.withUnsafeMutableBytes { (raw) throws(DragonflyError) in
            try POSIX.readFully(fd, into: raw, at: 0, path: path)
        }
        guard got == size else { throw DragonflyError(code: .dataLoss, message: "\(path) changed while read") }
        return bytes
    }
}

/// A task's allowance of immediate metadata flushes: a token bucket holding at most `burst` flushes, refilled
/// at `burst` per interval.
struct FlushAllowance {
    private var tokens: Double
    private var updated: ContinuousClock.Instant

    init(now: ContinuousClock.Instant, burst: Int) {
        tokens = Double(burst)
        updated = now
    }

    /// Takes one flush if the bucket holds one.
    mutating func take(now: ContinuousClock.Instant, burst: Int, per interval: Duration) -> Bool {
        guard burst > 0, interval > .zero else { return false }
        if now > updated {
            tokens = min(Double(burst), tokens + (now - updated) / interval * Double(burst))
            updated = now
        }
        guard tokens >= 1 else { return false }
        tokens -= 1
        return true
    }
}
