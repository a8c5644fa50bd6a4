package import DragonflyCore
import SQLKit

#if canImport(FoundationEssentials)
package import FoundationEssentials
#else
package import Foundation
#endif

extension ManagerStore {
    /// Creates a scheduler or seed-peer cluster; `alreadyExists` when its kind has one with that name.
    package func createCluster(
        _ kind: ClusterKind,
        _ cluster: NewCluster,
        now: Date = Date()
    ) async throws(DragonflyError) -> ClusterRecord {
        let now = StoredDate.forBinding(now)
        let row = try await database.withTransaction("create a \(kind)") { database in
            try await Self.insertCluster(cluster, kind: kind, now: now, on: database)
        }
        return try decode(kind.clusterTable, row) { try Self.clusterRecord($0, kind: kind) }
    }

    /// The cluster of `kind` with `id`; `notFound` when there is none.
    package func cluster(_ kind: ClusterKind, id: Int) async throws(DragonflyError) -> ClusterRecord {
        let row = try await database.withDatabase("read a \(kind)") { database in
            try await database.select().column("*").from(kind.clusterTable).where("id", .equal, id).first()
        }
        guard let row else { throw .notFound(kind.description, id: id) }
        return try decode(kind.clusterTable, row) { try Self.clusterRecord($0, kind: kind) }
    }

    /// The default cluster of `kind` (created by the first migration); `notFound` if it was never created.
    package func defaultCluster(_ kind: ClusterKind) async throws(DragonflyError) -> ClusterRecord {
        let row = try await database.withDatabase("read the default \(kind)") { database in
            try await database.select().column("*").from(kind.clusterTable).where("is_default", .equal, true).first()
        }
        guard let row else { throw .notFound("default \(kind)", id: "") }
        return try decode(kind.clusterTable, row) { try Self.clusterRecord($0, kind: kind) }
    }

    /// Clusters of `kind` ordered by ID.
    package func clusters(_ kind: ClusterKind) async throws(DragonflyError) -> [ClusterRecord] {
        let rows = try await database.withDatabase("list \(kind)s") { database in
            try await database.select().column("*").from(kind.clusterTable).orderBy("id").all()
        }
        return try decode(kind.clusterTable, rows) { try Self.clusterRecord($0, kind: kind) }
    }

    /// Applies the non-`nil` fields of `update`; `notFound` for an unknown ID, `alreadyExists` for a taken name.
    /// `isDefault: true` moves the default flag of the kind to this cluster.
    package func updateCluster(
        _ kind: ClusterKind,
        id: Int,
        _ update: ClusterUpdate,
        now: Date = Date()
    ) async throws(DragonflyError) -> ClusterRecord {
        let now = StoredDate.forBinding(now)
        let config = try update.config.map { value throws(DragonflyError) in try encodeJSON(value) }
        let clientConfig = try update.clientConfig.map { value throws(DragonflyError) in try encodeJSON(value) }
        let scopes = try update.scopes.map { value throws(DragonflyError) in try encodeJSON(value) }
        let row = try await database.withTransaction("update a \(kind)") { database in
            let exists = try await database.select().column("id").from(kind.clusterTable)
                .where("id", .equal, id).first()
            guard exists != nil else { throw DragonflyError.notFound(kind.description, id: id) }
            if update.isDefault == true {
                try await Self.clearDefault(kind, on: database)
            }
            return try await Self.mappingDuplicates(kind.description, name: update.name ?? "") {
                var statement = database.update(kind.clusterTable).set("updated_at", to: now)
                if let name = update.name { statement = statement.set("name", to: name) }
                if let bio = update.bio { statement = statement.set("bio", to: bio) }
                if let config { statement = statement.set("config", to: config) }
                if let clientConfig { statement = statement.set("client_config", to: clientConfig) }
                if let scopes { statement = statement.set("scopes", to: scopes) }
                if update.isDefault == true { statement = statement.set("is_default", to: true) }
                return try await statement.where("id", .equal, id).returning("*").first()
            }
        }
        guard let row else { throw .notFound(kind.description, id: id) }
        return try decode(kind.clusterTable, row) { try Self.clusterRecord($0, kind: kind) }
    }

    /// Deletes a cluster and (by cascade) its members; `notFound` for an unknown ID, `failedPrecondition` for
    /// the default cluster (members that register without a cluster join it).
    package func deleteCluster(_ kind: ClusterKind, id: Int) async throws(DragonflyError) {
        try await database.withTransaction("delete a \(kind)") { database in
            let row = try await database.select().column("is_default").from(kind.clusterTable)
                .where("id", .equal, id).first()
            guard let row else { throw DragonflyError.notFound(kind.description, id: id) }
            if try row.bool("is_default") {
                throw DragonflyError(
                    code: .failedPrecondition,
                    message: "\(kind) \(id) is the default; make another cluster the default before deleting it"
                )
            }
            try await database.delete(from: kind.clusterTable).where("id", .equal, id).run()
        }
    }

    /// Inserts a cluster inside the caller's transaction and returns its row; throws `alreadyExists` on a
    /// duplicate name. A default cluster first takes the flag from the previous default.
    @discardableResult
    static func insertCluster(
        _ cluster: NewCluster,
        kind: ClusterKind,
        now: Date,
        on database: any SQLDatabase
    ) async throws -> any SQLRow {
        if cluster.isDefault {
            try await clearDefault(kind, on: database)
        }
        let row = try await database.insert(into: kind.clusterTable)
            .columns("name", "bio", "config", "client_config", "scopes", "is_default", "created_at", "updated_at")
            .values(
                cluster.name, cluster.bio, try StoredJSON.encode(cluster.config),
                try StoredJSON.encode(cluster.clientConfig), try StoredJSON.encode(cluster.scopes), cluster.isDefault,
                now, now
            )
            .ignoringConflicts(with: "name")
            .returning("*")
            .first()
        guard let row else { throw DragonflyError.alreadyExists(kind.description, name: cluster.name) }
        return row
    }

    private static func clearDefault(_ kind: ClusterKind, on database: any SQLDatabase) async throws {
        try await database.update(kind.clusterTable).set("is_default", to: false)
            .where("is_default", .equal, true).run()
    }

    static func clusterRecord(_ row: any SQLRow, kind: ClusterKind) throws -> ClusterRecord {
        ClusterRecord(
            id: try row.int("id"),
            kind: kind,
            name: try row.string("name"),
            bio: try row.string("bio"),
            config: try row.json("config", as: JSONValue.self),
            clientConfig: try row.json("client_config", as: JSONValue.self),
            scopes: try row.json("scopes", as: ClusterScopes.self),
            isDefault: try row.bool("is_default"),
            createdAt: try row.date("created_at"),
            updatedAt: try row.date("updated_at")
        )
    }
}
