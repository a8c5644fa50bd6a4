import DragonflyCore
import DragonflyTestSupport
import Testing

@testable import DragonflyManager

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Every store test, run against SQLite and a real PostgreSQL. Serialized: each PostgreSQL case starts its
/// own server, and two cores are shared with the build.
@Suite(.serialized, .timeLimit(.minutes(5)))
struct ManagerStoreTests {}

extension ManagerStoreTests {
    @Test(
        "migrations are idempotent: a second run, also from a new process, applies nothing",
        arguments: TestBackend.allCases)
    func migrationsAreIdempotent(backend: TestBackend) async throws {
        try await withDatabaseLocation(backend) { location, _ in
            try await withOpenStore(location, migrate: false) { store throws in
                #expect(try await store.database.migrate() == [1, 2])
                #expect(try await store.database.migrate() == [])
                #expect(try await store.database.appliedMigrations() == [1, 2])
            }
            try await withOpenStore(location, migrate: false) { store in
                #expect(try await store.database.migrate() == [])
                for kind in ClusterKind.allCases {
                    let clusters = try await store.clusters(kind)
                    #expect(clusters.count == 1)
                    #expect(clusters.first?.isDefault == true)
                    #expect(clusters.first?.name == ManagerDatabase.defaultClusterName)
                }
            }
        }
    }

    @Test("replicas migrating one database together apply each migration once", arguments: TestBackend.allCases)
    func concurrentMigrationsApplyOnce(backend: TestBackend) async throws {
        try await withDatabaseLocation(backend) { location, _ in
            let applied = try await withReplicas(3, at: location) { databases in
                try await withThrowingTaskGroup(of: [Int].self) { group in
                    for database in databases {
                        group.addTask { try await database.migrate() }
                    }
                    var all: [[Int]] = []
                    for try await versions in group {
                        all.append(versions)
                    }
                    return all
                }
            }
            // Each version was applied by exactly one replica.
            #expect(applied.flatMap { $0 }.sorted() == [1, 2])
            try await withOpenStore(location) { store in
                for kind in ClusterKind.allCases {
                    let clusters = try await store.clusters(kind)
                    #expect(clusters.count == 1)
                    #expect(clusters.filter(\.isDefault).count == 1)
                }
            }
        }
    }

    @Test("timestamps are stored as UTC instants and read back equal", arguments: TestBackend.allCases)
    func timestampsRoundTripInUTC(backend: TestBackend) async throws {
        try await withStore(backend) { store, server in
            let user = try await store.createUser(NewUser(name: "alice", passwordHash: "h"), now: fixedInstant)
            #expect(user.createdAt == fixedInstant)
            #expect(try await store.user(id: user.id).createdAt == fixedInstant)
            // Sub-millisecond digits are rounded away, identically on both engines.
            let precise = Date(timeIntervalSince1970: 1_700_000_000.123_456)
            let updated = try await store.updateUser(id: user.id, UserUpdate(email: "a@example.com"), now: precise)
            #expect(updated.updatedAt == fixedInstant)

            let stored = try await store.storedUnixSeconds(table: "users", column: "created_at", id: user.id)
            #expect(stored.map { abs($0 - 1_700_000_000.123) < 0.000_01 } == true)
            if let server {
                let utc = try await server.psql(
                    "select to_char(created_at at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS') from users")
                #expect(utc == "2023-11-14T22:13:20.123")
            }
        }
    }

    @Test("the database location comes from ManagerConfig.database and the data directory")
    func locationResolution() throws {
        #expect(
            try ManagerDatabase.Location.resolve(database: "", dataDirectory: "/var/lib/df/")
                == .sqlite(path: "/var/lib/df/manager.db"))
        #expect(
            try ManagerDatabase.Location.resolve(database: "sqlite:///tmp/m.db", dataDirectory: "/x")
                == .sqlite(path: "/tmp/m.db"))
        let postgres = try ManagerDatabase.Location.resolve(
            database: "postgres://df:s3cret@db:5432/manager", dataDirectory: "/x")
        #expect(postgres == .postgres(url: "postgres://df:s3cret@db:5432/manager"))
        #expect(postgres.description == "postgres://df:***@db:5432/manager")
        #expect(redactedURL("postgres://df@db/manager") == "postgres://df@db/manager")
        let error = #expect(throws: DragonflyError.self) {
            try ManagerDatabase.Location.resolve(database: "mysql://u:pw@h/db", dataDirectory: "/x")
        }
        #expect(error?.code == .configuration)
        #expect(error?.message.contains("pw") == false)
    }

    @Test("an invalid PostgreSQL URL is rejected without echoing its password")
    func invalidPostgresURLIsRedacted() async throws {
        let error = await #expect(throws: DragonflyError.self) {
            try await ManagerDatabase.open(.postgres(url: "postgres://user:hunter2@/db"), logger: storeTestLogger)
        }
        #expect(error?.code == .configuration)
        #expect(error.map { "\($0)".contains("hunter2") } == false)
    }
}
