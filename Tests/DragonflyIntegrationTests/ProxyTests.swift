import Crypto
import DragonflyCore
import DragonflyTestSupport
import Foundation
import Testing

/// The daemon's HTTP proxy (DESIGN §8) end to end: real `dragonfly` scheduler and daemons, a real nginx
/// origin, requests sent through the proxy by curl (absolute-URI requests, as `HTTP_PROXY` clients send
/// them) and raw sockets. Assertions are on what a client sees and on the origin's access log.
@Suite(.serialized)
struct ProxyTests {
    /// Sends one request with curl, through `proxy` (`IP:port`) when given.
    static func send(
        _ url: String, via proxy: String?, method: String = "GET", headers: [(String, String)] = [],
        body: [UInt8]? = nil
    ) async throws -> CurlAnswer {
        try await curlRequest(url, proxy: proxy, method: method, headers: headers, body: body)
    }

    /// A daemon config for proxy tests: the loopback origins the tests use are allowed destinations (the
    /// proxy refuses loopback otherwise), and the registry mirror's default upstream is `mirror`, a loopback
    /// address (never a public registry); `proxyLines` are more `proxy` keys, each indented two spaces.
    static func daemonYAML(_ proxyLines: String = "", mirror: String = "http://127.0.0.1:9", extra: String = "")
        -> String
    {
        "proxy:\n  allowedDestinations: ['127.0.0.1', '::1']\n  registryMirror:\n    url: \(mirror)\n" + proxyLines
            + extra
    }

    static func proxy(of node: ClusterNode) throws -> String {
        try #require(node.address(of: "proxy"))
    }

    /// `dragonfly_daemon_proxy_requests_total{route}` of a daemon.
    static func proxyRequests(_ cluster: P2PCluster, _ node: ClusterNode, route: String) async throws -> Int {
        let metrics = try await cluster.metrics(of: node)
        return Int(metrics.value(node.metricPrefix + "proxy_requests_total", labels: ["route": route]) ?? 0)
    }

    @Test(.timeLimit(.minutes(4)))
    func getThroughTheProxyGoesP2PAndTheOriginServesTheFileOnce() async throws {
        let size = 24 << 20
        let blob = try P2PTests.randomBytes(size)
        let digest = SHA256.hash(data: blob)
        try await withNginxOrigin { origin in
            try origin.writeFile("blob.bin", contents: blob)
            let url = origin.url(for: "blob.bin")
            try await withP2PCluster(
                schedulers: 1, seeds: 0, daemons: 2, daemonConfigYAML: Self.daemonYAML()
            ) { cluster in
                let (first, second) = (cluster.daemons[0], cluster.daemons[1])
                // `Connection: close` (as Go clients send it): the connection closes only once every byte left.
                for (node, close) in [(first, false), (second, true), (first, true)] {
                    let answer = try await Self.send(
                        url, via: try Self.proxy(of: node), headers: close ? [("Connection", "close")] : [])
                    #expect(answer.status == 200, "\(node)\n\(cluster.logs())")
                    #expect(answer.header("Content-Length") == String(size))
                    #expect(answer.header("X-Dragonfly-Task-ID") == TaskID.make(url: url).rawValue)
                    #expect(answer.body.count == size)
                    #expect(SHA256.hash(data: answer.body) == digest, "\(node): wrong bytes")
                }
                let sent = try origin.accessLog().filter { $0.uri == "/blob.bin" }.reduce(0) { $0 + $1.bytesSent }
                #expect(Double(sent) <= 1.02 * Double(size), "nginx sent \(sent) bytes for a \(size)-byte file")
                #expect(try await cluster.downloadBytes(of: second, source: .peer) >= size)
                #expect(try await cluster.downloadBytes(of: second, source: .origin) == 0)
                #expect(try await Self.proxyRequests(cluster, first, route: "p2p") == 2)
                #expect(try await Self.proxyRequests(cluster, second, route: "p2p") == 1)
                let served = try await cluster.metrics(of: first).value(
                    first.metricPrefix + "proxy_response_bytes_total", labels: ["route": "p2p"])
                #expect(served == Double(2 * size))
            }
        }
    }

    @Test(.timeLimit(.minutes(4)))
    func otherRequestsAreForwardedAndOriginErrorsPassThrough() async throws {
        let blob = try P2PTests.randomBytes(1 << 20)
        try await withNginxOrigin { origin in
            try origin.writeFile("blob.bin", contents: blob)
            try origin.writeFile("page.html", contents: Array("<p>hello</p>\n".utf8))
            try await withP2PCluster(
                schedulers: 1, seeds: 0, daemons: 1, daemonConfigYAML: Self.daemonYAML()
            ) { cluster in
                let daemon = cluster.daemons[0]
                let proxy = try Self.proxy(of: daemon)
                do {
                    // Not matched by a rule: forwarded as it is, no task.
                    let page = try await Self.send(origin.url(for: "page.html"), via: proxy)
                    #expect(page.status == 200)
                    #expect(page.body == Array("<p>hello</p>\n".utf8))
                    #expect(page.header("X-Dragonfly-Task-ID") == nil)
                    #expect(page.header("Content-Type") == "text/html")
                    // HEAD and POST of a P2P-ruled URL go direct with the origin's answer.
                    let head = try await Self.send(origin.url(for: "blob.bin"), via: proxy, method: "HEAD")
                    #expect(head.status == 200)
                    #expect(head.header("Content-Length") == String(blob.count))
                    #expect(head.body.isEmpty)
                    let post = try await Self.send(
                        origin.url(for: "blob.bin"), via: proxy, method: "POST", body: Array("data".utf8))
                    #expect(post.status == 405)
                    // Origin errors, direct and P2P, keep their status; the P2P ones name their task.
                    for code in [404, 500] {
                        let direct = try await Self.send(origin.statusURL(code), via: proxy)
                        #expect(direct.status == code)
                        let forced = try await Self.send(
                            origin.statusURL(code), via: proxy, headers: [("X-Dragonfly-Use-P2P", "true")])
                        #expect(forced.status == code, "\(cluster.logs())")
                        #expect(
                            forced.header("X-Dragonfly-Task-ID") == TaskID.make(url: origin.statusURL(code)).rawValue)
                    }
                    // Empty and tiny objects go P2P like any other.
                    for (name, bytes) in [("empty.bin", [UInt8]()), ("tiny.bin", Array("tiny\n".utf8))] {
                        try origin.writeFile(name, contents: bytes)
                        let small = try await Self.send(origin.url(for: name), via: proxy)
                        #expect(small.status == 200, "\(name)\n\(cluster.logs())")
                        #expect(small.header("Content-Length") == String(bytes.count))
                        #expect(small.body == bytes)
                        #expect(small.header("X-Dragonfly-Task-ID") != nil)
                    }
                    let missing = try await Self.send(origin.url(for: "missing.bin"), via: proxy)
                    #expect(missing.status == 404)
                    #expect(missing.header("X-Dragonfly-Task-ID") != nil)
                }
                let methods = try origin.accessLog().map { "\($0.method) \($0.uri)" }
                #expect(methods.contains("HEAD /blob.bin"))
                #expect(methods.contains("POST /blob.bin"))
                #expect(try await Self.proxyRequests(cluster, daemon, route: "direct") == 5)
                #expect(try await Self.proxyRequests(cluster, daemon, route: "p2p") == 5)

                // Bad requests get an answer, never a crash; the proxy keeps serving.
                let port = try #require(Int(proxy.split(separator: ":").last ?? ""))
                let garbage = try await rawTCPExchange(port: port, request: Array("GARBAGE\r\n\r\n".utf8))
                #expect(String(decoding: garbage, as: UTF8.self).hasPrefix("HTTP/1.1 400"))
                let relative = try await rawTCPExchange(
                    port: port,
                    request: Array(
                        "GET /v2/x/blobs/sha256:00?ns=bad/host HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".utf8))
                #expect(String(decoding: relative, as: UTF8.self).hasPrefix("HTTP/1.1 400"))
                let huge =
                    "GET http://\(origin.authority)/page.html HTTP/1.1\r\nHost: a\r\nX-Big: "
                    + String(repeating: "a", count: 70_000) + "\r\nConnection: close\r\n\r\n"
                let tooLarge = try await rawTCPExchange(port: port, request: Array(huge.utf8))
                #expect(String(decoding: tooLarge, as: UTF8.self).hasPrefix("HTTP/1.1 431"))
                let healthy = try await Self.send(origin.url(for: "page.html"), via: proxy)
                #expect(healthy.status == 200)
            }
        }
    }

    @Test(.timeLimit(.minutes(4)))
    func requestsOverTheConcurrencyLimitGet429() async throws {
        let slow = try P2PTests.randomBytes(8 << 20)
        try await withNginxOrigin { origin in
            try origin.writeFile("slow.dat", contents: slow)
            try await withP2PCluster(
                schedulers: 1, seeds: 0, daemons: 1, daemonConfigYAML: Self.daemonYAML("  maxConcurrentRequests: 2\n")
            ) { cluster in
                let proxy = try Self.proxy(of: cluster.daemons[0])
                do {
                    try await withThrowingTaskGroup(of: Void.self) { group in
                        // Two slow downloads (64 KiB/s: two minutes each) hold both slots.
                        let outcomes = Outcomes()
                        for _ in 0..<2 {
                            group.addTask {
                                do {
                                    let answer = try await Self.send(
                                        origin.rateLimitedURL(for: "slow.dat", bytesPerSecond: 64 << 10), via: proxy)
                                    await outcomes.add("\(answer.status) with \(answer.body.count) bytes")
                                } catch {
                                    await outcomes.add("\(error)")
                                }
                            }
                        }
                        // Both hold a slot once the proxy routed them (its counter); only then is a third sent.
                        do {
                            try await poll(every: .milliseconds(50), timeLimit: .seconds(30), description: "2 slow") {
                                try await Self.proxyRequests(cluster, cluster.daemons[0], route: "direct") >= 2
                            }
                        } catch {
                            Issue.record("slow requests: \(await outcomes.entries)\n\(cluster.logs())")
                            throw error
                        }
                        let refused = try await Self.send(origin.statusURL(204), via: proxy)
                        #expect(refused.status == 429)
                        #expect(refused.header("Retry-After") == "1")
                        group.cancelAll()
                    }
                    // The slots are released when the slow clients go away.
                    try await poll(every: .milliseconds(50), timeLimit: .seconds(30), description: "a 204 again") {
                        try await Self.send(origin.statusURL(204), via: proxy).status == 204
                    }
                }
                #expect(try await Self.proxyRequests(cluster, cluster.daemons[0], route: "rejected") >= 1)
            }
        }
    }

    @Test(.timeLimit(.minutes(3)))
    func connectIsTunnelledUntouched() async throws {
        let page = Array("<p>through a tunnel</p>\n".utf8)
        try await withNginxOrigin { origin in
            try origin.writeFile("page.html", contents: page)
            try origin.writeFile("blob.bin", contents: page)
            try await withP2PCluster(
                schedulers: 1, seeds: 0, daemons: 1, daemonConfigYAML: Self.daemonYAML()
            ) { cluster in
                let daemon = cluster.daemons[0]
                let proxy = try Self.proxy(of: daemon)
                // curl opens a CONNECT tunnel to nginx and speaks HTTP inside it: the proxy only relays bytes,
                // so even a P2P-ruled URL reaches the origin as it is.
                for path in ["page.html", "blob.bin"] {
                    let answer = try await curlRequest(origin.url(for: path), proxy: proxy, tunnel: true)
                    #expect(answer.status == 200)
                    #expect(answer.body == page)
                    #expect(answer.header("X-Dragonfly-Task-ID") == nil)
                }
                #expect(try await Self.proxyRequests(cluster, daemon, route: "tunnel") == 2)
                #expect(try await Self.proxyRequests(cluster, daemon, route: "p2p") == 0)
                #expect(try origin.accessLog().map(\.uri) == ["/page.html", "/blob.bin"])

                let port = try #require(Int(proxy.split(separator: ":").last ?? ""))
                let closed = try freeLoopbackPort()
                let refused = try await rawTCPExchange(
                    port: port, request: Array("CONNECT 127.0.0.1:\(closed) HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
                #expect(String(decoding: refused, as: UTF8.self).hasPrefix("HTTP/1.1 502"))
                let malformed = try await rawTCPExchange(
                    port: port, request: Array("CONNECT no-port HTTP/1.1\r\n\r\n".utf8))
                #expect(String(decoding: malformed, as: UTF8.self).hasPrefix("HTTP/1.1 400"))
                let healthy = try await Self.send(origin.url(for: "page.html"), via: proxy)
                #expect(healthy.status == 200)
            }
        }
    }

    @Test(.timeLimit(.minutes(3)))
    func basicAuthIsRequiredOfProxyRequestsWhenConfigured() async throws {
        let page = Array("<p>private</p>\n".utf8)
        try await withNginxOrigin { origin in
            try origin.writeFile("page.html", contents: page)
            let yaml = Self.daemonYAML("  basicAuth:\n    username: alice\n    password: 's3cret pass'\n")
            try await withP2PCluster(schedulers: 1, seeds: 0, daemons: 1, daemonConfigYAML: yaml) { cluster in
                let proxy = try Self.proxy(of: cluster.daemons[0])
                let url = origin.url(for: "page.html")
                for tunnel in [false, true] {
                    let anonymous = try await curlRequest(url, proxy: proxy, tunnel: tunnel)
                    #expect(anonymous.status == 407, "tunnel \(tunnel)")
                    #expect(anonymous.header("Proxy-Authenticate") == "Basic realm=\"dragonfly\"")
                    let wrong = try await curlRequest(url, proxy: proxy, tunnel: tunnel, proxyUser: "alice:nope")
                    #expect(wrong.status == 407, "tunnel \(tunnel)")
                    let allowed = try await curlRequest(
                        url, proxy: proxy, tunnel: tunnel, proxyUser: "alice:s3cret pass")
                    #expect(allowed.status == 200, "tunnel \(tunnel)")
                    #expect(allowed.body == page)
                }
                // nginx saw only the two authorised requests.
                #expect(try origin.accessLog().count == 2)
            }
        }
    }

    /// What concurrent requests of a test ended with.
    actor Outcomes {
        var entries: [String] = []
        func add(_ entry: String) { entries.append(entry) }
    }

    /// A small deterministic generator, so a failing range is reproducible.
    struct SplitMix: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }

    @Test(.timeLimit(.minutes(5)))
    func hundredRandomRangesOfA64MiBFileAreExact() async throws {
        let size = 64 << 20
        let blob = try P2PTests.randomBytes(size)
        try await withNginxOrigin { origin in
            try origin.writeFile("big.bin", contents: blob)
            let url = origin.url(for: "big.bin")
            try await withP2PCluster(
                schedulers: 1, seeds: 0, daemons: 1, daemonConfigYAML: Self.daemonYAML()
            ) { cluster in
                let proxy = try Self.proxy(of: cluster.daemons[0])
                var random = SplitMix(state: 0x5EED_0006)
                do {
                    for index in 0..<100 {
                        let length = Int.random(in: (4 << 10)...(2 << 20), using: &random)
                        let start = Int.random(in: 0...(size - length), using: &random)
                        let end = start + length - 1
                        let answer = try await Self.send(url, via: proxy, headers: [("Range", "bytes=\(start)-\(end)")])
                        #expect(answer.status == 206, "range \(index) \(start)-\(end)")
                        #expect(answer.header("Content-Range") == "bytes \(start)-\(end)/\(size)")
                        #expect(answer.header("Content-Length") == String(length))
                        #expect(answer.header("X-Dragonfly-Task-ID") == TaskID.make(url: url).rawValue)
                        #expect(answer.body.count == length, "range \(index) \(start)-\(end)")
                        #expect(answer.body == Array(blob[start...end]), "range \(index) \(start)-\(end): wrong bytes")
                    }
                    let suffix = try await Self.send(url, via: proxy, headers: [("Range", "bytes=-1000")])
                    #expect(suffix.status == 206)
                    #expect(suffix.header("Content-Range") == "bytes \(size - 1000)-\(size - 1)/\(size)")
                    #expect(suffix.body == Array(blob[(size - 1000)...]))
                    let open = try await Self.send(url, via: proxy, headers: [("Range", "bytes=\(size - 10)-")])
                    #expect(open.status == 206)
                    #expect(open.body == Array(blob[(size - 10)...]))
                    let beyond = try await Self.send(url, via: proxy, headers: [("Range", "bytes=\(size)-")])
                    #expect(beyond.status == 416)
                    #expect(beyond.header("Content-Range") == "bytes */\(size)")
                }
                let sent = try origin.totalBytesSent()
                #expect(Double(sent) <= 1.02 * Double(size), "nginx sent \(sent) bytes for one \(size)-byte task")
            }
        }
    }
}
