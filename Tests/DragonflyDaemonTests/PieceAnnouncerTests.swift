import DragonflyCore
import DragonflyDaemon
import Testing

/// The announcer's fan-out, bounds and overflow signalling, without I/O.
@Suite struct PieceAnnouncerTests {
    static let id = TaskID.make(url: "https://example.com/announce")

    static func piece(_ number: Int, isLast: Bool = false) -> AnnouncedPiece {
        AnnouncedPiece(
            number: number, offset: Int64(number) * 10, length: 10, digest: "sha256:\(number)", contentLength: 100,
            isLast: isLast)
    }

    @Test func keepsNoStateWithoutSubscribers() {
        let announcer = PieceAnnouncer()
        announcer.publish(taskID: Self.id, piece: Self.piece(0))
        announcer.finish(taskID: Self.id, contentLength: 100)
        #expect(announcer.taskCount == 0)
    }

    @Test(.timeLimit(.minutes(1)))
    func deliversToEverySubscriberThenFinishes() async throws {
        let announcer = PieceAnnouncer()
        let first = try announcer.subscribe(taskID: Self.id)
        let second = try announcer.subscribe(taskID: Self.id)
        #expect(announcer.subscriberCount(taskID: Self.id) == 2)
        announcer.publish(taskID: Self.id, piece: Self.piece(0))
        announcer.publish(taskID: Self.id, piece: Self.piece(1, isLast: true))
        announcer.finish(taskID: Self.id, contentLength: 100)
        #expect(announcer.taskCount == 0)
        for subscription in [first, second] {
            #expect(try await subscription.next(timeout: nil) == .piece(Self.piece(0)))
            #expect(try await subscription.next(timeout: nil) == .piece(Self.piece(1, isLast: true)))
            #expect(try await subscription.next(timeout: nil) == .finished(contentLength: 100))
            #expect(try await subscription.next(timeout: .milliseconds(1)) == .finished(contentLength: 100))
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func aWaitingConsumerWakesUpAndTimesOut() async throws {
        let announcer = PieceAnnouncer()
        let subscription = try announcer.subscribe(taskID: Self.id)
        #expect(try await subscription.next(timeout: .milliseconds(20)) == .timedOut)
        async let next = subscription.next(timeout: .seconds(30))
        announcer.publish(taskID: Self.id, piece: Self.piece(3))
        #expect(try await next == .piece(Self.piece(3)))
        var pieces: [Int] = []
        async let iterated: [Int] = {
            var numbers: [Int] = []
            for try await event in subscription {
                if case .piece(let piece) = event { numbers.append(piece.number) }
            }
            return numbers
        }()
        announcer.publish(taskID: Self.id, piece: Self.piece(4))
        announcer.finish(taskID: Self.id, contentLength: nil)
        pieces = try await iterated
        #expect(pieces == [4])
    }

    @Test func overflowDropsTheBufferAndSaysSo() async throws {
        let announcer = PieceAnnouncer(bufferLimit: 2)
        let subscription = try announcer.subscribe(taskID: Self.id)
        for number in 0..<3 { announcer.publish(taskID: Self.id, piece: Self.piece(number)) }
        announcer.publish(taskID: Self.id, piece: Self.piece(3))
        #expect(try await subscription.next(timeout: nil) == .overflowed)
        #expect(try await subscription.next(timeout: nil) == .piece(Self.piece(3)))
        #expect(try await subscription.next(timeout: .milliseconds(1)) == .timedOut)
    }

    @Test func limitsSubscribersAndTasks() throws {
        let announcer = PieceAnnouncer(maximumSubscribersPerTask: 2, maximumTasks: 1)
        let kept = [try announcer.subscribe(taskID: Self.id), try announcer.subscribe(taskID: Self.id)]
        #expect(throws: DragonflyError.self) { try announcer.subscribe(taskID: Self.id) }
        #expect(throws: DragonflyError.self) {
            try announcer.subscribe(taskID: TaskID.make(url: "https://example.com/other"))
        }
        kept[0].cancel()
        #expect(announcer.subscriberCount(taskID: Self.id) == 1)
        _ = try announcer.subscribe(taskID: Self.id)  // released at once
        #expect(announcer.subscriberCount(taskID: Self.id) == 1)
        kept[1].cancel()
        #expect(announcer.taskCount == 0)
    }

    @Test(.timeLimit(.minutes(1)))
    func cancellingTheConsumerLosesNothing() async throws {
        let announcer = PieceAnnouncer()
        let subscription = try announcer.subscribe(taskID: Self.id)
        let waiter = Task { try await subscription.next(timeout: nil) }
        waiter.cancel()
        await #expect(throws: CancellationError.self) { try await waiter.value }
        announcer.publish(taskID: Self.id, piece: Self.piece(5))
        #expect(try await subscription.next(timeout: nil) == .piece(Self.piece(5)))
    }
}
