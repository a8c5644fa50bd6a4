package import DragonflyCore
import SQLKit

#if canImport(FoundationEssentials)
package import FoundationEssentials
#else
package import Foundation
#endif

/// One schema change, applied at most once and recorded in `schema_migrations`.
struct Migration: Sendable {
    let version: Int
    let name: String
    let apply:
        @Sendable (_ database: any SQLDatabase, _ backend: ManagerDatabase.Backend, _ now: Date) async throws -> Void
}

extension ManagerDatabase {
    /// `pg_advisory_xact_lock` key serialising migrations of all replicas ("dfmg").
    static let migrationLockKey: Int64 = 0x6466_6D67

    /// The name shared by the default scheduler cluster and the default seed-peer cluster.
    package static let defaultClusterName = "cluster-1"

    /// All migrations, in version order. Append only; never edit one that has shipped.
    static let migrations: [Migration] = [
        Migration(version: 1, name: "create tables") { database, backend, _ in
            try await createTables(database, backend: backend)
        },
        Migration(version: 2, name: "default clusters") { database, _, now in
            for kind in ClusterKind.allCases {
                try await ManagerStore.insertCluster(
                    NewCluster(name: defaultClusterName, bio: "default \(kind)", isDefault: true),
                    kind: kind,
                    now: now,
                    on: database
                )
            }
        },
    ]

    /// The schema version this build expects.
    package static var latestSchemaVersion: Int { migrations.last?.version ?? 0 }

    /// Brings the schema up to date and returns the versions this call applied (empty when up to date).
    ///
    /// Each migration runs in its own transaction together with its `schema_migrations` row, so a crash leaves
    /// either both or neither. On PostgreSQL every such transaction first takes
    /// `pg_advisory_xact_lock(migrationLockKey)`, so replicas starting together apply each migration exactly
    /// once: the second waits, then finds the version row and skips. On SQLite `BEGIN IMMEDIATE` takes the
    /// file's write lock, which serialises processes the same way.
    @discardableResult
    package func migrate(now: Date = Date()) async throws(DragonflyError) -> [Int] {
        let backend = self.backend
        let now = StoredDate.forBinding(now)
        var applied: [Int] = []
        for migration in Self.migrations {
            let didApply = try await withTransaction("apply migration \(migration.version)") { database in
                if backend == .postgres {
                    try await database.raw("SELECT pg_advisory_xact_lock(\(bind: Self.migrationLockKey))").run()
                }
                try await database.create(table: "schema_migrations")
                    .ifNotExists()
                    .column("version", type: .bigint, .primaryKey(autoIncrement: false))
                    .column("name", type: .text, .notNull)
                    .column("applied_at", type: .timestamp, .notNull)
                    .run()
                let existing = try await database.select()
                    .column("version")
                    .from("schema_migrations")
                    .where("version", .equal, migration.version)
                    .first()
                guard existing == nil else { return false }
                try await migration.apply(database, backend, now)
                try await database.insert(into: "schema_migrations")
                    .columns("version", "name", "applied_at")
                    .values(migration.version, migration.name, now)
                    .run()
                return true
            }
            if didApply {
                applied.append(migration.version)
            }
        }
        return applied
    }

    /// The versions recorded in `schema_migrations`, ascending.
    package func appliedMigrations() async throws(DragonflyError) -> [Int] {
        try await withDatabase("read schema_migrations") { database in
            try await database.select()
                .column("version")
                .from("schema_migrations")
                .orderBy("version")
                .all(decodingColumn: "version", as: Int.self)
        }
    }
}

// MARK: Version 1

private func createTables(_ database: any SQLDatabase, backend: ManagerDatabase.Backend) async throws {
    let boolean = SQLDataType.custom(SQLRaw("BOOLEAN"))

    try await database.create(table: "users")
        .identity(backend)
        .column("name", type: .text, .notNull, .unique)
        .column("password_hash", type: .text, .notNull)
        .column("email", type: .text)
        .column("role", type: .text, .notNull)
        .column("state", type: .text, .notNull)
        .timestamps()
        .run()

    try await database.create(table: "personal_access_tokens")
        .identity(backend)
        .column("name", type: .text, .notNull)
        .column("token_hash", type: .text, .notNull, .unique)
        .column("scopes", type: .text, .notNull)
        .column("state", type: .text, .notNull)
        .column("expired_at", type: .timestamp, .notNull)
        .column("user_id", type: .bigint, .notNull, .references("users", "id", onDelete: .cascade))
        .timestamps()
        .run()
    try await database.create(index: "personal_access_tokens_user_id").on("personal_access_tokens")
        .column("user_id").run()

    for kind in ClusterKind.allCases {
        let table = kind.clusterTable
        try await database.create(table: table)
            .identity(backend)
            .column("name", type: .text, .notNull, .unique)
            .column("bio", type: .text, .notNull)
            .column("config", type: .text, .notNull)
            .column("client_config", type: .text, .notNull)
            .column("scopes", type: .text, .notNull)
            .column("is_default", type: boolean, .notNull)
            .timestamps()
            .run()
        // At most one default per kind; a partial unique index works on both engines.
        try await database.raw(
            "CREATE UNIQUE INDEX \(ident: table + "_one_default") ON \(ident: table) (is_default) WHERE is_default"
        ).run()

        let members = kind.memberTable
        var create = database.create(table: members)
            .identity(backend)
            .column("hostname", type: .text, .notNull)
            .column("ip", type: .text, .notNull)
            .column("port", type: .bigint, .notNull)
            .column("idc", type: .text, .notNull)
            .column("location", type: .text, .notNull)
            .column("state", type: .text, .notNull)
            .column("last_keep_alive_at", type: .timestamp, .notNull)
            .column(kind.clusterColumn, type: .bigint, .notNull, .references(table, "id", onDelete: .cascade))
        if kind == .seedPeer {
            create = create.column("type", type: .text, .notNull).column("download_port", type: .bigint, .notNull)
        }
        try await create.timestamps().unique("hostname", "ip", kind.clusterColumn).run()
        try await database.create(index: members + "_state").on(members)
            .column("state").column("last_keep_alive_at").run()
    }

    try await database.create(table: "hosts")
        .identity(backend)
        .column("host_id", type: .text, .notNull, .unique)
        .column("hostname", type: .text, .notNull)
        .column("ip", type: .text, .notNull)
        .column("port", type: .bigint, .notNull)
        .column("download_port", type: .bigint, .notNull)
        .column("type", type: .text, .notNull)
        .column("idc", type: .text, .notNull)
        .column("location", type: .text, .notNull)
        .column("scheduler_cluster_id", type: .bigint, .references("scheduler_clusters", "id", onDelete: .setNull))
        .timestamps()
        .run()

    try await database.create(table: "applications")
        .identity(backend)
        .column("name", type: .text, .notNull, .unique)
        .column("url", type: .text, .notNull)
        .column("bio", type: .text, .notNull)
        .column("priority", type: .text, .notNull)
        .column("user_id", type: .bigint, .references("users", "id", onDelete: .setNull))
        .timestamps()
        .run()

    try await database.create(table: "jobs")
        .identity(backend)
        .column("type", type: .text, .notNull)
        .column("state", type: .text, .notNull)
        .column("args", type: .text, .notNull)
        .column("result", type: .text)
        .column("user_id", type: .bigint, .references("users", "id", onDelete: .setNull))
        .timestamps()
        .run()
    try await database.create(index: "jobs_state").on("jobs").column("state").run()

    try await database.create(table: "job_clusters")
        .identity(backend)
        .column("job_id", type: .bigint, .notNull, .references("jobs", "id", onDelete: .cascade))
        // No foreign key: a job's history outlives a deleted cluster.
        .column("scheduler_cluster_id", type: .bigint, .notNull)
        .column("state", type: .text, .notNull)
        .column("result", type: .text)
        .column("claimed_by", type: .text)
        .column("claimed_at", type: .timestamp)
        .timestamps()
        .unique("job_id", "scheduler_cluster_id")
        .run()
    try await database.create(index: "job_clusters_claim").on("job_clusters")
        .column("state").column("scheduler_cluster_id").run()

    try await database.create(table: "audit_logs")
        .identity(backend)
        .column("actor", type: .text, .notNull)
        .column("action", type: .text, .notNull)
        .column("target", type: .text, .notNull)
        .column("detail", type: .text, .notNull)
        .column("created_at", type: .timestamp, .notNull)
        .run()
    try await database.create(index: "audit_logs_created_at").on("audit_logs").column("created_at").run()

    try await database.create(table: "settings")
        .column("key", type: .text, .primaryKey(autoIncrement: false))
        .column("value", type: .text, .notNull)
        .timestamps()
        .run()
}

extension SQLCreateTableBuilder {
    /// An integer `id` primary key that is never reused: `INTEGER PRIMARY KEY AUTOINCREMENT` on SQLite (a
    /// bare rowid alias could hand a deleted job's ID to the next job), `BIGINT … GENERATED BY DEFAULT AS
    /// IDENTITY` on PostgreSQL.
    fileprivate func identity(_ backend: ManagerDatabase.Backend) -> Self {
        switch backend {
        case .sqlite:
            column("id", type: .bigint, .primaryKey(autoIncrement: true), .custom(SQLRaw("AUTOINCREMENT")))
        case .postgres:
            column("id", type: .bigint, .primaryKey(autoIncrement: true))
        }
    }

    fileprivate func timestamps() -> Self {
        column("created_at", type: .timestamp, .notNull).column("updated_at", type: .timestamp, .notNull)
    }
}

extension ClusterKind {
    var clusterTable: String { self == .scheduler ? "scheduler_clusters" : "seed_peer_clusters" }
    var memberTable: String { self == .scheduler ? "schedulers" : "seed_peers" }
    var clusterColumn: String { self == .scheduler ? "scheduler_cluster_id" : "seed_peer_cluster_id" }
    var memberName: String { self == .scheduler ? "scheduler" : "seed peer" }
}
