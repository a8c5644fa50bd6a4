import DragonflyCore
import DragonflyDaemon
import Testing

/// The proxy's destination and registry allowlists, without I/O (issue 12 finding 7).
@Suite struct ProxyDestinationTests {
    static func address(_ text: String) throws -> IPAddressBytes {
        try #require(IPAddressBytes(parsing: text))
    }

    @Test(arguments: [
        "127.0.0.1", "127.255.0.1", "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1", "169.254.169.254",
        "100.64.0.1", "0.0.0.0", "0.1.2.3", "224.0.0.1", "255.255.255.255", "::1", "::", "fe80::1", "fc00::1",
        "fd12:3456::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "ff02::1",
    ])
    func loopbackLinkLocalAndPrivateAddressesAreRestricted(_ text: String) throws {
        #expect(try Self.address(text).isRestricted, "\(text)")
    }

    @Test(arguments: ["1.1.1.1", "8.8.8.8", "172.32.0.1", "100.128.0.1", "2001:4860:4860::8888", "::ffff:8.8.8.8"])
    func publicAddressesAreNotRestricted(_ text: String) throws {
        #expect(try !Self.address(text).isRestricted, "\(text)")
    }

    @Test func patternsMatchNetworksNamesAndSuffixes() throws {
        let network = try #require(AddressPattern(parsing: "10.0.0.0/8"))
        #expect(network.isNetwork)
        #expect(network.matches(address: try Self.address("10.9.8.7")))
        #expect(!network.matches(address: try Self.address("11.0.0.1")))
        #expect(!network.matches(address: try Self.address("::1")))
        let single = try #require(AddressPattern(parsing: "127.0.0.1"))
        #expect(single.matches(address: try Self.address("127.0.0.1")))
        #expect(!single.matches(address: try Self.address("127.0.0.2")))
        let v6 = try #require(AddressPattern(parsing: "fd00::/8"))
        #expect(v6.matches(host: "fd12::1"))
        #expect(!v6.matches(host: "fe80::1"))
        let suffix = try #require(AddressPattern(parsing: "*.corp.example"))
        #expect(!suffix.isNetwork)
        #expect(suffix.matches(host: "a.corp.example"))
        #expect(suffix.matches(host: "corp.example"))
        #expect(!suffix.matches(host: "evilcorp.example"))
        #expect(AddressPattern(parsing: "Registry.Local")?.matches(host: "registry.local") == true)
        for bad in ["", "10.0.0.0/33", "::/129", "a b", "host/8", "*.", "http://x"] {
            #expect(AddressPattern(parsing: bad) == nil, "\(bad)")
        }
    }

    @Test func configValidationNamesTheBadEntry() throws {
        var config = DaemonConfig()
        config.proxy.allowedDestinations = ["10.0.0.0/8", "not a host"]
        #expect(throws: DragonflyError.self) { try config.validate() }
        config.proxy.allowedDestinations = ["10.0.0.0/8", "*.corp.example", "registry.local"]
        config.proxy.trustedIdentityHeaders = ["registry.local"]
        #expect(throws: DragonflyError.self) { try config.validate() }
        config.proxy.trustedIdentityHeaders = ["127.0.0.1", "10.0.0.0/8"]
        try config.validate()
    }

    @Test func theProxyListensOnLoopbackByDefault() {
        #expect(DaemonConfig().listen.proxy.host == "127.0.0.1")
    }

    @Test func mirrorRequestsReachOnlyListedRegistriesAndTheRegistryAPI() throws {
        var config = DaemonConfig.RegistryMirrorConfig()
        config.url = "http://127.0.0.1:15000"
        config.allowedRegistries = ["ghcr.io", "*.corp.example:5000"]
        let mirror = RegistryMirror(config: config)
        let path = "/v2/x/manifests/latest"
        #expect(try mirror.upstreamURL(target: path, registryHeader: nil) == "http://127.0.0.1:15000" + path)
        #expect(try mirror.upstreamURL(target: path + "?ns=ghcr.io", registryHeader: nil) == "https://ghcr.io" + path)
        #expect(
            try mirror.upstreamURL(target: path, registryHeader: "http://a.corp.example:5000")
                == "http://a.corp.example:5000" + path)
        for (target, header) in [
            (path, "http://127.0.0.1:8080"), (path, "http://a.corp.example:5001"), (path + "?ns=quay.io", nil),
            ("/admin", nil), ("/v2/../admin", nil), ("/v2/%2e%2e/admin", nil), ("/v2/x/%2fadmin", nil),
            ("/", nil), ("/v20/", nil),
        ] as [(String, String?)] {
            #expect(throws: DragonflyError.self, "\(target) \(header ?? "")") {
                try mirror.upstreamURL(target: target, registryHeader: header)
            }
        }
        #expect(mirror.allowsRegistry("127.0.0.1:15000"))
        #expect(mirror.allowsRegistry("GHCR.io:443"))
        #expect(!mirror.allowsRegistry("corp.example:5001"))
    }
}
