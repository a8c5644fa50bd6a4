package import DragonflyCore
import SQLKit

#if canImport(FoundationEssentials)
package import FoundationEssentials
#else
package import Foundation
#endif

/// The manager's repository: typed, async access to everything in ``ManagerDatabase``.
///
/// Every call throws ``DragonflyError``: `notFound` for an unknown ID, `alreadyExists` for a duplicate name,
/// `unavailable` when the database fails. Statements are built with SQLKit and values travel as binds, never
/// as interpolated text. Calls that take `now` use it for their timestamps (tests pass fixed instants);
/// dates are stored as UTC and read back rounded to the millisecond.
package struct ManagerStore: Sendable {
    /// The database this store reads and writes.
    package let database: ManagerDatabase

    package init(database: ManagerDatabase) {
        self.database = database
    }

    /// Runs `body`, turning a unique-constraint violation into `alreadyExists` for `what` named `name`.
    static func mappingDuplicates<Result>(
        _ what: String,
        name: String,
        _ body: () async throws -> Result
    ) async throws -> Result {
        do {
            return try await body()
        } catch  where isUniqueViolation(error) {
            throw DragonflyError.alreadyExists(what, name: name)
        }
    }
}

// MARK: Users

extension ManagerStore {
    /// Creates a user; `alreadyExists` when the name is taken.
    package func createUser(_ user: NewUser, now: Date = Date()) async throws(DragonflyError) -> UserRecord {
        let now = StoredDate.forBinding(now)
        let row = try await database.withDatabase("create a user") { database in
            try await database.insert(into: "users")
                .columns("name", "password_hash", "email", "role", "state", "created_at", "updated_at")
                .values(
                    user.name, user.passwordHash, user.email, user.role.rawValue, UserState.enabled.rawValue, now, now
                )
                .ignoringConflicts(with: "name")
                .returning("*")
                .first()
        }
        guard let row else { throw .alreadyExists("user", name: user.name) }
        return try decode("users", row, Self.userRecord)
    }

    /// The user with `id`; `notFound` when there is none.
    package func user(id: Int) async throws(DragonflyError) -> UserRecord {
        guard let user = try await fetchUser(column: "id", value: id) else { throw .notFound("user", id: id) }
        return user
    }

    /// The user named `name`, or `nil` (sign-in looks users up by name).
    package func user(named name: String) async throws(DragonflyError) -> UserRecord? {
        try await fetchUser(column: "name", value: name)
    }

    /// Users ordered by ID.
    package func users(limit: Int? = nil, offset: Int? = nil) async throws(DragonflyError) -> [UserRecord] {
        let rows = try await database.withDatabase("list users") { database in
            try await database.select().column("*").from("users").orderBy("id").limit(limit).offset(offset).all()
        }
        return try decode("users", rows, Self.userRecord)
    }

    /// Applies the non-`nil` fields of `update`; `notFound` for an unknown ID, `alreadyExists` for a taken name.
    package func updateUser(
        id: Int,
        _ update: UserUpdate,
        now: Date = Date()
    ) async throws(DragonflyError) -> UserRecord {
        let now = StoredDate.forBinding(now)
        let row = try await database.withDatabase("update a user") { database in
            try await Self.mappingDuplicates("user", name: update.name ?? "") {
                var statement = database.update("users").set("updated_at", to: now)
                if let name = update.name { statement = statement.set("name", to: name) }
                if let hash = update.passwordHash { statement = statement.set("password_hash", to: hash) }
                if let email = update.email { statement = statement.set("email", to: email) }
                if let role = update.role { statement = statement.set("role", to: role.rawValue) }
                if let state = update.state { statement = statement.set("state", to: state.rawValue) }
                return try await statement.where("id", .equal, id).returning("*").first()
            }
        }
        guard let row else { throw .notFound("user", id: id) }
        return try decode("users", row, Self.userRecord)
    }

    /// Deletes a user and (by cascade) their tokens; `notFound` for an unknown ID.
    package func deleteUser(id: Int) async throws(DragonflyError) {
        try await deleteRow(from: "users", id: id, what: "user")
    }

    private func fetchUser(
        column: String,
        value: some Encodable & Sendable
    ) async throws(DragonflyError) -> UserRecord? {
        let row = try await database.withDatabase("read a user") { database in
            try await database.select().column("*").from("users").where(column, .equal, value).first()
        }
        return try row.map { row throws(DragonflyError) in try decode("users", row, Self.userRecord) }
    }

    static func userRecord(_ row: any SQLRow) throws -> UserRecord {
        UserRecord(
            id: try row.int("id"),
            name: try row.string("name"),
            passwordHash: try row.string("password_hash"),
            email: try row.optionalString("email"),
            role: try row.enumeration("role", as: UserRole.self),
            state: try row.enumeration("state", as: UserState.self),
            createdAt: try row.date("created_at"),
            updatedAt: try row.date("updated_at")
        )
    }
}

// MARK: Personal access tokens

extension ManagerStore {
    /// Stores a new active token for `userID` (its hash only); `notFound` when the user does not exist.
    package func createToken(
        name: String,
        tokenHash: String,
        scopes: [String],
        expiredAt: Date,
        userID: Int,
        now: Date = Date()
    ) async throws(DragonflyError) -> PersonalAccessTokenRecord {
        let now = StoredDate.forBinding(now)
        let expiredAt = StoredDate.forBinding(expiredAt)
        let scopesText = try encodeJSON(scopes)
        let row = try await database.withTransaction("create a token") { database in
            let owner = try await database.select().column("id").from("users").where("id", .equal, userID).first()
            guard owner != nil else { throw DragonflyError.notFound("user", id: userID) }
            return try await Self.mappingDuplicates("token", name: name) {
                try await database.insert(into: "personal_access_tokens")
                    .columns(
                        "name", "token_hash", "scopes", "state", "expired_at", "user_id", "created_at", "updated_at"
                    )
                    .values(name, tokenHash, scopesText, TokenState.active.rawValue, expiredAt, userID, now, now)
                    .returning("*")
                    .first()
            }
        }
        guard let row else { throw DragonflyError(code: .internalError, message: "token insert returned no row") }
        return try decode("personal_access_tokens", row, Self.tokenRecord)
    }

    /// Tokens ordered by ID, only those of `userID` when given.
    package func tokens(userID: Int? = nil) async throws(DragonflyError) -> [PersonalAccessTokenRecord] {
        let rows = try await database.withDatabase("list tokens") { database in
            let query = database.select().column("*").from("personal_access_tokens")
            if let userID { query.where("user_id", .equal, userID) }
            return try await query.orderBy("id").all()
        }
        return try decode("personal_access_tokens", rows, Self.tokenRecord)
    }

    /// The token with `id`; `notFound` when there is none.
    package func token(id: Int) async throws(DragonflyError) -> PersonalAccessTokenRecord {
        let row = try await database.withDatabase("read a token") { database in
            try await database.select().column("*").from("personal_access_tokens").where("id", .equal, id).first()
        }
        guard let row else { throw .notFound("personal access token", id: id) }
        return try decode("personal_access_tokens", row, Self.tokenRecord)
    }

    /// The token whose hash is `tokenHash`, in any state (the caller checks state, expiry and scopes).
    package func token(hash tokenHash: String) async throws(DragonflyError) -> PersonalAccessTokenRecord? {
        let row = try await database.withDatabase("look up a token") { database in
            try await database.select().column("*").from("personal_access_tokens")
                .where("token_hash", .equal, tokenHash).first()
        }
        return try row.map { row throws(DragonflyError) in
            try decode("personal_access_tokens", row, Self.tokenRecord)
        }
    }

    /// Marks a token inactive; `notFound` for an unknown ID.
    @discardableResult
    package func revokeToken(id: Int, now: Date = Date()) async throws(DragonflyError) -> PersonalAccessTokenRecord {
        let now = StoredDate.forBinding(now)
        let row = try await database.withDatabase("revoke a token") { database in
            try await database.update("personal_access_tokens")
                .set("state", to: TokenState.inactive.rawValue)
                .set("updated_at", to: now)
                .where("id", .equal, id)
                .returning("*")
                .first()
        }
        guard let row else { throw .notFound("personal access token", id: id) }
        return try decode("personal_access_tokens", row, Self.tokenRecord)
    }

    /// Deletes a token; `notFound` for an unknown ID.
    package func deleteToken(id: Int) async throws(DragonflyError) {
        try await deleteRow(from: "personal_access_tokens", id: id, what: "personal access token")
    }

    static func tokenRecord(_ row: any SQLRow) throws -> PersonalAccessTokenRecord {
        PersonalAccessTokenRecord(
            id: try row.int("id"),
            name: try row.string("name"),
            tokenHash: try row.string("token_hash"),
            scopes: try row.json("scopes", as: [String].self),
            state: try row.enumeration("state", as: TokenState.self),
            expiredAt: try row.date("expired_at"),
            userID: try row.int("user_id"),
            createdAt: try row.date("created_at"),
            updatedAt: try row.date("updated_at")
        )
    }
}

// MARK: Shared helpers

extension ManagerStore {
    /// Deletes the row of `table` with `id`; `notFound` naming `what` when there was none.
    func deleteRow(from table: String, id: Int, what: String) async throws(DragonflyError) {
        let deleted = try await database.withDatabase("delete a \(what)") { database in
            try await database.delete(from: table).where("id", .equal, id).returning("id").first()
        }
        guard deleted != nil else { throw .notFound(what, id: id) }
    }

    /// Decodes one row, reporting a malformed one as `dataLoss`.
    func decode<Record>(
        _ table: String,
        _ row: any SQLRow,
        _ decoder: (any SQLRow) throws -> Record
    ) throws(DragonflyError) -> Record {
        do {
            return try decoder(row)
        } catch let error as DragonflyError {
            throw error
        } catch {
            throw DragonflyError(code: .dataLoss, message: "a row of \(table) cannot be read", cause: error)
        }
    }

    /// Decodes rows, reporting a malformed one as `dataLoss`.
    func decode<Record>(
        _ table: String,
        _ rows: [any SQLRow],
        _ decoder: (any SQLRow) throws -> Record
    ) throws(DragonflyError) -> [Record] {
        var records: [Record] = []
        records.reserveCapacity(rows.count)
        for row in rows {
            records.append(try decode(table, row, decoder))
        }
        return records
    }

    /// Encodes a value for a JSON text column.
    func encodeJSON(_ value: some Encodable) throws(DragonflyError) -> String {
        do {
            return try StoredJSON.encode(value)
        } catch {
            throw DragonflyError(code: .invalidArgument, message: "value cannot be encoded as JSON", cause: error)
        }
    }
}

// MARK: Diagnostics

extension ManagerStore {
    /// The instant stored in `column` of row `id` of `table` as raw Unix seconds, read without the driver's
    /// `Date` conversion (a check that timestamps are stored as UTC). `table` and `column` are identifiers
    /// chosen by the caller's code, never user input.
    func storedUnixSeconds(table: String, column: String, id: Int) async throws(DragonflyError) -> Double? {
        let backend = database.backend
        return try await database.withDatabase("read a raw timestamp") { database in
            let value: any SQLExpression =
                switch backend {
                case .sqlite: SQLIdentifier(column)
                case .postgres:
                    SQLQueryString("CAST(EXTRACT(EPOCH FROM \(ident: column)) AS DOUBLE PRECISION)")
                }
            return try await database.select().column(value, as: "seconds").from(table).where("id", .equal, id)
                .first(decodingColumn: "seconds", as: Double.self)
        }
    }
}
