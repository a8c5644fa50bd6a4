package import DragonflyCore
import DragonflyRPC
import DragonflyStorage
import Synchronization

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// How a download through the daemon went: `get`'s summary plus the bytes that came from peers.
package struct DaemonGetResult: Sendable {
    package var summary: GetSummary
    /// Bytes the daemon fetched from peers for this download.
    package var peerBytes: Int64
}

/// `dragonfly get` through the local daemon. The daemon fills its cache and reports progress; the output is
/// written by this process, as the calling user, with the same ``GetOutput`` writer as `--no-daemon` — the
/// daemon never writes a caller's file (DESIGN §6 step 7, §11).
///
/// The bytes come from the daemon's data file (`<data dir>/tasks/<id[0..3]>/<id>/data`) when this process can
/// read it — checked against the digest the daemon reported for a piece, so a file that is not the daemon's is
/// never used — and otherwise through the Local service's `ReadTask` stream. A file output (a regular file, a
/// new path, a symlink's target) is written to an anonymous temporary beside it once the task is in the cache,
/// verified against `--digest`, then renamed over the destination; so a `get` that is interrupted, times out or
/// is killed never changes the destination. Standard output, a device, a FIFO or a socket is written through in
/// order as pieces land (after the whole range is verified, with `--digest`).
///
/// ```swift
/// let download = DaemonDownload(
///     request: GetRequest(url: url, output: nil), client: DaemonClient(socketPath: socket),
///     dataDirectory: "/var/lib/dragonfly/daemon")
/// let result = try await download.run { progress in print(progress.bytesDownloaded) }
/// ```
package final class DaemonDownload: Sendable {
    package let request: GetRequest
    package let client: DaemonClient
    package let priority: Int
    /// The daemon's data directory, when known.
    package let dataDirectory: String?
    /// The file descriptor `-O -` writes to (standard output unless a test says otherwise).
    package let outputDescriptor: Int32
    private let wroteOutput = Atomic<Bool>(false)

    package init(
        request: GetRequest,
        client: DaemonClient,
        priority: Int = 0,
        dataDirectory: String?,
        outputDescriptor: Int32 = 1
    ) {
        self.request = request
        self.client = client
        self.priority = priority
        self.dataDirectory = dataDirectory
        self.outputDescriptor = outputDescriptor
    }

    /// Opens the output of `kind` (on the thread pool: opening a FIFO waits for its reader).
    private func open(_ kind: OutputKind) async throws(DragonflyError) -> GetOutput {
        if case .stream(nil) = kind { return GetOutput(streamingTo: outputDescriptor) }
        return try await blocking { () throws(DragonflyError) in try GetOutput(kind: kind) }
    }

    /// Whether any byte has reached a streamed output (after which a retry elsewhere would corrupt it).
    package var hasWrittenToStandardOutput: Bool { wroteOutput.load(ordering: .relaxed) }

    /// Runs the download; `progress` is called for every report of the daemon, in order.
    ///
    /// - Throws: `DragonflyError` from the daemon (``DaemonClient/isDaemonUnavailable(_:)`` tells whether it
    ///   could not serve at all) or from writing the output.
    package func run(
        progress: @escaping @Sendable (DaemonDownloadProgress) -> Void
    ) async throws(DragonflyError) -> DaemonGetResult {
        let clock = ContinuousClock()
        let started = clock.now
        let kind = try OutputKind.classify(request.output)
        let final: DaemonDownloadProgress
        let outputBytes: Int64
        if case .stream = kind, request.digest == nil, let dataDirectory {
            (final, outputBytes) = try await streamFromDataFile(
                kind: kind, dataDirectory: dataDirectory, progress: progress)
            // Nothing was written for a range beyond the end; it still fails.
            if let length = final.contentLength { try request.checkRange(contentLength: length) }
        } else {
            let seen = Mutex<DaemonPiece?>(nil)
            var cacheOnly = request
            cacheOnly.output = nil
            final = try await client.download(cacheOnly, priority: priority) { report in
                if let piece = report.piece, piece.digest.hasPrefix("sha256:") {
                    seen.withLock { if $0 == nil { $0 = piece } }
                }
                progress(report)
            }
            outputBytes = try await writeFromCache(
                kind: kind, final: final, knownPiece: seen.withLock { $0 }, output: nil)
        }
        let summary = GetSummary(
            taskID: request.taskID,
            outputBytes: outputBytes,
            contentLength: final.contentLength ?? outputBytes,
            originBytes: final.bytesFromOrigin,
            cachedBytes: final.bytesFromLocal,
            elapsed: clock.now - started
        )
        return DaemonGetResult(summary: summary, peerBytes: final.bytesFromPeers)
    }

    /// Bytes of `range` within an object of `contentLength` (the whole object without a range).
    static func outputLength(range: ByteRange?, contentLength: Int64?) -> Int64 {
        guard let contentLength else { return range?.length ?? 0 }
        guard let range else { return contentLength }
        let end = min(range.length.map { range.start + $0 } ?? contentLength, contentLength)
        return max(end - range.start, 0)
    }

    /// The bytes of the task to output, once its length is known.
    private func outputRange(contentLength: Int64) -> Range<Int64> {
        let start = min(request.range?.start ?? 0, contentLength)
        return start..<(start + Self.outputLength(range: request.range, contentLength: contentLength))
    }

    /// Writes the output from the daemon's cache, where every byte of the range now is: from its data file when
    /// it can be read and holds the daemon's bytes, else through `ReadTask`.
    ///
    /// - Parameters:
    ///   - knownPiece: A piece with its digest, to recognise the daemon's data file by.
    ///   - output: An output already opened (a stream that a data-file streamer could not feed).
    private func writeFromCache(
        kind: OutputKind,
        final: DaemonDownloadProgress,
        knownPiece: DaemonPiece?,
        output opened: GetOutput?
    ) async throws(DragonflyError) -> Int64 {
        guard let contentLength = final.contentLength else {
            throw DragonflyError(code: .internalError, message: "the daemon did not report the length of the task")
        }
        try request.checkRange(contentLength: contentLength)
        let range = outputRange(contentLength: contentLength)
        let dataFile = await openDataFile(knownPiece: knownPiece)
        defer { if let dataFile { Glibc.close(dataFile.descriptor) } }
        if case .stream = kind, let digest = request.digest {
            // Nothing reaches a stream unless the bytes match: hash them first.
            try await check(range: range, digest: digest, dataFile: dataFile)
        }
        let output: GetOutput
        if let opened {
            output = opened
        } else {
            output = try await open(kind)
        }
        defer { output.discard() }
        let streamed = output.isStream
        if let dataFile {
            let job: Int64 = 64 << 20
            var done: Int64 = 0
            while done < Int64(range.count) {
                let count = min(job, Int64(range.count) - done)
                try await blocking { [done] () throws(DragonflyError) in
                    try output.copy(
                        from: dataFile.descriptor, at: range.lowerBound + done, to: done, length: count,
                        sourcePath: dataFile.path)
                }
                if streamed { wroteOutput.store(true, ordering: .relaxed) }
                done += count
            }
        } else if !range.isEmpty {
            try await client.readTask(taskID: request.taskID, offset: range.lowerBound, length: Int64(range.count)) {
                offset, data in
                try await GetOutput.blocking {
                    try data.withUnsafeBytes { raw in try output.write(raw, at: offset - range.lowerBound) }
                }
                if streamed { self.wroteOutput.store(true, ordering: .relaxed) }
            }
        }
        let digest = streamed ? nil : request.digest
        try await blocking { () throws(DragonflyError) in try output.publish(length: Int64(range.count), digest: digest)
        }
        return Int64(range.count)
    }

    /// Hashes bytes `range` of the task (from the data file or `ReadTask`) and compares them with `digest`.
    private func check(range: Range<Int64>, digest: FileDigest, dataFile: DataFile?) async throws(DragonflyError) {
        if let dataFile {
            let descriptor = dataFile.descriptor
            try await blocking { () throws(DragonflyError) in
                // The range starts at 0 of a view of the file: hash through a duplicate positioned at the start.
                var hasher = digest.makeHasher()
                var buffer = [UInt8](repeating: 0, count: 1 << 20)
                var position = range.lowerBound
                while position < range.upperBound {
                    let want = Int(min(Int64(buffer.count), range.upperBound - position))
                    let got = buffer.withUnsafeMutableBytes { pread(descriptor, $0.baseAddress, want, off_t(position)) }
                    if got < 0 && errno == EINTR { continue }
                    guard got > 0 else { throw AtomicFile.posixError("cannot read \(dataFile.path)") }
                    buffer.withUnsafeBytes { hasher.update(UnsafeRawBufferPointer(rebasing: $0[0..<got])) }
                    position += Int64(got)
                }
                try Self.compare(hasher.finalize(), digest)
            }
            return
        }
        let hasher = Mutex(digest.makeHasher())
        try await client.readTask(taskID: request.taskID, offset: range.lowerBound, length: Int64(range.count)) {
            _, data in
            hasher.withLock { state in data.withUnsafeBytes { state.update($0) } }
        }
        try Self.compare(hasher.withLock { $0.finalize() }, digest)
    }

    private static func compare(_ actual: String, _ digest: FileDigest) throws(DragonflyError) {
        guard actual == digest.hex else {
            throw DragonflyError(
                code: .dataLoss,
                message: "digest mismatch: expected \(digest), got \(digest.algorithm.rawValue):\(actual); "
                    + "the output was not written")
        }
    }

    /// An open data file of the daemon's.
    private struct DataFile: Sendable {
        let descriptor: Int32
        let path: String
    }

    /// The daemon's data file of the task, when it can be read and `knownPiece` (or, without one, the first
    /// piece the daemon's `StatTask` reports) matches its digest in it; nil otherwise.
    private func openDataFile(knownPiece: DaemonPiece?) async -> DataFile? {
        guard let dataDirectory else { return nil }
        var piece = knownPiece
        if piece == nil {
            piece = (try? await client.stat(taskID: request.taskID, askScheduler: false))?.local?.firstPiece
        }
        guard let piece, piece.digest.hasPrefix("sha256:") else { return nil }
        let id = request.taskID.rawValue
        let path = "\(dataDirectory)/tasks/\(id.prefix(3))/\(id)/data"
        return try? await blocking { () throws(DragonflyError) -> DataFile? in
            let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { return nil }
            var bytes = [UInt8](repeating: 0, count: Int(piece.length))
            let got = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, off_t(piece.offset)) }
            var hasher = FileHasher(.sha256)
            if got == bytes.count { bytes.withUnsafeBytes { hasher.update($0) } }
            guard got == bytes.count, "sha256:" + hasher.finalize() == piece.digest else {
                Glibc.close(fd)
                return nil
            }
            return DataFile(descriptor: fd, path: path)
        }
    }

    /// Runs blocking file work on the thread pool.
    private func blocking<Value: Sendable>(
        _ body: @escaping @Sendable () throws(DragonflyError) -> Value
    ) async throws(DragonflyError) -> Value {
        do {
            return try await GetOutput.blocking { try body() }
        } catch {
            throw DragonflyError(converting: error)
        }
    }

    private func streamFromDataFile(
        kind: OutputKind,
        dataDirectory: String,
        progress: @escaping @Sendable (DaemonDownloadProgress) -> Void
    ) async throws(DragonflyError) -> (DaemonDownloadProgress, Int64) {
        let output = try await open(kind)
        defer { output.discard() }
        let id = request.taskID.rawValue
        let streamer = LockedDataFileStreamer(
            DataFileStreamer(
                path: "\(dataDirectory)/tasks/\(id.prefix(3))/\(id)/data",
                start: request.range?.start ?? 0,
                requestedEnd: request.range?.length.map { (request.range?.start ?? 0) + $0 },
                output: output
            ))
        defer { streamer.state.withLock { $0.close() } }
        var cacheOnly = request
        cacheOnly.output = nil
        let seen = Mutex<DaemonPiece?>(nil)
        let final = try await client.download(cacheOnly, priority: priority) { report in
            if let piece = report.piece, piece.digest.hasPrefix("sha256:") {
                seen.withLock { if $0 == nil { $0 = piece } }
            }
            progress(report)
            try streamer.state.withLock { state throws(DragonflyError) in
                try state.advance(with: report) { self.wroteOutput.store(true, ordering: .relaxed) }
            }
        }
        let streamed = try streamer.state.withLock { state throws(DragonflyError) -> Int64? in
            try state.finish(with: final) { self.wroteOutput.store(true, ordering: .relaxed) }
            return state.isStreaming ? state.written : nil
        }
        if let streamed { return (final, streamed) }
        // The data file could not be used and nothing was written: read the cache through the daemon.
        let written = try await writeFromCache(
            kind: kind, final: final, knownPiece: seen.withLock { $0 }, output: output)
        return (final, written)
    }
}

/// A ``DataFileStreamer`` shared with the progress callback (which the gRPC client calls one report at a time).
final class LockedDataFileStreamer: Sendable {
    let state: Mutex<DataFileStreamer>
    init(_ streamer: DataFileStreamer) { state = Mutex(streamer) }
}

/// Writes the landed prefix of a task from the daemon's data file to standard output, in order.
struct DataFileStreamer {
    let path: String
    /// Where the bytes go (standard output, a device, a FIFO).
    let output: GetOutput
    /// First byte to write.
    let start: Int64
    /// End (exclusive) asked for by the range, if any.
    let requestedEnd: Int64?
    /// Next byte to write.
    private(set) var next: Int64
    /// Pieces reported and not yet written past, by offset.
    private var pieces: [Int64: DaemonPiece] = [:]
    private var pieceLength: Int64 = 0
    private var contentLength: Int64?
    private var fd: Int32 = -1
    private var hasVerified = false
    /// False once the data file proved unusable before anything was written.
    private(set) var isStreaming = true

    init(path: String, start: Int64, requestedEnd: Int64?, output: GetOutput) {
        self.path = path
        self.output = output
        self.start = start
        self.requestedEnd = requestedEnd
        self.next = start
    }

    /// Bytes written so far.
    var written: Int64 { next - start }

    private var end: Int64? {
        guard let contentLength else { return requestedEnd }
        return min(requestedEnd ?? contentLength, contentLength)
    }

    mutating func close() {
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
    }

    /// Takes a progress report and writes every byte that is now available in order.
    mutating func advance(with report: DaemonDownloadProgress, wrote: () -> Void) throws(DragonflyError) {
        guard isStreaming else { return }
        if report.pieceLength > 0 { pieceLength = report.pieceLength }
        if let length = report.contentLength { contentLength = length }
        if let piece = report.piece, piece.length > 0 {
            if piece.offset + piece.length > next { pieces[piece.offset] = piece }
        }
        while isStreaming, end.map({ next < $0 }) ?? true, let piece = landedPiece(covering: next) {
            let stop = min(piece.offset + piece.length, end ?? Int64.max)
            try write(piece: piece, upTo: stop, wrote: wrote)
            if next >= piece.offset + piece.length { pieces[piece.offset] = nil }
        }
    }

    /// The download is done: every byte of the wanted range is in the data file.
    mutating func finish(with final: DaemonDownloadProgress, wrote: () -> Void) throws(DragonflyError) {
        guard isStreaming else { return }
        if let length = final.contentLength { contentLength = length }
        try advance(with: final, wrote: wrote)
        guard isStreaming else { return }
        guard let end else {
            throw DragonflyError(code: .internalError, message: "the daemon did not report the length of the task")
        }
        // `write(span:)` turns streaming off (writing nothing) when the data file cannot be opened.
        while isStreaming, next < end {
            let chunk = min(end - next, 1 << 20)
            try write(span: DaemonPiece(number: -1, offset: next, length: chunk), upTo: next + chunk, wrote: wrote)
        }
        pieces.removeAll()
    }

    private func landedPiece(covering offset: Int64) -> DaemonPiece? {
        if pieceLength > 0, let piece = pieces[offset - offset % pieceLength], offset < piece.offset + piece.length {
            return piece
        }
        return pieces.values.first { $0.offset <= offset && offset < $0.offset + $0.length }
    }

    /// Opens the data file; false (and streaming off) when it cannot be read before anything was written.
    private mutating func open() throws(DragonflyError) -> Bool {
        if fd >= 0 { return true }
        fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        if fd >= 0 { return true }
        guard written == 0 else { throw AtomicFile.posixError("cannot read the daemon's data file \(path)") }
        isStreaming = false
        return false
    }

    /// Writes `[next, stop)` of a reported piece, verifying the first piece read against its digest.
    private mutating func write(piece: DaemonPiece, upTo stop: Int64, wrote: () -> Void) throws(DragonflyError) {
        guard try open() else { return }
        if !hasVerified, piece.digest.hasPrefix("sha256:") {
            let whole = try read(offset: piece.offset, count: Int(piece.length))
            var hasher = FileHasher(.sha256)
            whole.withUnsafeBytes { hasher.update($0) }
            guard whole.count == Int(piece.length), "sha256:" + hasher.finalize() == piece.digest else {
                guard written == 0 else {
                    throw DragonflyError(
                        code: .dataLoss, message: "piece \(piece.number) in \(path) does not match its digest")
                }
                close()
                isStreaming = false
                return
            }
            hasVerified = true
            let from = Int(next - piece.offset)
            let to = Int(stop - piece.offset)
            try emit(whole[from..<to])
            wrote()
            next = stop
            return
        }
        try write(span: piece, upTo: stop, wrote: wrote)
    }

    /// Copies `[next, stop)` from the data file to standard output in chunks of at most 1 MiB.
    private mutating func write(span: DaemonPiece, upTo stop: Int64, wrote: () -> Void) throws(DragonflyError) {
        guard try open() else { return }
        while next < stop {
            let bytes = try read(offset: next, count: Int(min(stop - next, 1 << 20)))
            guard !bytes.isEmpty else {
                throw DragonflyError(
                    code: .internalError, message: "the daemon's data file \(path) ends before byte \(next)")
            }
            try emit(bytes[...])
            wrote()
            next += Int64(bytes.count)
        }
    }

    /// Writes `bytes` to the output at the stream position.
    private func emit(_ bytes: ArraySlice<UInt8>) throws(DragonflyError) {
        let failure = bytes.withUnsafeBytes { raw -> DragonflyError? in
            do {
                try output.write(raw, at: next - start)
                return nil
            } catch {
                return DragonflyError(converting: error)
            }
        }
        if let failure { throw failure }
    }

    private func read(offset: Int64, count: Int) throws(DragonflyError) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let n = bytes.withUnsafeMutableBytes { raw in
                guard let base = raw.baseAddress else { return 0 }
                return pread(fd, base + done, count - done, off_t(offset + Int64(done)))
            }
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else { throw AtomicFile.posixError("cannot read the daemon's data file \(path)") }
            if n == 0 { break }
            done += n
        }
        bytes.removeLast(count - done)
        return bytes
    }
}
