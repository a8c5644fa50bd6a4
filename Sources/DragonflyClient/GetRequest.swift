package import DragonflyCore

/// What `dragonfly get` was asked to do (DESIGN §15), already validated.
package struct GetRequest: Sendable {
    package var url: String
    /// Absolute output path; nil writes to standard output.
    package var output: String?
    package var digest: FileDigest?
    package var headers: [HeaderField]
    package var tag: String
    package var application: String
    /// Query keys left out of the task ID; nil means the default list.
    package var filteredQueryParams: [String]?
    /// Bytes to write (the task is still the whole object).
    package var range: ByteRange?
    /// Overall deadline; nil means none.
    package var timeout: Duration?
    /// Download rate limit in bytes/s.
    package var rateLimit: Int64?
    /// A caller-fixed piece length (part of the task ID).
    package var pieceLength: Int64?
    /// Concurrent range requests to the origin.
    package var originConnections: Int
    package var disableBackToSource: Bool

    package init(
        url: String,
        output: String?,
        digest: FileDigest? = nil,
        headers: [HeaderField] = [],
        tag: String = "",
        application: String = "",
        filteredQueryParams: [String]? = nil,
        range: ByteRange? = nil,
        timeout: Duration? = nil,
        rateLimit: Int64? = nil,
        pieceLength: Int64? = nil,
        originConnections: Int = 4,
        disableBackToSource: Bool = false
    ) {
        self.url = url
        self.output = output
        self.digest = digest
        self.headers = headers
        self.tag = tag
        self.application = application
        self.filteredQueryParams = filteredQueryParams
        self.range = range
        self.timeout = timeout
        self.rateLimit = rateLimit
        self.pieceLength = pieceLength
        self.originConnections = originConnections
        self.disableBackToSource = disableBackToSource
    }

    /// Refuses a `--range` that starts at or beyond the end of an object of `contentLength` bytes, as the origin
    /// would (DESIGN §15: exit 1 naming 416).
    package func checkRange(contentLength: Int64) throws(DragonflyError) {
        guard let range, range.start >= contentLength, range.start > 0 || contentLength > 0 else { return }
        throw DragonflyError(
            code: .originError,
            message: "range \(range.start)- is beyond the end of \(Redaction.url(url)) (\(contentLength) bytes): "
                + "416 Range Not Satisfiable")
    }

    /// The task this request reads.
    package var taskID: TaskID {
        TaskID.make(
            url: url,
            tag: tag,
            application: application,
            pieceLength: pieceLength,
            filteredQueryParams: filteredQueryParams
        )
    }
}

/// Progress of a download, reported as pieces land.
package struct GetProgress: Sendable {
    /// Bytes of the object now held locally.
    package var completedBytes: Int64
    /// The object's length, when known.
    package var totalBytes: Int64?
    /// Bytes fetched from the origin by this run.
    package var originBytes: Int64
    /// Bytes served from the local cache (held before this run).
    package var cachedBytes: Int64

    package init(completedBytes: Int64 = 0, totalBytes: Int64? = nil, originBytes: Int64 = 0, cachedBytes: Int64 = 0) {
        self.completedBytes = completedBytes
        self.totalBytes = totalBytes
        self.originBytes = originBytes
        self.cachedBytes = cachedBytes
    }
}

/// How a finished download went.
package struct GetSummary: Sendable {
    package var taskID: TaskID
    /// Bytes written to the output.
    package var outputBytes: Int64
    /// The object's length.
    package var contentLength: Int64
    package var originBytes: Int64
    package var cachedBytes: Int64
    package var elapsed: Duration
}
