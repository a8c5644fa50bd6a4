package import DragonflyCore
import Synchronization

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

/// `dragonfly get` through the local daemon: a file output is written by the daemon itself (atomically, digest
/// checked first); `-O -` streams the bytes to standard output in order as pieces land.
///
/// For `-O -` the daemon fills its cache and each reported piece is read back with `pread` from the daemon's
/// data file (`<data dir>/tasks/<id[0..3]>/<id>/data`) as soon as it and every piece before it have landed; the
/// first piece read is checked against the digest the daemon reported, so a data file that is not the
/// daemon's is never streamed. When that file cannot be read (another user's daemon, an unknown data dir, a
/// mismatch) — and always with `--digest`, so that nothing unverified reaches standard output — the daemon
/// writes a temporary output instead, which is streamed and deleted.
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

    /// Whether any byte has reached standard output (after which a retry elsewhere would corrupt the stream).
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
        let final: DaemonDownloadProgress
        let outputBytes: Int64
        if request.output != nil {
            final = try await client.download(request, priority: priority) { progress($0) }
            outputBytes = Self.outputLength(range: request.range, contentLength: final.contentLength)
        } else if request.digest == nil, let dataDirectory {
            (final, outputBytes) = try await streamFromDataFile(dataDirectory: dataDirectory, progress: progress)
        } else {
            (final, outputBytes) = try await streamTemporaryOutput(progress: progress)
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

    private func streamFromDataFile(
        dataDirectory: String,
        progress: @escaping @Sendable (DaemonDownloadProgress) -> Void
    ) async throws(DragonflyError) -> (DaemonDownloadProgress, Int64) {
        let id = request.taskID.rawValue
        let streamer = LockedDataFileStreamer(
            DataFileStreamer(
                path: "\(dataDirectory)/tasks/\(id.prefix(3))/\(id)/data",
                start: request.range?.start ?? 0,
                requestedEnd: request.range?.length.map { (request.range?.start ?? 0) + $0 },
                output: outputDescriptor
            ))
        defer { streamer.state.withLock { $0.close() } }
        var cacheOnly = request
        cacheOnly.output = nil
        let final = try await client.download(cacheOnly, priority: priority) { report in
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
        // The data file could not be used and nothing was written: the task is in the daemon's cache now, so
        // the export below is quick.
        return try await streamTemporaryOutput(progress: progress)
    }

    private func streamTemporaryOutput(
        progress: @escaping @Sendable (DaemonDownloadProgress) -> Void
    ) async throws(DragonflyError) -> (DaemonDownloadProgress, Int64) {
        let directory = try Self.makeTemporaryDirectory()
        let path = directory + "/output"
        defer {
            unlink(path)
            rmdir(directory)
        }
        var exported = request
        exported.output = path
        let final = try await client.download(exported, priority: priority) { progress($0) }
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            throw AtomicFile.posixError("cannot read the daemon's output \(path)")
        }
        defer { close(fd) }
        var total: Int64 = 0
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else { throw AtomicFile.posixError("cannot read the daemon's output \(path)") }
            if n == 0 { break }
            try OutputWriter.write(buffer[0..<n], to: outputDescriptor)
            wroteOutput.store(true, ordering: .relaxed)
            total += Int64(n)
        }
        return (final, total)
    }

    /// A private directory under `$TMPDIR` (or `/tmp`) for the daemon's temporary output.
    static func makeTemporaryDirectory() throws(DragonflyError) -> String {
        let base = getenv("TMPDIR").map { String(cString: $0) }.flatMap { $0.isEmpty ? nil : $0 } ?? "/tmp"
        var template = Array("\(base)/dragonfly-get-XXXXXX".utf8CString)
        let created = template.withUnsafeMutableBufferPointer { buffer in
            buffer.baseAddress.map { mkdtemp($0) != nil } ?? false
        }
        guard created else { throw AtomicFile.posixError("cannot create a temporary directory in \(base)") }
        return String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
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
    /// Where the bytes go (standard output).
    let output: Int32
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

    init(path: String, start: Int64, requestedEnd: Int64?, output: Int32) {
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
        while next < end {
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
            try OutputWriter.write(whole[from..<to], to: output)
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
            try OutputWriter.write(bytes[...], to: output)
            wrote()
            next += Int64(bytes.count)
        }
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

/// Unbuffered, complete writes to a file descriptor (standard output).
enum OutputWriter {
    static func write(_ bytes: ArraySlice<UInt8>, to descriptor: Int32) throws(DragonflyError) {
        let failure: DragonflyError? = bytes.withUnsafeBytes { raw in
            guard let base = raw.baseAddress else { return nil }
            var offset = 0
            while offset < raw.count {
                let n = Glibc.write(descriptor, base + offset, raw.count - offset)
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else { return AtomicFile.posixError("cannot write to standard output") }
                offset += n
            }
            return nil
        }
        if let failure { throw failure }
    }
}
