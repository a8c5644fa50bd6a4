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
    let body: RequestReader
    let context: ProxyContext
    let responder: Responder
    let logger: Logger

    /// Forwards and answers; returns whether the client connection stays open.
    func respond() async throws -> Bool {
        var request = context.originRequest(
            url: url, method: HTTPMethod(rawValue: head.method.rawValue), headers: ProxyHeaders.upstream(head.headers))
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
            logger.debug("direct forward failed", metadata: ["df.error": "\(error)"])
            return try await responder.text(
                .badGateway, "cannot reach \(Self.authority(of: url)): \(error)", close: !body.isBodyComplete)
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

    /// `host[:port]` of an absolute URL, for messages.
    static func authority(of url: String) -> String {
        guard let start = url.firstRange(of: "://")?.upperBound else { return url }
        let rest = url[start...]
        return String(rest.prefix { $0 != "/" && $0 != "?" && $0 != "#" })
    }
}
