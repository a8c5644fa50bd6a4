package import DragonflyCore
import SQLKit

#if canImport(FoundationEssentials)
package import FoundationEssentials
#else
package import Foundation
#endif

// MARK: Settings

extension ManagerStore {
    /// The value stored under `key`, or `nil`.
    package func setting(key: String) async throws(DragonflyError) -> String? {
        try await database.withDatabase("read a setting") { database in
            try await database.select().column("value").from("settings").where("key", .equal, key)
                .first(decodingColumn: "value", as: String.self)
        }
    }

    /// The value stored under `key`; if there is none, stores `make()` first. Atomic across callers and
    /// replicas: the insert is `ON CONFLICT (key) DO NOTHING` and the value is then read back, so every
    /// concurrent caller gets the one value that won (`make` may run in each of them; losers are discarded).
    /// This is how the JWT signing key is created once and shared by all replicas.
    package func getOrCreateSetting(
        key: String,
        now: Date = Date(),
        make: @escaping @Sendable () throws -> String
    ) async throws(DragonflyError) -> String {
        if let existing = try await setting(key: key) {
            return existing
        }
        let now = StoredDate.forBinding(now)
        let value = try await database.withDatabase("create a setting") { database -> String? in
            let candidate = try make()
            try await database.insert(into: "settings")
                .columns("key", "value", "created_at", "updated_at")
                .values(key, candidate, now, now)
                .ignoringConflicts(with: "key")
                .run()
            return try await database.select().column("value").from("settings").where("key", .equal, key)
                .first(decodingColumn: "value", as: String.self)
        }
        guard let value else {
            throw DragonflyError(code: .internalError, message: "setting \(key) vanished right after it was stored")
        }
        return value
    }

    /// Removes the setting `key`, if there is one.
    package func deleteSetting(key: String) async throws(DragonflyError) {
        try await database.withDatabase("delete a setting") { database in
            try await database.delete(from: "settings").where("key", .equal, key).run()
        }
    }

    /// Stores `value` under `key`, replacing any previous value.
    package func setSetting(key: String, value: String, now: Date = Date()) async throws(DragonflyError) {
        let now = StoredDate.forBinding(now)
        try await database.withDatabase("write a setting") { database in
            try await database.insert(into: "settings")
                .columns("key", "value", "created_at", "updated_at")
                .values(key, value, now, now)
                .onConflict(with: ["key"]) { $0.set(excludedValueOf: "value").set(excludedValueOf: "updated_at") }
                .run()
        }
    }
}

// MARK: Audit log

extension ManagerStore {
    /// Appends an audit entry.
    @discardableResult
    package func appendAudit(
        actor: String,
        action: String,
        target: String,
        detail: String = "",
        now: Date = Date()
    ) async throws(DragonflyError) -> AuditRecord {
        let now = StoredDate.forBinding(now)
        let row = try await database.withDatabase("append to the audit log") { database in
            try await database.insert(into: "audit_logs")
                .columns("actor", "action", "target", "detail", "created_at")
                .values(actor, action, target, detail, now)
                .returning("*")
                .first()
        }
        guard let row else { throw DragonflyError(code: .internalError, message: "audit insert returned no row") }
        return try decode("audit_logs", row, Self.auditRecord)
    }

    /// Audit entries newest first, optionally of one actor.
    package func auditLogs(
        actor: String? = nil,
        limit: Int? = nil,
        offset: Int? = nil
    ) async throws(DragonflyError) -> [AuditRecord] {
        let rows = try await database.withDatabase("read the audit log") { database in
            let query = database.select().column("*").from("audit_logs")
            if let actor { query.where("actor", .equal, actor) }
            return try await query.orderBy("id", .descending).limit(limit).offset(offset).all()
        }
        return try decode("audit_logs", rows, Self.auditRecord)
    }

    static func auditRecord(_ row: any SQLRow) throws -> AuditRecord {
        AuditRecord(
            id: try row.int("id"),
            actor: try row.string("actor"),
            action: try row.string("action"),
            target: try row.string("target"),
            detail: try row.string("detail"),
            createdAt: try row.date("created_at")
        )
    }
}

// MARK: Applications

extension ManagerStore {
    /// Creates an application; `alreadyExists` when the name is taken.
    package func createApplication(
        name: String,
        url: String = "",
        bio: String = "",
        priority: JSONValue = .emptyObject,
        userID: Int? = nil,
        now: Date = Date()
    ) async throws(DragonflyError) -> ApplicationRecord {
        let now = StoredDate.forBinding(now)
        let priorityText = try encodeJSON(priority)
        let row = try await database.withDatabase("create an application") { database in
            try await database.insert(into: "applications")
                .columns("name", "url", "bio", "priority", "user_id", "created_at", "updated_at")
                .values(name, url, bio, priorityText, userID, now, now)
                .ignoringConflicts(with: "name")
                .returning("*")
                .first()
        }
        guard let row else { throw .alreadyExists("application", name: name) }
        return try decode("applications", row, Self.applicationRecord)
    }

    /// The application with `id`; `notFound` when there is none.
    package func application(id: Int) async throws(DragonflyError) -> ApplicationRecord {
        let row = try await database.withDatabase("read an application") { database in
            try await database.select().column("*").from("applications").where("id", .equal, id).first()
        }
        guard let row else { throw .notFound("application", id: id) }
        return try decode("applications", row, Self.applicationRecord)
    }

    /// Applications ordered by ID.
    package func applications() async throws(DragonflyError) -> [ApplicationRecord] {
        let rows = try await database.withDatabase("list applications") { database in
            try await database.select().column("*").from("applications").orderBy("id").all()
        }
        return try decode("applications", rows, Self.applicationRecord)
    }

    /// Replaces an application's priority rules; `notFound` for an unknown ID.
    @discardableResult
    package func updateApplicationPriority(
        id: Int,
        priority: JSONValue,
        now: Date = Date()
    ) async throws(DragonflyError) -> ApplicationRecord {
        let now = StoredDate.forBinding(now)
        let priorityText = try encodeJSON(priority)
        let row = try await database.withDatabase("update an application") { database in
            try await database.update("applications")
                .set("priority", to: priorityText)
                .set("updated_at", to: now)
                .where("id", .equal, id)
                .returning("*")
                .first()
        }
        guard let row else { throw .notFound("application", id: id) }
        return try decode("applications", row, Self.applicationRecord)
    }

    /// Deletes an application; `notFound` for an unknown ID.
    package func deleteApplication(id: Int) async throws(DragonflyError) {
        try await deleteRow(from: "applications", id: id, what: "application")
    }

    static func applicationRecord(_ row: any SQLRow) throws -> ApplicationRecord {
        ApplicationRecord(
            id: try row.int("id"),
            name: try row.string("name"),
            url: try row.string("url"),
            bio: try row.string("bio"),
            priority: try row.json("priority", as: JSONValue.self),
            userID: try row.optionalInt("user_id"),
            createdAt: try row.date("created_at"),
            updatedAt: try row.date("updated_at")
        )
    }
}
