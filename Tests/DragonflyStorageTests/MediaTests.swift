import DragonflyCore
import DragonflyStorage
import DragonflyTestSupport
import NIOCore
import Testing

@Suite struct MediaTests {
    @Test func builtinMediaRegisterByName() throws {
        let registry = PluginRegistry()
        try registerBuiltinMedia(into: registry)
        #expect(registry.mediumNames == ["disk", "memory"])
        let context = StorageMediumContext(dataDirectory: "/tmp/df-unused", capacity: 1024)
        #expect(try registry.makeMedium(named: "disk", context: context).name == "disk")
        let memory = try registry.makeMedium(named: "MEMORY", context: context)
        #expect((memory as? MemoryMedium)?.capacity == 1024)
        #expect(throws: DragonflyError.self) { try registerBuiltinMedia(into: registry) }
    }

    @Test func theMemoryMediumRefusesWritesBeyondItsCapacity() async throws {
        let medium = MemoryMedium(capacity: 10_000)
        let id = Fixtures.taskID("memory")
        try await medium.write(taskID: id, offset: 0, bytes: ByteBuffer(bytes: Fixtures.content(count: 6000, seed: 1)))
        await expectError(.resourceExhausted) {
            try await medium.write(
                taskID: id, offset: 6000, bytes: ByteBuffer(bytes: Fixtures.content(count: 5000, seed: 2)))
        }
        #expect(try await medium.usedBytes() == 6000)
        // Overwriting replaces rather than adds.
        let replacement = Fixtures.content(count: 6000, seed: 3)
        try await medium.write(taskID: id, offset: 0, bytes: ByteBuffer(bytes: replacement))
        #expect(try await medium.usedBytes() == 6000)
        // Reads may span segments; a gap is notFound.
        let tail = Fixtures.content(count: 4000, seed: 4)
        try await medium.write(taskID: id, offset: 6000, bytes: ByteBuffer(bytes: tail))
        #expect(
            try await medium.read(taskID: id, offset: 5000, length: 2000)
                == ByteBuffer(bytes: replacement[5000...] + tail[..<1000]))
        // A partial overlap keeps the untouched parts.
        try await medium.write(taskID: id, offset: 5500, bytes: ByteBuffer(bytes: [UInt8](repeating: 7, count: 1000)))
        let read = try await medium.read(taskID: id, offset: 5000, length: 2000)
        #expect(
            Array(read.readableBytesView) == Array(replacement[5000..<5500]) + [UInt8](repeating: 7, count: 1000)
                + Array(tail[500..<1000]))
        #expect(try await medium.usedBytes() == 10_000)
        await expectError(.notFound) { _ = try await medium.read(taskID: id, offset: 9000, length: 2000) }
        try await medium.remove(taskID: id)
        #expect(try await medium.usedBytes() == 0)
        await expectError(.resourceExhausted) {
            try await MemoryMedium(capacity: 0).write(taskID: id, offset: 0, bytes: ByteBuffer(bytes: [1]))
        }
    }

    @Test func aStoreOnTheMemoryMediumKeepsMetadataInMemoryOnly() async throws {
        try await withTemporaryDirectory { directory in
            let store = Fixtures.makeStore(directory, medium: MemoryMedium(capacity: 10_000))
            #expect(!store.persistsMetadata)
            let id = Fixtures.taskID("memory-store")
            let content = Fixtures.content(count: 12_000, seed: 5)
            try await store.openTask(id: id, url: "u", contentLength: 12_000, pieceLength: 4096)
            for number in 0..<2 {
                try await store.writePiece(
                    taskID: id, number: number, bytes: Fixtures.piece(number, of: content, pieceLength: 4096))
            }
            await expectError(.resourceExhausted) {
                try await store.writePiece(
                    taskID: id, number: 2, bytes: Fixtures.piece(2, of: content, pieceLength: 4096))
            }
            #expect(try store.finishedPieces(taskID: id) == [0, 1])
            #expect(Fixtures.listing(directory.path).isEmpty)
            let restarted = Fixtures.makeStore(directory, medium: MemoryMedium(capacity: 10_000))
            #expect(try await restarted.reload() == 0)
        }
    }

    @Test func theDiskMediumWorksBeyondItsOpenFileLimit() async throws {
        try await withTemporaryDirectory { directory in
            let medium = DiskMedium(dataDirectory: directory.path, maximumOpenFiles: 2)
            let ids = (0..<6).map { Fixtures.taskID("fd-\($0)") }
            for (index, id) in ids.enumerated() {
                try await medium.write(
                    taskID: id, offset: 4096, bytes: ByteBuffer(bytes: Fixtures.content(count: 100, seed: index)))
            }
            for (index, id) in ids.enumerated() {
                try await medium.sync(taskID: id)
                #expect(
                    try await medium.read(taskID: id, offset: 4096, length: 100)
                        == ByteBuffer(bytes: Fixtures.content(count: 100, seed: index)))
                // The hole before reads as zeros.
                #expect(
                    try await medium.read(taskID: id, offset: 0, length: 10)
                        == ByteBuffer(bytes: [UInt8](repeating: 0, count: 10)))
            }
            #expect(try await medium.usedBytes() > 0)
            await expectError(.dataLoss) { _ = try await medium.read(taskID: ids[0], offset: 4100, length: 200) }
            await expectError(.notFound) {
                _ = try await medium.read(taskID: Fixtures.taskID("none"), offset: 0, length: 1)
            }
            for id in ids { try await medium.remove(taskID: id) }
            #expect(try await medium.usedBytes() == 0)
            #expect(Fixtures.listing(directory.appending("tasks")).isEmpty)
            // Syncing a task that was never written is a no-op.
            try await medium.sync(taskID: ids[0])
        }
    }
}
