import DragonflyCore
import DragonflyTestSupport
import Logging
import Testing

@testable import DragonflyManager

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// The database engines every store test runs against.
enum TestBackend: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case sqlite
    case postgres

    var testDescription: String { rawValue }
}

let storeTestLogger = Logger(label: "dragonfly.manager.store.test")

/// Runs `body` with a fresh database location: a SQLite file in a temporary directory, or a database on a
/// throwaway PostgreSQL server started for this test.
func withDatabaseLocation<Value>(
    _ backend: TestBackend,
    _ body: (ManagerDatabase.Location, PostgresServer?) async throws -> Value
) async throws -> Value {
    switch backend {
    case .sqlite:
        try await withTemporaryDirectory { directory in
            try await body(try ManagerDatabase.Location.resolve(database: "", dataDirectory: directory.path), nil)
        }
    case .postgres:
        try await withPostgres { server in
            try await body(.postgres(url: server.url), server)
        }
    }
}

/// Opens and migrates a database at `location`, runs `body` with its store, and shuts it down.
func withOpenStore<Value>(
    _ location: ManagerDatabase.Location,
    migrate: Bool = true,
    _ body: (ManagerStore) async throws -> Value
) async throws -> Value {
    let database = try await ManagerDatabase.open(location, logger: storeTestLogger)
    do {
        if migrate {
            try await database.migrate()
        }
        let value = try await body(ManagerStore(database: database))
        await database.shutdown()
        return value
    } catch {
        await database.shutdown()
        throw error
    }
}

/// A migrated store on a fresh database of `backend`.
func withStore<Value>(
    _ backend: TestBackend,
    _ body: (ManagerStore, PostgresServer?) async throws -> Value
) async throws -> Value {
    try await withDatabaseLocation(backend) { location, server in
        try await withOpenStore(location) { store in try await body(store, server) }
    }
}

/// A fixed instant with whole milliseconds: 2023-11-14T22:13:20.123Z.
let fixedInstant = Date(timeIntervalSince1970: 1_700_000_000.123)

/// Opens `count` independent databases (separate connections or pools, as separate replicas would) at
/// `location`, runs `body`, and shuts them all down.
func withReplicas<Value>(
    _ count: Int,
    at location: ManagerDatabase.Location,
    _ body: ([ManagerDatabase]) async throws -> Value
) async throws -> Value {
    var databases: [ManagerDatabase] = []
    do {
        for _ in 0..<count {
            databases.append(try await ManagerDatabase.open(location, logger: storeTestLogger))
        }
        let value = try await body(databases)
        for database in databases { await database.shutdown() }
        return value
    } catch {
        for database in databases { await database.shutdown() }
        throw error
    }
}
