import DragonflyCore
import DragonflyTestSupport
import Foundation
import NIOHTTP1
import Testing

/// Preheat jobs end to end (DESIGN §10): a real manager, scheduler, cdn and daemons, a real nginx origin; the job
/// goes through the open API, the manager's command channel and the scheduler, and lands in the hosts' caches.
@Suite(.serialized, .timeLimit(.minutes(5)))
struct PreheatJobTests {
    static let rootPassword = "root-password-for-tests"

    /// Runs a manager (SQLite) and a P2P cluster whose scheduler registers with it. With `clusterSecret`, the
    /// manager, the scheduler and the seeds share it (daemons have none), as a production cluster does.
    func withManagedCluster(
        seeds: Int,
        daemons: Int,
        clusterSecret: String? = nil,
        _ body: (ManagerAPIClient, String, P2PCluster) async throws -> Void
    ) async throws {
        try await withTemporaryDirectory { dir in
            let secured = clusterSecret.map { "security:\n  clusterSecret: \($0)\n" }
            var arguments = [
                "manager", "--data-dir", dir.appending("manager"), "--listen", "127.0.0.1:0", "--grpc-listen",
                "127.0.0.1:0",
            ]
            if let secured { arguments += ["--config", try dir.writeFile("manager.yaml", text: secured)] }
            try await withDragonfly(arguments, environment: ["DRAGONFLY_INITIAL_ROOT_PASSWORD": Self.rootPassword]) {
                manager in
                let ready = try await manager.awaitReady(timeLimit: .seconds(60))
                let grpc = try #require(ready.listeners["grpc"])
                let api = try ManagerAPIClient(ready)
                defer { api.shutdown() }
                try await withP2PCluster(
                    schedulers: 1, seeds: seeds, daemons: daemons, seedConfigYAML: secured,
                    schedulerConfigYAML: secured, schedulerArguments: ["--manager", grpc]
                ) { cluster in
                    let session = try await api.signIn("root", Self.rootPassword)
                    try await poll(every: .milliseconds(200), timeLimit: .seconds(30), description: "scheduler active")
                    {
                        let schedulers = try await api.call(.GET, "/api/v1/schedulers", token: session)
                        return (schedulers.json.array ?? []).contains { $0["state"].string == "active" }
                    }
                    try await body(api, session, cluster)
                }
            }
        }
    }

    /// Polls a job through the open API until it ends; returns its last answer.
    func finished(_ id: Int, api: ManagerAPIClient, token: String) async throws -> ManagerAPIAnswer {
        var job = ManagerAPIAnswer()
        try await poll(every: .milliseconds(250), timeLimit: .seconds(120), description: "job \(id) ended") {
            job = try await api.call(.GET, "/oapi/v1/jobs/\(id)", token: token)
            return ["SUCCESS", "FAILURE"].contains(job.json["state"].string ?? "")
        }
        return job
    }

    @Test func aFilePreheatForTwoPeersLandsInExactlyTwoCaches() async throws {
        let size = 6 << 20
        let blob = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 2_654_435_761 >> 7) }
        try await withNginxOrigin { origin in
            try origin.writeFile("preheat.bin", contents: blob)
            let url = origin.url(for: "preheat.bin")
            try await withManagedCluster(seeds: 1, daemons: 3) { api, session, cluster in
                let token = try await api.createToken(session, scopes: ["job"], expiresIn: 3600)
                let created = try await api.call(
                    .POST, "/oapi/v1/jobs", token: token,
                    json:
                        #"{"type":"preheat","args":{"type":"file","url":"\#(url)","scope":"all_peers","count":2},"scheduler_cluster_ids":null}"#
                )
                #expect(created.status == 200, "\(created.text)")
                let id = try #require(created.json["id"].int)
                let job = try await finished(id, api: api, token: token)
                #expect(job.json["state"].string == "SUCCESS", "\(job.text)\n\(cluster.logs())")
                let result = job.json["result"]["job_states"][0]["results"][0]
                #expect(result["success_tasks"].array?.count == 2, "\(job.text)")
                #expect(result["failure_tasks"].array?.isEmpty == true)

                var holders = 0
                for daemon in cluster.daemons {
                    let fetched =
                        try await cluster.downloadBytes(of: daemon, source: .peer)
                        + cluster.downloadBytes(of: daemon, source: .origin)
                    #expect(fetched == 0 || fetched == size, "\(daemon) fetched \(fetched) bytes")
                    if fetched == size { holders += 1 }
                }
                #expect(holders == 2, "exactly two daemons hold the file")
                let reads = try origin.accessLog().filter { $0.uri.hasSuffix("/preheat.bin") && $0.method == "GET" }
                #expect(reads.reduce(0) { $0 + $1.bytesSent } <= size + (size / 10), "the origin was read about once")
            }
        }
    }

    @Test func aPreheatInAClusterWithoutSeedPeersFailsSayingSo() async throws {
        try await withNginxOrigin { origin in
            try origin.writeFile("lonely.bin", contents: [UInt8](repeating: 7, count: 1024))
            let url = origin.url(for: "lonely.bin")
            try await withManagedCluster(seeds: 0, daemons: 1) { api, session, _ in
                let token = try await api.createToken(session, scopes: ["job"], expiresIn: 3600)
                let created = try await api.call(
                    .POST, "/oapi/v1/jobs", token: token,
                    json: #"{"type":"preheat","args":{"type":"file","url":"\#(url)","scope":"single_seed_peer"}}"#)
                let id = try #require(created.json["id"].int, "\(created.text)")
                let job = try await finished(id, api: api, token: token)
                #expect(job.json["state"].string == "FAILURE")
                let failures = job.json["result"]["job_states"][0]["results"][0]["failure_tasks"]
                #expect(failures[0]["url"].string == url)
                #expect(failures[0]["description"].string?.contains("no seed peer") == true, "\(job.text)")
            }
        }
    }

    @Test func twoReplicasOnOnePostgresDispatchEachJobExactlyOnce() async throws {
        try await withNginxOrigin { origin in
            try origin.writeFile("shared.bin", contents: [UInt8](repeating: 42, count: 64 << 10))
            let url = origin.url(for: "shared.bin")
            try await withPostgres { pg in
                try await withTemporaryDirectory { dir in
                    func arguments(_ name: String) -> [String] {
                        [
                            "manager", "--data-dir", dir.appending(name), "--listen", "127.0.0.1:0", "--grpc-listen",
                            "127.0.0.1:0", "--database", pg.url,
                        ]
                    }
                    let environment = ["DRAGONFLY_INITIAL_ROOT_PASSWORD": Self.rootPassword]
                    try await withDragonfly(arguments("a"), environment: environment) { a in
                        try await withDragonfly(arguments("b"), environment: environment) { b in
                            let readyA = try await a.awaitReady(timeLimit: .seconds(60))
                            let apiA = try ManagerAPIClient(readyA)
                            defer { apiA.shutdown() }
                            let apiB = try ManagerAPIClient(try await b.awaitReady(timeLimit: .seconds(60)))
                            defer { apiB.shutdown() }
                            let grpcA = try #require(readyA.listeners["grpc"])
                            try await withP2PCluster(
                                schedulers: 1, seeds: 1, daemons: 1, schedulerArguments: ["--manager", grpcA]
                            ) { cluster in
                                let session = try await apiA.signIn("root", Self.rootPassword)
                                let token = try await apiA.createToken(session, scopes: ["job"], expiresIn: 3600)
                                try await poll(
                                    every: .milliseconds(200), timeLimit: .seconds(30), description: "scheduler active"
                                ) {
                                    let schedulers = try await apiB.call(.GET, "/api/v1/schedulers", token: session)
                                    return (schedulers.json.array ?? []).contains { $0["state"].string == "active" }
                                }
                                var ids: [Int] = []
                                for index in 0..<20 {
                                    let api = index.isMultiple(of: 2) ? apiA : apiB
                                    let created = try await api.call(
                                        .POST, "/oapi/v1/jobs", token: token,
                                        json: #"{"type":"preheat","args":{"type":"file","url":"\#(url)"}}"#)
                                    ids.append(try #require(created.json["id"].int, "\(created.text)"))
                                }
                                #expect(Set(ids).count == 20)
                                for id in ids {
                                    let api = id.isMultiple(of: 2) ? apiB : apiA
                                    let job = try await finished(id, api: api, token: token)
                                    #expect(job.json["state"].string == "SUCCESS", "\(job.text)")
                                }
                                // The scheduler logs each job it receives: every job exactly once.
                                let scheduler = try #require(cluster.schedulers.first)
                                let received = scheduler.process.stderrText().split(separator: "\n")
                                    .filter { $0.contains("job received") }
                                for id in ids {
                                    let lines = received.filter {
                                        $0.hasSuffix("df.job=\(id)") || $0.contains("df.job=\(id) ")
                                    }
                                    #expect(lines.count == 1, "job \(id) was received \(lines.count) times")
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
/// Harbor's flow against a real docker-registry with an image pushed by skopeo (DESIGN §10).
@Suite(.serialized, .timeLimit(.minutes(5)))
struct HarborPreheatTests {
    @Test func anImagePreheatLoadsTheLayersSoGetsReadNothingFromTheRegistry() async throws {
        try await withDockerRegistry { registry in
            let layer = (0..<(3 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 40_503 >> 3) }
            try await registry.pushImage(repository: "library/app", tag: "v1", layerFile: layer)
            try await PreheatJobTests().withManagedCluster(seeds: 1, daemons: 2) { api, session, cluster in
                #expect(try await api.call(.GET, "/healthy").status == 200)
                let token = try await api.createToken(session, scopes: ["job"], expiresIn: 3600)
                let manifest = "\(registry.baseURL)/v2/library/app/manifests/v1"
                // Harbor's body, field for field.
                let body = """
                    {"type":"preheat","args":{"type":"image","url":"\(manifest)","headers":{},"scope":"single_peer",\
                    "tag":"","filtered_query_params":"","timeout":0,"concurrent_count":3},"scheduler_cluster_ids":null}
                    """
                let created = try await api.call(.POST, "/oapi/v1/jobs", token: token, json: body)
                let id = try #require(created.json["id"].int, "\(created.text)")
                let job = try await PreheatJobTests().finished(id, api: api, token: token)
                #expect(job.json["state"].string == "SUCCESS", "\(job.text)\n\(cluster.logs())")
                let urls = (job.json["result"]["job_states"][0]["results"][0]["success_tasks"].array ?? [])
                    .compactMap { $0["url"].string }
                #expect(!urls.isEmpty && urls.allSatisfy { $0.contains("/v2/library/app/blobs/sha256:") }, "\(urls)")

                func blobBytes() -> Int {
                    registry.requests().filter { $0.method == "GET" && $0.uri.contains("/blobs/") }
                        .reduce(0) { $0 + $1.bytesWritten }
                }
                let before = blobBytes()
                #expect(before > 0, "the seed peer read the layers from the registry during the preheat")
                let daemon = try #require(cluster.daemons.first)
                for (index, url) in Set(urls).enumerated() {
                    let result = try await cluster.get(
                        url: url, on: daemon, output: cluster.outputPath("layer\(index)"))
                    #expect(result.status == .exited(0), "\(result.stderr)")
                }
                #expect(blobBytes() == before, "the layers came from the seed peer, not the registry")
            }
        }
    }

    @Test func anImageTheRegistryDoesNotHaveFailsWithAReasonPerURL() async throws {
        try await withDockerRegistry { registry in
            try await PreheatJobTests().withManagedCluster(seeds: 1, daemons: 1) { api, session, _ in
                let token = try await api.createToken(session, scopes: ["job"], expiresIn: 3600)
                let manifest = "\(registry.baseURL)/v2/nothing/here/manifests/v9"
                let created = try await api.call(
                    .POST, "/oapi/v1/jobs", token: token,
                    json:
                        #"{"type":"preheat","args":{"type":"image","url":"\#(manifest)"},"scheduler_cluster_ids":null}"#
                )
                let id = try #require(created.json["id"].int, "\(created.text)")
                let job = try await PreheatJobTests().finished(id, api: api, token: token)
                #expect(job.json["state"].string == "FAILURE")
                let failure = job.json["result"]["job_states"][0]["results"][0]["failure_tasks"][0]
                #expect(failure["url"].string == manifest)
                #expect(failure["description"].string?.contains("404") == true, "\(job.text)")
            }
        }
    }

    @Test func aRegistryThatWantsCredentialsFailsWithoutThemAndPreheatsWithThem() async throws {
        try await withDockerRegistry(credentials: ("harbor", "harbor-secret")) { registry in
            try await registry.pushImage(
                repository: "private/app", tag: "v1", layerFile: [UInt8](repeating: 9, count: 256 << 10))
            try await PreheatJobTests().withManagedCluster(seeds: 1, daemons: 1) { api, session, cluster in
                let token = try await api.createToken(session, scopes: ["job"], expiresIn: 3600)
                let manifest = "\(registry.baseURL)/v2/private/app/manifests/v1"
                // Without credentials: the registry's 401 ends the job FAILURE, with a description per URL.
                let refused = try await api.call(
                    .POST, "/oapi/v1/jobs", token: token,
                    json: #"{"type":"preheat","args":{"type":"image","url":"\#(manifest)"}}"#)
                let refusedID = try #require(refused.json["id"].int, "\(refused.text)")
                let failed = try await PreheatJobTests().finished(refusedID, api: api, token: token)
                #expect(failed.json["state"].string == "FAILURE")
                let failure = failed.json["result"]["job_states"][0]["results"][0]["failure_tasks"][0]
                #expect(failure["url"].string == manifest)
                #expect(failure["description"].string?.contains("credentials") == true, "\(failed.text)")

                // With Harbor's basic credentials in the headers: the manifest and the layers are fetched.
                let basic = Data("harbor:harbor-secret".utf8).base64EncodedString()
                let allowed = try await api.call(
                    .POST, "/oapi/v1/jobs", token: token,
                    json:
                        #"{"type":"preheat","args":{"type":"image","url":"\#(manifest)","headers":{"Authorization":"Basic \#(basic)"}}}"#
                )
                let allowedID = try #require(allowed.json["id"].int, "\(allowed.text)")
                let done = try await PreheatJobTests().finished(allowedID, api: api, token: token)
                #expect(done.json["state"].string == "SUCCESS", "\(done.text)\n\(cluster.logs())")
                #expect(!done.text.contains("harbor-secret") && !done.text.contains(basic), "credentials never shown")
            }
        }
    }
}
