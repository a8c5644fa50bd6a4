package import DragonflyCore
import SQLKit

#if canImport(FoundationEssentials)
package import FoundationEssentials
#else
package import Foundation
#endif

// MARK: Schedulers and seed peers

extension ManagerStore {
    /// Registers a scheduler (``ClusterKind/scheduler``) or seed peer (``ClusterKind/seedPeer``): inserts it, or
    /// updates the row with the same (hostname, IP, cluster), marks it active and stamps its keep-alive.
    ///
    /// A registration without a cluster joins the kind's default cluster; an unknown cluster ID is `notFound`.
    /// The table holds at most `limit` members of `kind`: a new member replaces the inactive one seen longest
    /// ago, and is refused (`resourceExhausted`) when all of them are active.
    package func registerMember(
        _ kind: ClusterKind,
        _ registration: MemberRegistration,
        limit: Int = ManagerStore.defaultMemberLimit,
        now: Date = Date()
    ) async throws(DragonflyError) -> MemberRecord {
        let now = StoredDate.forBinding(now)
        let row = try await database.withTransaction("register a \(kind.memberName)") { database in
            let clusterQuery = database.select().column("id").from(kind.clusterTable)
            if let clusterID = registration.clusterID {
                clusterQuery.where("id", .equal, clusterID)
            } else {
                clusterQuery.where("is_default", .equal, true)
            }
            guard let clusterID = try await clusterQuery.first(decodingColumn: "id", as: Int.self) else {
                throw DragonflyError.notFound(
                    registration.clusterID == nil ? "default \(kind)" : kind.description,
                    id: registration.clusterID.map(String.init) ?? ""
                )
            }
            let known = try await database.select().column("id").from(kind.memberTable)
                .where("hostname", .equal, registration.hostname).where("ip", .equal, registration.ip)
                .where(kind.clusterColumn, .equal, clusterID).first()
            if known == nil {
                try await Self.makeRoom(for: kind, limit: limit, in: database)
            }
            var columns = [
                "hostname", "ip", "port", "idc", "location", "state", "last_keep_alive_at", kind.clusterColumn,
                "created_at", "updated_at",
            ]
            var values: [any Encodable & Sendable] = [
                registration.hostname, registration.ip, registration.port, registration.idc, registration.location,
                MemberState.active.rawValue, now, clusterID, now, now,
            ]
            var updated = ["port", "idc", "location", "state", "last_keep_alive_at", "updated_at"]
            if kind == .seedPeer {
                columns += ["type", "download_port"]
                values += [registration.seedPeerType ?? "super", registration.downloadPort ?? 0]
                updated += ["type", "download_port"]
            }
            return try await database.insert(into: kind.memberTable)
                .columns(columns)
                .values(values)
                .onConflict(with: ["hostname", "ip", kind.clusterColumn]) { conflict in
                    updated.reduce(conflict) { $0.set(excludedValueOf: $1) }
                }
                .returning("*")
                .first()
        }
        guard let row else { throw DragonflyError(code: .internalError, message: "member upsert returned no row") }
        return try decode(kind.memberTable, row) { try Self.memberRecord($0, kind: kind) }
    }

    /// Members of one kind kept by default (``registerMember(_:_:limit:now:)``).
    package static let defaultMemberLimit = 10_000

    /// Deletes inactive members of `kind`, longest unseen first, until a new one fits under `limit`; throws
    /// `resourceExhausted` when the active ones alone fill it.
    private static func makeRoom(for kind: ClusterKind, limit: Int, in database: any SQLDatabase) async throws {
        let count =
            try await database.select().column(SQLFunction("COUNT", args: SQLLiteral.all), as: "n")
            .from(kind.memberTable).first(decodingColumn: "n", as: Int.self) ?? 0
        guard count >= limit else { return }
        let surplus = count - limit + 1
        let victims = try await database.select().column("id").from(kind.memberTable)
            .where("state", .equal, MemberState.inactive.rawValue)
            .orderBy("last_keep_alive_at").orderBy("id").limit(surplus)
            .all(decodingColumn: "id", as: Int.self)
        guard victims.count == surplus else {
            throw DragonflyError(
                code: .resourceExhausted,
                message: "the manager already holds \(limit) active \(kind.memberName)s; retry when one has left")
        }
        try await database.delete(from: kind.memberTable).where("id", .in, victims).run()
    }

    /// Deletes the inactive members of `kind` whose last keep-alive is before `cutoff`; returns how many.
    @discardableResult
    package func deleteInactiveMembers(
        _ kind: ClusterKind,
        lastKeepAliveBefore cutoff: Date
    ) async throws(DragonflyError) -> Int {
        let cutoff = StoredDate.forBinding(cutoff)
        let ids = try await database.withDatabase("forget \(kind.memberName)s") { database in
            try await database.delete(from: kind.memberTable)
                .where("state", .equal, MemberState.inactive.rawValue)
                .where("last_keep_alive_at", .lessThan, cutoff)
                .returning("id")
                .all(decodingColumn: "id", as: Int.self)
        }
        return ids.count
    }

    /// Records a keep-alive: the member becomes active with `now` as its last keep-alive; `notFound` for an
    /// unknown ID.
    @discardableResult
    package func keepAlive(
        _ kind: ClusterKind,
        id: Int,
        now: Date = Date()
    ) async throws(DragonflyError) -> MemberRecord {
        let now = StoredDate.forBinding(now)
        let row = try await database.withDatabase("record a keep-alive") { database in
            try await database.update(kind.memberTable)
                .set("state", to: MemberState.active.rawValue)
                .set("last_keep_alive_at", to: now)
                .set("updated_at", to: now)
                .where("id", .equal, id)
                .returning("*")
                .first()
        }
        guard let row else { throw .notFound(kind.memberName, id: id) }
        return try decode(kind.memberTable, row) { try Self.memberRecord($0, kind: kind) }
    }

    /// Marks inactive every active member whose last keep-alive is before `cutoff` (typically
    /// `now - keepAlive.timeout`) and returns their IDs, ascending.
    @discardableResult
    package func markInactiveMembers(
        _ kind: ClusterKind,
        lastKeepAliveBefore cutoff: Date,
        now: Date = Date()
    ) async throws(DragonflyError) -> [Int] {
        let now = StoredDate.forBinding(now)
        let cutoff = StoredDate.forBinding(cutoff)
        let ids = try await database.withDatabase("expire \(kind.memberName)s") { database in
            try await database.update(kind.memberTable)
                .set("state", to: MemberState.inactive.rawValue)
                .set("updated_at", to: now)
                .where("state", .equal, MemberState.active.rawValue)
                .where("last_keep_alive_at", .lessThan, cutoff)
                .returning("id")
                .all(decodingColumn: "id", as: Int.self)
        }
        return ids.sorted()
    }

    /// Marks one member inactive unless a keep-alive later than `lastKeepAliveAt` was recorded since (by another
    /// stream, e.g. after the member reconnected to another replica); returns whether the row changed.
    @discardableResult
    package func markInactive(
        _ kind: ClusterKind,
        id: Int,
        unlessKeptAliveAfter lastKeepAliveAt: Date,
        now: Date = Date()
    ) async throws(DragonflyError) -> Bool {
        let now = StoredDate.forBinding(now)
        let cutoff = StoredDate.forBinding(lastKeepAliveAt)
        let changed = try await database.withDatabase("mark a \(kind.memberName) inactive") { database in
            try await database.update(kind.memberTable)
                .set("state", to: MemberState.inactive.rawValue)
                .set("updated_at", to: now)
                .where("id", .equal, id)
                .where("state", .equal, MemberState.active.rawValue)
                .where("last_keep_alive_at", .lessThanOrEqual, cutoff)
                .returning("id")
                .first()
        }
        return changed != nil
    }

    /// The member of `kind` with `id`; `notFound` when there is none.
    package func member(_ kind: ClusterKind, id: Int) async throws(DragonflyError) -> MemberRecord {
        let row = try await database.withDatabase("read a \(kind.memberName)") { database in
            try await database.select().column("*").from(kind.memberTable).where("id", .equal, id).first()
        }
        guard let row else { throw .notFound(kind.memberName, id: id) }
        return try decode(kind.memberTable, row) { try Self.memberRecord($0, kind: kind) }
    }

    /// Members of `kind` ordered by ID, optionally only those of one cluster or in one state.
    package func members(
        _ kind: ClusterKind,
        clusterID: Int? = nil,
        state: MemberState? = nil,
        limit: Int? = nil,
        offset: Int? = nil
    ) async throws(DragonflyError) -> [MemberRecord] {
        let rows = try await database.withDatabase("list \(kind.memberName)s") { database in
            let query = database.select().column("*").from(kind.memberTable)
            if let clusterID { query.where(kind.clusterColumn, .equal, clusterID) }
            if let state { query.where("state", .equal, state.rawValue) }
            return try await query.orderBy("id").limit(limit).offset(offset).all()
        }
        return try decode(kind.memberTable, rows) { try Self.memberRecord($0, kind: kind) }
    }

    /// Deletes a member; `notFound` for an unknown ID.
    package func deleteMember(_ kind: ClusterKind, id: Int) async throws(DragonflyError) {
        try await deleteRow(from: kind.memberTable, id: id, what: kind.memberName)
    }

    static func memberRecord(_ row: any SQLRow, kind: ClusterKind) throws -> MemberRecord {
        MemberRecord(
            id: try row.int("id"),
            kind: kind,
            hostname: try row.string("hostname"),
            ip: try row.string("ip"),
            port: try row.int("port"),
            idc: try row.string("idc"),
            location: try row.string("location"),
            state: try row.enumeration("state", as: MemberState.self),
            lastKeepAliveAt: try row.date("last_keep_alive_at"),
            clusterID: try row.int(kind.clusterColumn),
            seedPeerType: kind == .seedPeer ? try row.string("type") : nil,
            downloadPort: kind == .seedPeer ? try row.int("download_port") : nil,
            createdAt: try row.date("created_at"),
            updatedAt: try row.date("updated_at")
        )
    }
}

// MARK: Hosts

extension ManagerStore {
    /// Inserts or updates (by host ID) a host reported by a scheduler; `notFound` for an unknown cluster.
    @discardableResult
    package func upsertHost(_ report: HostReport, now: Date = Date()) async throws(DragonflyError) -> HostRecord {
        let now = StoredDate.forBinding(now)
        let row = try await database.withTransaction("record a host") { database in
            if let clusterID = report.schedulerClusterID {
                let cluster = try await database.select().column("id").from("scheduler_clusters")
                    .where("id", .equal, clusterID).first()
                guard cluster != nil else { throw DragonflyError.notFound("scheduler cluster", id: clusterID) }
            }
            let updated = [
                "hostname", "ip", "port", "download_port", "type", "idc", "location", "scheduler_cluster_id",
                "updated_at",
            ]
            return try await database.insert(into: "hosts")
                .columns(
                    "host_id", "hostname", "ip", "port", "download_port", "type", "idc", "location",
                    "scheduler_cluster_id", "created_at", "updated_at"
                )
                .values(
                    report.hostID, report.hostname, report.ip, report.port, report.downloadPort, report.type,
                    report.idc, report.location, report.schedulerClusterID, now, now
                )
                .onConflict(with: ["host_id"]) { conflict in updated.reduce(conflict) { $0.set(excludedValueOf: $1) } }
                .returning("*")
                .first()
        }
        guard let row else { throw DragonflyError(code: .internalError, message: "host upsert returned no row") }
        return try decode("hosts", row, Self.hostRecord)
    }

    /// Hosts ordered by ID, optionally only those of one scheduler cluster.
    package func hosts(
        schedulerClusterID: Int? = nil,
        limit: Int? = nil,
        offset: Int? = nil
    ) async throws(DragonflyError) -> [HostRecord] {
        let rows = try await database.withDatabase("list hosts") { database in
            let query = database.select().column("*").from("hosts")
            if let schedulerClusterID { query.where("scheduler_cluster_id", .equal, schedulerClusterID) }
            return try await query.orderBy("id").limit(limit).offset(offset).all()
        }
        return try decode("hosts", rows, Self.hostRecord)
    }

    /// The host with the daemon host ID `hostID`, or `nil`.
    package func host(hostID: String) async throws(DragonflyError) -> HostRecord? {
        let row = try await database.withDatabase("read a host") { database in
            try await database.select().column("*").from("hosts").where("host_id", .equal, hostID).first()
        }
        return try row.map { row throws(DragonflyError) in try decode("hosts", row, Self.hostRecord) }
    }

    /// Deletes the host with the daemon host ID `hostID`; `notFound` when there is none.
    package func deleteHost(hostID: String) async throws(DragonflyError) {
        let deleted = try await database.withDatabase("delete a host") { database in
            try await database.delete(from: "hosts").where("host_id", .equal, hostID).returning("id").first()
        }
        guard deleted != nil else { throw .notFound("host", id: hostID) }
    }

    static func hostRecord(_ row: any SQLRow) throws -> HostRecord {
        HostRecord(
            id: try row.int("id"),
            hostID: try row.string("host_id"),
            hostname: try row.string("hostname"),
            ip: try row.string("ip"),
            port: try row.int("port"),
            downloadPort: try row.int("download_port"),
            type: try row.string("type"),
            idc: try row.string("idc"),
            location: try row.string("location"),
            schedulerClusterID: try row.optionalInt("scheduler_cluster_id"),
            createdAt: try row.date("created_at"),
            updatedAt: try row.date("updated_at")
        )
    }
}
