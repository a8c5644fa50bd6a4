import DequeModule
package import DragonflyCore
import Synchronization

/// A piece the download conductor verified and stored, as announced to this host's children.
package struct AnnouncedPiece: Sendable, Hashable {
    /// Piece number, counted from 0.
    package var number: Int
    /// Offset of the piece's first byte in the task.
    package var offset: Int64
    /// Length in bytes.
    package var length: Int64
    /// `sha256:<hex>` of the piece bytes.
    package var digest: String
    /// The task's content length, once known.
    package var contentLength: Int64?
    /// This is the task's final piece (by number), or with it the host holds every piece; `SyncPieces`
    /// re-reads the store on it to tell whether the task is complete.
    package var isLast: Bool

    package init(number: Int, offset: Int64, length: Int64, digest: String, contentLength: Int64?, isLast: Bool) {
        self.number = number
        self.offset = offset
        self.length = length
        self.digest = digest
        self.contentLength = contentLength
        self.isLast = isLast
    }
}

/// Fans out "piece stored" events from the download conductor to the `SyncPieces` streams of this host's
/// children (DESIGN §5: a parent serves while it downloads).
///
/// The conductor calls ``publish(taskID:piece:)`` after a piece is verified **and stored**, and
/// ``finish(taskID:contentLength:)`` once no more pieces will come (complete, failed or deleted), after it has
/// finished or closed the task in the store. Streams ``subscribe(taskID:)`` **before** listing what the store
/// holds, so no piece falls between the listing and the subscription.
///
/// Bounded: at most ``maximumSubscribersPerTask`` subscriptions per task and ``maximumTasks`` tasks with
/// subscribers; each subscription buffers at most ``bufferLimit`` pieces. A subscription whose consumer falls
/// behind is not slowed down nor does it slow the conductor: its buffer is dropped and it reports
/// ``PieceSubscription/Event/overflowed`` once, after which the consumer re-lists the store (every published piece
/// is already stored). No state is kept for a task without subscribers: publishing to it does nothing.
package final class PieceAnnouncer: Sendable {
    /// The most subscriptions of one task.
    package let maximumSubscribersPerTask: Int
    /// The most tasks with subscriptions.
    package let maximumTasks: Int
    /// Pieces buffered per subscription before it overflows.
    package let bufferLimit: Int
    /// The transfer grants schedulers handed this daemon: sessions record and present them, the piece server
    /// and the Peer service demand them for private tasks (kept here because every one of them holds the
    /// announcer).
    package let grants = TransferGrants()

    private struct State {
        var tasks: [TaskID: [UInt64: PieceSubscription.Box]] = [:]
        var nextID: UInt64 = 0
    }

    private let state = Mutex(State())

    package init(maximumSubscribersPerTask: Int = 256, maximumTasks: Int = 4096, bufferLimit: Int = 1024) {
        precondition(maximumSubscribersPerTask > 0 && maximumTasks > 0 && bufferLimit > 0, "limits must be positive")
        self.maximumSubscribersPerTask = maximumSubscribersPerTask
        self.maximumTasks = maximumTasks
        self.bufferLimit = bufferLimit
    }

    /// Announces a verified, stored piece to the task's subscribers (nothing happens without subscribers).
    package func publish(taskID: TaskID, piece: AnnouncedPiece) {
        let boxes = state.withLock { state in state.tasks[taskID].map { Array($0.values) } ?? [] }
        for box in boxes { box.deliver(piece) }
    }

    /// Tells the task's subscribers that no more pieces will come; their streams end after the buffered pieces.
    package func finish(taskID: TaskID, contentLength: Int64?) {
        let boxes = state.withLock { state in state.tasks.removeValue(forKey: taskID).map { Array($0.values) } ?? [] }
        for box in boxes { box.finish(contentLength: contentLength) }
    }

    /// Subscribes to the task's next pieces. Cancel the subscription (or drop it) when done.
    ///
    /// - Throws: `resourceExhausted` when the task already has ``maximumSubscribersPerTask`` subscriptions or
    ///   ``maximumTasks`` tasks have subscriptions.
    package func subscribe(taskID: TaskID) throws(DragonflyError) -> PieceSubscription {
        let limit = bufferLimit
        let box = try state.withLock { (state) throws(DragonflyError) -> PieceSubscription.Box in
            let subscribers = state.tasks[taskID] ?? [:]
            guard subscribers.count < maximumSubscribersPerTask else {
                throw DragonflyError(
                    code: .resourceExhausted,
                    message: "task \(taskID) already has \(subscribers.count) piece subscriptions; retry later")
            }
            guard !subscribers.isEmpty || state.tasks.count < maximumTasks else {
                throw DragonflyError(
                    code: .resourceExhausted,
                    message: "\(state.tasks.count) tasks already have piece subscriptions; retry later")
            }
            state.nextID += 1
            let box = PieceSubscription.Box(id: state.nextID, bufferLimit: limit)
            state.tasks[taskID, default: [:]][state.nextID] = box
            return box
        }
        return PieceSubscription(taskID: taskID, box: box, announcer: self)
    }

    /// Subscriptions of the task (for tests and metrics).
    package func subscriberCount(taskID: TaskID) -> Int {
        state.withLock { $0.tasks[taskID]?.count ?? 0 }
    }

    /// Tasks with subscriptions (for tests and metrics).
    package var taskCount: Int { state.withLock { $0.tasks.count } }

    fileprivate func remove(taskID: TaskID, id: UInt64) {
        state.withLock { state in
            guard var subscribers = state.tasks[taskID] else { return }
            subscribers[id] = nil
            state.tasks[taskID] = subscribers.isEmpty ? nil : subscribers
        }
    }
}

/// One consumer's view of a task's announced pieces; made by ``PieceAnnouncer/subscribe(taskID:)``.
///
/// One task consumes it at a time, with ``next(timeout:)`` or by iterating it. It unsubscribes when cancelled
/// or released.
package final class PieceSubscription: AsyncSequence, Sendable {
    /// What ``next(timeout:)`` returns.
    package enum Event: Sendable, Equatable {
        /// A newly stored piece.
        case piece(AnnouncedPiece)
        /// The buffer overflowed and pieces were dropped: re-list the store.
        case overflowed
        /// No more pieces will come (the conductor finished the task).
        case finished(contentLength: Int64?)
        /// Nothing happened within the timeout.
        case timedOut
    }

    package typealias Element = Event

    /// The task subscribed to.
    package let taskID: TaskID
    fileprivate let box: Box
    private let announcer: PieceAnnouncer

    fileprivate init(taskID: TaskID, box: Box, announcer: PieceAnnouncer) {
        self.taskID = taskID
        self.box = box
        self.announcer = announcer
    }

    deinit { announcer.remove(taskID: taskID, id: box.id) }

    /// Unsubscribes; a waiting ``next(timeout:)`` returns `finished`.
    package func cancel() {
        announcer.remove(taskID: taskID, id: box.id)
        box.finish(contentLength: nil)
    }

    /// The next event, waiting at most `timeout` (nil: no limit). After `finished` it keeps returning `finished`.
    ///
    /// - Throws: `CancellationError` when the calling task is cancelled; nothing is lost then.
    package func next(timeout: Duration?) async throws -> Event {
        let clock = ContinuousClock()
        let deadline = timeout.map { clock.now.advanced(by: $0) }
        while true {
            if let event = box.take() { return event }
            try Task.checkCancellation()
            guard let deadline else {
                await box.waitForEvent()
                continue
            }
            let remaining = clock.now.duration(to: deadline)
            guard remaining > .zero else { return .timedOut }
            await withTaskGroup(of: Void.self) { group in
                group.addTask { await self.box.waitForEvent() }
                group.addTask { try? await clock.sleep(for: remaining) }
                await group.next()
                group.cancelAll()
            }
        }
    }

    package struct AsyncIterator: AsyncIteratorProtocol {
        fileprivate let subscription: PieceSubscription

        /// Pieces and overflows; nil once finished.
        package mutating func next() async throws -> Event? {
            let event = try await subscription.next(timeout: nil)
            if case .finished = event { return nil }
            return event
        }
    }

    /// Iterates pieces and overflows until the task is finished.
    package func makeAsyncIterator() -> AsyncIterator { AsyncIterator(subscription: self) }

    /// The shared state of a subscription: its buffer and its one waiting consumer.
    fileprivate final class Box: Sendable {
        struct State {
            var buffer: Deque<AnnouncedPiece> = []
            var overflowed = false
            var finished: Int64?? = nil
            var waiter: CheckedContinuation<Void, Never>?
            var waiterCancelled = false
        }

        let id: UInt64
        let bufferLimit: Int
        let state = Mutex(State())

        init(id: UInt64, bufferLimit: Int) {
            self.id = id
            self.bufferLimit = bufferLimit
        }

        func deliver(_ piece: AnnouncedPiece) {
            let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
                guard state.finished == nil else { return nil }
                if state.buffer.count < bufferLimit {
                    state.buffer.append(piece)
                } else {
                    // The consumer re-lists the store, which holds every published piece.
                    state.buffer.removeAll()
                    state.overflowed = true
                }
                defer { state.waiter = nil }
                return state.waiter
            }
            waiter?.resume()
        }

        func finish(contentLength: Int64?) {
            let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
                if state.finished == nil { state.finished = .some(contentLength) }
                defer { state.waiter = nil }
                return state.waiter
            }
            waiter?.resume()
        }

        /// Overflow first, then buffered pieces, then the end.
        func take() -> Event? {
            state.withLock { state in
                if state.overflowed {
                    state.overflowed = false
                    return .overflowed
                }
                if let piece = state.buffer.popFirst() { return .piece(piece) }
                if let finished = state.finished { return .finished(contentLength: finished) }
                return nil
            }
        }

        /// Returns once an event is available or the calling task is cancelled (or, rarely, spuriously).
        func waitForEvent() async {
            await withTaskCancellationHandler {
                await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                    let ready = state.withLock { state -> Bool in
                        if state.waiterCancelled || state.overflowed || !state.buffer.isEmpty || state.finished != nil {
                            state.waiterCancelled = false
                            return true
                        }
                        precondition(state.waiter == nil, "a piece subscription has one consumer at a time")
                        state.waiter = continuation
                        return false
                    }
                    if ready { continuation.resume() }
                }
            } onCancel: {
                let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
                    guard let waiter = state.waiter else {
                        state.waiterCancelled = true
                        return nil
                    }
                    state.waiter = nil
                    return waiter
                }
                waiter?.resume()
            }
        }
    }
}
