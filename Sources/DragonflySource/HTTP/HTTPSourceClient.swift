import AsyncHTTPClient
import Crypto
package import DragonflyCore
package import Logging
import NIOCore
import NIOHTTP1
import NIOSSL
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The `http`/`https` origin adapter (DESIGN §9), built on one shared AsyncHTTPClient `HTTPClient`.
///
/// - `stat` sends `HEAD`; when the origin refuses it (any non-2xx) or gives no length, it asks for the first
///   byte with `Range: bytes=0-0` and reads the total from `Content-Range`.
/// - `fetch` streams the body with AsyncHTTPClient's backpressure; a ranged request answered with 200 and the
///   whole body comes back with `isPartial == false`.
/// - Redirects are followed (bounded) and the final URL is remembered per original URL and credentials
///   (bounded LRU; the key holds a SHA-256 of the `Authorization` and `Cookie` values, never the values), so
///   later requests with the same credentials (the piece range requests) go straight to it, and a request
///   without them (or with others) asks the original URL, which decides. A remembered URL that stops working
///   (401/403/404/410 or unreachable, e.g. an expired pre-signed redirect) is forgotten and the original URL
///   asked again. Going straight to a final URL on another origin drops `Authorization`, `Cookie`,
///   `Proxy-Authorization` and `Origin`, as following the redirect would have.
/// - Request headers are passed through except `Range` (set from the byte range), `Host` and hop-by-hop
///   headers. Decompression is off: bytes and ranges are the origin's representation.
///
/// Errors: an error status is ``DragonflyError/Code/originError`` with an ``OriginResponseError`` cause;
/// refused connections, timeouts and broken streams are ``DragonflyError/Code/unavailable`` naming the host.
///
/// Call ``shutdown()`` once the client is no longer needed.
package final class HTTPSourceClient: SourceClient {
    package let schemes = ["http", "https"]
    /// The configuration the client was made with.
    package let configuration: HTTPSourceConfig

    private let client: HTTPClient
    private let tls: OriginTLS
    private let finalURLs: Mutex<LRUCache<String, String>>
    private let userAgent: String
    private let logger: Logger

    /// Statuses from a remembered final URL that make the client forget it and ask the original URL again.
    private static let staleRedirectStatuses: Set<UInt> = [401, 403, 404, 410]
    /// Request headers never passed through.
    private static let droppedRequestHeaders: Set<String> = [
        "range", "host", "content-length", "transfer-encoding", "connection", "keep-alive", "te", "upgrade",
        "proxy-connection", "trailer",
    ]
    /// Request headers dropped when going straight to a final URL on another origin.
    private static let crossOriginDroppedHeaders: Set<String> = [
        "authorization", "cookie", "proxy-authorization", "origin",
    ]
    /// Response headers kept in ``SourceMetadata/headers``.
    private static let keptResponseHeaders: Set<String> = [
        "content-type", "content-encoding", "content-disposition", "content-language", "cache-control", "expires",
        "etag", "last-modified", "accept-ranges", "x-amz-version-id", "x-amz-checksum-sha256",
    ]

    /// Makes the client.
    ///
    /// - Throws: ``DragonflyError/Code/configuration`` naming `tls.caCerts` when a PEM file cannot be read,
    ///   or `tls.insecureHosts` when a pattern is not a valid regular expression.
    package init(
        configuration: HTTPSourceConfig = HTTPSourceConfig(),
        logger: Logger = Logger(label: "dragonfly.source.http")
    ) throws {
        let tls = try OriginTLS(
            caCertificates: configuration.caCertificates, insecureHosts: configuration.insecureHosts)
        var httpConfiguration = HTTPClient.Configuration(
            tlsConfiguration: tls.verified,
            redirectConfiguration: .follow(max: max(configuration.maximumRedirects, 0), allowCycles: false),
            timeout: HTTPClient.Configuration.Timeout(
                connect: TimeAmount(configuration.connectTimeout),
                read: TimeAmount(configuration.readTimeout)
            ),
            decompression: .disabled
        )
        httpConfiguration.connectionPool.concurrentHTTP1ConnectionsPerHostSoftLimit = max(
            configuration.maximumConnectionsPerHost, 1)
        // Retries belong to the caller (PieceFetcher: bounded, with backoff). The pool's own retry would turn a
        // refused connection into a wait of the whole connect timeout.
        httpConfiguration.connectionPool.retryConnectionEstablishment = false

        self.configuration = configuration
        self.client = HTTPClient(
            eventLoopGroup: HTTPClient.defaultEventLoopGroup,
            configuration: httpConfiguration,
            backgroundActivityLogger: logger
        )
        self.tls = tls
        self.finalURLs = Mutex(LRUCache(capacity: configuration.redirectCacheCapacity))
        self.userAgent = configuration.userAgent ?? "dragonfly/\(DragonflyVersion.current)"
        self.logger = logger
    }

    /// Closes the connection pool; requests made afterwards fail.
    package func shutdown() async throws {
        try await client.shutdown()
    }

    /// The remembered final URL for `url` asked with request `headers` (only their credentials count), if such
    /// a request was redirected.
    package func cachedFinalURL(for url: String, headers: [HeaderField] = []) -> String? {
        let key = Self.redirectKey(url: url, headers: headers)
        return finalURLs.withLock { $0.value(forKey: key) }
    }

    /// The redirect cache key: `url`, and when the request carries credentials a SHA-256 over them.
    static func redirectKey(url: String, headers: [HeaderField]) -> String {
        let credentials = headers.filter { crossOriginDroppedHeaders.contains($0.name.lowercased()) }
            .map { $0.name.lowercased() + ":" + $0.value }
            .sorted()
        guard !credentials.isEmpty else { return url }
        let digest = SHA256.hash(data: Array(credentials.joined(separator: "\n").utf8))
        return url + " credentials:" + TaskID.hex(digest)
    }

    // MARK: SourceClient

    package func stat(_ request: SourceRequest) async throws -> SourceMetadata {
        let head = try await execute(request, method: .HEAD, range: nil)
        let status = head.response.status
        if (200..<300).contains(status.code) {
            let metadata = makeMetadata(head.response.headers, finalURL: head.finalURL, range: nil, status: status)
            if metadata.contentLength != nil { return metadata }
            logger.debug(
                "HEAD gave no content length; probing with a ranged GET",
                metadata: ["df.source.url": "\(Redaction.url(request.url))"])
        } else {
            logger.debug(
                "HEAD refused; probing with a ranged GET",
                metadata: ["df.source.url": "\(Redaction.url(request.url))", "df.source.status": "\(status.code)"])
        }
        await discard(head.response)
        return try await statByFirstByte(request)
    }

    package func fetch(_ request: SourceRequest, range: ByteRange?) async throws -> SourceResponse {
        let sent = try await execute(request, method: .GET, range: range)
        let response = sent.response
        guard (200..<300).contains(response.status.code) else {
            await discard(response)
            throw originError(response, url: request.url, range: range)
        }
        var isPartial = false
        if let range, response.status == .partialContent {
            let header = response.headers.first(name: "content-range")
            let contentRange = header.flatMap(ContentRange.init)
            let startsRight = contentRange?.first == range.start
            let endsInside = range.end.map { end in contentRange?.last.map { $0 <= end } ?? false } ?? true
            guard startsRight, endsInside else {
                throw DragonflyError(
                    code: .originError,
                    message: "origin answered range \(range) of \(Redaction.url(request.url)) with Content-Range "
                        + "'\(header ?? "")'")
            }
            isPartial = true
        }
        let metadata = makeMetadata(response.headers, finalURL: sent.finalURL, range: range, status: response.status)
        logger.debug(
            "origin response",
            metadata: [
                "df.source.url": "\(Redaction.url(request.url))", "df.source.status": "\(response.status.code)",
                "df.source.range": "\(range.map(String.init(describing:)) ?? "none")",
            ])
        let host = URLParts(sent.finalURL)?.host ?? sent.finalURL
        let url = request.url
        let body = ErrorMappingBody(base: response.body) { error in
            Self.transportError(error, url: url, host: host, doing: "reading the body of")
        }
        return SourceResponse(metadata: metadata, isPartial: isPartial, body: body)
    }

    // MARK: Stat helpers

    /// `GET` with `Range: bytes=0-0`: a 206 names the total length in `Content-Range`.
    private func statByFirstByte(_ request: SourceRequest) async throws -> SourceMetadata {
        let range = ByteRange(start: 0, length: 1)
        let sent = try await execute(request, method: .GET, range: range)
        let response = sent.response
        switch response.status {
        case .partialContent:
            var metadata = makeMetadata(
                response.headers, finalURL: sent.finalURL, range: range, status: .partialContent)
            metadata.supportsRanges = true
            await discard(response)
            return metadata
        case .rangeNotSatisfiable:
            // An empty object: nothing satisfies `bytes=0-0`; nginx answers `Content-Range: bytes */0`.
            if let total = response.headers.first(name: "content-range").flatMap(ContentRange.init)?.total,
                total == 0
            {
                var metadata = makeMetadata(response.headers, finalURL: sent.finalURL, range: nil, status: .ok)
                metadata.contentLength = 0
                metadata.supportsRanges = true
                await discard(response)
                return metadata
            }
            await discard(response)
            throw originError(response, url: request.url, range: range)
        default:
            guard (200..<300).contains(response.status.code) else {
                await discard(response)
                throw originError(response, url: request.url, range: range)
            }
            // The Range header was ignored: this is the whole body, which is dropped unread (closing the
            // connection) rather than downloaded.
            return makeMetadata(response.headers, finalURL: sent.finalURL, range: range, status: response.status)
        }
    }

    /// Metadata from response headers. `range` is the range that was requested, if any.
    private func makeMetadata(
        _ headers: HTTPHeaders,
        finalURL: String,
        range: ByteRange?,
        status: HTTPResponseStatus
    ) -> SourceMetadata {
        let acceptsRanges = headers[canonicalForm: "accept-ranges"].contains { $0.lowercased() == "bytes" }
        var contentLength: Int64?
        var supportsRanges = acceptsRanges
        if status == .partialContent {
            contentLength = headers.first(name: "content-range").flatMap(ContentRange.init)?.total
            supportsRanges = true
        } else if range != nil && status == .ok {
            // The origin ignored the Range header: whatever Accept-Ranges claims, ranges do not work.
            supportsRanges = false
            contentLength = Self.contentLength(headers)
        } else if status == .noContent {
            contentLength = 0
        } else {
            contentLength = Self.contentLength(headers)
        }
        return SourceMetadata(
            contentLength: contentLength,
            supportsRanges: supportsRanges,
            etag: headers.first(name: "etag"),
            lastModified: headers.first(name: "last-modified"),
            finalURL: finalURL,
            headers: headers.filter { Self.keptResponseHeaders.contains($0.name.lowercased()) }
                .map { HeaderField(name: $0.name, value: $0.value) }
        )
    }

    /// The `Content-Length`, unless the body is chunked (then the length is unknown).
    private static func contentLength(_ headers: HTTPHeaders) -> Int64? {
        guard !headers.contains(name: "transfer-encoding") else { return nil }
        return headers.first(name: "content-length").flatMap { Int64($0) }.flatMap { $0 >= 0 ? $0 : nil }
    }

    // MARK: Requests

    /// Sends a request to the remembered final URL of `request.url` if there is one, else to `request.url`,
    /// and remembers where redirects ended.
    private func execute(
        _ request: SourceRequest,
        method: HTTPMethod,
        range: ByteRange?
    ) async throws -> (response: HTTPClientResponse, finalURL: String) {
        let original = request.url
        guard let originalParts = URLParts(original), originalParts.scheme == "http" || originalParts.scheme == "https"
        else {
            throw DragonflyError(code: .invalidArgument, message: "'\(original)' is not an http(s) URL")
        }
        let key = Self.redirectKey(url: original, headers: request.headers)
        if let cached = finalURLs.withLock({ $0.value(forKey: key) }) {
            let crossOrigin = URLParts(cached)?.origin != originalParts.origin
            do {
                let response = try await send(
                    request, to: cached, method: method, range: range, crossOrigin: crossOrigin)
                if !Self.staleRedirectStatuses.contains(response.status.code) {
                    let finalURL = response.history.last?.request.url ?? cached
                    if finalURL != cached { remember(finalURL, for: original, key: key) }
                    return (response, finalURL)
                }
                logger.debug(
                    "remembered redirect target refused the request; asking the original URL",
                    metadata: [
                        "df.source.url": "\(Redaction.url(original))", "df.source.status": "\(response.status.code)",
                    ])
                await discard(response)
            } catch let error as DragonflyError where error.code == .unavailable {
                logger.debug(
                    "remembered redirect target unreachable; asking the original URL",
                    metadata: ["df.source.url": "\(Redaction.url(original))", "df.error": "\(error)"])
            }
            finalURLs.withLock { $0.removeValue(forKey: key) }
        }
        let response = try await send(request, to: original, method: method, range: range, crossOrigin: false)
        let finalURL = response.history.last?.request.url ?? original
        if finalURL != original {
            remember(finalURL, for: original, key: key)
        }
        return (response, finalURL)
    }

    private func remember(_ finalURL: String, for original: String, key: String) {
        logger.debug(
            "remembering redirect target",
            metadata: [
                "df.source.url": "\(Redaction.url(original))", "df.source.final_url": "\(Redaction.url(finalURL))",
            ])
        finalURLs.withLock { $0.setValue(finalURL, forKey: key) }
    }

    private func send(
        _ request: SourceRequest,
        to url: String,
        method: HTTPMethod,
        range: ByteRange?,
        crossOrigin: Bool
    ) async throws -> HTTPClientResponse {
        var outgoing = HTTPClientRequest(url: url)
        outgoing.method = method
        for field in request.headers {
            let name = field.name.lowercased()
            if Self.droppedRequestHeaders.contains(name) { continue }
            if crossOrigin && Self.crossOriginDroppedHeaders.contains(name) { continue }
            outgoing.headers.add(name: field.name, value: field.value)
        }
        if !outgoing.headers.contains(name: "user-agent") {
            outgoing.headers.add(name: "User-Agent", value: userAgent)
        }
        if let range {
            outgoing.headers.add(name: "Range", value: range.httpHeaderValue)
        }
        let parts = URLParts(url)
        if let parts, parts.scheme == "https", let override = tls.override(forHost: parts.host) {
            outgoing.tlsConfiguration = override
        }
        let deadline = (request.timeout ?? configuration.requestTimeout).map { NIODeadline.now() + TimeAmount($0) }
        do {
            return try await client.execute(outgoing, deadline: deadline ?? .distantFuture)
        } catch {
            let authority = parts.map { parts in parts.port.map { "\(parts.host):\($0)" } ?? parts.host }
            throw Self.transportError(error, url: request.url, host: authority ?? url, doing: "requesting")
        }
    }

    /// Reads a small error body so the connection can be reused; larger or unsized bodies are dropped, which
    /// closes the connection.
    private func discard(_ response: HTTPClientResponse) async {
        guard let length = Self.contentLength(response.headers), length <= 64 * 1024 else { return }
        _ = try? await response.body.collect(upTo: Int(length))
    }

    // MARK: Errors

    private func originError(_ response: HTTPClientResponse, url: String, range: ByteRange?) -> DragonflyError {
        let status = response.status
        let suffix = range.map { " (range \($0))" } ?? ""
        return DragonflyError(
            code: .originError,
            message: "origin returned \(status.code) \(status.reasonPhrase) for \(Redaction.url(url))\(suffix)",
            cause: OriginResponseError(
                status: Int(status.code),
                reason: status.reasonPhrase,
                headers: response.headers.map { HeaderField(name: $0.name, value: $0.value) }
            )
        )
    }

    /// Maps an AsyncHTTPClient or NIO error to a ``DragonflyError`` (or `CancellationError`).
    static func transportError(_ error: any Error, url: String, host: String, doing activity: String) -> any Error {
        if error is CancellationError || error is DragonflyError { return error }
        if let error = error as? HTTPClientError {
            switch error {
            case .cancelled:
                return CancellationError()
            case .invalidURL, .emptyHost, .emptyScheme:
                return DragonflyError(
                    code: .invalidArgument, message: "'\(Redaction.url(url))' is not a valid URL", cause: error)
            case .redirectLimitReached, .redirectCycleDetected:
                return DragonflyError(
                    code: .originError, message: "origin redirects of \(Redaction.url(url)) loop or go on too long",
                    cause: error)
            case .alreadyShutdown:
                return DragonflyError(
                    code: .failedPrecondition, message: "the HTTP source client was shut down", cause: error)
            default:
                break
            }
        }
        if let reason = connectFailure(error) {
            return DragonflyError(code: .unavailable, message: "cannot connect to \(host): \(reason)", cause: error)
        }
        return DragonflyError(
            code: .unavailable,
            message: "origin host \(host) failed while \(activity) \(Redaction.url(url)): \(error)",
            cause: error
        )
    }

    /// The reason, in plain words (`connection refused`), when `error` means no connection was made.
    static func connectFailure(_ error: any Error) -> String? {
        if let error = error as? HTTPClientError, error == .connectTimeout { return "connection timed out" }
        guard let error = error as? IOError,
            [ECONNREFUSED, EHOSTUNREACH, ENETUNREACH, ETIMEDOUT, EADDRNOTAVAIL].contains(error.errnoCode)
        else { return nil }
        return String(cString: strerror(error.errnoCode)).lowercased()
    }
}

extension TimeAmount {
    /// The duration in nanoseconds, saturating.
    init(_ duration: Duration) {
        let (seconds, attoseconds) = duration.components
        let (whole, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        self = .nanoseconds(overflow ? .max : whole &+ attoseconds / 1_000_000_000)
    }
}
