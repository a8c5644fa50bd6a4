import DragonflyCore
import DragonflyStorage
import DragonflyTestSupport
import Foundation
import Testing

@Suite struct GarbageCollectionTests {
    @Test func tasksNotAccessedWithinTheTTLAreEvictedUnlessInUse() async throws {
        try await withTemporaryDirectory { directory in
            var configuration = PieceStoreConfiguration()
            configuration.taskTTL = .seconds(3600)
            configuration.quota = 1 << 40
            let store = Fixtures.makeStore(directory, configuration: configuration)
            let idle = Fixtures.taskID("idle")
            let writing = Fixtures.taskID("writing")
            try await Fixtures.store(Fixtures.content(count: 5000, seed: 1), as: idle, pieceLength: 4096, in: store)
            try await Fixtures.store(
                Fixtures.content(count: 5000, seed: 2), as: writing, pieceLength: 4096, in: store, finish: false)

            // Within the TTL nothing goes.
            let early = try await store.collectGarbage(now: Date().addingTimeInterval(1800))
            #expect(early.expired.isEmpty && early.evicted.isEmpty)

            let report = try await store.collectGarbage(now: Date().addingTimeInterval(7200))
            #expect(report.expired == [idle])
            #expect(report.freedBytes == 5000 && report.usedBytes == 5000)
            #expect(store.listTasks().map(\.taskID) == [writing])
            #expect(!FileManager.default.fileExists(atPath: directory.appending("data/tasks/\(idle.shard)/\(idle)")))

            // Once the writer is gone it expires too.
            try await store.closeTask(taskID: writing)
            #expect(try await store.collectGarbage(now: Date().addingTimeInterval(7200)).expired == [writing])
            #expect(store.listTasks().isEmpty)
            #expect(Fixtures.listing(directory.appending("data/tasks")).isEmpty)
        }
    }

    @Test func overTheHighWatermarkTheLeastRecentlyUsedGoUntilUnderTheLowOne() async throws {
        try await withTemporaryDirectory { directory in
            var configuration = PieceStoreConfiguration()
            configuration.quota = 100_000
            let store = Fixtures.makeStore(directory, configuration: configuration)
            let ids = ["a", "b", "c", "d", "e"].map { Fixtures.taskID("lru-\($0)") }
            for (index, id) in ids.enumerated() {
                try await Fixtures.store(
                    Fixtures.content(count: 18_000, seed: index), as: id, pieceLength: 4096, in: store)
            }
            // 90 000 bytes held: over 80 %. Reading `a` makes it the most recent.
            _ = try await store.readPiece(taskID: ids[0], number: 0)
            #expect(store.heldBytes() == 90_000)
            let report = try await store.collectGarbage()
            #expect(report.expired.isEmpty)
            #expect(report.evicted == [ids[1], ids[2]])
            #expect(report.usedBytes == 54_000 && report.capacity == 100_000)
            #expect(Set(store.listTasks().map(\.taskID)) == [ids[0], ids[3], ids[4]])
            // Under the high watermark nothing more goes.
            #expect(try await store.collectGarbage().evicted.isEmpty)
        }
    }

    @Test func aTaskBeingReadIsNeverEvicted() async throws {
        try await withTemporaryDirectory { directory in
            var configuration = PieceStoreConfiguration()
            configuration.quota = 10_000
            let store = Fixtures.makeStore(directory, configuration: configuration)
            let id = Fixtures.taskID("busy")
            try await Fixtures.store(Fixtures.content(count: 9000, seed: 3), as: id, pieceLength: 4096, in: store)
            let far = Date().addingTimeInterval(365 * 86400)
            try await store.withPieceFile(taskID: id, number: 0) { _ in
                let report = try await store.collectGarbage(now: far)
                #expect(report.expired.isEmpty && report.evicted.isEmpty)
                await expectError(.failedPrecondition) { try await store.deleteTask(taskID: id) }
            }
            try await store.readRange(taskID: id, range: 0..<10) { _ async throws in
                let report = try await store.collectGarbage(now: far)
                #expect(report.expired.isEmpty)
            }
            #expect(try await store.collectGarbage(now: far).expired == [id])
        }
    }

    @Test func theServiceCollectsUntilCancelled() async throws {
        try await withTemporaryDirectory { directory in
            var configuration = PieceStoreConfiguration()
            configuration.taskTTL = .zero
            configuration.quota = 1 << 40
            let store = Fixtures.makeStore(directory, configuration: configuration)
            let id = Fixtures.taskID("service")
            try await Fixtures.store(Fixtures.content(count: 100, seed: 4), as: id, pieceLength: 4096, in: store)
            let service = StorageGCService(store: store, interval: .milliseconds(10), logger: Fixtures.logger)
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await service.run() }
                try await poll(timeLimit: .seconds(30), description: "the task to be collected") {
                    store.taskInfo(taskID: id) == nil
                }
                group.cancelAll()
                try await group.waitForAll()
            }
        }
    }
}
