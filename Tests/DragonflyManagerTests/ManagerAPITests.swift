import DragonflyCore
import DragonflyTestSupport
import Foundation
import NIOHTTP1
import Testing

/// The REST API (`/api/v1`) and the open API (`/oapi/v1`, Harbor's contract) of a real `dragonfly manager`
/// process, on SQLite and on a real PostgreSQL (DESIGN §10).
@Suite(.serialized, .timeLimit(.minutes(5)))
struct ManagerAPITests {
    static let rootPassword = "root-password-for-tests"

    @Test(arguments: TestBackend.allCases)
    func harborPreheatFlowAndJobTimeout(_ backend: TestBackend) async throws {
        try await withManager(backend) { api in
            #expect(try await api.call(.GET, "/healthy").status == 200)
            let session = try await api.signIn("root", Self.rootPassword)
            let pat = try await api.call(
                .POST, "/api/v1/personal-access-tokens", token: session,
                json: #"{"name":"harbor","scopes":["job"],"expired_at":"\#(Self.rfc3339(in: 3600))"}"#)
            try #require(pat.status == 201, "\(pat.text)")
            let token = try #require(pat.json["token"].string)
            #expect(token.hasPrefix("dfp_"))
            #expect(pat.json["scopes"].array?.compactMap(\.string) == ["job"])

            // Harbor's body: integer nanosecond timeout, unknown fields, explicit cluster 1 (the default one).
            let body = """
                {"type":"preheat","args":{"type":"image","url":"http://127.0.0.1:1/v2/library/app/manifests/v1",
                "headers":{"Authorization":"Basic c2VjcmV0"},"scope":"single_peer","tag":"","filtered_query_params":"",
                "timeout":1000000000,"concurrent_count":3},"scheduler_cluster_ids":[1],"extra":true}
                """
            let created = try await api.call(.POST, "/oapi/v1/jobs", token: token, json: body)
            #expect(created.status == 200, "\(created.text)")
            let id = try #require(created.json["id"].int)
            #expect(created.json["state"].string == "PENDING")
            #expect(Self.isRFC3339(created.json["created_at"].string))
            let args = created.json["args"]
            #expect(args["scope"].string == "single_seed_peer", "single_peer is single_seed_peer")
            #expect(args["headers"]["Authorization"].string == "REDACTED")

            // Nothing runs it here (no scheduler): it must end FAILURE at its 1 s timeout, with complete entries.
            var ended = ManagerAPIAnswer(status: 0, text: "")
            try await poll(every: .milliseconds(200), timeLimit: .seconds(60), description: "job \(id) FAILURE") {
                ended = try await api.call(.GET, "/oapi/v1/jobs/\(id)", token: token)
                return ended.json["state"].string == "FAILURE"
            }
            let results = try #require(ended.json["result"]["job_states"][0]["results"].array)
            #expect(results.count == 1)
            #expect(results.first?["scheduler_cluster_id"].int == 1)
            #expect(results.first?["success_tasks"].array?.isEmpty == true)
            let failures = try #require(results.first?["failure_tasks"].array)
            #expect(failures.first?["url"].string == "http://127.0.0.1:1/v2/library/app/manifests/v1")
            #expect(failures.first?["description"].string?.contains("timed out") == true)

            // No cluster named and no active scheduler anywhere: FAILURE at once, saying why.
            let nowhere = try await api.call(
                .POST, "/oapi/v1/jobs", token: token,
                json:
                    #"{"type":"preheat","args":{"type":"file","urls":["http://127.0.0.1:1/f"]},"scheduler_cluster_ids":null}"#
            )
            #expect(nowhere.status == 200, "\(nowhere.text)")
            #expect(nowhere.json["state"].string == "FAILURE")
            #expect(nowhere.text.contains("no scheduler cluster has an active scheduler"))

            // The REST API lists both; the audit log recorded who created them.
            let jobs = try await api.call(.GET, "/api/v1/jobs", token: session)
            #expect(jobs.json.array?.count == 2)
            let audit = try await api.call(.GET, "/api/v1/audit-logs", token: session)
            let actions = (audit.json.array ?? []).compactMap { $0["action"].string }
            #expect(actions.filter { $0 == "job.create" }.count == 2)
            #expect(actions.contains("token.create"))
        }
    }

    @Test(arguments: TestBackend.allCases)
    func tokensAreCheckedBeforeTheBody(_ backend: TestBackend) async throws {
        try await withManager(backend) { api in
            let session = try await api.signIn("root", Self.rootPassword)
            let job = #"{"type":"preheat","args":{"type":"file","url":"http://127.0.0.1:1/f"}}"#
            // Missing and unknown tokens: 401, whatever the body (even none, even malformed).
            #expect(try await api.call(.POST, "/oapi/v1/jobs", json: job).status == 401)
            #expect(try await api.call(.POST, "/oapi/v1/jobs", json: "{not json").status == 401)
            #expect(try await api.call(.POST, "/oapi/v1/jobs", token: "dfp_0123", json: job).status == 401)
            #expect(try await api.call(.GET, "/oapi/v1/jobs/1", token: session).status == 401, "a session is no PAT")
            #expect(try await api.call(.POST, "/api/v1/clusters", json: "{not json").status == 401)
            #expect(try await api.call(.GET, "/api/v1/users", token: "not.a.jwt").status == 401)

            // Wrong scope: 403.
            let clusterOnly = try await api.createToken(session, scopes: ["cluster"], expiresIn: 3600)
            let wrong = try await api.call(.POST, "/oapi/v1/jobs", token: clusterOnly, json: job)
            #expect(wrong.status == 403)
            #expect(wrong.json["message"].string != nil)

            // Expired: 403 once its time has passed.
            let shortLived = try await api.createToken(session, scopes: ["job"], expiresIn: 2)
            var expired = ManagerAPIAnswer(status: 0, text: "")
            try await poll(every: .milliseconds(200), timeLimit: .seconds(30), description: "the token expired") {
                expired = try await api.call(.GET, "/oapi/v1/jobs", token: shortLived)
                return expired.status == 403
            }
            #expect(expired.json["message"].string?.contains("expired") == true)
        }
    }

    @Test func guestsOnlyReadAndBadInputIsNamed() async throws {
        try await withManager(.sqlite) { api in
            let root = try await api.signIn("root", Self.rootPassword)
            let created = try await api.call(
                .POST, "/api/v1/users", token: root,
                json: #"{"name":"viewer","password":"viewer-password","role":"guest"}"#)
            #expect(created.status == 201, "\(created.text)")
            #expect(created.json["password"].isNull && created.json["password_hash"].isNull)
            #expect(
                try await api.call(.POST, "/api/v1/users/signin", json: #"{"name":"viewer","password":"nope-nope"}"#)
                    .status == 401)
            let guest = try await api.signIn("viewer", "viewer-password")

            #expect(try await api.call(.GET, "/api/v1/jobs", token: guest).status == 200)
            #expect(try await api.call(.GET, "/api/v1/clusters", token: guest).status == 200)
            let job =
                #"{"type":"preheat","args":{"type":"file","url":"http://127.0.0.1:1/f"},"scheduler_cluster_ids":[1]}"#
            #expect(try await api.call(.POST, "/api/v1/jobs", token: guest, json: job).status == 403)
            #expect(try await api.call(.POST, "/api/v1/clusters", token: guest, json: #"{"name":"x"}"#).status == 403)
            #expect(try await api.call(.POST, "/api/v1/personal-access-tokens", token: guest, json: "{}").status == 403)

            // Malformed JSON, a missing field, a wrong type, a bad value: 400 naming the problem.
            let malformed = try await api.call(.POST, "/api/v1/clusters", token: root, json: #"{"name": "#)
            #expect(malformed.status == 400)
            #expect(malformed.json["message"].string?.contains("JSON") == true, "\(malformed.text)")
            let missing = try await api.call(.POST, "/api/v1/clusters", token: root, json: #"{"bio":"b"}"#)
            #expect(missing.status == 400 && missing.text.contains("name"), "\(missing.text)")
            let wrongType = try await api.call(
                .POST, "/api/v1/clusters", token: root, json: #"{"name":"c","scopes":{"cidrs":"10.0.0.0/8"}}"#)
            #expect(wrongType.status == 400 && wrongType.text.contains("scopes.cidrs"), "\(wrongType.text)")
            let badCIDR = try await api.call(
                .POST, "/api/v1/clusters", token: root, json: #"{"name":"c","scopes":{"cidrs":["10.0.0.0/40"]}}"#)
            #expect(badCIDR.status == 400 && badCIDR.text.contains("10.0.0.0/40"), "\(badCIDR.text)")
            let badScope = try await api.call(
                .POST, "/api/v1/jobs", token: root,
                json: #"{"type":"preheat","args":{"type":"file","url":"http://h/f","scope":"everyone"}}"#)
            #expect(badScope.status == 400 && badScope.text.contains("args.scope"), "\(badScope.text)")

            // A cluster, then the same name again: 409; an unknown ID: 404.
            let cluster = try await api.call(
                .POST, "/api/v1/clusters", token: root,
                json: #"{"name":"east","scopes":{"cidrs":["10.1.0.0/16"],"hostnames":["^edge-.*"]},"config":{}}"#)
            #expect(cluster.status == 201, "\(cluster.text)")
            #expect(cluster.json["scopes"]["cidrs"].array?.compactMap(\.string) == ["10.1.0.0/16"])
            #expect(try await api.call(.POST, "/api/v1/clusters", token: root, json: #"{"name":"east"}"#).status == 409)
            #expect(try await api.call(.GET, "/api/v1/clusters/9999", token: root).status == 404)
            #expect(try await api.call(.GET, "/api/v1/clusters/abc", token: root).status == 400)
        }
    }

    @Test func aGeneratedRootPasswordIsPrintedOnceAndWorks() async throws {
        try await withTemporaryDirectory { dir in
            let arguments = Self.arguments(dir)
            let password = try await withDragonfly(arguments) { process in
                let ready = try await process.awaitReady(timeLimit: .seconds(60))
                let api = try ManagerAPIClient(ready)
                defer { api.shutdown() }
                let line = try #require(
                    process.stderrText().split(separator: "\n").first { $0.contains("created user root") })
                let password = try #require(line.split(separator: " ").dropFirst(7).first.map(String.init))
                _ = try await api.signIn("root", password)
                try process.signal(.terminate)
                #expect(try await process.waitForExit(timeLimit: .seconds(10)) == .exited(0))
                return password
            }
            try await withDragonfly(arguments) { process in
                let ready = try await process.awaitReady(timeLimit: .seconds(60))
                let api = try ManagerAPIClient(ready)
                defer { api.shutdown() }
                #expect(!process.stderrText().contains("created user root"), "printed only at the first start")
                _ = try await api.signIn("root", password)
                try process.signal(.terminate)
                #expect(try await process.waitForExit(timeLimit: .seconds(10)) == .exited(0))
            }
        }
    }

    @Test func replicasAcceptEachOthersSessions() async throws {
        try await withPostgres { pg in
            try await withTemporaryDirectory { dir in
                let environment = ["DRAGONFLY_INITIAL_ROOT_PASSWORD": Self.rootPassword]
                let a = Self.arguments(dir, data: "a") + ["--database", pg.url]
                let b = Self.arguments(dir, data: "b") + ["--database", pg.url]
                try await withDragonfly(a, environment: environment) { first in
                    try await withDragonfly(b, environment: environment) { second in
                        let apiA = try ManagerAPIClient(try await first.awaitReady(timeLimit: .seconds(60)))
                        defer { apiA.shutdown() }
                        let apiB = try ManagerAPIClient(try await second.awaitReady(timeLimit: .seconds(60)))
                        defer { apiB.shutdown() }
                        let session = try await apiA.signIn("root", Self.rootPassword)
                        let users = try await apiB.call(.GET, "/api/v1/users", token: session)
                        #expect(users.status == 200, "\(users.text)")
                        #expect(users.json.array?.count == 1, "one root user, however many replicas started")
                    }
                }
            }
        }
    }

    // MARK: Harness

    static func arguments(_ dir: TemporaryDirectory, data: String = "data") -> [String] {
        [
            "manager", "--data-dir", dir.appending(data), "--listen", "127.0.0.1:0", "--grpc-listen",
            "127.0.0.1:0",
        ]
    }

    func withManager(_ backend: TestBackend, _ body: (ManagerAPIClient) async throws -> Void) async throws {
        let environment = ["DRAGONFLY_INITIAL_ROOT_PASSWORD": Self.rootPassword]
        try await withTemporaryDirectory { dir in
            switch backend {
            case .sqlite:
                try await withDragonfly(Self.arguments(dir), environment: environment) { process in
                    let api = try ManagerAPIClient(try await process.awaitReady(timeLimit: .seconds(60)))
                    defer { api.shutdown() }
                    try await body(api)
                }
            case .postgres:
                try await withPostgres { pg in
                    try await withDragonfly(Self.arguments(dir) + ["--database", pg.url], environment: environment) {
                        process in
                        let api = try ManagerAPIClient(try await process.awaitReady(timeLimit: .seconds(60)))
                        defer { api.shutdown() }
                        try await body(api)
                    }
                }
            }
        }
    }

    static func rfc3339(in seconds: Double) -> String {
        Date().addingTimeInterval(seconds).formatted(.iso8601)
    }

    static func isRFC3339(_ text: String?) -> Bool {
        guard let text else { return false }
        return (try? Date(text, strategy: .iso8601)) != nil
    }
}
