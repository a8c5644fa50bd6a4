import AsyncHTTPClient
import DragonflyCore
import Logging
import NIOCore
import NIOHTTP1
import Prometheus

/// Forwards one request to its origin as it is and streams the answer back with its status and headers (only
/// hop-by-hop headers dropped). The request body streams up as the client sends it, the response body down
/// with the client's backpressure; neither is held in memory.
struct DirectForward {
    let head: HTTPRequestHead
    let url: String
    /// The checked address of the URL's host (``DestinationPolicy``): a plain-HTTP request connects to it, with
    /// the name in `Host`. (An HTTPS request connects by name; the certificate check ties it to the name.)
    let pinned: SocketAddress?
    let body: RequestReader
    let context: ProxyContext
    let responder: Responder
    let logger: Logger

    /// Forwards and answers; returns whether the client connection stays open.
    func respond() async throws -> Bool {
        var upstreamHeaders = ProxyHeaders.upstream(head.headers)
        var target = url
        if let pinned, let pinnedURL = Self.pinning(url, to: pinned) {
            target = pinnedURL.url
            upstreamHeaders.replaceOrAdd(name: "Host", value: pinnedURL.host)
            // The URL's userinfo, which the pinned URL drops, becomes basic credentials as a client would send.
            let authority = Self.authority(of: url)
            if let at = authority.lastIndex(of: "@"), !upstreamHeaders.contains(name: "Authorization") {
                let userinfo = URLFilter.percentDecoded(authority[..<at])
                upstreamHeaders.add(
                    name: "Authorization", value: "Basic " + ProxyAuthorization.base64(Array(userinfo.utf8)))
            }
        }
        var request = context.originRequest(
            url: target, method: HTTPMethod(rawValue: head.method.rawValue), headers: upstreamHeaders)
        let declaredLength = head.headers.first(name: "Content-Length").flatMap { Int64($0) }
        let isChunked = head.headers["Transfer-Encoding"].contains { $0.lowercased().contains("chunked") }
        if (declaredLength ?? 0) > 0 || isChunked {
            let reader = body
            reader.lend()
            let chunks = AsyncThrowingStream<ByteBuffer, any Error>(unfolding: { try await reader.nextBodyChunk() })
            request.body = .stream(chunks, length: declaredLength.map { .known($0) } ?? .unknown)
        }
        let response: HTTPClientResponse
        do {
            response = try await context.http.execute(request, deadline: .distantFuture, logger: logger)
        } catch {
            let reason = Redaction.message("\(error)")
            logger.debug("direct forward failed", metadata: ["df.error": "\(reason)"])
            return try await responder.text(
                .badGateway, "cannot reach \(Self.hostAndPort(of: url)): \(reason)", close: !body.isBodyComplete)
        }
        let headers = ProxyHeaders.downstream(response.headers)
        let keepAlive = responder.keepAlive
        responder.writeHead(response.status, headers: headers, keepAlive: keepAlive)
        if head.method != .HEAD {
            for try await chunk in response.body {
                try await responder.writeBody(chunk)
                context.metrics?.proxyDirectBytes.increment(by: Int64(chunk.readableBytes))
            }
        }
        try await responder.finish()
        return keepAlive
    }

    /// `[userinfo@]host[:port]` of an absolute URL.
    static func authority(of url: String) -> String {
        guard let start = url.firstRange(of: "://")?.upperBound else { return url }
        let rest = url[start...]
        return String(rest.prefix { $0 != "/" && $0 != "?" && $0 != "#" })
    }

    /// `host[:port]` of an absolute URL without userinfo, for messages.
    static func hostAndPort(of url: String) -> String {
        let authority = authority(of: url)
        guard let at = authority.lastIndex(of: "@") else { return authority }
        return String(authority[authority.index(after: at)...])
    }

    /// The scheme (lowercase), host (no brackets) and port (the scheme's default when none) of an http(s) URL.
    static func target(of url: String) -> (scheme: String, host: String, port: Int)? {
        guard let schemeEnd = url.firstRange(of: "://") else { return nil }
        let scheme = url[..<schemeEnd.lowerBound].lowercased()
        guard scheme == "http" || scheme == "https" else { return nil }
        let (host, portText) = RegistryMirror.split(authority: hostAndPort(of: url))
        guard !host.isEmpty else { return nil }
        let port: Int
        if let portText {
            guard let number = Int(portText), (1...65535).contains(number) else { return nil }
            port = number
        } else {
            port = scheme == "https" ? 443 : 80
        }
        return (scheme, host, port)
    }

    /// A plain-HTTP `url` with its authority replaced by `address` (userinfo dropped), and the `Host` value that
    /// names the original; nil for HTTPS or an address without an IP.
    static func pinning(_ url: String, to address: SocketAddress) -> (url: String, host: String)? {
        guard let parsed = target(of: url), parsed.scheme == "http", let ip = address.ipAddress,
            let schemeEnd = url.firstRange(of: "://")
        else { return nil }
        let authority = authority(of: url)
        let rest = url[url.index(schemeEnd.upperBound, offsetBy: authority.count)...]
        let literal = ip.contains(":") ? "[\(ip)]" : ip
        return ("http://\(literal):\(parsed.port)" + rest, hostAndPort(of: url))
    }
}
