import AsyncHTTPClient
import DragonflyCore
import DragonflyTestSupport
import Foundation
import NIOCore
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
            let token = try #require(pat.object["token"] as? String)
            #expect(token.hasPrefix("dfp_"))
            #expect((pat.object["scopes"] as? [String]) == ["job"])

            // Harbor's body: integer nanosecond timeout, unknown fields, explicit cluster 1 (the default one).
            let body = """
                {"type":"preheat","args":{"type":"image","url":"http://127.0.0.1:1/v2/library/app/manifests/v1",
                "headers":{"Authorization":"Basic c2VjcmV0"},"scope":"single_peer","tag":"","filtered_query_params":"",
                "timeout":1000000000,"concurrent_count":3},"scheduler_cluster_ids":[1],"extra":true}
                """
            let created = try await api.call(.POST, "/oapi/v1/jobs", token: token, json: body)
            #expect(created.status == 200, "\(created.text)")
            let id = try #require(created.object["id"] as? Int)
            #expect(created.object["state"] as? String == "PENDING")
            #expect(Self.isRFC3339(created.object["created_at"]))
            let args = try #require(created.object["args"] as? [String: Any])
            #expect(args["scope"] as? String == "single_seed_peer", "single_peer is single_seed_peer")
            #expect((args["headers"] as? [String: String])?["Authorization"] == "<redacted>")

            // Nothing runs it here (no scheduler): it must end FAILURE at its 1 s timeout, with complete entries.
            var ended = APIAnswer(status: 0, text: "")
            try await poll(every: .milliseconds(200), timeLimit: .seconds(60), description: "job \(id) FAILURE") {
                ended = try await api.call(.GET, "/oapi/v1/jobs/\(id)", token: token)
                return ended.object["state"] as? String == "FAILURE"
            }
            let result = try #require(ended.object["result"] as? [String: Any])
            let states = try #require(result["job_states"] as? [[String: Any]])
            let results = try #require(states.first?["results"] as? [[String: Any]])
            #expect(results.count == 1)
            #expect(results.first?["scheduler_cluster_id"] as? Int == 1)
            #expect((results.first?["success_tasks"] as? [Any])?.isEmpty == true)
            let failures = try #require(results.first?["failure_tasks"] as? [[String: Any]])
            #expect(failures.first?["url"] as? String == "http://127.0.0.1:1/v2/library/app/manifests/v1")
            #expect((failures.first?["description"] as? String)?.contains("timed out") == true)

            // No cluster named and no active scheduler anywhere: FAILURE at once, saying why.
            let nowhere = try await api.call(
                .POST, "/oapi/v1/jobs", token: token,
                json:
                    #"{"type":"preheat","args":{"type":"file","urls":["http://127.0.0.1:1/f"]},"scheduler_cluster_ids":null}"#
            )
            #expect(nowhere.status == 200, "\(nowhere.text)")
            #expect(nowhere.object["state"] as? String == "FAILURE")
            #expect(nowhere.text.contains("no scheduler cluster has an active scheduler"))

            // The REST API lists both; the audit log recorded who created them.
            let jobs = try await api.call(.GET, "/api/v1/jobs", token: session)
            #expect(jobs.array.count == 2)
            let audit = try await api.call(.GET, "/api/v1/audit-logs", token: session)
            let actions = audit.array.compactMap { $0["action"] as? String }
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
            #expect(wrong.object["message"] as? String != nil)

            // Expired: 403 once its time has passed.
            let shortLived = try await api.createToken(session, scopes: ["job"], expiresIn: 2)
            var expired = APIAnswer(status: 0, text: "")
            try await poll(every: .milliseconds(200), timeLimit: .seconds(30), description: "the token expired") {
                expired = try await api.call(.GET, "/oapi/v1/jobs", token: shortLived)
                return expired.status == 403
            }
            #expect((expired.object["message"] as? String)?.contains("expired") == true)
        }
    }

    @Test func guestsOnlyReadAndBadInputIsNamed() async throws {
        try await withManager(.sqlite) { api in
            let root = try await api.signIn("root", Self.rootPassword)
            let created = try await api.call(
                .POST, "/api/v1/users", token: root,
                json: #"{"name":"viewer","password":"viewer-password","role":"guest"}"#)
            #expect(created.status == 201, "\(created.text)")
            #expect(created.object["password"] == nil && created.object["password_hash"] == nil)
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
            #expect((malformed.object["message"] as? String)?.contains("JSON") == true, "\(malformed.text)")
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
            #expect((cluster.object["scopes"] as? [String: Any])?["cidrs"] as? [String] == ["10.1.0.0/16"])
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
                let api = try APIClient(ready)
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
                let api = try APIClient(ready)
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
                        let apiA = try APIClient(try await first.awaitReady(timeLimit: .seconds(60)))
                        defer { apiA.shutdown() }
                        let apiB = try APIClient(try await second.awaitReady(timeLimit: .seconds(60)))
                        defer { apiB.shutdown() }
                        let session = try await apiA.signIn("root", Self.rootPassword)
                        let users = try await apiB.call(.GET, "/api/v1/users", token: session)
                        #expect(users.status == 200, "\(users.text)")
                        #expect(users.array.count == 1, "one root user, however many replicas started")
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

    func withManager(_ backend: TestBackend, _ body: (APIClient) async throws -> Void) async throws {
        let environment = ["DRAGONFLY_INITIAL_ROOT_PASSWORD": Self.rootPassword]
        try await withTemporaryDirectory { dir in
            switch backend {
            case .sqlite:
                try await withDragonfly(Self.arguments(dir), environment: environment) { process in
                    let api = try APIClient(try await process.awaitReady(timeLimit: .seconds(60)))
                    defer { api.shutdown() }
                    try await body(api)
                }
            case .postgres:
                try await withPostgres { pg in
                    try await withDragonfly(Self.arguments(dir) + ["--database", pg.url], environment: environment) {
                        process in
                        let api = try APIClient(try await process.awaitReady(timeLimit: .seconds(60)))
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

    static func isRFC3339(_ value: Any?) -> Bool {
        guard let text = value as? String else { return false }
        return (try? Date(text, strategy: .iso8601)) != nil
    }
}

/// A JSON answer.
struct APIAnswer: Sendable {
    var status: Int
    var text: String

    var object: [String: Any] {
        (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any] ?? [:]
    }

    var array: [[String: Any]] {
        (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [[String: Any]] ?? []
    }
}

/// Talks to a manager's HTTP listener.
struct APIClient: Sendable {
    let base: String
    let client = HTTPClient(eventLoopGroupProvider: .singleton)

    init(_ ready: ReadyFile) throws {
        let address = try #require(ready.address(of: "http"))
        base = "http://\(address.host):\(address.port)"
    }

    func shutdown() {
        try? client.syncShutdown()
    }

    func call(_ method: HTTPMethod, _ path: String, token: String? = nil, json: String? = nil) async throws
        -> APIAnswer
    {
        var request = HTTPClientRequest(url: base + path)
        request.method = method
        if let token { request.headers.add(name: "Authorization", value: "Bearer \(token)") }
        if let json {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(string: json))
        }
        let response = try await client.execute(request, timeout: .seconds(30))
        let body = try await response.body.collect(upTo: 1 << 20)
        return APIAnswer(status: Int(response.status.code), text: String(buffer: body))
    }

    func signIn(_ name: String, _ password: String) async throws -> String {
        let answer = try await call(
            .POST, "/api/v1/users/signin", json: #"{"name":"\#(name)","password":"\#(password)"}"#)
        try #require(answer.status == 200, "sign-in: \(answer.status) \(answer.text)")
        #expect(ManagerAPITests.isRFC3339(answer.object["expire"]))
        return try #require(answer.object["token"] as? String)
    }

    func createToken(_ session: String, scopes: [String], expiresIn seconds: Double) async throws -> String {
        let scopesJSON = scopes.map { "\"\($0)\"" }.joined(separator: ",")
        let answer = try await call(
            .POST, "/api/v1/personal-access-tokens", token: session,
            json:
                #"{"name":"t\#(UInt32.random(in: 0 ... .max))","scopes":[\#(scopesJSON)],"expired_at":"\#(ManagerAPITests.rfc3339(in: seconds))"}"#
        )
        try #require(answer.status == 201, "token: \(answer.status) \(answer.text)")
        return try #require(answer.object["token"] as? String)
    }
}
