import DragonflyCore
import DragonflyStorage
import DragonflyTestSupport
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite struct ExportTests {
    /// A finished task of `length` bytes in `store`, and its content.
    private func finishedTask(_ store: PieceStore, name: String, length: Int = 10_000) async throws -> (TaskID, [UInt8])
    {
        let id = Fixtures.taskID(name)
        let content = Fixtures.content(count: length, seed: name.utf8.count)
        try await Fixtures.store(content, as: id, pieceLength: 4096, in: store)
        return (id, content)
    }

    @Test func anExistingDestinationIsReplacedAtomicallyKeepingItsMode() async throws {
        try await withTemporaryDirectory { directory in
            let store = Fixtures.makeStore(directory)
            let (id, content) = try await finishedTask(store, name: "replace")
            let out = try directory.makeDirectory("out")
            let destination = try directory.writeFile("out/file.bin", text: "old contents")
            #expect(chmod(destination, 0o600) == 0)
            let written = try await store.export(taskID: id, to: destination)
            #expect(written == Int64(content.count))
            #expect(Fixtures.fileBytes(destination) == content)
            #expect(Fixtures.listing(out) == ["file.bin"])
            let attributes = try FileManager.default.attributesOfItem(atPath: destination)
            #expect((attributes[.posixPermissions] as? Int) == 0o600)
            // The export is a copy, not the cache's inode.
            let dataInode =
                try FileManager.default.attributesOfItem(atPath: Fixtures.dataPath(directory, id))[
                    .systemFileNumber] as? Int
            #expect(attributes[.systemFileNumber] as? Int != dataInode)
        }
    }

    @Test(arguments: FileDigest.Algorithm.allCases)
    func aMatchingDigestIsAcceptedAndAMismatchChangesNothing(algorithm: FileDigest.Algorithm) async throws {
        try await withTemporaryDirectory { directory in
            let store = Fixtures.makeStore(directory)
            let (id, content) = try await finishedTask(store, name: "digest-\(algorithm)")
            let out = try directory.makeDirectory("out")
            let destination = try directory.writeFile("out/file.bin", text: "keep me")
            let wrong = try Fixtures.digest(algorithm, Array("something else".utf8))
            await expectError(.dataLoss) { try await store.export(taskID: id, to: destination, verify: wrong) }
            await expectError(.dataLoss) {
                try await store.export(taskID: id, to: destination, hardLink: true, verify: wrong)
            }
            #expect(Fixtures.fileBytes(destination) == Array("keep me".utf8))
            #expect(Fixtures.listing(out) == ["file.bin"])

            let fresh = out + "/new.bin"
            await expectError(.dataLoss) { try await store.export(taskID: id, to: fresh, verify: wrong) }
            #expect(Fixtures.listing(out) == ["file.bin"])

            let right = try FileDigest(parsing: Fixtures.digest(algorithm, content).description.uppercased())
            try await store.export(taskID: id, to: destination, verify: right)
            #expect(Fixtures.fileBytes(destination) == content)
            #expect(Fixtures.listing(out) == ["file.bin"])
        }
    }

    @Test func aMissingOutputDirectoryCreatesNothing() async throws {
        try await withTemporaryDirectory { directory in
            let store = Fixtures.makeStore(directory)
            let (id, _) = try await finishedTask(store, name: "missing-dir")
            let before = Fixtures.listing(directory.path)
            await expectError(.notFound) {
                try await store.export(taskID: id, to: directory.appending("nope/deeper/file"))
            }
            do {
                try await store.export(taskID: id, to: directory.appending("nope/file"))
            } catch let error as DragonflyError {
                #expect(error.message.contains("output directory") && error.message.contains("does not exist"))
            }
            #expect(Fixtures.listing(directory.path) == before)
        }
    }

    @Test func aDestinationThatIsADirectoryIsRefused() async throws {
        try await withTemporaryDirectory { directory in
            let store = Fixtures.makeStore(directory)
            let (id, _) = try await finishedTask(store, name: "is-dir")
            let out = try directory.makeDirectory("out/sub")
            await expectError(.invalidArgument) { try await store.export(taskID: id, to: out) }
            await expectError(.invalidArgument) { try await store.export(taskID: id, to: out + "/") }
            #expect(Fixtures.listing(out).isEmpty)
        }
    }

    @Test func aHardLinkIsMadeOnlyOnRequest() async throws {
        try await withTemporaryDirectory { directory in
            let store = Fixtures.makeStore(directory)
            let (id, content) = try await finishedTask(store, name: "hard-link")
            let out = try directory.makeDirectory("out")
            let destination = try directory.writeFile("out/linked", text: "old")
            let right = try Fixtures.digest(.sha256, content)
            try await store.export(taskID: id, to: destination, hardLink: true, verify: right)
            #expect(Fixtures.fileBytes(destination) == content)
            let inode = { (path: String) in
                try FileManager.default.attributesOfItem(atPath: path)[.systemFileNumber] as? Int
            }
            #expect(try inode(destination) == inode(Fixtures.dataPath(directory, id)))
            #expect(Fixtures.listing(out) == ["linked"])
        }
    }

    @Test func unfinishedUnknownAndEmptyTasks() async throws {
        try await withTemporaryDirectory { directory in
            let store = Fixtures.makeStore(directory)
            let partial = Fixtures.taskID("partial")
            try await Fixtures.store(
                Fixtures.content(count: 9000, seed: 1), as: partial, pieceLength: 4096, in: store, numbers: [0],
                finish: false)
            let out = try directory.makeDirectory("out")
            await expectError(.failedPrecondition) { try await store.export(taskID: partial, to: out + "/p") }
            await expectError(.notFound) { try await store.export(taskID: Fixtures.taskID("unknown"), to: out + "/u") }

            let empty = Fixtures.taskID("empty")
            try await store.openTask(id: empty, url: "u", contentLength: 0, pieceLength: 4096)
            try await store.finishTask(taskID: empty)
            try await store.export(taskID: empty, to: out + "/empty")
            try await store.export(taskID: empty, to: out + "/empty-link", hardLink: true)
            #expect(Fixtures.fileBytes(out + "/empty") == [])
            #expect(Fixtures.fileBytes(out + "/empty-link") == [])
            #expect(Fixtures.listing(out) == ["empty", "empty-link"])
        }
    }

    @Test func aMemoryTaskExportsPieceByPiece() async throws {
        try await withTemporaryDirectory { directory in
            var configuration = PieceStoreConfiguration()
            configuration.chunkSize = 1500
            let store = Fixtures.makeStore(
                directory, medium: MemoryMedium(capacity: 1 << 20), configuration: configuration)
            let (id, content) = try await finishedTask(store, name: "memory-export")
            let out = try directory.makeDirectory("out")
            let digest = try Fixtures.digest(.md5, content)
            try await store.export(taskID: id, to: out + "/m", hardLink: true, verify: digest)
            #expect(Fixtures.fileBytes(out + "/m") == content)
            #expect(Fixtures.listing(out) == ["m"])
        }
    }

    @Test func aRelativeDestinationUsesTheWorkingDirectory() async throws {
        try await withTemporaryDirectory { directory in
            let store = Fixtures.makeStore(directory)
            let (id, content) = try await finishedTask(store, name: "relative")
            let out = try directory.makeDirectory("out")
            // Relative to the working directory: give a path through the absolute one to stay independent of it.
            let relative =
                String(repeating: "../", count: FileManager.default.currentDirectoryPath.split(separator: "/").count)
                + String(out.dropFirst()) + "/rel"
            try await store.export(taskID: id, to: relative)
            #expect(Fixtures.fileBytes(out + "/rel") == content)
        }
    }

    @Test func aRangeOfHeldPiecesIsExportedAtomically() async throws {
        try await withTemporaryDirectory { directory in
            let store = Fixtures.makeStore(directory)
            let id = Fixtures.taskID("range-export")
            let content = Fixtures.content(count: 4096 * 3, seed: 21)
            try await Fixtures.store(content, as: id, pieceLength: 4096, in: store, numbers: [0, 1], finish: false)
            let out = try directory.makeDirectory("out")
            let slice = Array(content[100..<8000])
            let right = try Fixtures.digest(.sha512, slice)
            #expect(try await store.export(taskID: id, range: 100..<8000, to: out + "/r", verify: right) == 7900)
            #expect(Fixtures.fileBytes(out + "/r") == slice)
            let wrong = try Fixtures.digest(.sha512, Array(content[0..<7900]))
            await expectError(.dataLoss) {
                try await store.export(taskID: id, range: 100..<8000, to: out + "/w", verify: wrong)
            }
            await expectError(.failedPrecondition) {
                try await store.export(taskID: id, range: 8000..<9000, to: out + "/m")
            }
            await expectError(.invalidArgument) {
                try await store.export(taskID: id, range: 0..<99_999, to: out + "/b")
            }
            try await store.export(taskID: id, range: 50..<50, to: out + "/empty")
            #expect(Fixtures.fileBytes(out + "/empty") == [])
            #expect(Fixtures.listing(out) == ["empty", "r"])
        }
    }
}
