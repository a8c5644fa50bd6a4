/// Settings of the `http`/`https` source client (DESIGN §9: `tls.caCerts`, `tls.insecureHosts`), the same on
/// daemon and cdn.
package struct HTTPSourceConfig: Sendable, Hashable {
    /// PEM files with extra trusted root certificates, added to the system roots.
    package var caCertificates: [String]
    /// Regular expressions matched against the whole host name; TLS certificates of matching hosts are not
    /// verified (self-signed test or lab origins).
    package var insecureHosts: [String]
    /// Time allowed to open a connection (TCP and TLS handshakes).
    package var connectTimeout: Duration
    /// Time allowed for the response head of one request when ``SourceRequest/timeout`` is not set; `nil`
    /// means no limit. Bodies are long streams: a stalled body is caught by ``readTimeout`` instead.
    package var requestTimeout: Duration?
    /// Longest silence while waiting for bytes of a response before the request fails.
    package var readTimeout: Duration
    /// Connections kept per origin host, enough for concurrent piece range requests.
    package var maximumConnectionsPerHost: Int
    /// Redirects followed for one request.
    package var maximumRedirects: Int
    /// Original URLs whose final (post-redirect) URL is remembered.
    package var redirectCacheCapacity: Int
    /// The `User-Agent` sent when the request does not carry one; `nil` means `dragonfly/<version>`.
    package var userAgent: String?

    package init(
        caCertificates: [String] = [],
        insecureHosts: [String] = [],
        connectTimeout: Duration = .seconds(10),
        requestTimeout: Duration? = .seconds(60),
        readTimeout: Duration = .seconds(60),
        maximumConnectionsPerHost: Int = 16,
        maximumRedirects: Int = 10,
        redirectCacheCapacity: Int = 1024,
        userAgent: String? = nil
    ) {
        self.caCertificates = caCertificates
        self.insecureHosts = insecureHosts
        self.connectTimeout = connectTimeout
        self.requestTimeout = requestTimeout
        self.readTimeout = readTimeout
        self.maximumConnectionsPerHost = maximumConnectionsPerHost
        self.maximumRedirects = maximumRedirects
        self.redirectCacheCapacity = redirectCacheCapacity
        self.userAgent = userAgent
    }
}
