package import DragonflyCore
import Glibc
package import Logging
import NIOCore
import NIOPosix
import PostgresKit
import SQLKit
import SQLiteKit
import Synchronization

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// The manager's database: SQLite in the data directory by default, PostgreSQL for several replicas.
///
/// Both backends are driven by the same SQLKit code; ``Backend`` is consulted only where SQLite lacks a
/// feature (row locks, advisory locks, `BEGIN IMMEDIATE`).
///
/// - SQLite uses **one connection** guarded by a FIFO gate, running on a **dedicated one-thread
///   `NIOThreadPool`**. SQLite allows a single writer per file, so a pool would only park threads on the file
///   lock; one connection in WAL mode, serialised in-process, never contends with itself and makes
///   `BEGIN … COMMIT` safe without session pinning. The connection's own thread matters: sqlite-nio's default
///   busy handler spins forever on a pool thread, so connections sharing `NIOThreadPool.singleton` (two
///   threads here) can starve the lock holder and deadlock. The handler is replaced by `busy_timeout`
///   (sleeping, bounded by ``sqliteBusyTimeoutMilliseconds``). The data-directory lock already limits a file to
///   one manager process; a second opener (a CLI tool, a test) waits, or fails with `unavailable`.
/// - PostgreSQL uses an `EventLoopGroupConnectionPool` with ``postgresConnectionsPerEventLoop`` connections
///   per event loop of the shared NIO group (4 on two cores). A transaction pins one pooled connection.
///
/// Queries are never logged with their binds (they carry password and token hashes), and the PostgreSQL
/// URL is only ever shown without its password.
package final class ManagerDatabase: Sendable {
    /// Which database engine backs the store.
    package enum Backend: String, Sendable, Hashable, CustomStringConvertible {
        case sqlite
        case postgres

        package var description: String { rawValue }
    }

    /// Where the database lives, resolved from ``ManagerConfig/database`` and the data directory.
    package enum Location: Sendable, Hashable, CustomStringConvertible {
        /// A SQLite file.
        case sqlite(path: String)
        /// A PostgreSQL URL `postgres://user[:password]@host[:port]/database`.
        case postgres(url: String)

        /// The file name of the SQLite database inside the data directory.
        package static let sqliteFileName = "manager.db"

        /// Resolves `database` (empty: `<dataDirectory>/manager.db`; `sqlite://PATH`; `postgres://…`).
        package static func resolve(database: String, dataDirectory: String) throws(DragonflyError) -> Location {
            if database.isEmpty {
                let base = dataDirectory.hasSuffix("/") ? String(dataDirectory.dropLast()) : dataDirectory
                return .sqlite(path: base + "/" + sqliteFileName)
            }
            if database.hasPrefix("sqlite://") {
                let path = String(database.dropFirst("sqlite://".count))
                guard !path.isEmpty else {
                    throw .configuration(keyPath: "database", "sqlite:// needs a file path, e.g. sqlite:///data/m.db")
                }
                return .sqlite(path: path)
            }
            if database.hasPrefix("postgres://") || database.hasPrefix("postgresql://") {
                return .postgres(url: database)
            }
            throw .configuration(
                keyPath: "database", "'\(redactedURL(database))' must be empty (SQLite), sqlite://PATH or postgres://…")
        }

        /// A description safe to log: the PostgreSQL password is replaced by `***`.
        package var description: String {
            switch self {
            case .sqlite(let path): "sqlite:\(path)"
            case .postgres(let url): redactedURL(url)
            }
        }
    }

    /// How long a SQLite statement waits for another process's write lock before failing.
    package static let sqliteBusyTimeoutMilliseconds = 10_000

    /// Pooled PostgreSQL connections per event loop of `MultiThreadedEventLoopGroup.singleton`.
    package static let postgresConnectionsPerEventLoop = 2

    private enum Storage: Sendable {
        case sqlite(
            connection: SQLiteConnection, database: any SQLDatabase, gate: SerialGate, threadPool: NIOThreadPool)
        case postgres(pool: PostgresPool, database: any SQLDatabase)
    }

    /// AsyncKit's pool predates `Sendable` annotations; it guards all of its state with its own lock and is
    /// documented as usable from any thread, which is what this box asserts.
    private struct PostgresPool: @unchecked Sendable {
        let pool: EventLoopGroupConnectionPool<PostgresConnectionSource>
    }

    /// The engine behind this database.
    package let backend: Backend
    /// Where the database lives (log it through its redacting `description`).
    package let location: Location
    private let storage: Storage
    private let logger: Logger
    private let isShutDown = Mutex(false)

    private init(backend: Backend, location: Location, storage: Storage, logger: Logger) {
        self.backend = backend
        self.location = location
        self.storage = storage
        self.logger = logger
    }

    /// Opens the database named by `config.database` (empty: `<dataDirectory>/manager.db`). Does not migrate;
    /// call ``migrate()`` next.
    package static func open(
        config: ManagerConfig,
        dataDirectory: String,
        logger: Logger
    ) async throws(DragonflyError) -> ManagerDatabase {
        try await open(Location.resolve(database: config.database, dataDirectory: dataDirectory), logger: logger)
    }

    /// Opens a SQLite file (created if missing, WAL mode, foreign keys on) or a PostgreSQL connection pool.
    ///
    /// The PostgreSQL pool connects lazily; the first query reports an unreachable server.
    package static func open(_ location: Location, logger: Logger) async throws(DragonflyError) -> ManagerDatabase {
        switch location {
        case .sqlite(let path):
            return try await openSQLite(path: path, location: location, logger: logger)
        case .postgres(let url):
            return try openPostgres(url: url, location: location, logger: logger)
        }
    }

    private static func openSQLite(
        path: String,
        location: Location,
        logger: Logger
    ) async throws(DragonflyError) -> ManagerDatabase {
        let threadPool = NIOThreadPool(numberOfThreads: 1)
        threadPool.start()
        do {
            try await threadPool.runIfActive { try restrictSQLiteFiles(path) }
        } catch {
            try? await threadPool.shutdownGracefully()
            throw DragonflyError(
                code: .failedPrecondition,
                message: "cannot create the manager database \(path) with mode 0600; check the data directory",
                cause: error
            )
        }
        let connection: SQLiteConnection
        do {
            connection = try await SQLiteConnection.open(
                storage: .file(path: path),
                threadPool: threadPool,
                logger: logger,
                on: MultiThreadedEventLoopGroup.singleton.any()
            ).get()
        } catch {
            try? await threadPool.shutdownGracefully()
            throw DragonflyError(
                code: .failedPrecondition,
                message: "cannot open the manager database \(path); check the data directory and its permissions",
                cause: error
            )
        }
        let database = connection.sql(queryLogLevel: nil)
        do {
            // busy_timeout first: it replaces sqlite-nio's spinning busy handler. The pragmas that answer
            // with a row are read with all().
            _ = try await database.raw("PRAGMA busy_timeout = \(unsafeRaw: String(sqliteBusyTimeoutMilliseconds))")
                .all()
            _ = try await database.raw("PRAGMA journal_mode = WAL").all()
            try await database.raw("PRAGMA synchronous = NORMAL").run()
            try await database.raw("PRAGMA foreign_keys = ON").run()
            // Deleted rows (a session key moved out of clear, for one) are overwritten, not left in free pages.
            _ = try await database.raw("PRAGMA secure_delete = ON").all()
        } catch {
            try? await connection.close()
            try? await threadPool.shutdownGracefully()
            throw DragonflyError(
                code: .failedPrecondition, message: "cannot configure the SQLite database \(path)", cause: error)
        }
        logger.debug("manager database opened", metadata: ["df.db.backend": "sqlite", "df.db.path": "\(path)"])
        return ManagerDatabase(
            backend: .sqlite,
            location: location,
            storage: .sqlite(connection: connection, database: database, gate: SerialGate(), threadPool: threadPool),
            logger: logger
        )
    }

    private static func openPostgres(
        url: String,
        location: Location,
        logger: Logger
    ) throws(DragonflyError) -> ManagerDatabase {
        let configuration: SQLPostgresConfiguration
        do {
            // "postgresql://" is accepted by postgres-kit as well.
            configuration = try SQLPostgresConfiguration(url: url)
        } catch {
            // The parser's error embeds the whole URL, password included: never pass it on.
            throw .configuration(
                keyPath: "database",
                "'\(redactedURL(url))' is not a valid postgres://user[:password]@host[:port]/database URL")
        }
        let pool = EventLoopGroupConnectionPool(
            source: PostgresConnectionSource(sqlConfiguration: configuration),
            maxConnectionsPerEventLoop: postgresConnectionsPerEventLoop,
            requestTimeout: .seconds(10),
            pruneInterval: .seconds(60),
            maxIdleTimeBeforePruning: .seconds(120),
            logger: logger,
            on: MultiThreadedEventLoopGroup.singleton
        )
        let database = pool.database(logger: logger).sql(queryLogLevel: nil)
        logger.debug(
            "manager database opened", metadata: ["df.db.backend": "postgres", "df.db.url": "\(location)"])
        return ManagerDatabase(
            backend: .postgres,
            location: location,
            storage: .postgres(pool: PostgresPool(pool: pool), database: database),
            logger: logger
        )
    }

    /// Closes the SQLite connection or the PostgreSQL pool. Idempotent; later calls fail with `unavailable`.
    package func shutdown() async {
        let wasShutDown = isShutDown.withLock { state in
            defer { state = true }
            return state
        }
        guard !wasShutDown else { return }
        switch storage {
        case .sqlite(let connection, _, let gate, let threadPool):
            // Wait for the statement in flight, if any — in a task of its own, so that a shutdown that runs
            // while the caller is being cancelled still closes the connection.
            await Task {
                _ = try? await gate.withGate { try await connection.close() }
                try? await threadPool.shutdownGracefully()
            }.value
        case .postgres(let pool, _):
            do {
                try await pool.pool.shutdownAsync()
            } catch {
                logger.debug("manager database pool shutdown failed", metadata: ["df.error": "\(error)"])
            }
        }
    }

    // MARK: Running statements

    /// Runs `body` with a database handle for statements that need no transaction.
    ///
    /// Driver errors are wrapped in a ``DragonflyError`` with code `unavailable`; a ``DragonflyError`` thrown by
    /// `body` passes through unchanged.
    func withDatabase<Result: Sendable>(
        _ operation: String,
        _ body: @escaping @Sendable (any SQLDatabase) async throws -> Result
    ) async throws(DragonflyError) -> Result {
        try checkOpen()
        do {
            switch storage {
            case .sqlite(_, let database, let gate, _):
                return try await gate.withGate { try await body(database) }
            case .postgres(_, let database):
                return try await body(database)
            }
        } catch {
            throw wrap(error, operation: operation)
        }
    }

    /// Runs `body` in one transaction on one connection: committed when `body` returns, rolled back when it
    /// throws. SQLite starts with `BEGIN IMMEDIATE` (takes the write lock up front); PostgreSQL with `BEGIN`
    /// (read committed; callers add row locks or advisory locks where they need them).
    func withTransaction<Result: Sendable>(
        _ operation: String,
        _ body: @escaping @Sendable (any SQLDatabase) async throws -> Result
    ) async throws(DragonflyError) -> Result {
        try checkOpen()
        let begin: SQLQueryString = backend == .sqlite ? "BEGIN IMMEDIATE" : "BEGIN"
        let transaction: @Sendable (any SQLDatabase) async throws -> Result = { database in
            try await database.raw(begin).run()
            do {
                let result = try await body(database)
                try await database.raw("COMMIT").run()
                return result
            } catch {
                // In a task of its own: a caller being cancelled (a command channel that closed) must not leave
                // the transaction open on SQLite's one connection, where every later BEGIN would fail.
                await Task { try? await database.raw("ROLLBACK").run() }.value
                throw error
            }
        }
        do {
            switch storage {
            case .sqlite(_, let database, let gate, _):
                return try await gate.withGate { try await transaction(database) }
            case .postgres(_, let database):
                return try await database.withSession(transaction)
            }
        } catch {
            throw wrap(error, operation: operation)
        }
    }

    private func checkOpen() throws(DragonflyError) {
        if isShutDown.withLock({ $0 }) {
            throw DragonflyError(code: .unavailable, message: "the manager database has been shut down")
        }
    }

    private func wrap(_ error: any Error, operation: String) -> DragonflyError {
        if let error = error as? DragonflyError {
            return error
        }
        return DragonflyError(
            code: .unavailable,
            message: "manager database (\(backend)) failed to \(operation); check that it is reachable",
            cause: error
        )
    }
}

/// Creates the SQLite file `path` readable by its owner only (0600) and narrows an existing one and its
/// `-wal`, `-shm` and `-journal` files to 0600 (SQLite gives the files it creates the database file's mode).
/// Never follows a symbolic link. Blocking: run on a thread pool.
func restrictSQLiteFiles(_ path: String) throws {
    let created = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0o600)
    guard created >= 0 else {
        throw DragonflyError(code: .failedPrecondition, message: "cannot open \(path): errno \(errno)")
    }
    close(created)
    for file in [path, path + "-wal", path + "-shm", path + "-journal"] {
        let descriptor = open(file, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK)
        guard descriptor >= 0 else {
            if errno == ENOENT { continue }
            throw DragonflyError(code: .failedPrecondition, message: "cannot open \(file): errno \(errno)")
        }
        defer { close(descriptor) }
        guard fchmod(descriptor, 0o600) == 0 else {
            throw DragonflyError(code: .failedPrecondition, message: "cannot chmod 600 \(file): errno \(errno)")
        }
    }
}

/// `url` with any password replaced by `***`, safe for messages and logs.
package func redactedURL(_ url: String) -> String {
    guard let schemeEnd = url.range(of: "://") else { return url }
    let rest = url[schemeEnd.upperBound...]
    let authorityEnd = rest.firstIndex(where: { $0 == "/" || $0 == "?" || $0 == "#" }) ?? rest.endIndex
    let authority = rest[..<authorityEnd]
    guard let at = authority.lastIndex(of: "@") else { return url }
    let userInfo = authority[..<at]
    guard let colon = userInfo.firstIndex(of: ":") else { return url }
    return String(url[..<schemeEnd.upperBound]) + userInfo[..<colon] + ":***" + String(rest[at...])
}
