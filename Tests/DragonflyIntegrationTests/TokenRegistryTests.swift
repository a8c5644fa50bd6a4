import Crypto
import DragonflyTestSupport
import Foundation
import Hummingbird
import JWTKit
import Logging
import NIOCore
import ServiceLifecycle
import SwiftASN1
import Testing
import X509

/// The daemon's registry mirror (DESIGN §8) in front of a real docker-registry that wants bearer tokens
/// (distribution's `auth: token`), with a real token server run by the test: challenges pass through
/// unchanged, and an authorised pull through the mirror goes P2P with the client's token reaching the registry.
@Suite(
    .serialized,
    .enabled("needs docker-registry, skopeo and umoci (scripts/install-deps)") {
        dockerRegistryUnavailableReason() == nil
    }
)
struct TokenRegistryTests {
    static let user = "alice"
    static let password = "s3cret pass"

    static func digest(of bytes: [UInt8]) -> String {
        "sha256:" + SHA256.hash(data: bytes).map { String(format: "%02x", $0) }.joined()
    }

    @Test(.timeLimit(.minutes(5)))
    func challengesPassThroughAndAnAuthorisedPullGoesP2PThroughTwoDaemons() async throws {
        let layer = try P2PTests.randomBytes(12 << 20)
        try await TokenServer.run(user: Self.user, password: Self.password) { tokens in
            try await withDockerRegistry(credentials: (Self.user, Self.password), tokenAuth: tokens.registryAuth) {
                registry in
                let blobs = try await registry.pushImage(repository: "test/tok", tag: "v1", layerFile: layer)
                #expect(blobs.count >= 2, "a manifest names a config and a layer")
                let pushTokens = await tokens.log.entries
                #expect(
                    pushTokens.contains {
                        $0.granted && $0.scopes.contains { $0.hasSuffix(":push,pull") || $0.hasSuffix(":pull,push") }
                    }, "\(pushTokens)")
                let yaml = ProxyTests.daemonYAML(mirror: registry.baseURL)
                try await withP2PCluster(schedulers: 1, seeds: 0, daemons: 2, daemonConfigYAML: yaml) { cluster in
                    let mirror = "http://" + (try ProxyTests.proxy(of: cluster.daemons[0]))
                    // (a) Without a token: the registry's own challenge, for the ping (direct) and for each blob
                    // (a P2P task whose origin answers 401).
                    for path in ["/v2/"] + blobs.map({ "/v2/test/tok/blobs/\($0)" }) {
                        let direct = try await curlRequest(registry.baseURL + path)
                        let viaMirror = try await curlRequest(mirror + path)
                        #expect(direct.status == 401, "\(path) direct")
                        #expect(viaMirror.status == 401, "\(path) via the mirror\n\(cluster.logs())")
                        let challenge = direct.header("WWW-Authenticate")
                        #expect(
                            challenge?.hasPrefix("Bearer realm=\"\(tokens.realm)\"") == true,
                            "\(path): \(challenge ?? "none")")
                        #expect(viaMirror.header("WWW-Authenticate") == challenge, "\(path)")
                        // The ping is forwarded; a blob GET is a P2P task whose origin answered 401.
                        #expect((viaMirror.header("X-Dragonfly-Task-ID") != nil) == path.contains("/blobs/"), "\(path)")
                    }

                    // (b) skopeo with credentials through each daemon: it gets a token from the token server
                    // (the realm of the challenge the mirror passed on) and sends it with every request. skopeo
                    // never sends `--src-creds` to a registries.conf mirror (they name the primary), so the first
                    // daemon is a mirror with the credentials in an auth file, as podman or CRI-O would have it,
                    // and the second is the registry skopeo names, with `--src-creds`.
                    let primary = "127.0.0.1:\(try freeLoopbackPort())"
                    let credentials = "\(Self.user):\(Self.password)"
                    for (index, daemon) in cluster.daemons.enumerated() {
                        let before = await tokens.log.entries.count
                        let proxy = try ProxyTests.proxy(of: daemon)
                        let output = cluster.directory.appending("\(daemon.name)-image")
                        var arguments: [String]
                        if index == 0 {
                            let conf = try cluster.directory.writeFile(
                                "\(daemon.name)-registries.conf",
                                text: RegistryMirrorTests.registriesConf(primary: primary, mirror: proxy))
                            let auth = Data(credentials.utf8).base64EncodedString()
                            let authFile = try cluster.directory.writeFile(
                                "\(daemon.name)-auth.json", text: #"{"auths": {"\#(proxy)": {"auth": "\#(auth)"}}}"#)
                            arguments = [
                                "--registries-conf", conf, "copy", "--src-tls-verify=false", "--src-authfile", authFile,
                                "docker://\(primary)/test/tok:v1",
                            ]
                        } else {
                            arguments = [
                                "copy", "--src-tls-verify=false", "--src-creds", credentials,
                                "docker://\(proxy)/test/tok:v1",
                            ]
                        }
                        let copy = try await runOCITool(skopeoPath, arguments + ["dir:\(output)"])
                        #expect(
                            copy.succeeded,
                            "\(daemon): skopeo \(copy.status): \(copy.standardError)\n\(cluster.logs())")
                        let pulled = blobs.filter {
                            FileManager.default.fileExists(atPath: output + "/" + $0.dropFirst("sha256:".count))
                        }
                        #expect(pulled.count >= 2, "\(daemon): pulled \(pulled) of \(blobs)")
                        for blob in pulled {
                            #expect(
                                RegistryMirrorTests.digest(ofFile: output + "/" + blob.dropFirst("sha256:".count))
                                    == blob,
                                "\(daemon): \(blob) differs")
                        }
                        #expect(try await ProxyTests.proxyRequests(cluster, daemon, route: "p2p") >= 2)
                        let issued = await tokens.log.entries.dropFirst(before)
                        #expect(
                            issued.contains { $0.granted && $0.scopes == ["repository:test/tok:pull"] },
                            "\(daemon): tokens issued \(Array(issued))")
                    }

                    // Every authorised blob GET reached the registry with a token, and each blob left it about
                    // once (the second daemon got it from the first).
                    let requests = registry.requests()
                    let firstOutput = cluster.directory.appending("\(cluster.daemons[0].name)-image")
                    var checked = 0
                    for blob in blobs {
                        let file = firstOutput + "/" + blob.dropFirst("sha256:".count)
                        guard let size = (try? FileManager.default.attributesOfItem(atPath: file))?[.size] as? Int
                        else { continue }
                        let gets = requests.filter {
                            $0.method == "GET" && $0.uri.hasPrefix("/v2/test/tok/blobs/\(blob)") && $0.status < 300
                        }
                        let written = gets.reduce(0) { $0 + $1.bytesWritten }
                        #expect(written >= size, "\(blob): the registry wrote only \(written) of \(size) bytes")
                        #expect(
                            written <= size + size / 50 + 1024,
                            "\(blob): the registry wrote \(written) of \(size) bytes")
                        checked += 1
                    }
                    #expect(checked >= 2, "checked \(checked) blobs in the registry log")
                    #expect(try await cluster.downloadBytes(of: cluster.daemons[1], source: .origin) == 0)

                    // (c) Both daemons now hold every blob, read with credentials, so private: a client without a
                    // token still gets the registry's challenge, never the cached bytes; one with a pull token
                    // gets them (the daemon asked the registry with a HEAD each time).
                    let basic = Data("\(Self.user):\(Self.password)".utf8).base64EncodedString()
                    let tokenAnswer = try await curlRequest(
                        tokens.realm + "?service=\(TokenServer.service)&scope=repository:test/tok:pull",
                        headers: [("Authorization", "Basic \(basic)")])
                    #expect(tokenAnswer.status == 200)
                    let token = try JSONDecoder().decode(TokenServer.TokenResponse.self, from: Data(tokenAnswer.body))
                        .token
                    for daemon in cluster.daemons {
                        let mirror = "http://" + (try ProxyTests.proxy(of: daemon))
                        // (The manifest's digest is among `blobs` but is no blob: only those skopeo wrote count.)
                        for blob in blobs
                        where FileManager.default.fileExists(
                            atPath: firstOutput + "/" + blob.dropFirst("sha256:".count))
                        {
                            let path = "/v2/test/tok/blobs/\(blob)"
                            let refused = try await curlRequest(mirror + path)
                            #expect(refused.status == 401, "\(daemon) \(path): a cached private blob was served")
                            #expect(refused.header("WWW-Authenticate")?.hasPrefix("Bearer realm=") == true)
                            let allowed = try await curlRequest(
                                mirror + path, headers: [("Authorization", "Bearer \(token)")])
                            #expect(allowed.status == 200, "\(daemon) \(path)")
                            #expect(Self.digest(of: allowed.body) == blob, "\(daemon) \(path)")
                        }
                    }
                    // The checks were HEADs: no blob left the registry again.
                    let blobGETs = registry.requests().filter {
                        $0.method == "GET" && $0.uri.contains("/blobs/") && $0.status < 300
                    }
                    #expect(
                        blobGETs.count
                            == requests.filter {
                                $0.method == "GET" && $0.uri.contains("/blobs/") && $0.status < 300
                            }.count)
                }
            }
        }
    }
}

/// A token server for distribution's token authentication, run in the test with Hummingbird: `GET /token`
/// with basic credentials answers `{"token": …}`, a JWT (ES256) whose header carries the signing certificate
/// (`x5c`), which the registry checks against its `rootcertbundle`; the claims grant every scope asked for.
/// Wrong or missing credentials get 401.
struct TokenServer: Sendable {
    static let service = "dragonfly-test-registry"
    static let issuer = "dragonfly-test-token-server"

    /// The token endpoint, `http://127.0.0.1:<port>/token`.
    let realm: String
    /// The self-signed certificate of the signing key, PEM.
    let certificatePEM: String
    /// Every token request answered.
    let log: TokenLog

    /// What the registry needs to know of this server.
    var registryAuth: RegistryTokenAuth {
        RegistryTokenAuth(
            realm: realm, service: Self.service, issuer: Self.issuer, rootCertificatesPEM: certificatePEM)
    }

    /// One answered token request.
    struct Entry: Sendable, CustomStringConvertible {
        var granted: Bool
        var scopes: [String]
        var description: String { "\(granted ? "granted" : "refused") \(scopes)" }
    }

    actor TokenLog {
        private(set) var entries: [Entry] = []
        func add(_ entry: Entry) { entries.append(entry) }
    }

    /// The claims distribution reads (`registry/auth/token`): integer times, one audience, `access` entries.
    struct Claims: JWTPayload {
        struct Access: Codable, Sendable {
            var type: String
            var name: String
            var actions: [String]
        }
        var iss: String
        var sub: String
        var aud: String
        var exp: Int
        var nbf: Int
        var iat: Int
        var jti: String
        var access: [Access]

        func verify(using algorithm: some JWTAlgorithm) async throws {}
    }

    /// The `/token` response body.
    struct TokenResponse: Codable {
        var token: String
        var access_token: String
        var expires_in: Int
    }

    /// `type:name:actions` (the name may hold colons, e.g. a registry host with a port).
    static func access(ofScope scope: String) -> Claims.Access? {
        guard let first = scope.firstIndex(of: ":"), let last = scope.lastIndex(of: ":"), first < last else {
            return nil
        }
        return Claims.Access(
            type: String(scope[..<first]),
            name: String(scope[scope.index(after: first)..<last]),
            actions: scope[scope.index(after: last)...].split(separator: ",").map(String.init))
    }

    /// A P-256 key's self-signed certificate, valid for an hour either side of now.
    static func selfSignedCertificate(for key: P256.Signing.PrivateKey) throws -> String {
        let name = try DistinguishedName { CommonName("dragonfly test token issuer") }
        let now = Date()
        let certificate = try Certificate(
            version: .v3,
            serialNumber: Certificate.SerialNumber(),
            publicKey: Certificate.PublicKey(key.publicKey),
            notValidBefore: now.addingTimeInterval(-3600),
            notValidAfter: now.addingTimeInterval(3600),
            issuer: name,
            subject: name,
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.isCertificateAuthority(maxPathLength: nil))
                KeyUsage(digitalSignature: true, keyCertSign: true)
            },
            issuerPrivateKey: Certificate.PrivateKey(key))
        return try certificate.serializeAsPEM().pemString
    }

    /// Starts the server on a free loopback port, runs `body`, and shuts the server down gracefully.
    static func run<Value: Sendable>(
        user: String, password: String, _ body: (TokenServer) async throws -> Value
    ) async throws -> Value {
        let key = P256.Signing.PrivateKey()
        let certificatePEM = try selfSignedCertificate(for: key)
        let keys = JWTKeyCollection()
        await keys.add(ecdsa: try ES256PrivateKey(backing: key))
        let log = TokenLog()
        let expected = "Basic " + Data("\(user):\(password)".utf8).base64EncodedString()

        let router = Router()
        router.get("/token") { request, _ -> Response in
            let scopes = request.uri.queryParameters[values: "scope"].map(String.init)
            guard request.headers[.authorization] == expected else {
                await log.add(Entry(granted: false, scopes: scopes))
                return Response(
                    status: .unauthorized, headers: [.wwwAuthenticate: "Basic realm=\"dragonfly-test-token\""])
            }
            let now = Int(Date().timeIntervalSince1970)
            let claims = Claims(
                iss: issuer, sub: user, aud: service, exp: now + 300, nbf: now - 10, iat: now,
                jti: UUID().uuidString, access: scopes.compactMap(access(ofScope:)))
            var header = JWTHeader()
            header.x5c = [certificatePEM]
            let token = try await keys.sign(claims, header: header)
            await log.add(Entry(granted: true, scopes: scopes))
            let json = try JSONEncoder().encode(TokenResponse(token: token, access_token: token, expires_in: 300))
            return Response(
                status: .ok, headers: [.contentType: "application/json"],
                body: ResponseBody(byteBuffer: ByteBuffer(bytes: json)))
        }
        let (ports, portContinuation) = AsyncStream.makeStream(of: Int.self)
        let logger = Logger(label: "dragonfly-test-token-server")
        let app = Application(
            router: router,
            configuration: .init(address: .hostname("127.0.0.1", port: 0)),
            onServerRunning: { channel in
                portContinuation.yield(channel.localAddress?.port ?? 0)
                portContinuation.finish()
            },
            logger: logger)
        let group = ServiceGroup(services: [app], logger: logger)
        return try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask {
                defer { portContinuation.finish() }
                try await group.run()
            }
            do {
                var iterator = ports.makeAsyncIterator()
                guard let port = await iterator.next(), port > 0 else {
                    throw TestFailure("the token server did not start")
                }
                let server = TokenServer(
                    realm: "http://127.0.0.1:\(port)/token", certificatePEM: certificatePEM, log: log)
                let value = try await body(server)
                await group.triggerGracefulShutdown()
                try await tasks.waitForAll()
                return value
            } catch {
                await group.triggerGracefulShutdown()
                try? await tasks.waitForAll()
                throw error
            }
        }
    }

    struct TestFailure: Error, CustomStringConvertible {
        var description: String
        init(_ description: String) { self.description = description }
    }
}
