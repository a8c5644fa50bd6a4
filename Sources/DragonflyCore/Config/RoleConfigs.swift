/// Logging settings shared by every role.
package struct LogConfig: Codable, Sendable, Equatable {
    /// Minimum level written to stderr (logfmt).
    package var level: LogLevelName = .info
    package init() {}
}

// MARK: - Daemon and cdn

/// Cluster trust settings shared by every role (DESIGN §11; the stopgap of "Security, part 1" until mTLS).
package struct SecurityConfig: Codable, Sendable, Equatable {
    /// The cluster secret: the manager and schedulers demand it from callers that change another host's state
    /// (registrations, keep-alives, the command channel, seed announcements), and seed peers send it. Sent as
    /// gRPC metadata `x-dragonfly-cluster-secret`; never logged. Empty with an empty `clusterSecretFile` runs
    /// as a lab cluster without one.
    package var clusterSecret: String = ""
    /// A file holding the cluster secret (first line), refused when group or others may read it.
    package var clusterSecretFile: String = ""
    /// Daemon and cdn: absolute directories under which a `file://` download asked over the network (a
    /// scheduler's seed trigger, preheat or push job) may read; empty (the default) refuses every such
    /// download. A local `dragonfly get file://…` reads as its caller and never asks the daemon.
    package var allowedFileDirectories: [String] = []
    package init() {}

    /// The secret from `clusterSecret` or `clusterSecretFile`; nil when neither is set.
    ///
    /// - Throws: `configuration` naming `security.clusterSecretFile` when the file cannot be read, is readable
    ///   by group or others, or is empty.
    package func resolvedClusterSecret() throws(DragonflyError) -> String? {
        if !clusterSecret.isEmpty { return clusterSecret }
        guard !clusterSecretFile.isEmpty else { return nil }
        return try SecretFile.read(clusterSecretFile, key: "security.clusterSecretFile")
    }
}

/// Configuration of `dragonfly daemon` and `dragonfly cdn` (the same keys; the cdn is the daemon in seed mode).
package struct DaemonConfig: RoleConfiguration {
    /// Identity this host announces.
    package struct HostConfig: Codable, Sendable, Equatable {
        /// Host name announced to the scheduler; empty means the system host name.
        package var hostname: String = ""
        /// IP announced to others; empty means the peer listener's address (first non-loopback one on a wildcard).
        package var advertiseIP: String = ""
        /// Data-centre tag used for affinity.
        package var idc: String = ""
        /// Location `a|b|c` used for affinity by prefix.
        package var location: String = ""
        package init() {}
    }

    /// Listener addresses; port 0 binds any free port.
    package struct ListenConfig: Codable, Sendable, Equatable {
        package var peer = ListenAddress(host: "0.0.0.0", port: 4000)
        /// Loopback by default: a node-wide proxy is an explicit choice, to pair with `proxy.basicAuth` or a
        /// firewall.
        package var proxy = ListenAddress(host: "127.0.0.1", port: 4001)
        package var metrics = ListenAddress(host: "0.0.0.0", port: 4002)
        package var health = ListenAddress(host: "0.0.0.0", port: 4003)
        package var piece = ListenAddress(host: "0.0.0.0", port: 4005)
        package init() {}
    }

    /// How the daemon finds schedulers.
    package struct SchedulerClientConfig: Codable, Sendable, Equatable {
        /// Scheduler gRPC addresses `host:port`; the task ID picks one by consistent hashing.
        package var addresses: [String] = []
        /// How often the host is announced to its scheduler.
        package var announceInterval: ConfigDuration = .seconds(30)
        /// How long start-up waits for a scheduler before becoming ready anyway.
        package var readyTimeout: ConfigDuration = .seconds(10)
        package init() {}
    }

    /// The manager that supplies the scheduler list (and, for the cdn, keeps the seed peer registered).
    package struct ManagerClientConfig: Codable, Sendable, Equatable {
        /// Manager gRPC address `host:port`; empty means none (the static `scheduler.addresses` are used).
        package var address: String = ""
        /// How often the scheduler list is asked again (every 2 s while it is empty).
        package var refreshInterval: ConfigDuration = .seconds(60)
        /// Keep-alive period of the cdn's seed-peer registration.
        package var keepAliveInterval: ConfigDuration = .seconds(5)
        /// Seed-peer cluster the cdn joins; 0 means the default one.
        package var seedPeerClusterID: Int = 0
        package init() {}
    }

    /// Download behaviour.
    package struct DownloadConfig: Codable, Sendable, Equatable {
        /// Pieces in flight per task.
        package var concurrentPieces: Int = 16
        /// Concurrent range requests to the origin per task.
        package var originConnections: Int = 4
        /// Attempts per piece before giving up on it.
        package var pieceRetryLimit: Int = 5
        /// Never read the origin, even when no peer can serve.
        package var disableBackToSource: Bool = false
        /// Download rate limit per daemon in bytes/s; 0 means unlimited.
        package var rateLimit: ByteSize = .zero
        /// Ask a seed peer only for pieces no other parent has: its upload is the swarm's bottleneck when every
        /// host uploads as fast as the seed. False: a seed is an ordinary parent, chosen by measured throughput
        /// (better when hosts upload much slower than the seed; see README "Performance").
        package var seedsLast: Bool = true
        /// Requests in flight to one seed parent at once.
        package var seedRequestLimit: Int = 1
        /// The largest object downloaded: a larger stated length is refused, a stream of unknown length is cut
        /// off past it (an origin cannot fill the disk). 1 TiB by default.
        package var maxContentLength: ByteSize = .gibibytes(1024)
        package init() {}
    }

    /// Upload (piece serving) behaviour.
    package struct UploadConfig: Codable, Sendable, Equatable {
        /// Concurrent piece uploads before answering 429.
        package var slots: Int = 32
        /// Upload rate limit in bytes/s; 0 means unlimited.
        package var rateLimit: ByteSize = .zero
        package init() {}
    }

    /// Local cache.
    package struct StorageConfig: Codable, Sendable, Equatable {
        /// Storage medium plugin name (`disk` or `memory`).
        package var medium: String = "disk"
        /// Tasks not accessed for this long are evicted.
        package var taskTTL: ConfigDuration = .hours(6)
        /// How often garbage collection runs.
        package var gcInterval: ConfigDuration = .minutes(1)
        /// Start evicting when our bytes exceed this percentage of the disk or quota.
        package var highWatermark: Int = 80
        /// Evict until our bytes are under this percentage.
        package var lowWatermark: Int = 60
        /// Byte quota for the cache; 0 means the size of the disk holding the data dir.
        package var quota: ByteSize = .zero
        package init() {}
    }

    /// The HTTP(S) proxy and registry mirror on `listen.proxy` (DESIGN §8).
    package struct ProxyConfig: Codable, Sendable, Equatable {
        /// Requests handled at once; more are answered 429.
        package var maxConcurrentRequests: Int = 256
        /// Open client connections; more are closed at once.
        package var maxConnections: Int = 1024
        /// A keep-alive connection with no request for this long is closed.
        package var idleTimeout: ConfigDuration = .seconds(60)
        /// A connection that has not sent a whole request head this long after it opened (or after its last
        /// response ended) is closed.
        package var headerTimeout: ConfigDuration = .seconds(30)
        /// A `CONNECT` tunnel with no byte in either direction for this long is closed.
        package var tunnelIdleTimeout: ConfigDuration = .seconds(60)
        /// Addresses the proxy may reach although they are loopback, link-local or private (RFC 1918, 100.64/10,
        /// fc00::/7, 0.0.0.0/8): CIDRs (`10.0.0.0/8`), addresses, host names or `*.suffix` host patterns. Empty:
        /// forwards, P2P fetches and `CONNECT`s to such addresses are refused (403).
        package var allowedDestinations: [String] = []
        /// Clients (CIDRs or addresses) whose `X-Dragonfly-Tag`, `-Application` and `-Filtered-Query-Params`
        /// are honoured; these headers change which task a request joins. Empty: nobody's (403).
        package var trustedIdentityHeaders: [String] = []
        /// Bytes of a request head (request line and headers); larger heads are answered 431. At most 80K.
        package var maxHeaderBytes: ByteSize = .kibibytes(64)
        /// Which requests go P2P: the first rule whose regex matches the absolute URL decides; no match: direct.
        package var rules: [ProxyRule] = ProxyRule.defaults
        /// Where requests without an absolute URI (registry mirror requests) go.
        package var registryMirror = RegistryMirrorConfig()
        /// Proxy basic authentication for every request (absolute-URI, `CONNECT` and registry mirror requests;
        /// 407 without it); off when the user name is empty.
        package var basicAuth = ProxyBasicAuthConfig()
        /// `CONNECT`s to these hosts are intercepted: TLS is ended with a leaf certificate minted from the CA,
        /// and the requests inside go through the rules like plain proxy requests. Others are tunnelled.
        package var hijackHTTPS = HijackHTTPSConfig()
        package init() {}
    }

    /// HTTPS interception by the proxy (DESIGN §8).
    package struct HijackHTTPSConfig: Codable, Sendable, Equatable {
        /// PEM file of the CA certificate that signs the leaf certificates (clients must trust it).
        package var cert: String = ""
        /// PEM file of the CA's private key (ECDSA P-256/P-384/P-521, RSA or Ed25519).
        package var key: String = ""
        /// Regular expressions matched against a `CONNECT`'s `host:port`; a match is intercepted.
        package var hosts: [String] = []
        package init() {}
    }

    /// TLS settings of the `http`/`https` source client and of the proxy's direct requests (DESIGN §9).
    package struct SourceTLSConfig: Codable, Sendable, Equatable {
        /// PEM files of extra trusted root certificates, added to the system's.
        package var caCerts: [String] = []
        /// Regular expressions matched against a whole host name whose certificate is not verified.
        package var insecureHosts: [String] = []
        package init() {}
    }

    /// Credentials the proxy asks for.
    package struct ProxyBasicAuthConfig: Codable, Sendable, Equatable {
        /// User name; empty turns proxy authentication off.
        package var username: String = ""
        /// Password.
        package var password: String = ""
        package init() {}
    }

    /// The registry mirror side of the proxy.
    package struct RegistryMirrorConfig: Codable, Sendable, Equatable {
        /// Upstream registry used when a request names none (`X-Dragonfly-Registry`, `ns`).
        package var url: String = "https://index.docker.io"
        /// Registry hosts (`host[:port]`) reached over plain HTTP when named by `ns`.
        package var insecureRegistries: [String] = []
        /// Registries (`host[:port]`, or `*.suffix[:port]`) a mirror request may name with `X-Dragonfly-Registry`
        /// or `ns`, besides the host of `url`. Empty: only `url`'s.
        package var allowedRegistries: [String] = []
        package init() {}
    }

    package var log = LogConfig()
    /// Data directory; empty means `/var/lib/dragonfly/daemon` (`…/seed` for the cdn) as root, else
    /// `~/.dragonfly/daemon` (`…/seed`).
    package var dataDir: String = ""
    /// Local API unix socket; empty means `/var/run/dragonfly/dfdaemon.sock` (`seed.sock` for the cdn) as root,
    /// else under `$XDG_RUNTIME_DIR/dragonfly/`.
    package var socket: String = ""
    /// Group (name or numeric ID) given the local API socket, which is created `0660`: its members may download
    /// through the daemon. Empty: the daemon's own group.
    package var socketGroup: String = ""
    package var host = HostConfig()
    package var listen = ListenConfig()
    package var scheduler = SchedulerClientConfig()
    package var manager = ManagerClientConfig()
    package var download = DownloadConfig()
    package var upload = UploadConfig()
    package var storage = StorageConfig()
    package var proxy = ProxyConfig()
    /// Trust for HTTPS origins.
    package var tls = SourceTLSConfig()
    /// Exit after this long without work (auto-started daemons); 0 means never.
    package var idleExit: ConfigDuration = .zero
    /// Cluster trust (the cdn sends the cluster secret; a daemon may demand it on `Peer.DownloadTask`).
    package var security = SecurityConfig()

    package init() {}

    package func validate() throws(DragonflyError) {
        let v = ConfigValidator()
        try v.require(
            host.location.isEmpty
                || !host.location.split(separator: "|", omittingEmptySubsequences: false).contains(where: \.isEmpty),
            "host.location", "'\(host.location)' must be of the form a|b|c")
        for (index, address) in scheduler.addresses.enumerated() {
            try v.require(
                ListenAddress(parsing: address) != nil, "scheduler.addresses[\(index)]", "'\(address)' is not host:port"
            )
        }
        try v.require(
            manager.address.isEmpty || ListenAddress(parsing: manager.address) != nil, "manager.address",
            "'\(manager.address)' is not host:port")
        try v.require(manager.refreshInterval.milliseconds > 0, "manager.refreshInterval", "must be positive")
        try v.require(manager.keepAliveInterval.milliseconds > 0, "manager.keepAliveInterval", "must be positive")
        try v.require(manager.seedPeerClusterID >= 0, "manager.seedPeerClusterID", "must be 0 (default) or an ID")
        try v.require(scheduler.announceInterval.milliseconds > 0, "scheduler.announceInterval", "must be positive")
        try v.require((1...1024).contains(download.concurrentPieces), "download.concurrentPieces", "must be 1-1024")
        try v.require((1...64).contains(download.originConnections), "download.originConnections", "must be 1-64")
        try v.require((1...64).contains(download.seedRequestLimit), "download.seedRequestLimit", "must be 1-64")
        try v.require(download.maxContentLength.bytes > 0, "download.maxContentLength", "must be positive")
        try v.require((0...100).contains(download.pieceRetryLimit), "download.pieceRetryLimit", "must be 0-100")
        try v.require((1...4096).contains(upload.slots), "upload.slots", "must be 1-4096")
        try v.require(
            ["disk", "memory"].contains(storage.medium), "storage.medium",
            "'\(storage.medium)' is not a storage medium (disk, memory)")
        try v.require(storage.gcInterval.milliseconds > 0, "storage.gcInterval", "must be positive")
        try v.require((1...100).contains(storage.highWatermark), "storage.highWatermark", "must be 1-100")
        try v.require(
            (0...100).contains(storage.lowWatermark) && storage.lowWatermark <= storage.highWatermark,
            "storage.lowWatermark", "must be 0-100 and not above storage.highWatermark")
        try v.require(
            (1...65536).contains(proxy.maxConcurrentRequests), "proxy.maxConcurrentRequests", "must be 1-65536")
        try v.require((1...65536).contains(proxy.maxConnections), "proxy.maxConnections", "must be 1-65536")
        try v.require(proxy.idleTimeout.milliseconds > 0, "proxy.idleTimeout", "must be positive")
        try v.require(proxy.headerTimeout.milliseconds > 0, "proxy.headerTimeout", "must be positive")
        try v.require(proxy.tunnelIdleTimeout.milliseconds > 0, "proxy.tunnelIdleTimeout", "must be positive")
        for (index, entry) in proxy.allowedDestinations.enumerated() {
            try v.require(
                AddressPattern(parsing: entry) != nil, "proxy.allowedDestinations[\(index)]",
                "'\(entry)' is not a CIDR, an address or a host name pattern")
        }
        for (index, entry) in proxy.trustedIdentityHeaders.enumerated() {
            try v.require(
                AddressPattern(parsing: entry)?.isNetwork == true, "proxy.trustedIdentityHeaders[\(index)]",
                "'\(entry)' is not a CIDR or an address")
        }
        for (index, entry) in proxy.registryMirror.allowedRegistries.enumerated() {
            try v.require(
                !entry.isEmpty && !entry.contains("/"), "proxy.registryMirror.allowedRegistries[\(index)]",
                "'\(entry)' must be host[:port] or *.suffix[:port]")
        }
        try v.require(
            (1024...(80 << 10)).contains(proxy.maxHeaderBytes.bytes), "proxy.maxHeaderBytes",
            "must be 1K-80K (NIO's HTTP parser caps a head at 80K)")
        for (index, rule) in proxy.rules.enumerated() {
            try v.require(
                (try? Regex(rule.regex)) != nil, "proxy.rules[\(index)].regex",
                "'\(rule.regex)' is not a regular expression")
            try v.require(
                rule.redirect.isEmpty || !rule.redirect.contains("/"), "proxy.rules[\(index)].redirect",
                "'\(rule.redirect)' must be a host[:port]")
        }
        try v.require(
            !proxy.basicAuth.username.contains(":"), "proxy.basicAuth.username", "must not contain ':'")
        let mirror = proxy.registryMirror.url
        try v.require(
            (mirror.hasPrefix("http://") || mirror.hasPrefix("https://"))
                && mirror.split(separator: "/", omittingEmptySubsequences: true).count == 2,
            "proxy.registryMirror.url", "'\(mirror)' must be http(s)://host[:port]")
        let hijack = proxy.hijackHTTPS
        for (index, pattern) in hijack.hosts.enumerated() {
            try v.require(
                (try? Regex(pattern)) != nil, "proxy.hijackHTTPS.hosts[\(index)]",
                "'\(pattern)' is not a regular expression")
        }
        try v.require(
            hijack.hosts.isEmpty || !hijack.cert.isEmpty, "proxy.hijackHTTPS.cert",
            "names no CA certificate, which intercepting hosts needs")
        try v.require(
            hijack.hosts.isEmpty || !hijack.key.isEmpty, "proxy.hijackHTTPS.key",
            "names no CA private key, which intercepting hosts needs")
        for (index, pattern) in tls.insecureHosts.enumerated() {
            try v.require(
                (try? Regex(pattern)) != nil, "tls.insecureHosts[\(index)]", "'\(pattern)' is not a regular expression")
        }
    }
}

/// One proxy rule (DESIGN §8): a request whose absolute URL matches `regex` goes P2P (GET only) unless
/// `direct`; `useTLS` fetches an `http://` URL over HTTPS; `redirect` replaces the URL's host; a non-empty
/// `filteredQueryParams` replaces the default filter list of the task ID.
package struct ProxyRule: Codable, Sendable, Equatable {
    package var regex: String
    package var useTLS: Bool = false
    package var redirect: String = ""
    package var filteredQueryParams: [String] = []
    package var direct: Bool = false

    package init(
        regex: String, useTLS: Bool = false, redirect: String = "", filteredQueryParams: [String] = [],
        direct: Bool = false
    ) {
        self.regex = regex
        self.useTLS = useTLS
        self.redirect = redirect
        self.filteredQueryParams = filteredQueryParams
        self.direct = direct
    }

    /// Blobs of OCI registries and common artifact suffixes go P2P.
    package static let defaults: [ProxyRule] = [
        ProxyRule(regex: "blobs/sha256:"),
        ProxyRule(regex: #"\.(jar|rpm|whl|tar\.gz|bin|safetensors)(\?|$)"#),
    ]

    private enum CodingKeys: String, CodingKey {
        case regex, useTLS, redirect, filteredQueryParams, direct
    }

    /// Every key but `regex` may be left out.
    package init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        regex = try container.decode(String.self, forKey: .regex)
        useTLS = try container.decodeIfPresent(Bool.self, forKey: .useTLS) ?? false
        redirect = try container.decodeIfPresent(String.self, forKey: .redirect) ?? ""
        filteredQueryParams = try container.decodeIfPresent([String].self, forKey: .filteredQueryParams) ?? []
        direct = try container.decodeIfPresent(Bool.self, forKey: .direct) ?? false
    }
}

// MARK: - Scheduler

/// Configuration of `dragonfly scheduler`.
package struct SchedulerConfig: RoleConfiguration {
    /// Connection to the manager.
    package struct ManagerClientConfig: Codable, Sendable, Equatable {
        /// Manager gRPC address; empty means run without a manager.
        package var address: String = ""
        /// Keep-alive period towards the manager.
        package var keepAliveInterval: ConfigDuration = .seconds(5)
        /// Scheduler cluster to join; 0 means the manager's default cluster.
        package var schedulerClusterID: Int = 0
        package init() {}
    }

    /// Parent selection.
    package struct SchedulingConfig: Codable, Sendable, Equatable {
        /// Scheduling strategy plugin name.
        package var strategy: String = "default"
        /// Peers of the task sampled as parent candidates.
        package var candidateSampleLimit: Int = 40
        /// Parents handed to a child.
        package var parentLimit: Int = 8
        /// Reschedules of one peer before it is told to go back to the origin.
        package var retryLimit: Int = 5
        /// Peers of a task allowed to read the origin at once: this many ...
        package var backToSourceBase: Int = 1
        /// ... plus one per this many peers.
        package var backToSourcePeersPerExtra: Int = 100
        /// Refuse a parent whose edge would close a cycle among the task's peers (Dragonfly's DAG). Off by
        /// default: two downloading peers may then feed each other, which a swarm needs once the seed's upload
        /// is the bottleneck. Harmless either way: a peer asks only for pieces it lacks, verified against
        /// trusted digests, so no piece can circulate.
        package var acyclic: Bool = false
        /// A piece's trusted digest goes first to this many of the task's downloading peers (a different few
        /// for every piece), and to the rest once a peer that is neither an origin reader nor on a seed host holds
        /// the piece, or after `digestReleaseAfter`; so the seed, whose upload every byte crosses once, serves
        /// each fresh piece about this many times instead of to every child at once. 0: to every downloading
        /// peer at once. (`scripts/bench/swarm W1`: 1 finished in 30.5 s, 2 in 33.3 s, bound 22.3–24.5 s.)
        package var firstDigestRecipients: Int = 1
        /// The longest a piece's digest is held back from the other downloading peers: a safety net for a first
        /// recipient that stalls, longer than a piece takes from a seed shared by a whole swarm.
        package var digestReleaseAfter: ConfigDuration = .seconds(60)
        /// Staged pieces one peer is first recipient of at once (it fetches them from the seed one by one).
        package var firstDigestBacklog: Int = 2
        package init() {}
    }

    /// Garbage collection of the in-memory resource model.
    package struct GCConfig: Codable, Sendable, Equatable {
        /// How often GC runs.
        package var interval: ConfigDuration = .minutes(1)
        /// Peers with no progress for this long are removed.
        package var peerTTL: ConfigDuration = .minutes(30)
        /// Hosts not announced for this long are removed.
        package var hostTTL: ConfigDuration = .hours(1)
        /// Tasks with no peer activity for this long are removed.
        package var taskTTL: ConfigDuration = .hours(24)
        /// Peers kept per task; finished leaves are evicted first.
        package var maxPeersPerTask: Int = 1000
        package init() {}
    }

    package var log = LogConfig()
    /// gRPC listener of the Scheduler service.
    package var listen = ListenAddress(host: "0.0.0.0", port: 8002)
    /// `/metrics` and `/healthy` listener.
    package var metricsListen = ListenAddress(host: "0.0.0.0", port: 8000)
    /// IP announced to the manager; empty means the gRPC listener's address.
    package var advertiseIP: String = ""
    /// Host name registered with the manager; empty means the system host name.
    package var hostname: String = ""
    /// Data-centre tag registered with the manager.
    package var idc: String = ""
    /// Location `a|b|c` registered with the manager.
    package var location: String = ""
    package var manager = ManagerClientConfig()
    /// Seed peer (cdn) peer-service addresses known without the manager.
    package var seedPeers: [String] = []
    package var scheduling = SchedulingConfig()
    package var gc = GCConfig()
    /// Cluster trust: the secret demanded from seed peers and from calls that change another host's state.
    package var security = SecurityConfig()

    package init() {}

    package func validate() throws(DragonflyError) {
        let v = ConfigValidator()
        try v.require(
            manager.address.isEmpty || ListenAddress(parsing: manager.address) != nil, "manager.address",
            "'\(manager.address)' is not host:port")
        try v.require(manager.keepAliveInterval.milliseconds > 0, "manager.keepAliveInterval", "must be positive")
        try v.require(manager.schedulerClusterID >= 0, "manager.schedulerClusterID", "must be 0 (default) or an ID")
        try v.require(
            location.isEmpty
                || !location.split(separator: "|", omittingEmptySubsequences: false).contains(where: \.isEmpty),
            "location", "'\(location)' must be of the form a|b|c")
        for (index, address) in seedPeers.enumerated() {
            try v.require(
                ListenAddress(parsing: address) != nil, "seedPeers[\(index)]", "'\(address)' is not host:port")
        }
        try v.require(!scheduling.strategy.isEmpty, "scheduling.strategy", "must name a strategy")
        try v.require(
            (1...1000).contains(scheduling.candidateSampleLimit), "scheduling.candidateSampleLimit", "must be 1-1000")
        try v.require((1...64).contains(scheduling.parentLimit), "scheduling.parentLimit", "must be 1-64")
        try v.require(
            (0...64).contains(scheduling.firstDigestRecipients), "scheduling.firstDigestRecipients", "must be 0-64")
        try v.require(
            scheduling.digestReleaseAfter.milliseconds > 0, "scheduling.digestReleaseAfter", "must be positive")
        try v.require(
            (1...1024).contains(scheduling.firstDigestBacklog), "scheduling.firstDigestBacklog", "must be 1-1024")
        try v.require(scheduling.backToSourceBase >= 1, "scheduling.backToSourceBase", "must be at least 1")
        try v.require(
            scheduling.backToSourcePeersPerExtra >= 1, "scheduling.backToSourcePeersPerExtra", "must be at least 1")
        try v.require(gc.interval.milliseconds > 0, "gc.interval", "must be positive")
        try v.require((1...1_000_000).contains(gc.maxPeersPerTask), "gc.maxPeersPerTask", "must be 1-1000000")
    }
}

// MARK: - Manager

/// Configuration of `dragonfly manager`.
package struct ManagerConfig: RoleConfiguration {
    /// Keep-alive of registered schedulers and seed peers.
    package struct KeepAliveConfig: Codable, Sendable, Equatable {
        /// Expected keep-alive period.
        package var interval: ConfigDuration = .seconds(5)
        /// A member with no keep-alive for this long is inactive.
        package var timeout: ConfigDuration = .seconds(15)
        /// Schedulers, and seed peers, the manager keeps (each); a new one replaces the inactive one seen
        /// longest ago, and is refused when all are active.
        package var maxMembers: Int = 10_000
        /// An inactive member is forgotten after this long without a keep-alive.
        package var forgetAfter: ConfigDuration = .hours(168)
        package init() {}
    }

    package var log = LogConfig()
    /// REST API, console, `/healthy` and `/metrics`.
    package var listen = ListenAddress(host: "0.0.0.0", port: 8080)
    /// gRPC Manager service.
    package var grpcListen = ListenAddress(host: "0.0.0.0", port: 65003)
    /// Data directory; empty means `/var/lib/dragonfly/manager` as root, else `~/.dragonfly/manager`.
    package var dataDir: String = ""
    /// Database URL; empty means SQLite in the data dir, `postgres://user@host:port/db` for replicas.
    package var database: String = ""
    package var keepAlive = KeepAliveConfig()
    /// Sign-in sessions and jobs of the REST and open APIs.
    package struct APIConfig: Codable, Sendable, Equatable {
        /// How long a session token from `/api/v1/users/signin` stays valid.
        package var sessionLifetime: ConfigDuration = .hours(24)
        /// How often PENDING and RUNNING jobs are checked against their timeout.
        package var jobTimeoutCheck: ConfigDuration = .seconds(5)
        /// Connections the HTTP listener serves at once; more wait in the kernel's backlog.
        package var maxConnections: Int = 1024
        /// A connection without a complete request head for this long (after opening or its last answer) is
        /// closed.
        package var idleTimeout: ConfigDuration = .seconds(30)
        /// Failed sign-ins per user name and per client address within `signInWindow` before further attempts
        /// get 429 with an exponentially growing `Retry-After`.
        package var signInFailures: Int = 5
        /// The window in which failed sign-ins are counted; also the longest lock-out.
        package var signInWindow: ConfigDuration = .minutes(15)
        /// File holding the key that encrypts the session signing key in the database (refused when group or
        /// others may read it); empty: `DRAGONFLY_MANAGER_ENCRYPTION_KEY`, else (SQLite only) `session.key`
        /// created in the data directory. PostgreSQL replicas need the same key.
        package var sessionKeyEncryptionFile: String = ""
        package init() {}
    }
    package var api = APIConfig()
    /// Cluster trust: the secret every scheduler and seed peer must present.
    package var security = SecurityConfig()

    package init() {}

    package func validate() throws(DragonflyError) {
        let v = ConfigValidator()
        try v.require(api.sessionLifetime.milliseconds >= 60_000, "api.sessionLifetime", "must be at least 1m")
        try v.require(api.jobTimeoutCheck.milliseconds >= 100, "api.jobTimeoutCheck", "must be at least 100ms")
        try v.require((1...1_000_000).contains(api.maxConnections), "api.maxConnections", "must be 1-1000000")
        try v.require(api.idleTimeout.milliseconds >= 100, "api.idleTimeout", "must be at least 100ms")
        try v.require((1...1000).contains(api.signInFailures), "api.signInFailures", "must be 1-1000")
        try v.require(api.signInWindow.milliseconds >= 1000, "api.signInWindow", "must be at least 1s")
        try v.require(
            database.isEmpty || database.hasPrefix("postgres://") || database.hasPrefix("postgresql://")
                || database.hasPrefix("sqlite://"), "database",
            "'\(database)' must be empty (SQLite), sqlite://PATH or postgres://…")
        try v.require(keepAlive.interval.milliseconds > 0, "keepAlive.interval", "must be positive")
        try v.require((1...1_000_000).contains(keepAlive.maxMembers), "keepAlive.maxMembers", "must be 1-1000000")
        try v.require(
            keepAlive.forgetAfter > keepAlive.timeout, "keepAlive.forgetAfter", "must be longer than keepAlive.timeout")
        try v.require(
            keepAlive.timeout > keepAlive.interval, "keepAlive.timeout", "must be longer than keepAlive.interval")
    }
}
