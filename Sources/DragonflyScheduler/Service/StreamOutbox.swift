package import DragonflyCore
package import GRPCCore
import ServiceLifecycle
package import Synchronization

/// The bounded outbound queue of one server stream (an `AnnouncePeer` or `SyncHost` response stream).
///
/// Anyone may ``send(_:)`` from any task; the stream's handler writes the messages in order
/// (``serve(writer:reader:)``). A full queue refuses the message instead of growing: its owner fails the peer.
/// ``close(with:)`` ends the stream once the queued messages are written (with an error status when given);
/// ``abort(with:)`` ends it at once, for a consumer that does not keep up or a server that shuts down.
package final class StreamOutbox<Message: Sendable>: Sendable {
    /// What ``send(_:)`` did with a message.
    package enum SendResult: Sendable, Hashable {
        case enqueued
        /// The queue holds ``capacity`` messages: the message was dropped.
        case full
        /// The stream is closing or closed: the message was dropped.
        case closed
    }

    /// Messages queued at most.
    package let capacity: Int
    private let messages: AsyncStream<Message>
    private let continuation: AsyncStream<Message>.Continuation
    private let aborts: AsyncStream<DragonflyError>
    private let abortContinuation: AsyncStream<DragonflyError>.Continuation
    /// The error the stream ends with after its queued messages, once closed.
    private let closing: Mutex<(isClosed: Bool, error: DragonflyError?)>

    package init(capacity: Int) {
        self.capacity = max(capacity, 1)
        (messages, continuation) = AsyncStream.makeStream(
            of: Message.self, bufferingPolicy: .bufferingOldest(self.capacity))
        (aborts, abortContinuation) = AsyncStream.makeStream(
            of: DragonflyError.self, bufferingPolicy: .bufferingOldest(1))
        closing = Mutex((false, nil))
    }

    /// Queues a message for the stream.
    @discardableResult
    package func send(_ message: Message) -> SendResult {
        switch continuation.yield(message) {
        case .enqueued: .enqueued
        case .dropped: .full
        case .terminated: .closed
        @unknown default: .closed
        }
    }

    /// Ends the stream after the queued messages, with `error` as its status (OK when `nil`). The first close
    /// wins.
    package func close(with error: DragonflyError? = nil) {
        closing.withLock { state in
            guard !state.isClosed else { return }
            state = (true, error)
        }
        continuation.finish()
    }

    /// Ends the stream now with `error`, dropping what is queued.
    package func abort(with error: DragonflyError) {
        close(with: error)
        abortContinuation.yield(error)
        abortContinuation.finish()
    }

    /// Whether the stream was closed or aborted.
    package var isClosed: Bool { closing.withLock { $0.isClosed } }

    /// Runs a server stream: `reader` consumes the requests while the queued messages are written to `writer`.
    ///
    /// Returns once the queue is closed and drained (``close(with:)``, or `reader` returning, which closes it);
    /// throws the close or abort error, or what `reader` throws. Graceful shutdown aborts the stream with
    /// `unavailable`, so a long-lived stream does not hold the server open.
    package func serve(
        writer: RPCWriter<Message>,
        reader: @escaping @Sendable () async throws -> Void
    ) async throws {
        try await withGracefulShutdownHandler {
            try await withThrowingTaskGroup(of: StreamPart.self) { group in
                group.addTask {
                    try await reader()
                    self.close()
                    return .reader
                }
                group.addTask {
                    for await message in self.messages {
                        try await writer.write(message)
                    }
                    if let error = self.closing.withLock({ $0.error }) { throw error }
                    return .writer
                }
                group.addTask {
                    for await error in self.aborts { throw error }
                    return .abort
                }
                while let part = try await group.next() {
                    if part == .writer {
                        group.cancelAll()
                        return
                    }
                }
            }
        } onGracefulShutdown: {
            self.abort(with: DragonflyError(code: .unavailable, message: "the scheduler is shutting down"))
        }
        abortContinuation.finish()
    }
}

/// The tasks of ``StreamOutbox/serve(writer:reader:)``.
private enum StreamPart: Sendable {
    case reader, writer, abort
}
