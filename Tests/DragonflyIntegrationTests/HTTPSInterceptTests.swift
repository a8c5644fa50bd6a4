import Crypto
import DragonflyCore
import DragonflyTestSupport
import Foundation
import Testing

/// HTTPS through the daemon's proxy (DESIGN §8, `proxy.hijackHTTPS`): real `dragonfly` scheduler and daemons,
/// a real nginx serving HTTPS with its own self-signed certificate, curl as the client, and a CA made by
/// `scripts/make-proxy-ca`. An intercepted host's bytes go P2P; any other host is tunnelled untouched, which
/// the certificate curl sees proves.
@Suite(.serialized)
struct HTTPSInterceptTests {
    static func daemonYAML(ca: ProxyCA, origin: NginxOrigin, intercepted: String) throws -> String {
        let originCertificate = try #require(origin.tlsCertificatePath)
        return """
            proxy:
              allowedDestinations: ['127.0.0.1', '::1']
              registryMirror:
                url: http://127.0.0.1:9
              hijackHTTPS:
                cert: \(ca.certificatePath)
                key: \(ca.keyPath)
                hosts: ['\(intercepted)']
            tls:
              caCerts: [\(originCertificate)]

            """
    }

    @Test(.timeLimit(.minutes(4)))
    func interceptedHTTPSGoesP2PAndOtherHostsAreTunnelledUntouched() async throws {
        let size = 12 << 20
        let blob = try P2PTests.randomBytes(size)
        let digest = SHA256.hash(data: blob)
        let page = Array("<p>over TLS</p>\n".utf8)
        let directory = try TemporaryDirectory(prefix: "dragonfly-test-hijack-")
        defer { directory.remove() }
        let ca = try await ProxyCA.make(in: directory)
        try await withNginxOrigin(tls: true) { origin in
            try origin.writeFile("blob.bin", contents: blob)
            try origin.writeFile("page.html", contents: page)
            let tlsPort = try #require(origin.tlsPort)
            let originCertificate = try #require(origin.tlsCertificatePath)
            // Only 127.0.0.1 is intercepted; `localhost` (the same nginx) is not.
            let yaml = try Self.daemonYAML(ca: ca, origin: origin, intercepted: #"^127\.0\.0\.1:\#(tlsPort)$"#)
            try await withP2PCluster(schedulers: 1, seeds: 0, daemons: 2, daemonConfigYAML: yaml) { cluster in
                let (first, second) = (cluster.daemons[0], cluster.daemons[1])
                let url = origin.httpsURL(for: "blob.bin")
                for node in [first, second] {
                    let answer = try await curlRequest(
                        url, proxy: try ProxyTests.proxy(of: node), caCertificate: ca.certificatePath)
                    #expect(answer.failure == nil, "\(node): \(answer.failure ?? "")\n\(cluster.logs())")
                    #expect(answer.status == 200)
                    #expect(answer.header("X-Dragonfly-Task-ID") == TaskID.make(url: url).rawValue)
                    #expect(answer.body.count == size)
                    #expect(SHA256.hash(data: answer.body) == digest, "\(node): wrong bytes")
                    #expect(try await ProxyTests.proxyRequests(cluster, node, route: "intercepted") == 1)
                    #expect(try await ProxyTests.proxyRequests(cluster, node, route: "p2p") == 1)
                }
                // The second daemon's copy came from the first, and nginx sent the file about once.
                #expect(try await cluster.downloadBytes(of: second, source: .peer) >= size)
                #expect(try await cluster.downloadBytes(of: second, source: .origin) == 0)
                try await poll(every: .milliseconds(50), timeLimit: .seconds(10), description: "nginx log") {
                    try origin.accessLog().contains { $0.uri == "/blob.bin" }
                }
                let sent = try origin.accessLog().filter { $0.uri == "/blob.bin" }.reduce(0) { $0 + $1.bytesSent }
                #expect(Double(sent) <= 1.02 * Double(size), "nginx sent \(sent) bytes for a \(size)-byte file")

                let proxy = try ProxyTests.proxy(of: first)
                // Inside an intercepted connection, a path no rule sends P2P is forwarded over TLS that trusts
                // `tls.caCerts` (nginx's own certificate).
                let direct = try await curlRequest(
                    origin.httpsURL(for: "page.html"), proxy: proxy, caCertificate: ca.certificatePath)
                #expect(direct.failure == nil, "\(direct.failure ?? "")")
                #expect(direct.status == 200)
                #expect(direct.body == page)
                #expect(direct.header("X-Dragonfly-Task-ID") == nil)
                #expect(try await ProxyTests.proxyRequests(cluster, first, route: "direct") == 1)
                // A client that trusts only nginx's certificate cannot talk to an intercepted host…
                let distrusting = try await curlRequest(url, proxy: proxy, caCertificate: originCertificate)
                #expect(distrusting.failure != nil, "the intercepted host presented nginx's own certificate")

                // …and a host that is not intercepted is tunnelled: curl sees nginx's own certificate, so it
                // succeeds trusting that one and fails trusting only our CA.
                let tunnelledURL = origin.httpsURL(for: "blob.bin", host: "localhost")
                let tunnelled = try await curlRequest(tunnelledURL, proxy: proxy, caCertificate: originCertificate)
                #expect(tunnelled.failure == nil, "\(tunnelled.failure ?? "")")
                #expect(tunnelled.status == 200)
                #expect(SHA256.hash(data: tunnelled.body) == digest)
                #expect(tunnelled.header("X-Dragonfly-Task-ID") == nil)
                let wrongTrust = try await curlRequest(tunnelledURL, proxy: proxy, caCertificate: ca.certificatePath)
                #expect(wrongTrust.failure != nil, "the tunnelled host presented a certificate from our CA")
                #expect(try await ProxyTests.proxyRequests(cluster, first, route: "tunnel") == 2)
                // Three intercepted CONNECTs (blob, page, the distrusting client), one P2P request.
                #expect(try await ProxyTests.proxyRequests(cluster, first, route: "intercepted") == 3)
                #expect(try await ProxyTests.proxyRequests(cluster, first, route: "p2p") == 1)
            }
        }
    }

    @Test(.timeLimit(.minutes(2)))
    func aBadCAConfigurationStopsTheDaemonWithTheKeyNamed() async throws {
        let directory = try TemporaryDirectory(prefix: "dragonfly-test-hijack-bad-")
        defer { directory.remove() }
        let ca = try await ProxyCA.make(in: directory)
        let other = try await ProxyCA.make(in: directory, name: "other-ca")
        let cases: [(yaml: String, key: String)] = [
            ("proxy:\n  hijackHTTPS:\n    hosts: ['x']\n", "proxy.hijackHTTPS.cert"),
            (
                "proxy:\n  hijackHTTPS:\n    cert: \(ca.certificatePath)\n    key: \(other.keyPath)\n    hosts: ['x']\n",
                "proxy.hijackHTTPS.key"
            ),
            (
                "proxy:\n  hijackHTTPS:\n    cert: \(ca.keyPath)\n    key: \(ca.keyPath)\n    hosts: ['x']\n",
                "proxy.hijackHTTPS.cert"
            ),
            (
                "proxy:\n  hijackHTTPS:\n    cert: \(ca.certificatePath)\n    key: \(ca.keyPath)\n    hosts: ['(']\n",
                "proxy.hijackHTTPS.hosts[0]"
            ),
            ("tls:\n  caCerts: [\(directory.appending("missing.pem"))]\n", "tls.caCerts[0]"),
        ]
        for (yaml, key) in cases {
            let config = try directory.writeFile("daemon.yaml", text: yaml)
            let result = try await runDragonfly(
                [
                    "daemon", "--config", config, "--data-dir", directory.appending("data"), "--socket",
                    directory.appending("d.sock"), "--peer-listen", "127.0.0.1:0", "--proxy-listen", "127.0.0.1:0",
                    "--metrics-listen", "127.0.0.1:0", "--health-listen", "127.0.0.1:0", "--piece-listen",
                    "127.0.0.1:0",
                ])
            #expect(!result.status.isSuccess, "\(yaml)")
            #expect(result.stderr.contains(key), "\(yaml): \(result.stderr)")
        }
    }
}
