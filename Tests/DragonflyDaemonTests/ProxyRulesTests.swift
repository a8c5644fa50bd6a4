import DragonflyCore
import DragonflyDaemon
import Testing

/// The proxy's routing decisions, ranges and registry upstreams, without I/O (DESIGN §8).
@Suite struct ProxyRulesTests {
    static let blob = "sha256:" + String(repeating: "ab", count: 32)

    @Test func defaultRulesSendBlobsAndArtifactsP2PAndTheRestDirect() throws {
        let rules = try ProxyRuleSet(rules: ProxyRule.defaults)
        for url in [
            "http://r.example/v2/library/alpine/blobs/\(Self.blob)",
            "http://m.example/maven/com/example/hello/1.0/hello-1.0.jar",
            "http://y.example/yum/p2phello-1.0-1.noarch.rpm",
            "http://p.example/pkgs/x-1.0-py3-none-any.whl?sig=1",
            "http://o.example/a/b.tar.gz", "http://o.example/model.safetensors", "http://o.example/blob.bin",
        ] {
            #expect(rules.route(url: url, method: "GET", forceP2P: false).isP2P, "\(url)")
            #expect(!rules.route(url: url, method: "HEAD", forceP2P: false).isP2P, "HEAD \(url)")
            #expect(!rules.route(url: url, method: "POST", forceP2P: true).isP2P, "POST \(url)")
        }
        for url in [
            "http://o.example/index.html", "http://y.example/yum/repodata/repomd.xml",
            "http://o.example/blob.binary", "http://o.example/a.jar.sha1",
        ] {
            #expect(!rules.route(url: url, method: "GET", forceP2P: false).isP2P, "\(url)")
            #expect(rules.route(url: url, method: "GET", forceP2P: true).isP2P, "forced \(url)")
        }
    }

    @Test func firstMatchWinsAndAppliesTLSRedirectAndFilter() throws {
        let rules = try ProxyRuleSet(rules: [
            ProxyRule(regex: "private\\.example", direct: true),
            ProxyRule(regex: "\\.bin$", useTLS: true, redirect: "mirror.example:8443", filteredQueryParams: ["t"]),
        ])
        let direct = rules.route(url: "http://private.example/x.bin", method: "GET", forceP2P: false)
        #expect(!direct.isP2P)
        #expect(direct.url == "http://private.example/x.bin")
        let forced = rules.route(url: "http://private.example/x.bin", method: "GET", forceP2P: true)
        #expect(forced.isP2P)
        let routed = rules.route(url: "http://o.example:8080/d/x.bin", method: "GET", forceP2P: false)
        #expect(
            routed == ProxyRoute(url: "https://mirror.example:8443/d/x.bin", isP2P: true, filteredQueryParams: ["t"]))
    }

    @Test func invalidRegexIsAConfigurationErrorNamingTheRule() throws {
        var config = DaemonConfig()
        config.proxy.rules = [ProxyRule(regex: "ok"), ProxyRule(regex: "(unclosed")]
        #expect(throws: DragonflyError.self) { try config.validate() }
        do {
            try config.validate()
        } catch {
            #expect(error.message.contains("proxy.rules[1].regex"))
        }
    }

    @Test(arguments: [
        ("bytes=0-99", ProxyByteRange.from(0, through: 99)),
        ("bytes=100-", ProxyByteRange.from(100, through: nil)),
        ("bytes=-10", ProxyByteRange.suffix(10)),
        (" bytes=5-5 ", ProxyByteRange.from(5, through: 5)),
    ])
    func parsesSingleRanges(header: String, expected: ProxyByteRange) {
        #expect(ProxyByteRange(header: header) == expected)
    }

    @Test(arguments: ["bytes=0-9,20-29", "items=0-9", "bytes=9-0", "bytes=-0", "bytes=a-b", "bytes=-", "bytes="])
    func ignoresRangesItCannotServe(header: String) {
        #expect(ProxyByteRange(header: header) == nil)
    }

    @Test func resolvesAgainstTheLength() {
        #expect(ProxyByteRange.from(0, through: 99).resolve(length: 50) == 0..<50)
        #expect(ProxyByteRange.from(10, through: nil).resolve(length: 50) == 10..<50)
        #expect(ProxyByteRange.from(50, through: nil).resolve(length: 50) == nil)
        #expect(ProxyByteRange.suffix(10).resolve(length: 50) == 40..<50)
        #expect(ProxyByteRange.suffix(80).resolve(length: 50) == 0..<50)
        #expect(ProxyByteRange.suffix(1).resolve(length: 0) == nil)
        #expect(ProxyByteRange.from(3, through: 7).downloadRange == ByteRange(start: 3, length: 5))
        #expect(ProxyByteRange.suffix(3).downloadRange == nil)
    }

    @Test func mirrorUpstreamComesFromHeaderThenNsThenDefault() throws {
        var config = DaemonConfig.RegistryMirrorConfig()
        config.url = "http://127.0.0.1:15000/"
        config.insecureRegistries = ["insecure.example:5000"]
        config.allowedRegistries = ["insecure.example:5000", "ghcr.io", "docker.io", "quay.io"]
        let mirror = RegistryMirror(config: config)
        let path = "/v2/test/p2p/blobs/\(Self.blob)"
        #expect(try mirror.upstreamURL(target: path, registryHeader: nil) == "http://127.0.0.1:15000" + path)
        #expect(
            try mirror.upstreamURL(target: path + "?ns=127.0.0.1:15000", registryHeader: nil)
                == "http://127.0.0.1:15000" + path)
        #expect(
            try mirror.upstreamURL(target: path + "?ns=ghcr.io&x=1", registryHeader: nil)
                == "https://ghcr.io" + path + "?x=1")
        #expect(
            try mirror.upstreamURL(target: path + "?ns=insecure.example:5000", registryHeader: nil)
                == "http://insecure.example:5000" + path)
        #expect(
            try mirror.upstreamURL(target: path + "?ns=docker.io", registryHeader: nil)
                == "https://index.docker.io" + path)
        #expect(
            try mirror.upstreamURL(target: path + "?ns=ghcr.io", registryHeader: "https://quay.io/")
                == "https://quay.io" + path)
        #expect(throws: DragonflyError.self) { try mirror.upstreamURL(target: path, registryHeader: "quay.io") }
        #expect(throws: DragonflyError.self) {
            try mirror.upstreamURL(target: path + "?ns=bad/host", registryHeader: nil)
        }
        #expect(throws: DragonflyError.self) { try mirror.upstreamURL(target: "v2/", registryHeader: nil) }
    }

    @Test func blobPathsAreRecognised() {
        #expect(RegistryMirror.isBlob(target: "/v2/test/p2p/blobs/\(Self.blob)"))
        #expect(RegistryMirror.isBlob(target: "/v2/a/b/c/blobs/\(Self.blob)?ns=docker.io"))
        #expect(!RegistryMirror.isBlob(target: "/v2/test/p2p/manifests/v1"))
        #expect(!RegistryMirror.isBlob(target: "/v2/blobs/\(Self.blob)"))
        #expect(!RegistryMirror.isBlob(target: "/v2/test/blobs/uploads/"))
        #expect(!RegistryMirror.isBlob(target: "/v2/test/blobs/sha256:abc"))
        #expect(!RegistryMirror.isBlob(target: "/v2/"))
    }

    @Test func taskIDIgnoresNsAndSignatureParameters() {
        let base = "http://127.0.0.1:15000/v2/test/p2p/blobs/\(Self.blob)"
        #expect(TaskID.make(url: base) == TaskID.make(url: base + "?ns=127.0.0.1:15000"))
        #expect(TaskID.make(url: base) == TaskID.make(url: base + "?X-Amz-Signature=abc&X-Amz-Date=1"))
    }

    @Test func basicAuthorizationComparesTheWholeValue() {
        #expect(ProxyAuthorization.base64(Array("Aladdin:open sesame".utf8)) == "QWxhZGRpbjpvcGVuIHNlc2FtZQ==")
        #expect(ProxyAuthorization.base64(Array("a".utf8)) == "YQ==")
        #expect(ProxyAuthorization.base64(Array("ab".utf8)) == "YWI=")
        #expect(ProxyAuthorization.base64([]) == "")
        let required = "Basic " + ProxyAuthorization.base64(Array("u:p".utf8))
        #expect(ProxyAuthorization.isAuthorized(nil, required: nil))
        #expect(ProxyAuthorization.isAuthorized(required, required: required))
        #expect(ProxyAuthorization.isAuthorized(" \(required) ", required: required))
        #expect(!ProxyAuthorization.isAuthorized(nil, required: required))
        #expect(!ProxyAuthorization.isAuthorized(required + "x", required: required))
        #expect(!ProxyAuthorization.isAuthorized(String(required.dropLast()), required: required))
        #expect(!ProxyAuthorization.isAuthorized("Basic dTpx", required: required))
    }
}
