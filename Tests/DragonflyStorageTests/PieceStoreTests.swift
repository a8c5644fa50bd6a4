import DragonflyCore
import DragonflyStorage
import DragonflyTestSupport
import Foundation
import NIOCore
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite struct PieceStoreTests {
    @Test(arguments: [(10_000, 4096), (8192, 4096), (1, 4096), (4096 * 3 + 1, 4096)])
    func piecesLandAtTheirOffsetsIncludingTheLastPartialOne(length: Int, pieceLength: Int) async throws {
        try await withTemporaryDirectory { directory in
            let store = Fixtures.makeStore(directory)
            let id = Fixtures.taskID("offsets-\(length)")
            let content = Fixtures.content(count: length, seed: length)
            let count = Fixtures.pieceCount(length, pieceLength)
            try await store.openTask(
                id: id, url: "https://example.com/f", contentLength: Int64(length), pieceLength: Int64(pieceLength))
            #expect(try store.missingPieces(taskID: id) == Array(0..<count))
            // Out of order, as a dispatcher would.
            for number in (0..<count).reversed() {
                let bytes = Fixtures.piece(number, of: content, pieceLength: pieceLength)
                let digest = try await store.writePiece(taskID: id, number: number, bytes: bytes, expectedDigest: nil)
                #expect(digest == Fixtures.sha256(bytes))
                #expect(store.hasPiece(taskID: id, number: number))
                #expect(try await store.readPiece(taskID: id, number: number) == bytes)
            }
            let info = try await store.finishTask(taskID: id)
            #expect(info.isFinished && info.finishedPieceCount == count && info.heldBytes == Int64(length))
            #expect(try store.missingPieces(taskID: id).isEmpty)
            #expect(try store.finishedPieces(taskID: id) == Array(0..<count))
            #expect(Fixtures.fileBytes(Fixtures.dataPath(directory, id)) == content)
            #expect(try await Fixtures.readAll(id, from: store, length: length) == content)
        }
    }

    @Test func aDigestMismatchIsRejectedAndNothingBecomesVisible() async throws {
        try await withTemporaryDirectory { directory in
            let store = Fixtures.makeStore(directory)
            let id = Fixtures.taskID("mismatch")
            let content = Fixtures.content(count: 8192, seed: 1)
            try await store.openTask(id: id, url: "u", contentLength: 8192, pieceLength: 4096)
            let bytes = Fixtures.piece(0, of: content, pieceLength: 4096)
            let other = Fixtures.sha256(Fixtures.piece(1, of: content, pieceLength: 4096))
            await expectError(.dataLoss) {
                try await store.writePiece(taskID: id, number: 0, bytes: bytes, expectedDigest: other)
            }
            #expect(!store.hasPiece(taskID: id, number: 0))
            await expectError(.notFound) { _ = try await store.readPiece(taskID: id, number: 0) }
            #expect(Fixtures.fileBytes(Fixtures.dataPath(directory, id)) == nil)
            // A malformed expected digest is the caller's mistake.
            await expectError(.invalidArgument) {
                try await store.writePiece(taskID: id, number: 0, bytes: bytes, expectedDigest: "sha256:xyz")
            }
            // The right digest is accepted.
            let digest = try await store.writePiece(
                taskID: id, number: 0, bytes: bytes, expectedDigest: Fixtures.sha256(bytes).uppercased())
            #expect(digest == Fixtures.sha256(bytes))
            #expect(try store.pieceDigests(taskID: id) == [digest, nil])
        }
    }

    @Test(arguments: [(0, 4095), (0, 4097), (2, 4096), (2, 1000), (3, 100), (-1, 4096)])
    func aPieceOfTheWrongLengthOrNumberIsRejected(number: Int, length: Int) async throws {
        try await withTemporaryDirectory { directory in
            let store = Fixtures.makeStore(directory)
            let id = Fixtures.taskID("length")
            // Pieces 0 and 1 are 4096 bytes, piece 2 is 1808.
            try await store.openTask(id: id, url: "u", contentLength: 10_000, pieceLength: 4096)
            let bytes = ByteBuffer(bytes: Fixtures.content(count: length, seed: 2))
            await expectError(.invalidArgument) {
                try await store.writePiece(taskID: id, number: number, bytes: bytes, expectedDigest: nil)
            }
            #expect(try store.finishedPieces(taskID: id).isEmpty)
        }
    }

    @Test func anUnknownContentLengthIsFixedByFinish() async throws {
        try await withTemporaryDirectory { directory in
            let store = Fixtures.makeStore(directory)
            let id = Fixtures.taskID("unknown")
            let content = Fixtures.content(count: 4096 * 2 + 100, seed: 3)
            let opened = try await store.openTask(id: id, url: "u", contentLength: nil, pieceLength: 4096)
            #expect(opened.contentLength == nil && opened.pieceCount == nil)
            try await store.writePiece(
                taskID: id, number: 2, bytes: Fixtures.piece(2, of: content, pieceLength: 4096), expectedDigest: nil)
            // Only the last piece may be short, and there is one last piece.
            await expectError(.invalidArgument) {
                try await store.writePiece(
                    taskID: id, number: 1, bytes: ByteBuffer(bytes: content[0..<50]), expectedDigest: nil)
            }
            await expectError(.invalidArgument) {
                try await store.writePiece(
                    taskID: id, number: 3, bytes: Fixtures.piece(0, of: content, pieceLength: 4096),
                    expectedDigest: nil)
            }
            await expectError(.failedPrecondition) { try await store.finishTask(taskID: id) }
            for number in 0..<2 {
                try await store.writePiece(
                    taskID: id, number: number, bytes: Fixtures.piece(number, of: content, pieceLength: 4096),
                    expectedDigest: nil)
            }
            await expectError(.invalidArgument) { try await store.finishTask(taskID: id, contentLength: 5000) }
            let info = try await store.finishTask(taskID: id)
            #expect(info.contentLength == Int64(content.count) && info.pieceCount == 3 && info.isFinished)
            #expect(try await Fixtures.readAll(id, from: store, length: content.count) == content)
        }
    }

    @Test func aRestartKeepsVerifiedPiecesAndTheDownloadResumes() async throws {
        try await withTemporaryDirectory { directory in
            let id = Fixtures.taskID("resume")
            let content = Fixtures.content(count: 4096 * 4 + 10, seed: 4)
            do {
                let store = Fixtures.makeStore(directory)
                try await store.openTask(
                    id: id, url: "u", contentLength: Int64(content.count), pieceLength: 4096,
                    headers: ["ETag": "\"v1\"", "Content-Type": "application/octet-stream", "X-Other": "dropped"])
                for number in [0, 2, 4] {
                    try await store.writePiece(
                        taskID: id, number: number, bytes: Fixtures.piece(number, of: content, pieceLength: 4096),
                        expectedDigest: nil)
                }
                try await store.closeTask(taskID: id)
            }
            let store = Fixtures.makeStore(directory)
            #expect(try await store.reload() == 1)
            #expect(try store.missingPieces(taskID: id) == [1, 3])
            #expect(
                try await store.readPiece(taskID: id, number: 2) == Fixtures.piece(2, of: content, pieceLength: 4096))
            let info = try await store.openTask(
                id: id, url: "u", contentLength: Int64(content.count), pieceLength: 4096, headers: ["etag": "\"v1\""])
            #expect(info.finishedPieceCount == 3)
            #expect(info.headers == ["etag": "\"v1\"", "content-type": "application/octet-stream"])
            for number in [1, 3] {
                try await store.writePiece(
                    taskID: id, number: number, bytes: Fixtures.piece(number, of: content, pieceLength: 4096),
                    expectedDigest: nil)
            }
            #expect(try await store.finishTask(taskID: id).isFinished)
            // And a finished task survives a restart as finished.
            let third = Fixtures.makeStore(directory)
            try await third.reload()
            #expect(third.taskInfo(taskID: id)?.isFinished == true)
            #expect(try await Fixtures.readAll(id, from: third, length: content.count) == content)
        }
    }

    @Test(arguments: [
        (Int64?.some(8192), Int64(8192), "\"v2\""), (Int64?.some(9000), Int64(4096), "\"v1\""),
        (Int64?.some(100), Int64(4096), "\"v1\""),
    ])
    func incompatibleMetadataStartsOver(contentLength: Int64?, pieceLength: Int64, etag: String) async throws {
        try await withTemporaryDirectory { directory in
            let store = Fixtures.makeStore(directory)
            let id = Fixtures.taskID("restart")
            let content = Fixtures.content(count: 8192, seed: 5)
            try await store.openTask(
                id: id, url: "u", contentLength: 8192, pieceLength: 4096, headers: ["etag": "\"v1\""])
            try await store.writePiece(
                taskID: id, number: 0, bytes: Fixtures.piece(0, of: content, pieceLength: 4096), expectedDigest: nil)
            // In use by the first writer: refused.
            await expectError(.failedPrecondition) {
                try await store.openTask(
                    id: id, url: "u", contentLength: contentLength, pieceLength: pieceLength, headers: ["etag": etag])
            }
            try await store.closeTask(taskID: id)
            let info = try await store.openTask(
                id: id, url: "u", contentLength: contentLength, pieceLength: pieceLength, headers: ["etag": etag])
            #expect(info.finishedPieceCount == 0 && info.pieceLength == pieceLength)
            #expect(Fixtures.fileBytes(Fixtures.dataPath(directory, id)) == nil)
        }
    }

    @Test func anUnknownLengthTaskAdoptsALaterKnownLength() async throws {
        try await withTemporaryDirectory { directory in
            let store = Fixtures.makeStore(directory)
            let id = Fixtures.taskID("adopt")
            let content = Fixtures.content(count: 4096 + 7, seed: 6)
            try await store.openTask(id: id, url: "u", contentLength: nil, pieceLength: 4096)
            try await store.writePiece(
                taskID: id, number: 0, bytes: Fixtures.piece(0, of: content, pieceLength: 4096), expectedDigest: nil)
            try await store.closeTask(taskID: id)
            let info = try await store.openTask(
                id: id, url: "u", contentLength: Int64(content.count), pieceLength: 4096)
            #expect(info.pieceCount == 2 && info.finishedPieceCount == 1)
            #expect(try store.missingPieces(taskID: id) == [1])
        }
    }

    @Test func aCrashLeavesEveryListedPieceIntact() async throws {
        try await withTemporaryDirectory { directory in
            var configuration = PieceStoreConfiguration()
            configuration.metadataBatchPieces = 3
            configuration.metadataBatchInterval = .seconds(3600)
            configuration.metadataFlushBurst = 0
            let id = Fixtures.taskID("crash")
            let pieceLength = 4096
            let content = Fixtures.content(count: pieceLength * 11, seed: 7)
            do {
                let store = Fixtures.makeStore(directory, configuration: configuration)
                try await Fixtures.store(
                    content, as: id, pieceLength: pieceLength, in: store, numbers: Array(0..<10), finish: false)
                #expect(try store.finishedPieces(taskID: id).count == 10)
                // "Crash": the store goes away without finish, close or flush.
            }
            // An interrupted metadata write left its temporary behind.
            let leftover = directory.appending("data/tasks/\(id.shard)/\(id)/.meta.99999.tmp")
            #expect(FileManager.default.createFile(atPath: leftover, contents: Data([1, 2, 3])))

            let store = Fixtures.makeStore(directory, configuration: configuration)
            try await store.reload()
            let listed = try store.finishedPieces(taskID: id)
            // Batches of three were persisted; the tenth piece was not yet.
            #expect(listed == Array(0..<9))
            let digests = try store.pieceDigests(taskID: id)
            for number in listed {
                let bytes = try await store.readPiece(taskID: id, number: number)
                #expect(bytes == Fixtures.piece(number, of: content, pieceLength: pieceLength))
                #expect(digests[number] == Fixtures.sha256(bytes))
            }
            #expect(!FileManager.default.fileExists(atPath: leftover))
            #expect(try store.missingPieces(taskID: id) == [9, 10])
        }
    }

    @Test func piecesBeyondATruncatedDataFileAreDroppedOnReload() async throws {
        try await withTemporaryDirectory { directory in
            let id = Fixtures.taskID("truncated")
            let content = Fixtures.content(count: 4096 * 6, seed: 8)
            do {
                let store = Fixtures.makeStore(directory)
                try await Fixtures.store(content, as: id, pieceLength: 4096, in: store)
            }
            #expect(truncate(Fixtures.dataPath(directory, id), off_t(4096 * 3 + 100)) == 0)
            let store = Fixtures.makeStore(directory)
            try await store.reload()
            #expect(try store.finishedPieces(taskID: id) == [0, 1, 2])
            #expect(store.taskInfo(taskID: id)?.isFinished == false)
            // The correction is persisted.
            let again = Fixtures.makeStore(directory)
            try await again.reload()
            #expect(try again.finishedPieces(taskID: id) == [0, 1, 2])
        }
    }

    @Test func corruptOrOrphanedEntriesAreDroppedOnReload() async throws {
        try await withTemporaryDirectory { directory in
            let good = Fixtures.taskID("good")
            let flipped = Fixtures.taskID("flipped")
            let truncatedMeta = Fixtures.taskID("truncated-meta")
            let orphan = Fixtures.taskID("orphan")
            do {
                let store = Fixtures.makeStore(directory)
                for (index, id) in [good, flipped, truncatedMeta].enumerated() {
                    try await Fixtures.store(
                        Fixtures.content(count: 5000, seed: index), as: id, pieceLength: 4096, in: store)
                }
            }
            var bytes = try #require(Fixtures.fileBytes(Fixtures.metaPath(directory, flipped)))
            bytes[bytes.count / 2] ^= 0x40
            try Data(bytes).write(to: URL(fileURLWithPath: Fixtures.metaPath(directory, flipped)))
            let whole = try #require(Fixtures.fileBytes(Fixtures.metaPath(directory, truncatedMeta)))
            try Data(whole.prefix(whole.count / 3)).write(
                to: URL(fileURLWithPath: Fixtures.metaPath(directory, truncatedMeta)))
            try directory.writeFile("data/tasks/\(orphan.shard)/\(orphan)/data", contents: [1, 2, 3])
            try directory.writeFile("data/tasks/zzz/not-a-task/file", contents: [1])

            let store = Fixtures.makeStore(directory)
            #expect(try await store.reload() == 1)
            #expect(store.listTasks().map(\.taskID) == [good])
            for id in [flipped, truncatedMeta, orphan] {
                #expect(!FileManager.default.fileExists(atPath: directory.appending("data/tasks/\(id.shard)/\(id)")))
            }
            // Foreign files are left alone.
            #expect(FileManager.default.fileExists(atPath: directory.appending("data/tasks/zzz/not-a-task/file")))
        }
    }

    @Test func concurrentWritersStoreEveryPieceOnce() async throws {
        try await withTemporaryDirectory { directory in
            var configuration = PieceStoreConfiguration()
            configuration.metadataBatchPieces = 4
            let store = Fixtures.makeStore(directory, configuration: configuration)
            let id = Fixtures.taskID("concurrent")
            let pieceLength = 4096
            let content = Fixtures.content(count: pieceLength * 64 - 5, seed: 9)
            try await store.openTask(id: id, url: "u", contentLength: Int64(content.count), pieceLength: 4096)
            try await withThrowingTaskGroup(of: Void.self) { group in
                for number in 0..<64 {
                    group.addTask {
                        let bytes = Fixtures.piece(number, of: content, pieceLength: pieceLength)
                        try await store.writePiece(
                            taskID: id, number: number, bytes: bytes, expectedDigest: Fixtures.sha256(bytes))
                    }
                }
                try await group.waitForAll()
            }
            #expect(try store.missingPieces(taskID: id).isEmpty)
            // A piece already held is not rewritten; its digest comes back.
            let first = Fixtures.piece(0, of: content, pieceLength: pieceLength)
            #expect(try await store.writePiece(taskID: id, number: 0, bytes: first) == Fixtures.sha256(first))
            await expectError(.dataLoss) {
                try await store.writePiece(
                    taskID: id, number: 0, bytes: first,
                    expectedDigest: Fixtures.sha256(Fixtures.piece(1, of: content, pieceLength: pieceLength)))
            }
            try await store.finishTask(taskID: id)
            let reloaded = Fixtures.makeStore(directory)
            try await reloaded.reload()
            #expect(try await Fixtures.readAll(id, from: reloaded, length: content.count) == content)
        }
    }

    @Test func readRangeStreamsInBoundedChunksAndStopsAtAMissingPiece() async throws {
        try await withTemporaryDirectory { directory in
            var configuration = PieceStoreConfiguration()
            configuration.chunkSize = 1000
            let store = Fixtures.makeStore(directory, configuration: configuration)
            let id = Fixtures.taskID("range")
            let content = Fixtures.content(count: 4096 * 3, seed: 10)
            try await Fixtures.store(content, as: id, pieceLength: 4096, in: store, numbers: [0, 1], finish: false)
            var chunks: [Int] = []
            var bytes: [UInt8] = []
            try await store.readRange(taskID: id, range: 100..<8000) { chunk in
                chunks.append(chunk.readableBytes)
                bytes.append(contentsOf: chunk.readableBytesView)
            }
            #expect(bytes == Array(content[100..<8000]))
            #expect(chunks.allSatisfy { $0 <= 1000 })
            await expectError(.notFound) {
                try await store.readRange(taskID: id, range: 8000..<9000) { _ in }
            }
            await expectError(.invalidArgument) {
                try await store.readRange(taskID: id, range: 0..<99_999) { _ in }
            }
        }
    }

    @Test func withPieceFileHandsOutTheDescriptorAndRange() async throws {
        try await withTemporaryDirectory { directory in
            let store = Fixtures.makeStore(directory)
            let id = Fixtures.taskID("sendfile")
            let content = Fixtures.content(count: 4096 + 300, seed: 11)
            try await Fixtures.store(content, as: id, pieceLength: 4096, in: store)
            let read = try await store.withPieceFile(taskID: id, number: 1) { file -> [UInt8] in
                #expect(file.offset == 4096 && file.length == 300)
                var buffer = [UInt8](repeating: 0, count: file.length)
                let n = buffer.withUnsafeMutableBytes {
                    pread(file.descriptor, $0.baseAddress, $0.count, off_t(file.offset))
                }
                #expect(n == 300)
                #expect(store.taskInfo(taskID: id)?.isInUse == true)
                return buffer
            }
            #expect(read == Array(content[4096...]))
            #expect(store.taskInfo(taskID: id)?.isInUse == false)
            await expectError(.notFound) { try await store.withPieceFile(taskID: id, number: 2) { _ in } }

            let memoryStore = Fixtures.makeStore(directory, medium: MemoryMedium(capacity: 1 << 20))
            try await Fixtures.store(content, as: id, pieceLength: 4096, in: memoryStore)
            await expectError(.unimplemented) { try await memoryStore.withPieceFile(taskID: id, number: 0) { _ in } }
        }
    }

    @Test func deleteRemovesEverythingButNotWhileInUse() async throws {
        try await withTemporaryDirectory { directory in
            let store = Fixtures.makeStore(directory)
            let id = Fixtures.taskID("delete")
            try await Fixtures.store(
                Fixtures.content(count: 5000, seed: 12), as: id, pieceLength: 4096, in: store, finish: false)
            await expectError(.failedPrecondition) { try await store.deleteTask(taskID: id) }
            try await store.closeTask(taskID: id)
            try await store.deleteTask(taskID: id)
            #expect(store.taskInfo(taskID: id) == nil)
            #expect(Fixtures.listing(directory.appending("data/tasks")).isEmpty)
            await expectError(.notFound) { try await store.deleteTask(taskID: id) }
            await expectError(.notFound) { _ = try await store.readPiece(taskID: id, number: 0) }
        }
    }
}
