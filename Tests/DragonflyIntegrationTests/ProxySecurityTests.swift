import Crypto
import DragonflyCore
import DragonflyTestSupport
import Foundation
import Testing

/// Hostile clients of the daemon's proxy (issue 12 findings 4–7, 9, 11; issue 13 point 2), each replaying its
/// attack against real processes: a `dragonfly` scheduler and daemon and an nginx origin, all on 127.0.0.1.
/// Every daemon's registry mirror points at a loopback address, never at a public registry. The origins are on
/// loopback, which the proxy refuses by default: a test that needs the origin allows `127.0.0.1` in
/// `proxy.allowedDestinations`, and the SSRF test shows the same requests refused without it.
@Suite(.serialized)
struct ProxySecurityTests {
    static func proxy(of cluster: P2PCluster) throws -> String {
        try ProxyTests.proxy(of: cluster.daemons[0])
    }

    static func basic(_ credentials: String) -> String {
        "Basic " + Data(credentials.utf8).base64EncodedString()
    }

    /// The first line of a raw answer.
    static func statusLine(_ bytes: [UInt8]) -> String {
        // "\r\n" is one Character: split on it, not on "\r".
        String(decoding: bytes, as: UTF8.self).split(separator: "\r\n", maxSplits: 1).first.map(String.init) ?? ""
    }

    // MARK: Finding 7: proxy authentication and SSRF

    @Test(.timeLimit(.minutes(3)))
    func mirrorRequestsNeedProxyAuthenticationAndReachOnlyListedRegistries() async throws {
        try await withNginxOrigin { origin in
            try origin.writeFile("admin.html", contents: Array("<p>internal admin</p>\n".utf8))
            try origin.writeFile("v2/x/manifests/latest", contents: Array("{}".utf8))
            // The origin is even an allowed destination: mirror requests still may not name it.
            let yaml = ProxyTests.daemonYAML("  basicAuth:\n    username: alice\n    password: pw\n")
            try await withP2PCluster(schedulers: 1, seeds: 0, daemons: 1, daemonConfigYAML: yaml) { cluster in
                let base = "http://" + (try Self.proxy(of: cluster))
                let registry = ("X-Dragonfly-Registry", origin.baseURL)
                let auth = ("Proxy-Authorization", Self.basic("alice:pw"))
                // No credentials: 407 for every form, the mirror's included.
                let anonymous = try await ProxyTests.send(base + "/admin.html", via: nil, headers: [registry])
                #expect(anonymous.status == 407)
                #expect(anonymous.header("Proxy-Authenticate") == "Basic realm=\"dragonfly\"")
                let anonymousV2 = try await ProxyTests.send(
                    base + "/v2/x/manifests/latest", via: nil, headers: [registry])
                #expect(anonymousV2.status == 407)
                // With credentials: an unlisted registry (header or ns) is refused, whatever the path.
                let named = try await ProxyTests.send(
                    base + "/v2/x/manifests/latest", via: nil, headers: [registry, auth])
                #expect(named.status == 403)
                #expect(String(decoding: named.body, as: UTF8.self).contains("proxy.registryMirror.allowedRegistries"))
                let viaNs = try await ProxyTests.send(
                    base + "/v2/x/manifests/latest?ns=\(origin.authority)", via: nil, headers: [auth])
                #expect(viaNs.status == 403)
                // Only the registry API, only GET and HEAD.
                let outside = try await ProxyTests.send(base + "/admin.html", via: nil, headers: [auth])
                #expect(outside.status == 403)
                let dotted = try await ProxyTests.send(base + "/v2/%2e%2e/admin.html", via: nil, headers: [auth])
                #expect(dotted.status == 403 || dotted.status == 400)
                let post = try await ProxyTests.send(
                    base + "/v2/x/blobs/uploads/", via: nil, method: "POST", headers: [auth], body: Array("x".utf8))
                #expect(post.status == 405)
                let reached = try origin.accessLog().map(\.uri)
                #expect(reached.isEmpty, "the origin was reached: \(reached)")
            }
        }
    }

    @Test(.timeLimit(.minutes(3)))
    func forwardsAndTunnelsToLoopbackAreRefusedUnlessAllowed() async throws {
        let page = Array("<p>loopback only</p>\n".utf8)
        try await withNginxOrigin { origin in
            try origin.writeFile("page.html", contents: page)
            try origin.writeFile("blob.bin", contents: page)
            // No allowedDestinations: loopback is refused. The mirror still points at loopback (it is a
            // registry the config lists, which the destination policy does not apply to).
            let yaml = "proxy:\n  registryMirror:\n    url: http://127.0.0.1:9\n"
            try await withP2PCluster(schedulers: 1, seeds: 0, daemons: 1, daemonConfigYAML: yaml) { cluster in
                let proxy = try Self.proxy(of: cluster)
                for url in [
                    origin.url(for: "page.html"), origin.url(for: "blob.bin"),
                    "http://localhost:\(origin.port)/page.html", "http://[::1]:\(origin.port)/page.html",
                    "http://[::ffff:127.0.0.1]:\(origin.port)/page.html", "http://0.0.0.0:\(origin.port)/page.html",
                ] {
                    let answer = try await ProxyTests.send(url, via: proxy)
                    #expect(answer.status == 403, "\(url): \(answer.status)")
                    let text = String(decoding: answer.body, as: UTF8.self)
                    #expect(text.contains("proxy.allowedDestinations"), "\(url): \(text)")
                    #expect(text.split(separator: "\n").count == 1, "\(text)")
                }
                let port = try #require(Int(proxy.split(separator: ":").last ?? ""))
                for authority in ["127.0.0.1:\(origin.port)", "localhost:\(origin.port)"] {
                    let tunnel = try await rawTCPExchange(
                        port: port, request: Array("CONNECT \(authority) HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
                    #expect(Self.statusLine(tunnel) == "HTTP/1.1 403 Forbidden", "\(authority)")
                }
                let reached = try origin.accessLog().map(\.uri)
                #expect(reached.isEmpty, "the origin was reached: \(reached)")
            }
        }
    }

    // MARK: Finding 6: identity headers and joining a task

    /// An origin whose `app.bin?v=old` is an older, different object than `app.bin`.
    static let versionedLocation = """
        location = /app.bin {
                    if ($arg_v = "old") { rewrite ^ /app-old.bin break; }
                }
        """

    @Test(.timeLimit(.minutes(3)))
    func identityHeadersOfAnUntrustedClientAreRefused() async throws {
        let current = try P2PTests.randomBytes(1 << 20)
        let old = try P2PTests.randomBytes((1 << 20) + 7)
        try await withNginxOrigin(serverConfiguration: Self.versionedLocation) { origin in
            try origin.writeFile("app.bin", contents: current)
            try origin.writeFile("app-old.bin", contents: old)
            try await withP2PCluster(
                schedulers: 1, seeds: 0, daemons: 1, daemonConfigYAML: ProxyTests.daemonYAML()
            ) { cluster in
                let proxy = try Self.proxy(of: cluster)
                // The attack: store the old object under app.bin's task ID.
                for header in [
                    ("X-Dragonfly-Filtered-Query-Params", "v"), ("X-Dragonfly-Tag", "x"),
                    ("X-Dragonfly-Application", "y"),
                ] {
                    let poisoning = try await ProxyTests.send(
                        origin.url(for: "app.bin?v=old"), via: proxy, headers: [header])
                    #expect(poisoning.status == 403, "\(header.0): \(poisoning.status)")
                    #expect(String(decoding: poisoning.body, as: UTF8.self).contains("proxy.trustedIdentityHeaders"))
                }
                let victim = try await ProxyTests.send(origin.url(for: "app.bin"), via: proxy)
                #expect(victim.status == 200)
                #expect(victim.body == current, "the victim got other bytes than app.bin's")
            }
        }
    }

    @Test(.timeLimit(.minutes(3)))
    func aTrustedClientJoinsATaskOnlyWithTheSameContent() async throws {
        let current = try P2PTests.randomBytes(1 << 20)
        let old = try P2PTests.randomBytes((1 << 20) + 7)
        try await withNginxOrigin(serverConfiguration: Self.versionedLocation) { origin in
            try origin.writeFile("app.bin", contents: current)
            try origin.writeFile("app-old.bin", contents: old)
            let yaml = ProxyTests.daemonYAML("  trustedIdentityHeaders: ['127.0.0.0/8']\n")
            try await withP2PCluster(schedulers: 1, seeds: 0, daemons: 1, daemonConfigYAML: yaml) { cluster in
                let proxy = try Self.proxy(of: cluster)
                let filter = ("X-Dragonfly-Filtered-Query-Params", "v")
                // A trusted client stores the old object under app.bin's ID (its own choice)…
                let first = try await ProxyTests.send(origin.url(for: "app.bin?v=old"), via: proxy, headers: [filter])
                #expect(first.status == 200, "\(cluster.logs())")
                #expect(first.body == old)
                #expect(first.header("X-Dragonfly-Task-ID") == TaskID.make(url: origin.url(for: "app.bin")).rawValue)
                // …but a request for app.bin itself does not get those bytes: its URL names other content.
                let victim = try await ProxyTests.send(origin.url(for: "app.bin"), via: proxy)
                #expect(victim.status == 409, "\(victim.status)")
                #expect(victim.body != old)
                // A URL that names the same content (nginx ignores the query here) joins the task.
                let same = try await ProxyTests.send(
                    origin.url(for: "app-old.bin?v=1"), via: proxy, headers: [filter])
                #expect(same.status == 200)
                #expect(same.body == old)
                let joined = try await ProxyTests.send(
                    origin.url(for: "app-old.bin?v=2"), via: proxy, headers: [filter])
                #expect(joined.status == 200)
                #expect(joined.body == old)
            }
        }
    }

    // MARK: Finding 4: task-ID collision

    /// `/private/` answers only `Authorization: Bearer good`.
    static let privateLocations = """
        location /private/ {
                    if ($http_authorization != "Bearer good") { return 401; }
                }
                location = /auth/blob.bin {
                    if ($http_authorization != "Bearer good") { return 401; }
                    return 302 /signed/blob.bin?sig=presigned;
                }
        """

    @Test(.timeLimit(.minutes(3)))
    func aTagThatCollidesWithAPrivateTaskDoesNotServeIt() async throws {
        let secret = try P2PTests.randomBytes(3 << 20)
        try await withNginxOrigin(serverConfiguration: Self.privateLocations) { origin in
            try origin.writeFile("private/blob.bin", contents: secret)
            try origin.writeFile("index.html", contents: Array("<p>public</p>\n".utf8))
            // The tag is honoured (a trusted client), so only the task's recorded URL stands between the
            // collision and the private bytes.
            let yaml = ProxyTests.daemonYAML("  trustedIdentityHeaders: ['127.0.0.1']\n")
            try await withP2PCluster(schedulers: 1, seeds: 0, daemons: 1, daemonConfigYAML: yaml) { cluster in
                let proxy = try Self.proxy(of: cluster)
                let privateURL = origin.url(for: "private/blob.bin")
                #expect(
                    TaskID.make(url: origin.baseURL + "/", tag: "/private/blob.bin") == TaskID.make(url: privateURL))
                let owner = try await ProxyTests.send(
                    privateURL, via: proxy, headers: [("Authorization", "Bearer good")])
                #expect(owner.status == 200, "\(cluster.logs())")
                #expect(owner.body == secret)
                let tokenless = try await ProxyTests.send(privateURL, via: proxy)
                #expect(tokenless.status == 401)
                // The collision: `http://origin/` + tag `/private/blob.bin`, forced P2P.
                let collision = try await ProxyTests.send(
                    origin.baseURL + "/", via: proxy,
                    headers: [("X-Dragonfly-Tag", "/private/blob.bin"), ("X-Dragonfly-Use-P2P", "true")])
                #expect(collision.status == 409, "the collision was answered \(collision.status)")
                #expect(collision.body != secret, "the private blob reached a client without a token")
            }
        }
    }

    // MARK: Finding 5: the redirect cache

    @Test(.timeLimit(.minutes(3)))
    func aRedirectLearntWithCredentialsIsNotFollowedWithoutThem() async throws {
        let secret = try P2PTests.randomBytes(2 << 20)
        try await withNginxOrigin(serverConfiguration: Self.privateLocations) { origin in
            try origin.writeFile("signed/blob.bin", contents: secret)
            let yaml = ProxyTests.daemonYAML("  trustedIdentityHeaders: ['127.0.0.1']\n")
            try await withP2PCluster(schedulers: 1, seeds: 0, daemons: 1, daemonConfigYAML: yaml) { cluster in
                let proxy = try Self.proxy(of: cluster)
                let url = origin.url(for: "auth/blob.bin")
                let owner = try await ProxyTests.send(url, via: proxy, headers: [("Authorization", "Bearer good")])
                #expect(owner.status == 200, "\(cluster.logs())")
                #expect(owner.body == secret)
                // A new task (another tag) without the token: the origin is asked again and refuses.
                let tokenless = try await ProxyTests.send(url, via: proxy, headers: [("X-Dragonfly-Tag", "fresh")])
                #expect(tokenless.status == 401, "\(tokenless.status)")
                #expect(tokenless.body != secret)
                // The owner's own later tasks still work.
                let again = try await ProxyTests.send(
                    url, via: proxy, headers: [("Authorization", "Bearer good"), ("X-Dragonfly-Tag", "again")])
                #expect(again.status == 200)
                #expect(again.body == secret)
            }
        }
    }

    // MARK: Finding 11: connection and tunnel limits

    @Test(.timeLimit(.minutes(3)))
    func silentTunnelsAndHalfSentHeadsAreClosedAndFreeTheirSlots() async throws {
        let page = Array("<p>still served</p>\n".utf8)
        try await withNginxOrigin { origin in
            try origin.writeFile("page.html", contents: page)
            let yaml = ProxyTests.daemonYAML(
                "  maxConcurrentRequests: 3\n  tunnelIdleTimeout: 2s\n  headerTimeout: 2s\n  idleTimeout: 5m\n")
            try await withP2PCluster(schedulers: 1, seeds: 0, daemons: 1, daemonConfigYAML: yaml) { cluster in
                let proxy = try Self.proxy(of: cluster)
                let port = try #require(Int(proxy.split(separator: ":").last ?? ""))
                let connect = Array("CONNECT \(origin.authority) HTTP/1.1\r\nHost: x\r\n\r\n".utf8)
                try await withThrowingTaskGroup(of: [UInt8].self) { group in
                    // Three silent tunnels take every slot.
                    for _ in 0..<3 {
                        group.addTask {
                            try await rawTCPExchange(port: port, request: connect, timeLimit: .seconds(60))
                        }
                    }
                    try await poll(every: .milliseconds(50), timeLimit: .seconds(20), description: "3 tunnels") {
                        try await ProxyTests.proxyRequests(cluster, cluster.daemons[0], route: "tunnel") >= 3
                    }
                    // A client is served again once they time out (before the timeout, it may get 429).
                    try await poll(every: .milliseconds(200), timeLimit: .seconds(30), description: "served") {
                        try await ProxyTests.send(origin.url(for: "page.html"), via: proxy).status == 200
                    }
                    for try await answer in group {
                        #expect(Self.statusLine(answer) == "HTTP/1.1 200 Connection Established")
                    }
                }
                // A head that never ends is closed by the header timeout (the idle timeout is 5 minutes).
                let half = Array("GET \(origin.url(for: "page.html")) HTTP/1.1\r\nHost: x\r\n".utf8)
                let cut = try await rawTCPExchange(port: port, request: half, timeLimit: .seconds(30))
                #expect(!Self.statusLine(cut).hasPrefix("HTTP/1.1 2"))
                let silent = try await rawTCPExchange(port: port, request: [], timeLimit: .seconds(30))
                #expect(silent.isEmpty)
            }
        }
    }

    // MARK: Issue 13 point 2: a client that goes away

    @Test(.timeLimit(.minutes(3)))
    func aClientThatGoesAwayFreesItsSlotAtOnce() async throws {
        let slow = try P2PTests.randomBytes(8 << 20)
        try await withNginxOrigin { origin in
            try origin.writeFile("slow.bin", contents: slow)
            try origin.writeFile("page.html", contents: Array("<p>next</p>\n".utf8))
            let yaml = ProxyTests.daemonYAML("  maxConcurrentRequests: 1\n")
            try await withP2PCluster(schedulers: 1, seeds: 0, daemons: 1, daemonConfigYAML: yaml) { cluster in
                let proxy = try Self.proxy(of: cluster)
                // 8 KiB/s per range request: a first piece would take minutes. The client gives up after 2 s.
                let url = origin.rateLimitedURL(for: "slow.bin", bytesPerSecond: 8 << 10)
                let impatient = try? await curlRequest(url, proxy: proxy, timeLimit: .seconds(2))
                #expect(impatient?.status != 200 || impatient?.body.count != slow.count)
                #expect(try await ProxyTests.proxyRequests(cluster, cluster.daemons[0], route: "p2p") == 1)
                // Its slot is free long before the piece arrives.
                try await poll(every: .milliseconds(200), timeLimit: .seconds(20), description: "slot free") {
                    try await ProxyTests.send(origin.url(for: "page.html"), via: proxy).status == 200
                }
            }
        }
    }

    // MARK: Finding 9: secrets in answers

    @Test(.timeLimit(.minutes(3)))
    func errorAnswersNameNoQueryValuesOrUserinfo() async throws {
        try await withNginxOrigin { origin in
            try await withP2PCluster(
                schedulers: 1, seeds: 0, daemons: 1, daemonConfigYAML: ProxyTests.daemonYAML()
            ) { cluster in
                let proxy = try Self.proxy(of: cluster)
                // An origin error of a P2P task (the message names the URL).
                let missing = try await ProxyTests.send(
                    origin.url(for: "missing.bin?token=SECRET-QUERY-VALUE"), via: proxy)
                #expect(missing.status == 404)
                let missingText = String(decoding: missing.body, as: UTF8.self)
                #expect(!missingText.contains("SECRET-QUERY-VALUE"), "\(missingText)")
                // A forward that cannot connect (the message names the host).
                let closed = try freeLoopbackPort()
                let unreachable = try await ProxyTests.send(
                    "http://user:SECRET-PASSWORD@127.0.0.1:\(closed)/x?sig=SECRET-SIG", via: proxy)
                #expect(unreachable.status == 502)
                let unreachableText = String(decoding: unreachable.body, as: UTF8.self)
                #expect(!unreachableText.contains("SECRET-PASSWORD"), "\(unreachableText)")
                #expect(!unreachableText.contains("SECRET-SIG"), "\(unreachableText)")
            }
        }
    }
}
