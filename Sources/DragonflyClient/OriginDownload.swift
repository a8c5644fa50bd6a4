package import DragonflyCore
import DragonflySource
package import DragonflyStorage
package import Logging
import NIOCore
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Downloads a ``GetRequest`` straight from the origin into a ``PieceStore`` and writes the output
/// (`dragonfly get --no-daemon`, and the fallback when no daemon can serve).
///
/// Pieces already held (an earlier interrupted run) are kept; only the missing ones that the requested range
/// touches are fetched, with concurrent piece-aligned range requests when the origin supports them. Each piece
/// is verified and stored before it counts. The output appears atomically, only once complete and verified
/// against `--digest` (DESIGN §6 step 7); `-O -` streams the bytes in order.
package struct OriginDownload: Sendable {
    package let request: GetRequest
    package let registry: PluginRegistry
    package let store: PieceStore
    package let logger: Logger

    package init(request: GetRequest, registry: PluginRegistry, store: PieceStore, logger: Logger) {
        self.request = request
        self.registry = registry
        self.store = store
        self.logger = logger
    }

    /// Runs the download; `progress` is called as pieces land (from several tasks; keep it cheap).
    package func run(progress: @escaping @Sendable (GetProgress) -> Void) async throws -> GetSummary {
        let clock = ContinuousClock()
        let started = clock.now
        let taskID = request.taskID
        var logger = logger
        logger[metadataKey: "df.task.id"] = "\(taskID)"

        let kind = try OutputKind.classify(request.output)
        let sourceRequest = SourceRequest(url: request.url, headers: request.headers, timeout: request.timeout)
        let held = store.taskInfo(taskID: taskID)
        let contentLength: Int64
        var originBytes: Int64 = 0
        var cachedBytes: Int64 = 0
        var streamedBytes: Int64?

        if let held, held.isFinished, let length = held.contentLength {
            // Step 1 of DESIGN §6: a complete task in local storage is exported without touching the origin.
            logger.debug("task complete in local storage")
            try request.checkRange(contentLength: length)
            contentLength = length
            cachedBytes = length
            progress(GetProgress(completedBytes: length, totalBytes: length, cachedBytes: length))
        } else {
            guard !request.disableBackToSource else {
                throw DragonflyError(
                    code: .unavailable,
                    message: "no peer can serve \(Redaction.url(request.url)) and back-to-source is disabled"
                )
            }
            let client: any SourceClient
            do {
                client = try registry.sourceClient(forURL: request.url)
            } catch {
                throw DragonflyError(code: .usage, message: error.message)
            }
            let metadata = try await client.stat(sourceRequest)
            if let range = request.range, let length = metadata.contentLength, range.start >= length {
                // Let the origin answer the unsatisfiable range itself, so the user sees its 416.
                _ = try await client.fetch(sourceRequest, range: range)
                throw DragonflyError(
                    code: .originError,
                    message: "range \(range) is beyond the end (\(length) bytes) of \(Redaction.url(request.url))"
                )
            }
            let pieceLength = request.pieceLength ?? PieceMath.pieceLength(forContentLength: metadata.contentLength)
            var headers: [String: String] = [:]
            if let etag = metadata.etag { headers["etag"] = etag }
            if let lastModified = metadata.lastModified { headers["last-modified"] = lastModified }
            for field in metadata.headers where field.name.lowercased() == "content-type" {
                headers["content-type"] = field.value
            }
            let opened = try await store.openTask(
                id: taskID,
                url: request.url,
                contentLength: metadata.contentLength,
                pieceLength: pieceLength,
                headers: headers
            )
            do {
                let needed = try neededPieces(metadata: metadata, pieceLength: pieceLength)
                cachedBytes = opened.heldBytes
                let counters = Mutex(
                    GetProgress(
                        completedBytes: opened.heldBytes, totalBytes: metadata.contentLength, cachedBytes: cachedBytes))
                progress(counters.withLock { $0 })
                var summary: PieceFetchSummary?
                if needed.map({ !$0.isEmpty }) ?? true {
                    let fetcher = PieceFetcher(
                        client: client,
                        config: PieceFetcherConfig(
                            concurrency: request.originConnections,
                            rateLimiter: request.rateLimit.map { TokenBucket(rate: $0, burst: max($0, 1 << 20)) }
                        ),
                        logger: logger
                    )
                    let fetch: @Sendable (@escaping @Sendable (Int) -> Void) async throws -> PieceFetchSummary = {
                        [store] pieceLanded in
                        try await fetcher.fetch(
                            sourceRequest,
                            metadata: metadata,
                            pieceLength: pieceLength,
                            pieces: needed
                        ) { number, bytes in
                            try await store.writePiece(taskID: taskID, number: number, bytes: bytes)
                            let snapshot = counters.withLock { state in
                                state.completedBytes += Int64(bytes.readableBytes)
                                state.originBytes += Int64(bytes.readableBytes)
                                return state
                            }
                            progress(snapshot)
                            pieceLanded(number)
                        }
                    }
                    if case .stream = kind, request.digest == nil, let length = metadata.contentLength {
                        // A stream (`-O -`, a device, a FIFO) without a digest: write each piece as soon as it and
                        // all before it are held.
                        let range = outputRange(contentLength: length) ?? 0..<length
                        let output = try await GetOutput.blocking { try GetOutput(kind: kind) }
                        defer { output.discard() }
                        summary = try await streamToStandardOutput(
                            range: range, contentLength: length, pieceLength: pieceLength, output: output,
                            fetch: fetch)
                        streamedBytes = Int64(range.count)
                    } else {
                        summary = try await fetch { _ in }
                    }
                }
                originBytes = counters.withLock { $0.originBytes }
                let finalLength = metadata.contentLength ?? summary?.contentLength
                if request.range == nil || finalLength == nil {
                    _ = try await store.finishTask(taskID: taskID, contentLength: finalLength)
                } else {
                    try await store.closeTask(taskID: taskID)
                }
                guard let finalLength else {
                    throw DragonflyError(
                        code: .internalError,
                        message: "the origin did not report a length for \(Redaction.url(request.url))")
                }
                contentLength = finalLength
            } catch {
                try? await store.closeTask(taskID: taskID)
                throw error
            }
        }

        let outputBytes: Int64
        if let streamedBytes {
            outputBytes = streamedBytes
        } else {
            outputBytes = try await writeOutput(taskID: taskID, contentLength: contentLength, kind: kind)
        }
        return GetSummary(
            taskID: taskID,
            outputBytes: outputBytes,
            contentLength: contentLength,
            originBytes: originBytes,
            cachedBytes: cachedBytes,
            elapsed: clock.now - started
        )
    }

    /// Runs `fetch` while writing bytes `range` to standard output in order, each piece as soon as it and every
    /// piece before it are held (pieces already in the cache count from the start). Memory stays bounded: the
    /// bytes are read back from the store piece by piece.
    private func streamToStandardOutput(
        range: Range<Int64>,
        contentLength: Int64,
        pieceLength: Int64,
        output: GetOutput,
        fetch: @escaping @Sendable (@escaping @Sendable (Int) -> Void) async throws -> PieceFetchSummary
    ) async throws -> PieceFetchSummary {
        let taskID = request.taskID
        guard let pieces = PieceMath.pieces(covering: range, contentLength: contentLength, pieceLength: pieceLength)
        else { return try await fetch { _ in } }
        let (landed, continuation) = AsyncStream.makeStream(of: Int.self)
        return try await withThrowingTaskGroup(of: PieceFetchSummary?.self) { group in
            group.addTask {
                defer { continuation.finish() }
                return try await fetch { continuation.yield($0) }
            }
            group.addTask { [store] in
                var next = pieces.lowerBound
                var ready = Set<Int>()
                var iterator = landed.makeAsyncIterator()
                while next <= pieces.upperBound {
                    if ready.remove(next) != nil || store.hasPiece(taskID: taskID, number: next) {
                        let start = max(Int64(next) * pieceLength, range.lowerBound)
                        let end = min(Int64(next + 1) * pieceLength, range.upperBound)
                        var position = start - range.lowerBound
                        try await store.readRange(taskID: taskID, range: start..<end) { buffer in
                            try await GetOutput.blocking { [position] in
                                try buffer.withUnsafeReadableBytes { raw in try output.write(raw, at: position) }
                            }
                            position += Int64(buffer.readableBytes)
                        }
                        next += 1
                    } else if let number = await iterator.next() {
                        ready.insert(number)
                    } else {
                        throw DragonflyError(
                            code: .internalError,
                            message: "piece \(next) of \(Redaction.url(request.url)) never arrived")
                    }
                }
                return nil
            }
            var summary: PieceFetchSummary?
            for try await result in group where result != nil { summary = result }
            guard let summary else {
                throw DragonflyError(
                    code: .internalError, message: "the download of \(Redaction.url(request.url)) ended early")
            }
            return summary
        }
    }

    /// The pieces the requested range touches that are not held yet; nil means "all, length unknown".
    private func neededPieces(metadata: SourceMetadata, pieceLength: Int64) throws -> Set<Int>? {
        let missing = Set(try store.missingPieces(taskID: request.taskID))
        guard let length = metadata.contentLength else { return nil }
        guard let range = outputRange(contentLength: length) else { return missing }
        guard let touched = PieceMath.pieces(covering: range, contentLength: length, pieceLength: pieceLength) else {
            return []
        }
        return missing.intersection(touched)
    }

    /// The byte range to output, clamped to the object; nil for the whole object.
    private func outputRange(contentLength: Int64) -> Range<Int64>? {
        guard let range = request.range else { return nil }
        let end = min(range.length.map { range.start + $0 } ?? contentLength, contentLength)
        return range.start..<max(end, range.start)
    }

    /// Writes the output with ``GetOutput`` (the writer `get` through the daemon uses too): a file is replaced
    /// atomically once complete and verified; a stream gets the bytes in order, after they were verified.
    private func writeOutput(taskID: TaskID, contentLength: Int64, kind: OutputKind) async throws -> Int64 {
        let range = outputRange(contentLength: contentLength) ?? 0..<contentLength
        if case .stream = kind, let digest = request.digest {
            // Nothing reaches a stream unless the bytes match: hash them first, then stream.
            var hasher = digest.makeHasher()
            try await store.readRange(taskID: taskID, range: range) { buffer in
                buffer.withUnsafeReadableBytes { hasher.update($0) }
            }
            let actual = hasher.finalize()
            guard actual == digest.hex else {
                throw DragonflyError(
                    code: .dataLoss,
                    message:
                        "digest mismatch for \(Redaction.url(request.url)): expected \(digest), got \(digest.algorithm.rawValue):\(actual)"
                )
            }
        }
        let output = try await GetOutput.blocking { try GetOutput(kind: kind) }
        defer { output.discard() }
        try await store.write(taskID: taskID, range: range, into: output)
        let digest = output.isStream ? nil : request.digest
        try await GetOutput.blocking { try output.publish(length: Int64(range.count), digest: digest) }
        return Int64(range.count)
    }
}
