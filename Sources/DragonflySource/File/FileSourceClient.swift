package import DragonflyCore
import NIOCore
import _NIOFileSystem

/// The `file` origin adapter: `file:///absolute/path` URLs on this host (percent-decoded).
///
/// `stat` reads `stat(2)` of a regular file (a directory is listed with `list`, for recursive downloads);
/// `fetch` streams the file, or a range of it, in chunks of at most 1 MiB read on NIOFileSystem's thread pool,
/// one chunk per demand (backpressure). Each chunk is read through a freshly opened handle that is closed before
/// the chunk is returned, so an abandoned body never leaks a descriptor (NIOFileSystem traps on a handle
/// dropped unclosed); the file's size and times are checked against those seen when the fetch began, so a
/// file replaced or modified mid-read fails instead of mixing two versions' bytes.
package struct FileSourceClient: SourceClient {
    package let schemes = ["file"]
    /// Largest chunk a fetch body yields.
    package static let chunkLength: Int64 = 1 << 20
    /// Most entries ``list(_:)`` returns before failing, so a huge directory cannot exhaust memory.
    package var maximumListEntries: Int

    package init(maximumListEntries: Int = 100_000) {
        self.maximumListEntries = maximumListEntries
    }

    package func stat(_ request: SourceRequest) async throws -> SourceMetadata {
        let path = try FileURL.path(from: request.url)
        let info = try await regularFileInfo(path: path, url: request.url)
        return Self.metadata(info, url: request.url)
    }

    package func fetch(_ request: SourceRequest, range: ByteRange?) async throws -> SourceResponse {
        let path = try FileURL.path(from: request.url)
        let info = try await regularFileInfo(path: path, url: request.url)
        let size = info.size
        var start: Int64 = 0
        var end = size
        if let range {
            guard range.start >= 0, range.start < size, (range.length ?? 1) > 0 else {
                throw DragonflyError(
                    code: .originError,
                    message: "range \(range) is beyond the end of \(Redaction.url(request.url)) (\(size) bytes)")
            }
            start = range.start
            if let length = range.length {
                end = min(size, start + length)
            }
        }
        let body = FileChunkBody(
            path: path,
            url: request.url,
            identity: FileIdentity(info),
            start: start,
            end: end,
            chunkLength: Self.chunkLength
        )
        return SourceResponse(metadata: Self.metadata(info, url: request.url), isPartial: range != nil, body: body)
    }

    package func list(_ request: SourceRequest) async throws -> [SourceEntry] {
        let path = try FileURL.path(from: request.url)
        let info = try await info(path: path, url: request.url)
        guard info.type == .directory else {
            throw DragonflyError(code: .invalidArgument, message: "\(Redaction.url(request.url)) is not a directory")
        }
        let directory = path.hasSuffix("/") ? path : path + "/"
        var names: [(name: String, type: FileType)] = []
        do {
            try await FileSystem.shared.withDirectoryHandle(atPath: FilePath(path)) { handle in
                for try await entry in handle.listContents() {
                    guard names.count < maximumListEntries else {
                        throw DragonflyError(
                            code: .resourceExhausted,
                            message: "\(Redaction.url(request.url)) holds more than \(maximumListEntries) entries")
                    }
                    names.append((entry.name.string, entry.type))
                }
            }
        } catch let error as DragonflyError {
            throw error
        } catch {
            throw Self.fileSystemError(error, path: path, url: request.url)
        }
        var entries: [SourceEntry] = []
        entries.reserveCapacity(names.count)
        for (name, type) in names.sorted(by: { $0.name < $1.name }) {
            let childPath = directory + name
            var isDirectory = type == .directory
            var length: Int64?
            if type == .regular || type == .symlink {
                // Symbolic links are followed; a dangling one is skipped.
                guard let target = try? await FileSystem.shared.info(forFileAt: FilePath(childPath)) else {
                    continue
                }
                isDirectory = target.type == .directory
                guard isDirectory || target.type == .regular else { continue }
                length = isDirectory ? nil : target.size
            } else if !isDirectory {
                continue
            }
            entries.append(
                SourceEntry(url: FileURL.url(forPath: childPath), isDirectory: isDirectory, contentLength: length))
        }
        return entries
    }

    // MARK: Helpers

    private func info(path: String, url: String) async throws -> FileInfo {
        let info: FileInfo?
        do {
            info = try await FileSystem.shared.info(forFileAt: FilePath(path), infoAboutSymbolicLink: false)
        } catch {
            throw Self.fileSystemError(error, path: path, url: url)
        }
        guard let info else {
            throw DragonflyError(code: .originError, message: "no such file \(path) (\(Redaction.url(url)))")
        }
        return info
    }

    private func regularFileInfo(path: String, url: String) async throws -> FileInfo {
        let info = try await info(path: path, url: url)
        if info.type == .directory {
            throw DragonflyError(
                code: .invalidArgument,
                message: "\(Redaction.url(url)) is a directory; download it recursively (get --recursive)")
        }
        guard info.type == .regular else {
            throw DragonflyError(code: .invalidArgument, message: "\(Redaction.url(url)) is not a regular file")
        }
        return info
    }

    private static func metadata(_ info: FileInfo, url: String) -> SourceMetadata {
        let modified = info.lastDataModificationTime.seconds
        let etag = "\"\(String(modified, radix: 16))-\(String(info.size, radix: 16))\""
        let lastModified = HTTPDate.format(secondsSinceEpoch: modified)
        return SourceMetadata(
            contentLength: info.size,
            supportsRanges: true,
            etag: etag,
            lastModified: lastModified,
            finalURL: url,
            headers: [HeaderField(name: "ETag", value: etag), HeaderField(name: "Last-Modified", value: lastModified)]
        )
    }

    /// Maps a NIOFileSystem error to a ``DragonflyError``.
    static func fileSystemError(_ error: any Error, path: String, url: String) -> any Error {
        if error is CancellationError || error is DragonflyError { return error }
        guard let error = error as? FileSystemError else {
            return DragonflyError(
                code: .unavailable, message: "cannot read \(path) (\(Redaction.url(url)))", cause: error)
        }
        switch error.code {
        case .notFound:
            return DragonflyError(
                code: .originError, message: "no such file \(path) (\(Redaction.url(url)))", cause: error)
        case .permissionDenied:
            return DragonflyError(code: .permissionDenied, message: "no permission to read \(path)", cause: error)
        default:
            return DragonflyError(
                code: .unavailable, message: "cannot read \(path) (\(Redaction.url(url)))", cause: error)
        }
    }
}

/// What a file looked like when a fetch began: size, modification and status-change times. A replaced file
/// (new inode) or one modified in place has a different status-change time.
struct FileIdentity: Hashable, Sendable {
    var size: Int64
    var modified: FileInfo.Timespec
    var statusChanged: FileInfo.Timespec

    init(_ info: FileInfo) {
        size = info.size
        modified = info.lastDataModificationTime
        statusChanged = info.lastStatusChangeTime
    }
}

/// The bytes `start..<end` of a file as chunks of at most `chunkLength`, each read on demand.
struct FileChunkBody: AsyncSequence, Sendable {
    typealias Element = ByteBuffer

    let path: String
    let url: String
    let identity: FileIdentity
    let start: Int64
    let end: Int64
    let chunkLength: Int64

    struct AsyncIterator: AsyncIteratorProtocol {
        let body: FileChunkBody
        var offset: Int64

        mutating func next() async throws -> ByteBuffer? {
            guard offset < body.end else { return nil }
            try Task.checkCancellation()
            let length = Swift.min(body.chunkLength, body.end - offset)
            let chunk = try await body.readChunk(at: offset, length: length)
            guard chunk.readableBytes > 0 else {
                throw DragonflyError(
                    code: .originError,
                    message:
                        "\(Redaction.url(body.url)) shrank while being read (ended at byte \(offset) of \(body.end))")
            }
            offset += Int64(chunk.readableBytes)
            return chunk
        }
    }

    func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(body: self, offset: start)
    }

    private func readChunk(at offset: Int64, length: Int64) async throws -> ByteBuffer {
        do {
            return try await FileSystem.shared.withFileHandle(forReadingAt: FilePath(path)) { handle in
                guard FileIdentity(try await handle.info()) == identity else {
                    throw DragonflyError(code: .originError, message: "\(Redaction.url(url)) changed while being read")
                }
                return try await handle.readChunk(fromAbsoluteOffset: offset, length: .bytes(length))
            }
        } catch {
            throw FileSourceClient.fileSystemError(error, path: path, url: url)
        }
    }
}
