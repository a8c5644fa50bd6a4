import DragonflyCore
import DragonflyStorage
import DragonflyTestSupport
import Foundation
import Testing

/// How soon verified pieces become durable (DESIGN §7): what a crash right after them keeps.
@Suite struct MetadataFlushTests {
    /// Pieces the data directory lists, as a restarted store would load them.
    static func listedAfterACrash(_ directory: TemporaryDirectory, _ id: TaskID) async throws -> [Int] {
        let reloaded = Fixtures.makeStore(directory)
        try await reloaded.reload()
        return try reloaded.finishedPieces(taskID: id)
    }

    static func configuration(batchPieces: Int, interval: Duration, burst: Int) -> PieceStoreConfiguration {
        var configuration = PieceStoreConfiguration()
        configuration.metadataBatchPieces = batchPieces
        configuration.metadataBatchInterval = interval
        configuration.metadataFlushBurst = burst
        return configuration
    }

    @Test func aSlowDownloadsPiecesAreListedAsSoonAsTheyAreVerified() async throws {
        try await withTemporaryDirectory { directory in
            let store = Fixtures.makeStore(
                directory, configuration: Self.configuration(batchPieces: 1000, interval: .seconds(3600), burst: 4))
            let id = Fixtures.taskID("slow")
            let content = Fixtures.content(count: 4096 * 8, seed: 3)
            try await Fixtures.store(
                content, as: id, pieceLength: 4096, in: store, numbers: [0, 1, 2], finish: false)
            // The store is dropped without close or flush: a crash right after the third piece.
            #expect(try await Self.listedAfterACrash(directory, id) == [0, 1, 2])
        }
    }

    @Test func aFastDownloadUsesUpItsAllowanceAndIsWrittenInBatches() async throws {
        try await withTemporaryDirectory { directory in
            let store = Fixtures.makeStore(
                directory, configuration: Self.configuration(batchPieces: 4, interval: .seconds(3600), burst: 2))
            let id = Fixtures.taskID("fast")
            let content = Fixtures.content(count: 4096 * 16, seed: 4)
            try await Fixtures.store(
                content, as: id, pieceLength: 4096, in: store, numbers: Array(0..<9), finish: false)
            // Two immediate flushes (pieces 0 and 1), then a batch every 4 pieces (2–5); 6–8 wait.
            #expect(try await Self.listedAfterACrash(directory, id) == Array(0..<6))
        }
    }

    @Test func piecesThatWaitedAnIntervalAreFlushedWithoutAnotherWrite() async throws {
        try await withTemporaryDirectory { directory in
            let store = Fixtures.makeStore(
                directory,
                configuration: Self.configuration(batchPieces: 1000, interval: .seconds(1), burst: 0))
            let id = Fixtures.taskID("due")
            let content = Fixtures.content(count: 4096 * 4, seed: 5)
            try await Fixtures.store(content, as: id, pieceLength: 4096, in: store, numbers: [0], finish: false)
            #expect(try await Self.listedAfterACrash(directory, id) == [])
            try await poll(every: .milliseconds(20), timeLimit: .seconds(10), description: "piece 0 listed") {
                await store.flushDue()
                return try await Self.listedAfterACrash(directory, id) == [0]
            }
        }
    }
}
