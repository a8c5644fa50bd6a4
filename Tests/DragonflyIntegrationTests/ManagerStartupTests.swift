import DragonflyCore
import DragonflyTestSupport
import Foundation
import Testing

/// The manager migrates its store before it reports ready: SQLite in the data dir by default, PostgreSQL
/// (real, from the harness) with `--database`.
@Suite(.serialized, .timeLimit(.minutes(3)))
struct ManagerStartupTests {
    static func arguments(_ dir: TemporaryDirectory) -> [String] {
        ["manager", "--data-dir", dir.appending("data"), "--listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0"]
    }

    @Test func sqliteIsTheEmbeddedDefault() async throws {
        try await withTemporaryDirectory { dir in
            try await withDragonfly(Self.arguments(dir)) { process in
                _ = try await process.awaitReady(timeLimit: .seconds(60))
                #expect(FileManager.default.fileExists(atPath: dir.appending("data/manager.db")))
                try process.signal(.terminate)
                #expect(try await process.waitForExit(timeLimit: .seconds(5)) == .exited(0))
            }
        }
    }

    @Test func postgresReplicasShareOneMigratedStore() async throws {
        try await withPostgres { pg in
            try await withTemporaryDirectory { dir in
                let a = Self.arguments(dir).map { $0.replacingOccurrences(of: "/data", with: "/data-a") }
                let b = Self.arguments(dir).map { $0.replacingOccurrences(of: "/data", with: "/data-b") }
                // Two replicas start against the same database at once; both become ready.
                try await withDragonfly(a + ["--database", pg.url]) { a in
                    try await withDragonfly(b + ["--database", pg.url]) { b in
                        _ = try await a.awaitReady(timeLimit: .seconds(60))
                        _ = try await b.awaitReady(timeLimit: .seconds(60))
                        let clusters = try await pg.psql("select count(*) from scheduler_clusters where is_default")
                        #expect(clusters.trimmingCharacters(in: .whitespacesAndNewlines) == "1")
                        try a.signal(.terminate)
                        try b.signal(.terminate)
                        #expect(try await a.waitForExit(timeLimit: .seconds(5)) == .exited(0))
                        #expect(try await b.waitForExit(timeLimit: .seconds(5)) == .exited(0))
                    }
                }
            }
        }
    }

    @Test func anUnreachableDatabaseExitsOne() async throws {
        try await withTemporaryDirectory { dir in
            let port = try freeLoopbackPort()
            let url = "postgres://postgres:pg-password-7f3a@127.0.0.1:\(port)/nope"
            let result = try await runDragonfly(Self.arguments(dir) + ["--database", url])
            #expect(result.exitCode == 1, "\(result.stderr)")
            #expect(!result.stderr.contains("pg-password-7f3a"), "the password must never be printed")
        }
    }
}
