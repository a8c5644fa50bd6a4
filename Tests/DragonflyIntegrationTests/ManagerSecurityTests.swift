import AsyncHTTPClient
import Crypto
import DragonflyCore
import DragonflyProto
import DragonflyRPC
import DragonflyTestSupport
import Foundation
import GRPCCore
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import Testing

/// The manager against hostile callers on 127.0.0.1 (issue "Security, part 1", findings 8–12): a real
/// `dragonfly manager` process, its gRPC control plane, its REST API and its files.
@Suite(.serialized, .timeLimit(.minutes(5)))
struct ManagerSecurityTests {
    static let rootPassword = "root-password-for-tests"
    static let clusterSecret = "cluster-secret-for-tests-0123456789abcdef"
    static let logger = Logger(label: "manager-security-test")

    /// The configuration every test starts from: a cluster secret, a small connection cap and idle timeout, a
    /// low sign-in failure limit and a small member table.
    static let configYAML = """
        security:
          clusterSecret: \(clusterSecret)
        api:
          maxConnections: 64
          idleTimeout: 1s
          signInFailures: 3
        keepAlive:
          maxMembers: 3
          timeout: 10m
        """

    struct Manager {
        var process: DragonflyProcess
        var api: ManagerAPIClient
        var grpc: String
        var http: (host: String, port: Int)
        var dataDirectory: String
    }

    /// Runs a manager with SQLite in `dir/data` and `yaml` as its config file.
    func withManager(
        _ yaml: String = configYAML,
        environment: [String: String] = [:],
        _ body: (Manager) async throws -> Void
    ) async throws {
        try await withTemporaryDirectory { dir in
            let config = try dir.writeFile("manager.yaml", text: yaml)
            let data = dir.appending("data")
            let arguments = [
                "manager", "--config", config, "--data-dir", data, "--listen", "127.0.0.1:0", "--grpc-listen",
                "127.0.0.1:0",
            ]
            var environment = environment
            environment["DRAGONFLY_INITIAL_ROOT_PASSWORD"] = Self.rootPassword
            try await withDragonfly(arguments, environment: environment) { process in
                let ready = try await process.awaitReady(timeLimit: .seconds(60))
                let api = try ManagerAPIClient(ready)
                defer { api.shutdown() }
                let grpc = try #require(ready.listeners["grpc"])
                let http = try #require(ready.address(of: "http"))
                try await body(
                    Manager(process: process, api: api, grpc: grpc, http: http, dataDirectory: data))
            }
        }
    }

    /// A gRPC Manager client, sending the cluster secret `secret` when given.
    func withManagerClient<Value: Sendable>(
        _ target: String,
        secret: String?,
        _ body: (Dragonfly_V1_Manager.Client<RPCClientTransport>) async throws -> Value
    ) async throws -> Value {
        let interceptors: [any ClientInterceptor] =
            if let secret, let clusterSecret = ClusterSecret(secret: secret) {
                [ClusterSecretClientInterceptor(secret: clusterSecret)]
            } else {
                []
            }
        return try await withRPCClient(
            target: target, options: RPCClientOptions(defaultTimeout: .seconds(30)), interceptors: interceptors,
            logger: Self.logger
        ) { client in
            try await body(Dragonfly_V1_Manager.Client(wrapping: client))
        }
    }

    static func schedulerRequest(_ hostname: String, ip: String = "127.0.0.1") -> Dragonfly_V1_RegisterSchedulerRequest
    {
        var request = Dragonfly_V1_RegisterSchedulerRequest()
        request.hostname = hostname
        request.ip = ip
        request.port = 8002
        request.schedulerClusterID = 1
        return request
    }

    static func rpcCode(_ body: () async throws -> Void) async -> RPCError.Code? {
        do {
            try await body()
            return nil
        } catch let error as RPCError {
            return error.code
        } catch {
            return .unknown
        }
    }

    // MARK: Finding 8: the control plane needs the cluster secret

    @Test func registrationKeepAliveAndCommandChannelNeedTheClusterSecret() async throws {
        try await withManager { manager in
            // Without the secret, or with a wrong one: every call that changes state or reads jobs is refused.
            for secret in [nil, "wrong-secret-0123456789abcdef0123456789"] {
                try await withManagerClient(manager.grpc, secret: secret) { client in
                    #expect(
                        await Self.rpcCode { _ = try await client.registerScheduler(Self.schedulerRequest("evil")) }
                            == .permissionDenied)
                    var seed = Dragonfly_V1_RegisterSeedPeerRequest()
                    seed.hostname = "evil-seed"
                    seed.ip = "127.0.0.1"
                    seed.port = 4000
                    #expect(await Self.rpcCode { _ = try await client.registerSeedPeer(seed) } == .permissionDenied)
                    #expect(
                        await Self.rpcCode {
                            _ = try await client.keepAlive(requestProducer: { writer in
                                var message = Dragonfly_V1_KeepAliveRequest()
                                message.sourceType = .scheduler
                                message.id = 1
                                try await writer.write(message)
                            })
                        } == .permissionDenied)
                    #expect(
                        await Self.rpcCode {
                            try await client.commandChannel(
                                requestProducer: { writer in
                                    var start = Dragonfly_V1_CommandChannelRequest()
                                    start.start.hostname = "evil"
                                    start.start.ip = "127.0.0.1"
                                    start.start.schedulerClusterID = 1
                                    try await writer.write(start)
                                },
                                onResponse: { response in
                                    for try await _ in response.messages {}
                                })
                        } == .permissionDenied)
                    #expect(
                        await Self.rpcCode {
                            var request = Dragonfly_V1_ListSeedPeersRequest()
                            request.schedulerClusterID = 1
                            _ = try await client.listSeedPeers(request)
                        } == .permissionDenied)
                    #expect(
                        await Self.rpcCode { _ = try await client.getClusterConfig(.init()) } == .permissionDenied)
                    // Discovery stays open to daemons: it changes nothing.
                    var list = Dragonfly_V1_ListSchedulersRequest()
                    list.sourceType = .peer
                    list.ip = "127.0.0.1"
                    list.hostname = "daemon"
                    let listed = try await client.listSchedulers(list)
                    #expect(listed.schedulers.isEmpty)
                }
            }
            let session = try await manager.api.signIn("root", Self.rootPassword)
            let none = try await manager.api.call(.GET, "/api/v1/schedulers", token: session)
            #expect(none.json.array?.isEmpty == true, "a refused registration leaves no row: \(none.text)")

            // With the secret: the scheduler registers, opens its command channel and receives the job.
            try await withManagerClient(manager.grpc, secret: Self.clusterSecret) { client in
                // Channels that close at once (the dispatcher is cancelled mid-transaction) leave the store usable.
                for _ in 0..<2 {
                    try await client.commandChannel(
                        requestProducer: { writer in
                            var start = Dragonfly_V1_CommandChannelRequest()
                            start.start.hostname = "sched-1"
                            start.start.ip = "127.0.0.1"
                            start.start.schedulerClusterID = 1
                            try await writer.write(start)
                        },
                        onResponse: { response in
                            for try await _ in response.messages {}
                        })
                }
                let info = try await client.registerScheduler(Self.schedulerRequest("sched-1"))
                #expect(info.state == .active)
                let (received, receivedContinuation) = AsyncStream<Void>.makeStream()
                let job = try await client.commandChannel(
                    requestProducer: { writer in
                        var start = Dragonfly_V1_CommandChannelRequest()
                        start.schedulerID = info.id
                        start.start.hostname = "sched-1"
                        start.start.ip = "127.0.0.1"
                        start.start.schedulerClusterID = 1
                        try await writer.write(start)
                        // Keep the channel open until the job arrived.
                        for await _ in received {}
                    },
                    onResponse: { response -> Dragonfly_V1_Job? in
                        let created = try await manager.api.call(
                            .POST, "/api/v1/jobs", token: session,
                            json:
                                #"{"type":"preheat","args":{"type":"file","url":"http://127.0.0.1:1/f"},"scheduler_cluster_ids":[1]}"#
                        )
                        #expect(created.status == 201, "\(created.text)")
                        defer { receivedContinuation.finish() }
                        for try await message in response.messages {
                            if case .job(let job)? = message.response { return job }
                        }
                        return nil
                    })
                #expect(job != nil, "a scheduler with the secret receives the cluster's jobs")
            }
        }
    }

    // MARK: Finding 9: no credentials in job answers

    @Test func aPreheatJobsCredentialsNeverAppearInItsAnswers() async throws {
        try await withManager { manager in
            let session = try await manager.api.signIn("root", Self.rootPassword)
            let token = try await manager.api.createToken(session, scopes: ["job"], expiresIn: 3600)
            let secrets = ["sig-secret-1", "userinfo-secret-2", "apikey-secret-3", "bearer-secret-4", "pw-secret-5"]
            let body = """
                {"type":"preheat","args":{"type":"file","urls":["http://127.0.0.1:1/a?X-Amz-Signature=sig-secret-1",
                "http://user:userinfo-secret-2@127.0.0.1:1/b"],"headers":{"X-Api-Key":"apikey-secret-3",
                "Authorization":"Bearer bearer-secret-4","Accept":"application/octet-stream"},
                "password":"pw-secret-5","timeout":500000000},"scheduler_cluster_ids":[1]}
                """
            let created = try await manager.api.call(.POST, "/oapi/v1/jobs", token: token, json: body)
            #expect(created.status == 200, "\(created.text)")
            let id = try #require(created.json["id"].int)
            // Nobody runs it: it ends FAILURE at its timeout, with both URLs in its failure entries.
            var ended = ManagerAPIAnswer()
            try await poll(every: .milliseconds(200), timeLimit: .seconds(60), description: "job \(id) FAILURE") {
                ended = try await manager.api.call(.GET, "/oapi/v1/jobs/\(id)", token: token)
                return ended.json["state"].string == "FAILURE"
            }
            #expect(ended.json["result"]["job_states"][0]["results"][0]["failure_tasks"].array?.count == 2)
            let answers = [
                created, ended,
                try await manager.api.call(.GET, "/api/v1/jobs/\(id)", token: session),
                try await manager.api.call(.GET, "/api/v1/jobs", token: session),
                try await manager.api.call(.GET, "/oapi/v1/jobs", token: token),
            ]
            for answer in answers {
                #expect(answer.status == 200)
                for secret in secrets { #expect(!answer.text.contains(secret), "\(secret) in \(answer.text)") }
            }
            // What is not secret stays readable.
            #expect(ended.json["args"]["headers"]["Accept"].string == "application/octet-stream")
            #expect(ended.text.contains("X-Amz-Signature=REDACTED"))
            let logs = manager.process.stderrText() + manager.process.stdoutText()
            for secret in secrets { #expect(!logs.contains(secret), "\(secret) in the manager's logs") }
        }
    }

    // MARK: Finding 10: private state; the signing key cannot be read

    @Test func theDatabaseAndTheSigningKeyAreReadableByTheManagerOnly() async throws {
        try await withManager { manager in
            let session = try await manager.api.signIn("root", Self.rootPassword)
            #expect(try await manager.api.call(.GET, "/api/v1/users", token: session).status == 200)
            let data = manager.dataDirectory
            #expect(try Self.mode(of: data) == 0o700)
            for name in ["manager.db", "manager.db-wal", "manager.db-shm", "session.key"]
            where FileManager.default.fileExists(atPath: data + "/" + name) {
                #expect(try Self.mode(of: data + "/" + name) == 0o600, "\(name)")
            }
            let files = ["manager.db", "manager.db-wal"].map { data + "/" + $0 }
            // As root: the database holds no signing key in clear (every 64-hex string in it fails to sign).
            let asRoot = try await runTool("/usr/bin/cat", files)
            #expect(asRoot.standardOutput.contains("jwt.signing_key.sealed"), "the sealed key is in the database")
            for key in Self.hexKeys(in: asRoot.standardOutput) {
                let forged = try Self.forgedRootSession(key: key)
                #expect(try await manager.api.call(.GET, "/api/v1/users", token: forged).status == 401)
            }
            guard getuid() == 0 else { return }
            // As nobody: nothing of the data directory can be read, and a session forged with anything read fails.
            let asNobody = try await runTool(
                "/usr/bin/setpriv",
                ["--reuid=nobody", "--regid=nogroup", "--clear-groups", "/usr/bin/cat"] + files
                    + [data + "/session.key"])
            #expect(!asNobody.succeeded)
            #expect(asNobody.standardOutput.isEmpty, "nobody read \(asNobody.standardOutput.utf8.count) bytes")
            for key in Self.hexKeys(in: asNobody.standardOutput) + ["guess"] {
                let forged = try Self.forgedRootSession(key: key)
                #expect(try await manager.api.call(.GET, "/api/v1/users", token: forged).status == 401)
            }
        }
    }

    @Test func postgresKeepsTheSigningKeySealedWithTheConfiguredKey() async throws {
        try await withPostgres { pg in
            try await withTemporaryDirectory { dir in
                let base = [
                    "manager", "--database", pg.url, "--listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0",
                ]
                let environment = ["DRAGONFLY_INITIAL_ROOT_PASSWORD": Self.rootPassword]
                // Without an encryption key the key is in clear: the forgery works (this proves the forging).
                try await withDragonfly(base + ["--data-dir", dir.appending("a")], environment: environment) {
                    process in
                    let api = try ManagerAPIClient(try await process.awaitReady(timeLimit: .seconds(60)))
                    defer { api.shutdown() }
                    let clear = try await pg.psql("select value from settings where key = 'jwt.signing_key'")
                    let key = clear.trimmingCharacters(in: .whitespacesAndNewlines)
                    #expect(key.count == 64)
                    let forged = try Self.forgedRootSession(key: key)
                    #expect(try await api.call(.GET, "/api/v1/users", token: forged).status == 200)
                }
                // With one, the next start seals it and removes the clear copy; old sessions stay valid.
                let sealedEnvironment = environment.merging([
                    "DRAGONFLY_MANAGER_ENCRYPTION_KEY": "an-encryption-key-for-tests-0123456789abcdef"
                ]) { $1 }
                try await withDragonfly(base + ["--data-dir", dir.appending("b")], environment: sealedEnvironment) {
                    process in
                    let api = try ManagerAPIClient(try await process.awaitReady(timeLimit: .seconds(60)))
                    defer { api.shutdown() }
                    let rows = try await pg.psql("select key, value from settings where key like 'jwt.%'")
                    #expect(!rows.contains("jwt.signing_key|"), "\(rows)")
                    #expect(rows.contains("jwt.signing_key.sealed"))
                    for key in Self.hexKeys(in: rows) {
                        let forged = try Self.forgedRootSession(key: key)
                        #expect(try await api.call(.GET, "/api/v1/users", token: forged).status == 401)
                    }
                    let session = try await api.signIn("root", Self.rootPassword)
                    #expect(try await api.call(.GET, "/api/v1/users", token: session).status == 200)
                }
                // A replica with another key refuses to start instead of minting its own.
                let other = environment.merging([
                    "DRAGONFLY_MANAGER_ENCRYPTION_KEY": "another-key-that-does-not-match-0123456789"
                ]) { $1 }
                let result = try await runDragonfly(base + ["--data-dir", dir.appending("c")], environment: other)
                #expect(result.exitCode == 1)
                #expect(result.stderr.contains("sealed with another encryption key"), "\(result.stderr)")
            }
        }
    }

    // MARK: Finding 11: connection cap, idle timeout, sign-in throttling

    @Test func idleConnectionsBeyondTheCapDoNotStarveTheAPI() async throws {
        try await withManager { manager in
            let baseline = try Self.openDescriptors(manager.process.pid)
            let channels = try await Self.openIdleConnections(64 + 50, to: manager.http)
            defer { for channel in channels { channel.close(promise: nil) } }
            // The manager holds at most the cap at once, and closes idle connections on its own.
            var peak = 0
            try await poll(every: .milliseconds(100), timeLimit: .seconds(60), description: "idle connections closed") {
                peak = max(peak, try Self.openDescriptors(manager.process.pid))
                return channels.allSatisfy { !$0.isActive }
            }
            #expect(peak <= baseline + 64 + 16, "descriptors: \(baseline) at start, \(peak) at the peak")
            #expect(try await manager.api.call(.GET, "/healthy").status == 200)
        }
    }

    @Test func signInFailuresAreThrottledPerUserAndAddress() async throws {
        try await withManager { manager in
            let url = manager.api.base + "/api/v1/users/signin"
            func signIn(_ name: String, _ password: String) async throws -> (status: Int, retryAfter: String?) {
                var request = HTTPClientRequest(url: url)
                request.method = .POST
                request.headers.add(name: "Content-Type", value: "application/json")
                request.body = .bytes(ByteBuffer(string: #"{"name":"\#(name)","password":"\#(password)"}"#))
                let response = try await HTTPClient.shared.execute(request, timeout: .seconds(30))
                _ = try await response.body.collect(upTo: 1 << 20)
                return (Int(response.status.code), response.headers.first(name: "Retry-After"))
            }
            for _ in 0..<3 { #expect(try await signIn("root", "wrong-password").status == 401) }
            // The limit is reached: even the right password waits now, and is told how long.
            let throttled = try await signIn("root", Self.rootPassword)
            #expect(throttled.status == 429)
            #expect(Int(throttled.retryAfter ?? "") ?? 0 >= 1, "Retry-After: \(throttled.retryAfter ?? "none")")
            // The same address guessing another user's password waits too.
            #expect(try await signIn("someone-else", "wrong-password").status == 429)
        }
    }

    // MARK: Finding 12: member rows are bounded, lists paginated

    @Test func memberRowsAreBoundedAndListedByPage() async throws {
        try await withManager { manager in
            try await withManagerClient(manager.grpc, secret: Self.clusterSecret) { client in
                var registered: [UInt64] = []
                for index in 1...3 {
                    registered.append(try await client.registerScheduler(Self.schedulerRequest("sched-\(index)")).id)
                }
                let ids = registered
                // The table is full of active schedulers: a fourth is refused, saying why.
                let refused = await #expect(throws: RPCError.self) {
                    _ = try await client.registerScheduler(Self.schedulerRequest("sched-4"))
                }
                #expect(refused?.code == .resourceExhausted)
                // A registered one registers again (same row) without being refused.
                #expect(try await client.registerScheduler(Self.schedulerRequest("sched-2")).id == ids[1])
                // sched-1 ends its keep-alive stream: it is inactive, and a new scheduler takes its place.
                _ = try await client.keepAlive(requestProducer: { writer in
                    var message = Dragonfly_V1_KeepAliveRequest()
                    message.sourceType = .scheduler
                    message.id = ids[0]
                    message.hostname = "sched-1"
                    message.ip = "127.0.0.1"
                    try await writer.write(message)
                })
                let session = try await manager.api.signIn("root", Self.rootPassword)
                try await poll(every: .milliseconds(100), timeLimit: .seconds(30), description: "sched-1 inactive") {
                    let all = try await manager.api.call(.GET, "/api/v1/schedulers", token: session)
                    return (all.json.array ?? []).contains {
                        $0["id"].int == Int(ids[0]) && $0["state"].string == "inactive"
                    }
                }
                let fourth = try await client.registerScheduler(Self.schedulerRequest("sched-4"))
                let all = try await manager.api.call(.GET, "/api/v1/schedulers", token: session)
                let names = (all.json.array ?? []).compactMap { $0["hostname"].string }
                #expect(names == ["sched-2", "sched-3", "sched-4"], "\(all.text)")
                #expect(fourth.state == .active)
                // Lists come by page.
                let first = try await manager.api.call(.GET, "/api/v1/schedulers?per_page=2", token: session)
                #expect(first.json.array?.compactMap { $0["hostname"].string } == ["sched-2", "sched-3"])
                let second = try await manager.api.call(.GET, "/api/v1/schedulers?per_page=2&page=2", token: session)
                #expect(second.json.array?.compactMap { $0["hostname"].string } == ["sched-4"])
                let bad = try await manager.api.call(.GET, "/api/v1/seed-peers?per_page=100000", token: session)
                #expect(bad.status == 400)
            }
        }
    }

    // MARK: Helpers

    static func mode(of path: String) throws -> Int {
        var info = stat()
        guard lstat(path, &info) == 0 else { throw POSIXError(.ENOENT) }
        return Int(info.st_mode & 0o777)
    }

    /// Every run of exactly 64 lowercase hex digits in `text`.
    static func hexKeys(in text: String) -> [String] {
        var keys: Set<String> = []
        var run = ""
        for character in text + " " {
            if character.isHexDigit && !character.isUppercase {
                run.append(character)
            } else {
                if run.count == 64 { keys.insert(run) }
                run = ""
            }
        }
        return keys.sorted()
    }

    /// An HS256 session token for user 1 (`root`) signed with `key` as the manager's JWT library would.
    static func forgedRootSession(key: String) throws -> String {
        func base64URL(_ bytes: some Sequence<UInt8>) -> String {
            Data(bytes).base64EncodedString().replacingOccurrences(of: "+", with: "-")
                .replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
        }
        let now = Int(Date().timeIntervalSince1970)
        let header = base64URL(Array(#"{"alg":"HS256","typ":"JWT"}"#.utf8))
        let payload = base64URL(Array(#"{"sub":"1","exp":\#(now + 3600),"iat":\#(now),"name":"root"}"#.utf8))
        let signature = HMAC<SHA256>.authenticationCode(
            for: Array("\(header).\(payload)".utf8), using: SymmetricKey(data: Array(key.utf8)))
        return "\(header).\(payload).\(base64URL(Array(signature)))"
    }

    static func openDescriptors(_ pid: Int32) throws -> Int {
        try FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count
    }

    /// Opens `count` TCP connections to `address` that never send a byte.
    static func openIdleConnections(_ count: Int, to address: (host: String, port: Int)) async throws -> [any Channel] {
        var channels: [any Channel] = []
        for _ in 0..<count {
            channels.append(
                try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                    .connect(host: address.host, port: address.port).get())
        }
        return channels
    }
}
