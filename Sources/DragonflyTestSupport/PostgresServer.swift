#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// A throwaway PostgreSQL cluster on `127.0.0.1:<port>` with trust authentication, for tests (RECIPES §2).
///
/// Started by ``withPostgres(database:isolation:_:)``. Connect with ``url`` (user `postgres`, no password)
/// or run SQL with ``psql(_:database:)``.
package struct PostgresServer: Sendable {
    /// Always `127.0.0.1`.
    package let host: String
    /// The TCP port the server listens on.
    package let port: Int
    /// Always `postgres` (the superuser; trust authentication, no password).
    package let user: String
    /// The database created for the test.
    package let database: String
    /// The cluster's directory (data directory, Unix socket, log), deleted at the end of the scope.
    package let directory: String
    /// The directory holding the server's Unix socket (`.s.PGSQL.<port>`).
    package var socketDirectory: String { directory }
    /// The server log.
    package let logPath: String

    let binaries: PostgresBinaries

    /// `postgres://postgres@127.0.0.1:<port>/<database>`.
    package var url: String { "postgres://\(user)@\(host):\(port)/\(database)" }

    /// The connection URL of another database on this server.
    package func url(database: String) -> String { "postgres://\(user)@\(host):\(port)/\(database)" }

    /// Runs `sql` with `psql -Atc` (unaligned, tuples only) against ``database`` (or `database`) and returns
    /// its output without the final newline; rows are separated by newlines, columns by `|`.
    ///
    /// - Throws: ``TestSupportError/Code/commandFailed`` with psql's stderr if the statement fails.
    @discardableResult
    package func psql(_ sql: String, database: String? = nil) async throws -> String {
        let output = try await runCommand(
            binaries.path("psql"),
            [
                "-X", "-v", "ON_ERROR_STOP=1", "-h", host, "-p", String(port), "-U", user,
                "-d", database ?? self.database, "-Atc", sql,
            ],
            environment: ["PGCONNECT_TIMEOUT": "10", "PGAPPNAME": "dragonfly-test"],
            timeLimit: .seconds(60)
        )
        guard output.status.isSuccess else {
            throw TestSupportError(
                code: .commandFailed,
                message: "psql \(output.status) running \(sql): \(tail(output.standardError))"
            )
        }
        var text = output.standardOutput
        if text.hasSuffix("\n") {
            text.removeLast()
        }
        return text
    }

    /// Creates another database on this server.
    package func createDatabase(_ name: String) async throws {
        try await psql("create database \(quotedIdentifier(name))", database: "postgres")
    }
}

/// Where PostgreSQL's server binaries are and how to run them.
struct PostgresBinaries: Sendable {
    /// The highest `/usr/lib/postgresql/<version>/bin` (or `$DRAGONFLY_PG_BIN`).
    let directory: String
    /// As root: `runuser -u postgres --`, because `initdb` and `postgres` refuse to run as root.
    let userSwitch: [String]

    func path(_ tool: String) -> String { directory + "/" + tool }

    /// `(executable, arguments)` to run a server tool as the cluster's owner.
    func asOwner(_ tool: String, _ arguments: [String]) -> (String, [String]) {
        guard let first = userSwitch.first else { return (path(tool), arguments) }
        return (first, Array(userSwitch.dropFirst()) + [path(tool)] + arguments)
    }

    static func locate() throws -> PostgresBinaries {
        let environment = currentEnvironment()
        let directory: String
        if let explicit = environment["DRAGONFLY_PG_BIN"], !explicit.isEmpty {
            directory = explicit
        } else {
            let base = "/usr/lib/postgresql"
            let versions = (try? FileManager.default.contentsOfDirectory(atPath: base)) ?? []
            let candidates =
                versions
                .filter { isExecutableFile("\(base)/\($0)/bin/initdb") }
                .sorted { versionComponents($0).lexicographicallyPrecedes(versionComponents($1)) }
            guard let highest = candidates.last else {
                throw TestSupportError(
                    code: .binaryNotFound,
                    message: "no PostgreSQL server in \(base)/*/bin; install it: apt-get install -y postgresql"
                )
            }
            directory = "\(base)/\(highest)/bin"
        }
        for tool in ["initdb", "pg_ctl", "psql"] where !isExecutableFile("\(directory)/\(tool)") {
            throw TestSupportError(code: .binaryNotFound, message: "no \(tool) in \(directory)")
        }
        var userSwitch: [String] = []
        if isRunningAsRoot {
            guard
                let runuser = ["/usr/sbin/runuser", "/sbin/runuser", "/usr/bin/runuser"].first(where: isExecutableFile)
            else {
                throw TestSupportError(
                    code: .binaryNotFound,
                    message: "running as root needs runuser (util-linux) to start PostgreSQL as 'postgres'"
                )
            }
            userSwitch = [runuser, "-u", "postgres", "--"]
        }
        return PostgresBinaries(directory: directory, userSwitch: userSwitch)
    }

    private static func versionComponents(_ name: String) -> [Int] {
        name.split(separator: ".").map { Int($0) ?? 0 }
    }
}

/// Creates a PostgreSQL cluster in a temporary directory, starts it, creates `database`, runs `body`, and
/// stops the server (`pg_ctl -m immediate`) and deletes the directory at the end of the scope, also when
/// `body` throws or the task is cancelled.
///
/// As root, `initdb` and the server run as the `postgres` user through `runuser` (they refuse to run as
/// root) and the directory is given to that user; otherwise they run as the current user. The server
/// listens on a port from ``freeLoopbackPort()``; when another process took that port first, the start is
/// retried on a fresh port, at most 5 times. Durability is off (`fsync`, `synchronous_commit`,
/// `full_page_writes`) for speed.
package func withPostgres<Value>(
    database: String = "dragonfly_test",
    isolation: isolated (any Actor)? = #isolation,
    _ body: (PostgresServer) async throws -> Value
) async throws -> Value {
    let binaries = try PostgresBinaries.locate()
    let directory = try TemporaryDirectory(prefix: "dragonfly-test-pg-")
    defer { directory.remove() }
    if isRunningAsRoot {
        try directory.changeOwner(toUser: "postgres")
    }
    let dataDirectory = directory.appending("data")

    let (initdb, initdbArguments) = binaries.asOwner(
        "initdb",
        ["-D", dataDirectory, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"]
    )
    let initialized = try await runCommand(initdb, initdbArguments, timeLimit: .seconds(120))
    guard initialized.status.isSuccess else {
        throw TestSupportError(
            code: .commandFailed,
            message: "initdb \(initialized.status): \(tail(initialized.standardError + initialized.standardOutput))"
        )
    }

    let maximumAttempts = 5
    var failures: [String] = []
    for attempt in 1...maximumAttempts {
        let port = try freeLoopbackPort()
        let logPath = directory.appending("server-\(attempt).log")
        let server = PostgresServer(
            host: "127.0.0.1",
            port: port,
            user: "postgres",
            database: database,
            directory: directory.path,
            logPath: logPath,
            binaries: binaries
        )
        // pg_ctl hands `-o` to a shell, so the socket directory is single-quoted.
        let serverOptions = [
            "-c listen_addresses=127.0.0.1", "-p \(port)", "-k '\(directory.path)'",
            "-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off",
        ].joined(separator: " ")
        let (pgCtl, startArguments) = binaries.asOwner(
            "pg_ctl",
            ["-D", dataDirectory, "-l", logPath, "-w", "-t", "30", "-o", serverOptions, "start"]
        )
        let started: CommandOutput
        do {
            started = try await runCommand(pgCtl, startArguments, timeLimit: .seconds(60))
        } catch {
            // Cancelled or timed out while pg_ctl waited: the server may be up regardless.
            await stopPostgres(binaries: binaries, dataDirectory: dataDirectory)
            throw error
        }
        guard started.status.isSuccess else {
            let log = readFileText(logPath)
            if log.contains("Address already in use") {
                failures.append("port \(port): \(started.status)")
                // pg_ctl may have given up while the postmaster still runs; make sure it is gone.
                await stopPostgres(binaries: binaries, dataDirectory: dataDirectory)
                continue
            }
            await stopPostgres(binaries: binaries, dataDirectory: dataDirectory)
            throw TestSupportError(
                code: .processExitedEarly,
                message: "pg_ctl start \(started.status): \(tail(started.standardError))\nserver log:\n\(tail(log))"
            )
        }

        let value: Value
        do {
            try await server.psql("create database \(quotedIdentifier(database))", database: "postgres")
            value = try await body(server)
        } catch {
            await stopPostgres(binaries: binaries, dataDirectory: dataDirectory)
            throw error
        }
        await stopPostgres(binaries: binaries, dataDirectory: dataDirectory)
        return value
    }
    throw TestSupportError(
        code: .portUnavailable,
        message:
            "PostgreSQL could not bind a free port in \(maximumAttempts) attempts: \(failures.joined(separator: "; "))"
    )
}

/// `pg_ctl -m immediate -w stop`, in a task of its own so that it also runs when the caller is cancelled.
private func stopPostgres(binaries: PostgresBinaries, dataDirectory: String) async {
    let (pgCtl, arguments) = binaries.asOwner(
        "pg_ctl", ["-D", dataDirectory, "-m", "immediate", "-w", "-t", "30", "stop"])
    _ = await Task { try? await runCommand(pgCtl, arguments, timeLimit: .seconds(60)) }.value
}

/// `name` as a double-quoted SQL identifier.
private func quotedIdentifier(_ name: String) -> String {
    "\"" + name.replacing("\"", with: "\"\"") + "\""
}
