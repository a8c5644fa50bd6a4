import AsyncHTTPClient
import DragonflyCore
import DragonflyProto
import DragonflyRPC
import DragonflyStorage
import Logging
import NIOCore
import NIOHTTP1
import Prometheus
import Synchronization

/// Answers a GET from the task of its URL: the daemon's downloader fetches the task (from peers, the cache or
/// the origin, as for `get`) while the response streams the task's bytes from the store in order, each piece
/// as soon as it is verified and stored. A `Range` gets 206 with the exact `Content-Range` and
/// `Content-Length` (or 416); the downloader is asked for that range when it is known up front: its pieces are
/// fetched before the rest of the task (which always follows in the background, so `X-Dragonfly-Prefetch` is
/// effectively on), and the answer can start once they are held.
///
/// Memory per response: at most two store chunks (``PieceStoreConfiguration/chunkSize``, 1 MiB) in flight;
/// writes wait for the client to read.
struct P2PResponse {
    let head: HTTPRequestHead
    let route: ProxyRoute
    let isBlob: Bool
    let context: ProxyContext
    let responder: Responder
    /// Tells the response when its client went away.
    let presence: ClientPresence
    let logger: Logger

    /// Request headers never sent to the origin of a P2P task: the task is the whole object, identity-encoded,
    /// shared by every caller.
    static let strippedHeaders: Set<String> = [
        "range", "if-range", "if-match", "if-none-match", "if-modified-since", "if-unmodified-since",
        "accept-encoding",
    ]

    /// The client's headers a P2P task sends to its origin.
    static func originHeaders(_ headers: HTTPHeaders) -> HTTPHeaders {
        var kept = HTTPHeaders()
        for (name, value) in ProxyHeaders.upstream(headers) where !strippedHeaders.contains(name.lowercased()) {
            kept.add(name: name, value: value)
        }
        return kept
    }

    func respond() async throws -> Bool {
        let headers = head.headers
        var download = Dragonfly_V1_Download()
        download.url = route.url
        if let filter = route.filteredQueryParams { download.filteredQueryParams = filter }
        download.tag = headers.first(name: "X-Dragonfly-Tag") ?? ""
        download.application = headers.first(name: "X-Dragonfly-Application") ?? ""
        if let text = headers.first(name: "X-Dragonfly-Priority") {
            guard let level = Int(text.trimmingSpaces()), (0...6).contains(level),
                let priority = Dragonfly_V1_Priority(rawValue: level)
            else {
                return try await responder.text(.badRequest, "X-Dragonfly-Priority '\(text.prefix(20))' is not 0-6")
            }
            download.priority = priority
        }
        download.prefetch = headers.first(name: "X-Dragonfly-Prefetch")?.lowercased() == "true"
        for (name, value) in Self.originHeaders(headers) {
            // Repeated headers are joined, as HTTP allows for list-valued fields.
            if let existing = download.requestHeader[name] {
                download.requestHeader[name] = existing + ", " + value
            } else {
                download.requestHeader[name] = value
            }
        }
        let range = headers.first(name: "Range").flatMap(ProxyByteRange.init(header:))
        if let wanted = range?.downloadRange {
            var value = Dragonfly_V1_Range()
            value.start = UInt64(wanted.start)
            if let length = wanted.length { value.length = UInt64(length) }
            download.range = value
        }
        let taskID = TaskID.make(
            url: download.url, tag: download.tag, application: download.application, pieceLength: nil,
            filteredQueryParams: download.filteredQueryParams.isEmpty ? nil : download.filteredQueryParams)
        var logger = logger
        logger[metadataKey: "df.task.id"] = "\(taskID)"
        var taskHeader = HTTPHeaders()
        taskHeader.add(name: "X-Dragonfly-Task-ID", value: taskID.rawValue)

        // A task already in the cache is joined only when this request's own URL names its content: nothing of
        // this request may go into (or come out of) a task another URL made unless the origin says it is the
        // same object.
        var joined: String?
        if let existing = context.store.taskInfo(taskID: taskID) {
            guard await namesContent(of: existing) else {
                return try await refuseJoin(taskID: taskID, extra: taskHeader)
            }
            joined = existing.url
        }

        let watch = DownloadWatch()
        // A client that goes away ends its response at once (the download itself may finish into the cache).
        presence.attach(watch)
        defer { presence.detach() }
        let downloader = context.downloader
        let request = download
        return try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                do {
                    _ = try await downloader.download(request) { _ in watch.bump() }
                    watch.finish(nil)
                } catch {
                    watch.finish(DragonflyError(converting: error))
                }
            }
            defer { group.cancelAll() }
            return try await stream(
                taskID: taskID, range: range, watch: watch, joined: joined, taskHeader: taskHeader, logger: logger)
        }
    }

    /// Whether this request's URL names the content of the stored task `info`: the same URL after the default
    /// query filter (DESIGN §4), or — when the URLs differ (a tag or a filter made the IDs meet) — an origin
    /// `HEAD` of this request's own URL, with the client's headers, whose length and validators (`ETag`,
    /// `Last-Modified`; at least one) equal the task's.
    private func namesContent(of info: StoredTaskInfo) async -> Bool {
        let defaults = URLFilter.defaultFilteredQueryParams
        if URLFilter.filter(info.url, removing: defaults) == URLFilter.filter(route.url, removing: defaults) {
            return true
        }
        guard let taskLength = info.contentLength else { return false }
        let request = context.originRequest(url: route.url, method: .HEAD, headers: Self.originHeaders(head.headers))
        guard let response = try? await context.http.execute(request, deadline: .now() + .seconds(30), logger: logger),
            (200..<300).contains(Int(response.status.code))
        else { return false }
        guard response.headers.first(name: "Content-Length").flatMap({ Int64($0) }) == taskLength else { return false }
        var matched = false
        for name in ["etag", "last-modified"] {
            guard let expected = info.headers[name] else { continue }
            guard response.headers.first(name: name) == expected else { return false }
            matched = true
        }
        return matched
    }

    /// Answers a request whose URL does not name the content of the task its ID leads to.
    private func refuseJoin(taskID: TaskID, extra: HTTPHeaders) async throws -> Bool {
        context.metrics?.proxyRejected.increment()
        logger.debug("proxy refused to join a task made from another URL")
        return try await responder.text(
            .conflict,
            "task \(taskID) was made from another URL whose content differs from this one's; request it without "
                + "X-Dragonfly-Tag or X-Dragonfly-Filtered-Query-Params, or with another tag",
            headers: extra)
    }

    /// Waits for the task's layout, answers the head, then streams the bytes piece by piece.
    private func stream(
        taskID: TaskID, range: ProxyByteRange?, watch: DownloadWatch, joined: String?, taskHeader: HTTPHeaders,
        logger: Logger
    ) async throws -> Bool {
        let store = context.store
        // The layout: content length and piece length, known once the task is open in the store.
        var info: StoredTaskInfo
        var length: Int64
        while true {
            let seen = watch.version
            if let current = store.taskInfo(taskID: taskID), let known = current.contentLength {
                info = current
                length = known
                break
            }
            if watch.isAbandoned { throw CancellationError() }
            if let outcome = watch.outcome {
                if let error = outcome.error { return try await sendFailure(error, extra: taskHeader) }
                guard let current = store.taskInfo(taskID: taskID), let known = current.contentLength else {
                    return try await responder.text(
                        .badGateway, "task \(taskID) finished but is not in the cache (evicted?); retry",
                        headers: taskHeader)
                }
                info = current
                length = known
                break
            }
            await watch.wait(after: seen)
        }

        // The task may have been made by another request between the check above and the download.
        if info.url != joined, info.url != route.url, !(await namesContent(of: info)) {
            return try await refuseJoin(taskID: taskID, extra: taskHeader)
        }
        if TaskPrivacy.isPrivate(info.headers), let refused = try await originRefuses(extra: taskHeader) {
            return refused
        }
        let bytes: Range<Int64>
        var headers = taskHeader
        let status: HTTPResponseStatus
        if let range {
            guard let resolved = range.resolve(length: length) else {
                headers.add(name: "Content-Range", value: "bytes */\(length)")
                return try await responder.text(
                    .rangeNotSatisfiable, "the range is beyond the end of the \(length)-byte object", headers: headers)
            }
            bytes = resolved
            status = .partialContent
            headers.add(
                name: "Content-Range", value: "bytes \(resolved.lowerBound)-\(resolved.upperBound - 1)/\(length)")
        } else {
            bytes = 0..<length
            status = .ok
        }
        headers.add(name: "Content-Length", value: String(bytes.count))
        headers.add(name: "Accept-Ranges", value: "bytes")
        headers.add(name: "Content-Type", value: info.headers["content-type"] ?? "application/octet-stream")
        if let etag = info.headers["etag"] { headers.add(name: "ETag", value: etag) }
        if let lastModified = info.headers["last-modified"] { headers.add(name: "Last-Modified", value: lastModified) }
        if isBlob, let digest = route.url.split(separator: "?")[0].split(separator: "/").last {
            headers.add(name: "Docker-Content-Digest", value: String(digest))
        }
        let keepAlive = responder.keepAlive
        responder.writeHead(status, headers: headers, keepAlive: keepAlive)
        let responder = self.responder
        let metrics = context.metrics
        if let pieces = PieceMath.pieces(covering: bytes, contentLength: length, pieceLength: info.pieceLength) {
            for number in pieces {
                try await waitForPiece(number, taskID: taskID, watch: watch)
                let start = max(Int64(number) * info.pieceLength, bytes.lowerBound)
                let end = min(Int64(number + 1) * info.pieceLength, bytes.upperBound)
                try await store.readRange(taskID: taskID, range: start..<end) { chunk in
                    try await responder.writeBody(chunk)
                    metrics?.proxyP2PBytes.increment(by: Int64(chunk.readableBytes))
                }
            }
        }
        try await responder.finish()
        logger.debug("proxy served from the task", metadata: ["df.bytes": "\(bytes.count)"])
        return keepAlive
    }

    /// Returns once piece `number` is stored; throws when the download ended without it (the response is then
    /// cut short, which the client sees as a body shorter than its `Content-Length`).
    private func waitForPiece(_ number: Int, taskID: TaskID, watch: DownloadWatch) async throws {
        let store = context.store
        while true {
            let seen = watch.version
            if store.hasPiece(taskID: taskID, number: number) { return }
            if watch.isAbandoned { throw CancellationError() }
            if let outcome = watch.outcome {
                if store.hasPiece(taskID: taskID, number: number) { return }
                throw outcome.error
                    ?? DragonflyError(code: .unavailable, message: "piece \(number) of task \(taskID) is not held")
            }
            try Task.checkCancellation()
            await watch.wait(after: seen)
        }
    }

    /// Asks the origin whether this client may read a private task (``TaskPrivacy``): a `HEAD` of the request's
    /// own URL — which names the task's content (``namesContent(of:)``), and carries the client's own signature
    /// parameters where the task's recorded URL carries its first reader's — with the client's request headers.
    /// A 2xx or 3xx answer lets the task be served (nil); otherwise the client gets the origin's status and
    /// headers (a registry's 401 and its `WWW-Authenticate` challenge) and the returned keep-alive.
    private func originRefuses(extra: HTTPHeaders) async throws -> Bool? {
        let request = context.originRequest(url: route.url, method: .HEAD, headers: Self.originHeaders(head.headers))
        let response: HTTPClientResponse
        do {
            response = try await context.http.execute(request, deadline: .now() + .seconds(30), logger: logger)
        } catch {
            return try await responder.text(
                .badGateway,
                "cannot ask \(DirectForward.hostAndPort(of: route.url)) whether this client may read "
                    + "the cached object: \(Redaction.message("\(error)"))", headers: extra)
        }
        if (200..<400).contains(Int(response.status.code)) { return nil }
        logger.debug("origin refused a private task", metadata: ["df.status": "\(response.status.code)"])
        var headers = ProxyHeaders.downstream(response.headers)
        headers.add(contentsOf: extra)
        return try await responder.text(
            response.status, "the origin answered \(response.status.code) for this client", headers: headers)
    }

    /// Answers a download that failed before any byte was sent: the origin's own status and headers for an
    /// origin error, else a status for the error's code.
    private func sendFailure(_ error: DragonflyError, extra: HTTPHeaders) async throws -> Bool {
        if error.code == .originError, let origin = error.cause as? OriginResponseError,
            (100...599).contains(origin.status)
        {
            var headers = HTTPHeaders()
            for field in origin.headers { headers.add(name: field.name, value: field.value) }
            headers = ProxyHeaders.downstream(headers)
            headers.add(contentsOf: extra)
            return try await responder.text(
                HTTPResponseStatus(statusCode: origin.status, reasonPhrase: origin.reason),
                Redaction.message(error.message), headers: headers)
        }
        let status: HTTPResponseStatus =
            switch error.code {
            case .invalidArgument: .badRequest
            case .notFound: .notFound
            case .resourceExhausted: .tooManyRequests
            case .deadlineExceeded: .gatewayTimeout
            case .unavailable, .originError: .badGateway
            case .unimplemented: .notImplemented
            case .permissionDenied: .forbidden
            default: .internalServerError
            }
        return try await responder.text(status, Redaction.message(error.message), headers: extra)
    }
}

/// Wakes the P2P response in progress on one client connection when the client goes away: one close callback
/// per connection, however many requests it carries.
final class ClientPresence: Sendable {
    private struct State {
        var gone = false
        var watch: DownloadWatch?
    }

    private let state = Mutex(State())

    init(channel: any Channel) {
        channel.closeFuture.whenComplete { [self] _ in wentAway() }
    }

    private func wentAway() {
        let watch = state.withLock { state -> DownloadWatch? in
            state.gone = true
            return state.watch
        }
        watch?.abandon()
    }

    /// Makes `watch` the one to wake (at once when the client is already gone).
    func attach(_ watch: DownloadWatch) {
        let gone = state.withLock { state -> Bool in
            state.watch = watch
            return state.gone
        }
        if gone { watch.abandon() }
    }

    func detach() { state.withLock { $0.watch = nil } }
}

/// What a P2P response waits on: a version bumped by every progress report of its download, and the
/// download's outcome once it returns.
final class DownloadWatch: Sendable {
    /// How a download ended.
    struct Outcome: Sendable {
        var error: DragonflyError?
    }

    private struct State {
        var version = 0
        var outcome: Outcome?
        var abandoned = false
        var waiters: [Int: CheckedContinuation<Void, Never>] = [:]
        var nextWaiter = 0
    }

    private let state = Mutex(State())

    var version: Int { state.withLock { $0.version } }
    var outcome: Outcome? { state.withLock { $0.outcome } }
    /// Whether the response's client went away.
    var isAbandoned: Bool { state.withLock { $0.abandoned } }

    /// Marks the client gone and wakes every waiter.
    func abandon() {
        let waiters = state.withLock { state in
            state.abandoned = true
            state.version += 1
            defer { state.waiters = [:] }
            return Array(state.waiters.values)
        }
        for waiter in waiters { waiter.resume() }
    }

    func bump() {
        let waiters = state.withLock { state in
            state.version += 1
            defer { state.waiters = [:] }
            return Array(state.waiters.values)
        }
        for waiter in waiters { waiter.resume() }
    }

    func finish(_ error: DragonflyError?) {
        let waiters = state.withLock { state in
            state.outcome = Outcome(error: error)
            state.version += 1
            defer { state.waiters = [:] }
            return Array(state.waiters.values)
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Returns once the version moved past `seen`, or at once when the calling task is cancelled.
    func wait(after seen: Int) async {
        let id = state.withLock { state in
            state.nextWaiter += 1
            return state.nextWaiter
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let ready = state.withLock { state -> Bool in
                    if state.version != seen || Task.isCancelled { return true }
                    state.waiters[id] = continuation
                    return false
                }
                if ready { continuation.resume() }
            }
        } onCancel: {
            let waiter = state.withLock { $0.waiters.removeValue(forKey: id) }
            waiter?.resume()
        }
    }
}
