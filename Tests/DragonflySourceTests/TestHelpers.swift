import DragonflyCore
import DragonflySource
import DragonflyTestSupport
import NIOCore
import Synchronization

/// `count` pseudo-random bytes (xorshift, seeded), fast enough for tens of MiB in a debug build.
func randomBytes(count: Int, seed: UInt64 = 0x9E37_79B9_7F4A_7C15) -> [UInt8] {
    var state = seed | 1
    var bytes = [UInt8](repeating: 0, count: count)
    bytes.withUnsafeMutableBytes { buffer in
        var offset = 0
        while offset < buffer.count {
            state ^= state << 13
            state ^= state >> 7
            state ^= state << 17
            var word = state
            let step = min(8, buffer.count - offset)
            withUnsafeBytes(of: &word) { wordBytes in
                for index in 0..<step { buffer[offset + index] = wordBytes[index] }
            }
            offset += step
        }
    }
    return bytes
}

/// Runs `body` with a fresh HTTP source client and shuts it down afterwards, also when `body` throws.
func withHTTPSource<Value>(
    _ config: HTTPSourceConfig = HTTPSourceConfig(),
    isolation: isolated (any Actor)? = #isolation,
    _ body: (HTTPSourceClient) async throws -> Value
) async throws -> Value {
    let client = try HTTPSourceClient(configuration: config)
    do {
        let value = try await body(client)
        try await client.shutdown()
        return value
    } catch {
        try? await client.shutdown()
        throw error
    }
}

/// Every byte of a response body (at most `limit`), and the sizes of the chunks it came in.
func collect(_ body: SourceBody, limit: Int = 64 << 20) async throws -> (bytes: [UInt8], chunks: [Int]) {
    var bytes: [UInt8] = []
    var chunks: [Int] = []
    for try await chunk in body {
        chunks.append(chunk.readableBytes)
        bytes.append(contentsOf: chunk.readableBytesView)
        guard bytes.count <= limit else { throw CollectLimitExceeded() }
    }
    return (bytes, chunks)
}

struct CollectLimitExceeded: Error {}

/// Waits until nginx has logged `count` requests (it writes an entry when the response is finished) and
/// returns the entries.
func accessLog(of origin: NginxOrigin, count: Int) async throws -> [AccessLogEntry] {
    try await poll(every: .milliseconds(20), timeLimit: .seconds(20), description: "\(count) access log entries") {
        try origin.accessLog().count >= count
    }
    return try origin.accessLog()
}

/// Collects delivered pieces for checks; records a piece delivered twice.
final class PieceSink: Sendable {
    private struct State {
        var pieces: [Int: [UInt8]] = [:]
        var duplicates: [Int] = []
        var running = 0
        var maximumRunning = 0
    }

    private let state = Mutex(State())

    var consumer: PieceFetcher.Consumer {
        { number, bytes in
            self.state.withLock { state in
                state.running += 1
                state.maximumRunning = max(state.maximumRunning, state.running)
            }
            defer { self.state.withLock { $0.running -= 1 } }
            await Task.yield()
            let copy = Array(bytes.readableBytesView)
            self.state.withLock { state in
                if state.pieces[number] != nil { state.duplicates.append(number) }
                state.pieces[number] = copy
            }
        }
    }

    /// The most consumer calls that ran at once.
    var maximumConcurrentDeliveries: Int { state.withLock { $0.maximumRunning } }

    var pieces: [Int: [UInt8]] { state.withLock { $0.pieces } }
    var duplicates: [Int] { state.withLock { $0.duplicates } }

    /// The pieces in order, concatenated.
    var reassembled: [UInt8] {
        let pieces = self.pieces
        return pieces.keys.sorted().flatMap { pieces[$0] ?? [] }
    }
}

/// The bytes of piece `number` of `bytes`.
func piece(_ number: Int, of bytes: [UInt8], pieceLength: Int) -> [UInt8] {
    let start = number * pieceLength
    return Array(bytes[start..<min(start + pieceLength, bytes.count)])
}

/// `bytes=<start>-<end>` for piece `number`.
func rangeHeader(ofPiece number: Int, pieceLength: Int, total: Int) -> String {
    "bytes=\(number * pieceLength)-\(min((number + 1) * pieceLength, total) - 1)"
}

extension Error {
    /// The error as a ``DragonflyError``, for `#require`.
    var dragonfly: DragonflyError? { self as? DragonflyError }
}
