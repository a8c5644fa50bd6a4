package import DragonflyCore
package import NIOCore
import Synchronization

/// The `memory` medium: task bytes in process memory, for small hot tasks ("memory file system").
///
/// Bounded by its capacity: a write that would take the total over it fails with `resourceExhausted` and
/// stores nothing (capacity 0 stores nothing at all). Bytes are kept as one buffer per written range (a
/// piece), copied on write so a caller's larger buffer is never retained. Nothing survives a restart, so the
/// ``PieceStore`` keeps metadata of tasks on this medium in memory only.
package final class MemoryMedium: StorageMedium {
    package let name = "memory"
    /// The byte budget.
    package let capacity: Int64
    private let state = Mutex(State())

    private struct State {
        var tasks: [TaskID: [Segment]] = [:]
        var used: Int64 = 0
    }

    /// A stored range; a task's segments never overlap and are kept sorted by offset.
    private struct Segment {
        var offset: Int64
        var bytes: ByteBuffer
        var end: Int64 { offset + Int64(bytes.readableBytes) }
    }

    package init(capacity: Int64) {
        self.capacity = max(0, capacity)
    }

    package func write(taskID: TaskID, offset: Int64, bytes: ByteBuffer) async throws {
        guard offset >= 0 else {
            throw DragonflyError(code: .invalidArgument, message: "negative offset \(offset)")
        }
        guard bytes.readableBytes > 0 else { return }
        let copy = ByteBuffer(bytes: bytes.readableBytesView)
        let new = Segment(offset: offset, bytes: copy)
        let capacity = self.capacity
        try state.withLock { (state) throws(DragonflyError) in
            var segments = state.tasks[taskID] ?? []
            var kept: [Segment] = []
            var replaced: Int64 = 0
            for segment in segments {
                guard segment.offset < new.end && segment.end > new.offset else {
                    kept.append(segment)
                    continue
                }
                replaced += min(segment.end, new.end) - max(segment.offset, new.offset)
                if segment.offset < new.offset {
                    let length = Int(new.offset - segment.offset)
                    kept.append(
                        Segment(offset: segment.offset, bytes: Self.copy(segment.bytes, from: 0, length: length)))
                }
                if segment.end > new.end {
                    let start = Int(new.end - segment.offset)
                    let length = Int(segment.end - new.end)
                    kept.append(Segment(offset: new.end, bytes: Self.copy(segment.bytes, from: start, length: length)))
                }
            }
            let used = state.used - replaced + Int64(copy.readableBytes)
            guard used <= capacity else {
                throw DragonflyError(
                    code: .resourceExhausted,
                    message: "the memory medium is full (\(state.used) of \(capacity) bytes used); "
                        + "raise its capacity or use the disk medium")
            }
            kept.append(new)
            kept.sort { $0.offset < $1.offset }
            segments = kept
            state.tasks[taskID] = segments
            state.used = used
        }
    }

    package func read(taskID: TaskID, offset: Int64, length: Int) async throws -> ByteBuffer {
        let pieces: [ByteBuffer] = try state.withLock { (state) throws(DragonflyError) in
            guard let segments = state.tasks[taskID] else {
                throw DragonflyError(code: .notFound, message: "task \(taskID) has no data in memory")
            }
            var position = offset
            let end = offset + Int64(length)
            var parts: [ByteBuffer] = []
            for segment in segments where segment.end > position && segment.offset < end {
                guard segment.offset <= position else { break }
                let start = Int(position - segment.offset)
                let count = Int(min(segment.end, end) - position)
                if let slice = segment.bytes.getSlice(at: segment.bytes.readerIndex + start, length: count) {
                    parts.append(slice)
                }
                position += Int64(count)
                if position >= end { break }
            }
            guard position >= end else {
                throw DragonflyError(
                    code: .notFound, message: "task \(taskID) holds no bytes at \(position) in memory")
            }
            return parts
        }
        if pieces.count == 1, let only = pieces.first { return only }
        var joined = ByteBuffer()
        joined.reserveCapacity(length)
        for var part in pieces { joined.writeBuffer(&part) }
        return joined
    }

    package func sync(taskID: TaskID) async throws {}

    package func remove(taskID: TaskID) async throws {
        state.withLock { state in
            guard let segments = state.tasks.removeValue(forKey: taskID) else { return }
            state.used -= segments.reduce(0) { $0 + Int64($1.bytes.readableBytes) }
        }
    }

    package func usedBytes() async throws -> Int64 {
        state.withLock { $0.used }
    }

    private static func copy(_ bytes: ByteBuffer, from start: Int, length: Int) -> ByteBuffer {
        ByteBuffer(bytes: bytes.readableBytesView.dropFirst(start).prefix(length))
    }
}
