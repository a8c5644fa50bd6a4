import DragonflyCore
import Testing

@testable import DragonflyManager

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

extension ManagerStoreTests {
    @Test("schedulers and seed peers: register, re-register, keep alive, expire", arguments: TestBackend.allCases)
    func memberKeepAlive(backend: TestBackend) async throws {
        try await withStore(backend) { store, _ in
            let defaultCluster = try await store.defaultCluster(.scheduler)
            let t0 = fixedInstant
            let first = try await store.registerMember(
                .scheduler, MemberRegistration(hostname: "s1", ip: "10.0.0.1", port: 8002, idc: "idc-1"), now: t0)
            #expect(first.clusterID == defaultCluster.id && first.state == .active && first.lastKeepAliveAt == t0)
            #expect(first.seedPeerType == nil)
            let second = try await store.registerMember(
                .scheduler, MemberRegistration(hostname: "s2", ip: "10.0.0.2", port: 8002), now: t0)

            // The same (hostname, ip, cluster) updates the existing row.
            let again = try await store.registerMember(
                .scheduler,
                MemberRegistration(hostname: "s1", ip: "10.0.0.1", port: 9002, clusterID: defaultCluster.id),
                now: t0.addingTimeInterval(1))
            #expect(again.id == first.id && again.port == 9002 && again.createdAt == t0)
            #expect(try await store.members(.scheduler).count == 2)

            let alive = try await store.keepAlive(.scheduler, id: second.id, now: t0.addingTimeInterval(20))
            #expect(alive.lastKeepAliveAt == t0.addingTimeInterval(20))

            // Timeout 15 s at t0 + 25 s: s1 (last seen t0 + 1) expires, s2 (t0 + 20) stays.
            let expired = try await store.markInactiveMembers(
                .scheduler, lastKeepAliveBefore: t0.addingTimeInterval(10), now: t0.addingTimeInterval(25))
            #expect(expired == [first.id])
            #expect(try await store.member(.scheduler, id: first.id).state == .inactive)
            #expect(try await store.members(.scheduler, state: .active).map(\.id) == [second.id])
            #expect(
                try await store.markInactiveMembers(.scheduler, lastKeepAliveBefore: t0.addingTimeInterval(10)) == [])

            // A keep-alive brings it back.
            try await store.keepAlive(.scheduler, id: first.id, now: t0.addingTimeInterval(30))
            #expect(try await store.members(.scheduler, state: .active).count == 2)

            let seedPeer = try await store.registerMember(
                .seedPeer,
                MemberRegistration(
                    hostname: "sp1", ip: "10.0.1.1", port: 65006, seedPeerType: "super", downloadPort: 65002),
                now: t0)
            #expect(seedPeer.seedPeerType == "super" && seedPeer.downloadPort == 65002)
            let defaultSeedCluster = try await store.defaultCluster(.seedPeer)
            #expect(seedPeer.clusterID == defaultSeedCluster.id)

            let unknownCluster = await #expect(throws: DragonflyError.self) {
                try await store.registerMember(
                    .scheduler, MemberRegistration(hostname: "s3", ip: "10.0.0.3", port: 1, clusterID: 999))
            }
            #expect(unknownCluster?.code == .notFound)
            let unknownMember = await #expect(throws: DragonflyError.self) {
                try await store.keepAlive(.seedPeer, id: 999)
            }
            #expect(unknownMember?.code == .notFound)

            // Deleting a cluster removes its members.
            let other = try await store.createCluster(.scheduler, NewCluster(name: "other"))
            _ = try await store.registerMember(
                .scheduler, MemberRegistration(hostname: "s9", ip: "10.0.0.9", port: 1, clusterID: other.id))
            try await store.deleteCluster(.scheduler, id: other.id)
            #expect(try await store.members(.scheduler).count == 2)
        }
    }

    @Test("hosts are upserted by host ID", arguments: TestBackend.allCases)
    func hostUpsert(backend: TestBackend) async throws {
        try await withStore(backend) { store, _ in
            let cluster = try await store.defaultCluster(.scheduler)
            let report = HostReport(
                hostID: "host-a", hostname: "a", ip: "10.0.0.1", port: 65000, downloadPort: 65002,
                schedulerClusterID: cluster.id)
            let first = try await store.upsertHost(report, now: fixedInstant)
            var moved = report
            moved.ip = "10.0.0.5"
            let second = try await store.upsertHost(moved, now: fixedInstant.addingTimeInterval(5))
            #expect(second.id == first.id && second.ip == "10.0.0.5" && second.createdAt == fixedInstant)
            #expect(try await store.hosts(schedulerClusterID: cluster.id).map(\.hostID) == ["host-a"])
            #expect(try await store.host(hostID: "host-a") == second)
            try await store.deleteHost(hostID: "host-a")
            #expect(try await store.hosts().isEmpty)
            var orphan = report
            orphan.schedulerClusterID = 999
            let error = await #expect(throws: DragonflyError.self) { try await store.upsertHost(orphan) }
            #expect(error?.code == .notFound)
        }
    }

    @Test("jobs: created with one row per cluster, read, listed, updated", arguments: TestBackend.allCases)
    func jobLifecycle(backend: TestBackend) async throws {
        try await withStore(backend) { store, _ in
            let user = try await store.createUser(NewUser(name: "harbor", passwordHash: "h"))
            let a = try await store.defaultCluster(.scheduler)
            let b = try await store.createCluster(.scheduler, NewCluster(name: "b"))
            let args: JSONValue = .object([
                "type": .string("image"), "url": .string("https://r.example/v2/lib/nginx/manifests/1"),
                "timeout": .number(1_800_000_000_000),
            ])
            let job = try await store.createJob(
                type: "preheat", args: args, userID: user.id, schedulerClusterIDs: [b.id, a.id, b.id],
                now: fixedInstant)
            #expect(job.state == .pending && job.args == args && job.result == nil && job.userID == user.id)
            #expect(job.clusters.map(\.schedulerClusterID) == [a.id, b.id])
            #expect(job.clusters.allSatisfy { $0.state == .pending && $0.claimedBy == nil && $0.jobID == job.id })
            #expect(try await store.job(id: job.id) == job)

            let second = try await store.createJob(type: "get_task", args: .emptyObject, schedulerClusterIDs: [])
            #expect(second.id > job.id && second.clusters.isEmpty)
            #expect(try await store.jobs().map(\.id) == [second.id, job.id])
            #expect(try await store.jobs(type: "preheat").map(\.id) == [job.id])
            #expect(try await store.jobs(limit: 1).first?.clusters.isEmpty == true)
            #expect(try await store.jobs(state: .pending, limit: 1, offset: 1).first?.clusters.count == 2)

            let clusterResult: JSONValue = .object([
                "success_tasks": .array([]), "failure_tasks": .array([]), "scheduler_cluster_id": .number(Double(a.id)),
            ])
            let row = try await store.updateJobCluster(id: job.clusters[0].id, state: .success, result: clusterResult)
            #expect(row.state == .success && row.result == clusterResult)
            let finished = try await store.updateJob(
                id: job.id, state: .success, result: .object(["job_states": .array([])]), now: fixedInstant)
            #expect(finished.state == .success && finished.clusters[0].result == clusterResult)

            let unknownCluster = await #expect(throws: DragonflyError.self) {
                try await store.createJob(type: "preheat", args: .emptyObject, schedulerClusterIDs: [a.id, 999])
            }
            #expect(unknownCluster?.code == .notFound)
            #expect(try await store.jobs().count == 2)
            let unknownJob = await #expect(throws: DragonflyError.self) { try await store.job(id: 999) }
            #expect(unknownJob?.code == .notFound)
            let unknownUpdate = await #expect(throws: DragonflyError.self) {
                try await store.updateJob(id: 999, state: .failure)
            }
            #expect(unknownUpdate?.code == .notFound)

            // Deleting the user keeps the job and clears its owner.
            try await store.deleteUser(id: user.id)
            #expect(try await store.job(id: job.id).userID == nil)
        }
    }

    @Test(
        "claiming job clusters marks them and their job RUNNING; stale claims are released",
        arguments: TestBackend.allCases)
    func claimAndRelease(backend: TestBackend) async throws {
        try await withStore(backend) { store, _ in
            let a = try await store.defaultCluster(.scheduler)
            let b = try await store.createCluster(.scheduler, NewCluster(name: "b"))
            let job = try await store.createJob(type: "preheat", args: .emptyObject, schedulerClusterIDs: [a.id, b.id])

            #expect(try await store.claimJobClusters(replica: "r1", schedulerClusterIDs: [], limit: 5).isEmpty)
            let claimed = try await store.claimJobClusters(
                replica: "r1", schedulerClusterIDs: [a.id], limit: 5, now: fixedInstant)
            #expect(claimed.map(\.schedulerClusterID) == [a.id])
            #expect(claimed.first?.claimedBy == "r1" && claimed.first?.claimedAt == fixedInstant)
            #expect(claimed.first?.state == .running)
            let running = try await store.job(id: job.id)
            #expect(running.state == .running)
            #expect(running.clusters.map(\.state) == [.running, .pending])
            #expect(try await store.claimJobClusters(replica: "r2", schedulerClusterIDs: [a.id], limit: 5).isEmpty)

            let released = try await store.releaseJobClusterClaims(claimedBefore: fixedInstant.addingTimeInterval(60))
            #expect(released == claimed.map(\.id))
            let reclaimed = try await store.claimJobClusters(
                replica: "r2", schedulerClusterIDs: [a.id, b.id], limit: 5)
            #expect(reclaimed.count == 2 && reclaimed.allSatisfy { $0.claimedBy == "r2" })
        }
    }

    @Test(
        "a renewed claim is not stale; only its replica renews it; a channel's rows can be handed back",
        arguments: TestBackend.allCases)
    func renewAndHandBack(backend: TestBackend) async throws {
        try await withStore(backend) { store, _ in
            let a = try await store.defaultCluster(.scheduler)
            _ = try await store.createJob(type: "preheat", args: .emptyObject, schedulerClusterIDs: [a.id])
            let claimed = try await store.claimJobClusters(
                replica: "r1", schedulerClusterIDs: [a.id], limit: 5, now: fixedInstant)
            let later = fixedInstant.addingTimeInterval(100)
            try await store.renewJobClusterClaims(ids: claimed.map(\.id), replica: "r2", now: later)
            #expect(
                try await store.releaseJobClusterClaims(claimedBefore: fixedInstant.addingTimeInterval(50), now: later)
                    == claimed.map(\.id), "another replica's renewal does not count")
            let again = try await store.claimJobClusters(
                replica: "r1", schedulerClusterIDs: [a.id], limit: 5, now: fixedInstant)
            try await store.renewJobClusterClaims(ids: again.map(\.id), replica: "r1", now: later)
            #expect(try await store.releaseJobClusterClaims(claimedBefore: fixedInstant.addingTimeInterval(50)).isEmpty)

            try await store.releaseJobClusters(ids: again.map(\.id))
            let row = try #require(try await store.job(id: again[0].jobID).clusters.first)
            #expect(row.state == .pending && row.claimedBy == nil)
        }
    }

    @Test("replicas claiming concurrently never get the same row", arguments: TestBackend.allCases)
    func concurrentClaimsAreDisjoint(backend: TestBackend) async throws {
        try await withDatabaseLocation(backend) { location, _ in
            let clusterIDs = try await withOpenStore(location) { store in
                let a = try await store.defaultCluster(.scheduler)
                let b = try await store.createCluster(.scheduler, NewCluster(name: "b"))
                for index in 0..<40 {
                    _ = try await store.createJob(
                        type: "preheat", args: .object(["n": .number(Double(index))]),
                        schedulerClusterIDs: [a.id, b.id])
                }
                return [a.id, b.id]
            }
            let claims = try await withReplicas(2, at: location) { databases in
                try await withThrowingTaskGroup(of: [Int: String].self) { group in
                    for (index, database) in databases.enumerated() {
                        let store = ManagerStore(database: database)
                        group.addTask {
                            var mine: [Int: String] = [:]
                            while true {
                                let batch = try await store.claimJobClusters(
                                    replica: "replica-\(index)", schedulerClusterIDs: clusterIDs, limit: 3)
                                if batch.isEmpty { return mine }
                                for row in batch {
                                    #expect(mine[row.id] == nil)
                                    mine[row.id] = row.claimedBy
                                }
                            }
                        }
                    }
                    var all: [[Int: String]] = []
                    for try await claimed in group {
                        all.append(claimed)
                    }
                    return all
                }
            }
            let ids = claims.flatMap(\.keys)
            #expect(ids.count == 80)
            #expect(Set(ids).count == 80)
            try await withOpenStore(location) { store in
                let jobs = try await store.jobs()
                #expect(jobs.count == 40)
                #expect(jobs.allSatisfy { $0.state == .running })
                for job in jobs {
                    for row in job.clusters {
                        let owner = claims.first { $0[row.id] != nil }?[row.id]
                        #expect(row.state == .running && row.claimedBy == owner)
                    }
                }
            }
        }
    }

    @Test("getOrCreateSetting gives every concurrent caller the same value", arguments: TestBackend.allCases)
    func settingCreatedOnce(backend: TestBackend) async throws {
        try await withDatabaseLocation(backend) { location, _ in
            try await withOpenStore(location) { _ in }
            let values = try await withReplicas(2, at: location) { databases in
                try await withThrowingTaskGroup(of: String.self) { group in
                    for index in 0..<12 {
                        let store = ManagerStore(database: databases[index % databases.count])
                        group.addTask {
                            try await store.getOrCreateSetting(key: "jwt.signing_key") { "key-\(index)-\(UUID())" }
                        }
                    }
                    var values: [String] = []
                    for try await value in group {
                        values.append(value)
                    }
                    return values
                }
            }
            #expect(values.count == 12)
            #expect(Set(values).count == 1)
            try await withOpenStore(location) { store in
                #expect(try await store.setting(key: "jwt.signing_key") == values.first)
                #expect(try await store.getOrCreateSetting(key: "jwt.signing_key") { "other" } == values.first)
                try await store.setSetting(key: "jwt.signing_key", value: "rotated")
                #expect(try await store.setting(key: "jwt.signing_key") == "rotated")
                #expect(try await store.setting(key: "missing") == nil)
            }
        }
    }
}
