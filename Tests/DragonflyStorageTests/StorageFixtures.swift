import DragonflyCore
import DragonflyStorage
import DragonflyTestSupport
import Foundation
import Logging
import NIOCore
import Testing

/// Shared helpers of the storage tests: deterministic content, stores over temporary directories.
enum Fixtures {
    static let logger = Logger(label: "df.test.storage") { _ in SwiftLogNoOpLogHandler() }

    static func taskID(_ name: String) -> TaskID {
        TaskID.make(url: "https://example.com/\(name)")
    }

    /// `count` bytes that differ with `seed` and position.
    static func content(count: Int, seed: Int) -> [UInt8] {
        var state = UInt64(truncatingIfNeeded: seed) &* 0x9E37_79B9_7F4A_7C15 | 1
        return (0..<count).map { _ in
            state ^= state << 13
            state ^= state >> 7
            state ^= state << 17
            return UInt8(truncatingIfNeeded: state)
        }
    }

    /// Piece `number` of `content` split into `pieceLength` pieces.
    static func piece(_ number: Int, of content: [UInt8], pieceLength: Int) -> ByteBuffer {
        let start = number * pieceLength
        return ByteBuffer(bytes: content[start..<min(start + pieceLength, content.count)])
    }

    static func pieceCount(_ length: Int, _ pieceLength: Int) -> Int {
        (length + pieceLength - 1) / pieceLength
    }

    static func sha256(_ bytes: ByteBuffer) -> String {
        "sha256:"
            + bytes.withUnsafeReadableBytes { raw in
                var hasher = FileHasher(.sha256)
                hasher.update(raw)
                return hasher.finalize()
            }
    }

    static func digest(_ algorithm: FileDigest.Algorithm, _ bytes: [UInt8]) throws -> FileDigest {
        let hex = bytes.withUnsafeBytes { raw in
            var hasher = FileHasher(algorithm)
            hasher.update(raw)
            return hasher.finalize()
        }
        return try FileDigest(parsing: "\(algorithm.rawValue):\(hex)")
    }

    static func makeStore(
        _ directory: TemporaryDirectory,
        medium: (any StorageMedium)? = nil,
        configuration: PieceStoreConfiguration = PieceStoreConfiguration()
    ) -> PieceStore {
        let data = directory.appending("data")
        return PieceStore(
            dataDirectory: data, medium: medium ?? DiskMedium(dataDirectory: data), configuration: configuration,
            logger: logger)
    }

    /// Opens a task and writes every piece of `content` (or only `numbers`).
    @discardableResult
    static func store(
        _ content: [UInt8],
        as id: TaskID,
        pieceLength: Int,
        in store: PieceStore,
        numbers: [Int]? = nil,
        finish: Bool = true
    ) async throws -> StoredTaskInfo {
        try await store.openTask(
            id: id, url: "https://example.com/\(id)", contentLength: Int64(content.count),
            pieceLength: Int64(pieceLength))
        for number in numbers ?? Array(0..<pieceCount(content.count, pieceLength)) {
            let bytes = piece(number, of: content, pieceLength: pieceLength)
            try await store.writePiece(taskID: id, number: number, bytes: bytes, expectedDigest: sha256(bytes))
        }
        if finish {
            return try await store.finishTask(taskID: id)
        }
        guard let info = store.taskInfo(taskID: id) else { throw DragonflyError(code: .notFound, message: "lost") }
        return info
    }

    /// Everything `store` returns for the task, through `readRange`.
    static func readAll(_ id: TaskID, from store: PieceStore, length: Int) async throws -> [UInt8] {
        var out: [UInt8] = []
        try await store.readRange(taskID: id, range: 0..<Int64(length)) { chunk in
            out.append(contentsOf: chunk.readableBytesView)
        }
        return out
    }

    static func fileBytes(_ path: String) -> [UInt8]? {
        FileManager.default.contents(atPath: path).map { Array($0) }
    }

    static func dataPath(_ directory: TemporaryDirectory, _ id: TaskID) -> String {
        directory.appending("data/tasks/\(id.shard)/\(id)/data")
    }

    static func metaPath(_ directory: TemporaryDirectory, _ id: TaskID) -> String {
        directory.appending("data/tasks/\(id.shard)/\(id)/meta")
    }

    static func listing(_ path: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted()
    }
}

/// Runs `body` and expects it to throw a ``DragonflyError`` with `code`.
func expectError(
    _ code: DragonflyError.Code,
    sourceLocation: SourceLocation = #_sourceLocation,
    _ body: () async throws -> Void
) async {
    do {
        try await body()
        Issue.record("expected a \(code) error, but nothing was thrown", sourceLocation: sourceLocation)
    } catch let error as DragonflyError {
        #expect(error.code == code, "\(error)", sourceLocation: sourceLocation)
    } catch {
        Issue.record("expected a \(code) DragonflyError, got \(error)", sourceLocation: sourceLocation)
    }
}
