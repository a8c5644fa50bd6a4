package import DragonflyCore
import SQLKit

#if canImport(FoundationEssentials)
package import FoundationEssentials
#else
package import Foundation
#endif

extension ManagerStore {
    /// Creates a PENDING job with one PENDING row per target scheduler cluster (duplicates collapse); an
    /// unknown cluster ID is `notFound` and nothing is stored.
    package func createJob(
        type: String,
        args: JSONValue,
        userID: Int? = nil,
        schedulerClusterIDs: [Int],
        now: Date = Date()
    ) async throws(DragonflyError) -> JobRecord {
        let now = StoredDate.forBinding(now)
        let argsText = try encodeJSON(args)
        let clusterIDs = Array(Set(schedulerClusterIDs)).sorted()
        let rows = try await database.withTransaction("create a job") { database in
            if !clusterIDs.isEmpty {
                let known = try await database.select().column("id").from("scheduler_clusters")
                    .where("id", .in, clusterIDs)
                    .all(decodingColumn: "id", as: Int.self)
                if let missing = clusterIDs.first(where: { !known.contains($0) }) {
                    throw DragonflyError.notFound("scheduler cluster", id: missing)
                }
            }
            guard
                let job = try await database.insert(into: "jobs")
                    .columns("type", "state", "args", "result", "user_id", "created_at", "updated_at")
                    .values(type, JobState.pending.rawValue, argsText, String?.none, userID, now, now)
                    .returning("*")
                    .first()
            else { throw DragonflyError(code: .internalError, message: "job insert returned no row") }
            let jobID = try job.int("id")
            var clusters: [any SQLRow] = []
            for clusterID in clusterIDs {
                let row = try await database.insert(into: "job_clusters")
                    .columns(
                        "job_id", "scheduler_cluster_id", "state", "result", "claimed_by", "claimed_at",
                        "created_at", "updated_at"
                    )
                    .values(
                        jobID, clusterID, JobState.pending.rawValue, String?.none, String?.none, Date?.none, now,
                        now
                    )
                    .returning("*")
                    .first()
                if let row { clusters.append(row) }
            }
            return JobRows(job: job, clusters: clusters)
        }
        return try decodeJob(rows)
    }

    /// The job with `id` and its per-cluster rows; `notFound` when there is none.
    package func job(id: Int) async throws(DragonflyError) -> JobRecord {
        let rows = try await database.withDatabase("read a job") { database -> JobRows? in
            guard let job = try await database.select().column("*").from("jobs").where("id", .equal, id).first()
            else { return nil }
            let clusters = try await database.select().column("*").from("job_clusters")
                .where("job_id", .equal, id).orderBy("scheduler_cluster_id").all()
            return JobRows(job: job, clusters: clusters)
        }
        guard let rows else { throw .notFound("job", id: id) }
        return try decodeJob(rows)
    }

    /// Jobs newest first, optionally of one type or in one state.
    package func jobs(
        type: String? = nil,
        state: JobState? = nil,
        limit: Int? = nil,
        offset: Int? = nil
    ) async throws(DragonflyError) -> [JobRecord] {
        let rows = try await database.withDatabase("list jobs") { database in
            let query = database.select().column("*").from("jobs")
            if let type { query.where("type", .equal, type) }
            if let state { query.where("state", .equal, state.rawValue) }
            let jobs = try await query.orderBy("id", .descending).limit(limit).offset(offset).all()
            let ids = try jobs.map { try $0.int("id") }
            guard !ids.isEmpty else { return [JobRows]() }
            let clusters = try await database.select().column("*").from("job_clusters")
                .where("job_id", .in, ids).orderBy("scheduler_cluster_id").all()
            var byJob: [Int: [any SQLRow]] = [:]
            for cluster in clusters {
                byJob[try cluster.int("job_id"), default: []].append(cluster)
            }
            return try jobs.map { JobRows(job: $0, clusters: byJob[try $0.int("id")] ?? []) }
        }
        var records: [JobRecord] = []
        for row in rows {
            records.append(try decodeJob(row))
        }
        return records
    }

    /// Sets a job's state and, when given, its result; `notFound` for an unknown ID.
    @discardableResult
    package func updateJob(
        id: Int,
        state: JobState,
        result: JSONValue? = nil,
        now: Date = Date()
    ) async throws(DragonflyError) -> JobRecord {
        let now = StoredDate.forBinding(now)
        let resultText = try result.map { value throws(DragonflyError) in try encodeJSON(value) }
        let rows = try await database.withTransaction("update a job") { database -> JobRows? in
            var statement = database.update("jobs").set("state", to: state.rawValue).set("updated_at", to: now)
            if let resultText { statement = statement.set("result", to: resultText) }
            guard let job = try await statement.where("id", .equal, id).returning("*").first() else { return nil }
            let clusters = try await database.select().column("*").from("job_clusters")
                .where("job_id", .equal, id).orderBy("scheduler_cluster_id").all()
            return JobRows(job: job, clusters: clusters)
        }
        guard let rows else { throw .notFound("job", id: id) }
        return try decodeJob(rows)
    }

    /// Sets one job-cluster row's state and, when given, its result; `notFound` for an unknown ID.
    @discardableResult
    package func updateJobCluster(
        id: Int,
        state: JobState,
        result: JSONValue? = nil,
        now: Date = Date()
    ) async throws(DragonflyError) -> JobClusterRecord {
        let now = StoredDate.forBinding(now)
        let resultText = try result.map { value throws(DragonflyError) in try encodeJSON(value) }
        let row = try await database.withDatabase("update a job cluster") { database in
            var statement = database.update("job_clusters").set("state", to: state.rawValue)
                .set("updated_at", to: now)
            if let resultText { statement = statement.set("result", to: resultText) }
            return try await statement.where("id", .equal, id).returning("*").first()
        }
        guard let row else { throw .notFound("job cluster", id: id) }
        return try decode("job_clusters", row, Self.jobClusterRecord)
    }

    /// Claims up to `limit` PENDING job-cluster rows of `schedulerClusterIDs` for `replica`, oldest first:
    /// they become RUNNING with `claimedBy`/`claimedAt` set, and their jobs become RUNNING if still PENDING.
    ///
    /// On PostgreSQL the rows are selected `FOR UPDATE SKIP LOCKED` in one transaction, so replicas claiming at
    /// the same time never get the same row and never wait on each other's rows. SQLite has no row locks and
    /// needs none: its single writer (`BEGIN IMMEDIATE` on the one connection) serialises claims.
    package func claimJobClusters(
        replica: String,
        schedulerClusterIDs: [Int],
        limit: Int,
        now: Date = Date()
    ) async throws(DragonflyError) -> [JobClusterRecord] {
        guard !schedulerClusterIDs.isEmpty, limit > 0 else { return [] }
        let now = StoredDate.forBinding(now)
        let backend = database.backend
        let rows = try await database.withTransaction("claim job clusters") { database in
            let candidates = database.select().column("id").from("job_clusters")
                .where("state", .equal, JobState.pending.rawValue)
                .where("scheduler_cluster_id", .in, schedulerClusterIDs)
                .orderBy("id")
                .limit(limit)
            if backend == .postgres {
                candidates.lockingClause(SQLRaw("FOR UPDATE SKIP LOCKED"))
            }
            let ids = try await candidates.all(decodingColumn: "id", as: Int.self)
            guard !ids.isEmpty else { return [any SQLRow]() }
            let claimed = try await database.update("job_clusters")
                .set("state", to: JobState.running.rawValue)
                .set("claimed_by", to: replica)
                .set("claimed_at", to: now)
                .set("updated_at", to: now)
                .where("id", .in, ids)
                .returning("*")
                .all()
            let jobIDs = Array(Set(try claimed.map { try $0.int("job_id") })).sorted()
            try await database.update("jobs")
                .set("state", to: JobState.running.rawValue)
                .set("updated_at", to: now)
                .where("id", .in, jobIDs)
                .where("state", .equal, JobState.pending.rawValue)
                .run()
            return claimed
        }
        return try decode("job_clusters", rows, Self.jobClusterRecord).sorted { $0.id < $1.id }
    }

    /// Renews `replica`'s claim on the RUNNING rows `ids` (a heartbeat: claims not renewed for a while belong
    /// to a replica that died, and ``releaseJobClusterClaims(claimedBefore:now:)`` hands them back).
    package func renewJobClusterClaims(ids: [Int], replica: String, now: Date = Date()) async throws(DragonflyError) {
        guard !ids.isEmpty else { return }
        let now = StoredDate.forBinding(now)
        try await database.withDatabase("renew job claims") { database in
            try await database.update("job_clusters")
                .set("claimed_at", to: now)
                .where("state", .equal, JobState.running.rawValue)
                .where("claimed_by", .equal, replica)
                .where("id", .in, ids)
                .run()
        }
    }

    /// Returns the RUNNING job-cluster rows `ids` to PENDING (their scheduler's channel closed before they
    /// finished), so a channel of the same cluster, on any replica, claims them again.
    package func releaseJobClusters(ids: [Int], now: Date = Date()) async throws(DragonflyError) {
        guard !ids.isEmpty else { return }
        let now = StoredDate.forBinding(now)
        try await database.withDatabase("release job clusters") { database in
            try await database.update("job_clusters")
                .set("state", to: JobState.pending.rawValue)
                .set("claimed_by", to: String?.none)
                .set("claimed_at", to: Date?.none)
                .set("updated_at", to: now)
                .where("state", .equal, JobState.running.rawValue)
                .where("id", .in, ids)
                .run()
        }
    }

    /// Returns to PENDING the RUNNING job-cluster rows claimed before `cutoff` (their replica stopped without
    /// finishing them), so another replica can claim them; returns their IDs, ascending.
    @discardableResult
    package func releaseJobClusterClaims(
        claimedBefore cutoff: Date,
        now: Date = Date()
    ) async throws(DragonflyError) -> [Int] {
        let now = StoredDate.forBinding(now)
        let cutoff = StoredDate.forBinding(cutoff)
        let ids = try await database.withDatabase("release stale job claims") { database in
            try await database.update("job_clusters")
                .set("state", to: JobState.pending.rawValue)
                .set("claimed_by", to: String?.none)
                .set("claimed_at", to: Date?.none)
                .set("updated_at", to: now)
                .where("state", .equal, JobState.running.rawValue)
                .where("claimed_at", .lessThan, cutoff)
                .returning("id")
                .all(decodingColumn: "id", as: Int.self)
        }
        return ids.sorted()
    }

    private func decodeJob(_ rows: JobRows) throws(DragonflyError) -> JobRecord {
        var job = try decode("jobs", rows.job, Self.jobRecord)
        job.clusters = try decode("job_clusters", rows.clusters, Self.jobClusterRecord)
            .sorted { $0.schedulerClusterID < $1.schedulerClusterID }
        return job
    }

    static func jobRecord(_ row: any SQLRow) throws -> JobRecord {
        JobRecord(
            id: try row.int("id"),
            type: try row.string("type"),
            state: try row.enumeration("state", as: JobState.self),
            args: try row.json("args", as: JSONValue.self),
            result: try row.optionalJSON("result", as: JSONValue.self),
            userID: try row.optionalInt("user_id"),
            createdAt: try row.date("created_at"),
            updatedAt: try row.date("updated_at"),
            clusters: []
        )
    }

    static func jobClusterRecord(_ row: any SQLRow) throws -> JobClusterRecord {
        JobClusterRecord(
            id: try row.int("id"),
            jobID: try row.int("job_id"),
            schedulerClusterID: try row.int("scheduler_cluster_id"),
            state: try row.enumeration("state", as: JobState.self),
            result: try row.optionalJSON("result", as: JSONValue.self),
            claimedBy: try row.optionalString("claimed_by"),
            claimedAt: try row.optionalDate("claimed_at"),
            createdAt: try row.date("created_at"),
            updatedAt: try row.date("updated_at")
        )
    }
}

/// A job row and its job-cluster rows, read in one database call.
private struct JobRows: Sendable {
    var job: any SQLRow
    var clusters: [any SQLRow]
}
