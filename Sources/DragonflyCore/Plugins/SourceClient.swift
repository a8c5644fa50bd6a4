package import NIOCore

/// One header of an origin request or response (names may repeat).
package struct HeaderField: Hashable, Sendable {
    package var name: String
    package var value: String
    package init(name: String, value: String) {
        self.name = name
        self.value = value
    }
}

/// An inclusive-start byte range: `length` bytes from `start`, or to the end when `length` is nil.
package struct ByteRange: Hashable, Sendable, CustomStringConvertible {
    package var start: Int64
    package var length: Int64?
    package init(start: Int64, length: Int64?) {
        self.start = start
        self.length = length
    }
    /// The last byte's offset, when the length is known.
    package var end: Int64? { length.map { start + $0 - 1 } }
    /// The HTTP `Range` header value, e.g. `bytes=0-1023` or `bytes=4096-`.
    package var httpHeaderValue: String { end.map { "bytes=\(start)-\($0)" } ?? "bytes=\(start)-" }
    package var description: String { httpHeaderValue }
}

/// What a source client is asked to read.
package struct SourceRequest: Sendable {
    /// The origin URL (`https://…`, `file:///…`, `s3://…`).
    package var url: String
    /// Headers passed through to the origin (auth, cookies, user agent).
    package var headers: [HeaderField]
    /// Overall deadline for the request; nil means the client's default.
    package var timeout: Duration?
    package init(url: String, headers: [HeaderField] = [], timeout: Duration? = nil) {
        self.url = url
        self.headers = headers
        self.timeout = timeout
    }
}

/// What the origin says about an object.
package struct SourceMetadata: Sendable {
    /// Length in bytes, nil when the origin does not say.
    package var contentLength: Int64?
    /// Whether byte-range requests are honoured.
    package var supportsRanges: Bool
    package var etag: String?
    package var lastModified: String?
    /// The URL after redirects, used for later range requests.
    package var finalURL: String?
    /// Response headers worth keeping (content type, cache validators).
    package var headers: [HeaderField]
    package init(
        contentLength: Int64?,
        supportsRanges: Bool,
        etag: String? = nil,
        lastModified: String? = nil,
        finalURL: String? = nil,
        headers: [HeaderField] = []
    ) {
        self.contentLength = contentLength
        self.supportsRanges = supportsRanges
        self.etag = etag
        self.lastModified = lastModified
        self.finalURL = finalURL
        self.headers = headers
    }
}

/// A streamed origin body: bytes arrive in order with backpressure.
package typealias SourceBody = any AsyncSequence<ByteBuffer, any Error> & Sendable

/// An origin response to `fetch`.
package struct SourceResponse: Sendable {
    package var metadata: SourceMetadata
    /// Whether the body is exactly the requested range (false when a server ignored `Range` and sent 200).
    package var isPartial: Bool
    package var body: SourceBody
    package init(metadata: SourceMetadata, isPartial: Bool, body: SourceBody) {
        self.metadata = metadata
        self.isPartial = isPartial
        self.body = body
    }
}

/// An entry of a listing, for recursive downloads.
package struct SourceEntry: Hashable, Sendable {
    package var url: String
    package var isDirectory: Bool
    package var contentLength: Int64?
    package init(url: String, isDirectory: Bool, contentLength: Int64?) {
        self.url = url
        self.isDirectory = isDirectory
        self.contentLength = contentLength
    }
}

/// An origin adapter (DESIGN §9), registered by URL scheme in the ``PluginRegistry``.
package protocol SourceClient: Sendable {
    /// Lower-case URL schemes this client serves, e.g. `["http", "https"]`.
    var schemes: [String] { get }
    /// Content length, validators and range support.
    func stat(_ request: SourceRequest) async throws -> SourceMetadata
    /// The bytes of `range` (the whole object when nil).
    func fetch(_ request: SourceRequest, range: ByteRange?) async throws -> SourceResponse
    /// The entries under a directory-like URL.
    func list(_ request: SourceRequest) async throws -> [SourceEntry]
}

extension SourceClient {
    package func list(_ request: SourceRequest) async throws -> [SourceEntry] {
        throw DragonflyError(code: .unimplemented, message: "listing is not supported for \(request.url)")
    }
}

/// The cause of a ``DragonflyError/Code/originError`` when the origin answered with an error status.
///
/// Kept as data so the scheduler can broadcast it to the other peers of a task (`SourceError{status, headers}`)
/// and the proxy can answer with the origin's own status and headers.
package struct OriginResponseError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The HTTP status code (or the scheme's equivalent), e.g. `404`.
    package var status: Int
    /// The reason phrase, e.g. `Not Found`.
    package var reason: String
    /// The origin's response headers.
    package var headers: [HeaderField]

    package init(status: Int, reason: String, headers: [HeaderField] = []) {
        self.status = status
        self.reason = reason
        self.headers = headers
    }

    /// Whether retrying later may succeed: 408, 429 and 5xx.
    package var isTemporary: Bool { status == 408 || status == 429 || (500...599).contains(status) }

    package var description: String { "\(status) \(reason)" }
}
