import DragonflyCore
import DragonflyDaemon
import Testing

/// The piece dispatcher as a pure value: events in, requests out, with made-up instants.
@Suite struct PieceDispatcherTests {
    static let mib: Int64 = 1 << 20
    static let origin = ContinuousClock.now

    static func at(_ seconds: Double) -> ContinuousClock.Instant { origin + .seconds(seconds) }

    static func digest(_ piece: Int) -> String { "sha256:\(String(piece, radix: 16))" }

    static func digests(_ pieces: Range<Int>) -> [Int: String] {
        Dictionary(uniqueKeysWithValues: pieces.map { ($0, digest($0)) })
    }

    static func config(
        maxInFlight: Int = 16,
        perParentLimit: Int = 4,
        endgameCopies: Int = 2,
        update: (inout PieceDispatcher.Configuration) -> Void = { _ in }
    ) -> PieceDispatcher.Configuration {
        var config = PieceDispatcher.Configuration()
        config.maxInFlight = maxInFlight
        config.perParentLimit = perParentLimit
        config.endgameCopies = endgameCopies
        update(&config)
        return config
    }

    /// A dispatcher of `count` 4 MiB pieces, all digests trusted, with `parents` (ID → pieces), all announcing.
    static func make(
        _ config: PieceDispatcher.Configuration = PieceDispatcher.Configuration(),
        count: Int,
        parents: KeyValuePairs<String, Range<Int>> = [:],
        held: Set<Int> = [],
        trusted: Bool = true
    ) throws -> PieceDispatcher {
        var dispatcher = try PieceDispatcher(
            configuration: config, pieceCount: count, pieceLength: 4 * mib, contentLength: Int64(count) * 4 * mib,
            held: held
        )
        if trusted { try dispatcher.trust(digests: digests(0..<count)) }
        for (id, pieces) in parents {
            #expect(dispatcher.addParent(id) == true)
            try dispatcher.parent(id, has: pieces)
        }
        return dispatcher
    }

    // MARK: - Choice

    @Test func rarestFirstAcrossThreeParents() throws {
        // Availability: pieces 0–1 held by 3 parents, 2–3 by 2, 4–5 by 1.
        var dispatcher = try Self.make(
            Self.config(maxInFlight: 1), count: 6, parents: ["a": 0..<6, "b": 0..<4, "c": 0..<2]
        )
        var order: [Int] = []
        for step in 0..<6 {
            let requests = dispatcher.nextRequests(now: Self.at(Double(step)))
            try #require(requests.count == 1)
            order.append(requests[0].piece)
            #expect(requests[0].digest == Self.digest(requests[0].piece))
            #expect(!requests[0].isDuplicate)
            #expect(dispatcher.completed(requests[0], bytes: Int(4 * Self.mib), now: Self.at(Double(step) + 0.5)) == [])
        }
        #expect(order == [4, 5, 2, 3, 0, 1])
        #expect(dispatcher.isComplete)
        #expect(dispatcher.nextRequests(now: Self.at(10)).isEmpty)
    }

    @Test func urgentPiecesGoFirstWhateverTheirRarity() throws {
        // Pieces 0–9 are rare (one holder), 10–39 common; a caller waits for 35 and 20.
        var dispatcher = try Self.make(
            Self.config(maxInFlight: 2, perParentLimit: 2), count: 40, parents: ["a": 0..<40, "b": 10..<40])
        dispatcher.prioritize([35, 20])
        let first = dispatcher.nextRequests(now: Self.at(0))
        #expect(first.map(\.piece) == [20, 35])
        for request in first {
            _ = dispatcher.completed(request, bytes: Int(4 * Self.mib), now: Self.at(1))
        }
        // Held urgent pieces are forgotten; rarest-first resumes.
        let next = dispatcher.nextRequests(now: Self.at(2))
        #expect(next.count == 2)
        #expect(next.allSatisfy { $0.piece < 10 })
        // Pieces beyond the task are ignored.
        dispatcher.prioritize([400])
        #expect(dispatcher.nextRequests(now: Self.at(3)).isEmpty)
    }

    @Test(arguments: [0, 3, 7, 63, 64, 150, 199])
    func equallyRarePiecesStartAtTheTieBreakStartAndWrapAround(start: Int) throws {
        // 200 pieces span four 64-bit words; pieces 0–19 are held by "a" alone, the rest by both.
        var dispatcher = try Self.make(
            Self.config(maxInFlight: 1) { $0.tieBreakStart = start }, count: 200,
            parents: ["a": 0..<200, "b": 20..<200]
        )
        var order: [Int] = []
        for step in 0..<200 {
            let requests = dispatcher.nextRequests(now: Self.at(Double(step)))
            try #require(requests.count == 1)
            order.append(requests[0].piece)
            _ = dispatcher.completed(requests[0], bytes: Int(4 * Self.mib), now: Self.at(Double(step) + 0.5))
        }
        // Within each availability, ascending from the start, then wrapping around.
        func rotated(_ pieces: Range<Int>) -> [Int] {
            let from = min(max(start, pieces.lowerBound), pieces.upperBound)
            return Array(from..<pieces.upperBound) + Array(pieces.lowerBound..<from)
        }
        #expect(order == rotated(0..<20) + rotated(20..<200))
        #expect(dispatcher.isComplete)
    }

    @Test func rarestPiecesGoToTheirOnlyHolder() throws {
        var dispatcher = try Self.make(
            Self.config(endgameCopies: 1), count: 6, parents: ["a": 0..<6, "b": 0..<4, "c": 0..<2]
        )
        let requests = dispatcher.nextRequests(now: Self.at(0))
        #expect(requests.map(\.piece) == [4, 5, 2, 3, 0, 1])
        // 4 and 5 only "a" has; 2 and 3 avoid the busier "a"; 0 and 1 go to the idle "c" and then "b".
        #expect(requests.map(\.parentID) == ["a", "a", "b", "b", "c", "c"])
    }

    @Test func aSeedServesOnlyPiecesNoOtherParentHasAndOneAtATime() throws {
        var dispatcher = try Self.make(Self.config(endgameCopies: 1), count: 6, parents: ["peer": 0..<3])
        let added = dispatcher.addParent("seed", isSeed: true)
        #expect(added)
        try dispatcher.parent("seed", has: 0..<6)
        let first = dispatcher.nextRequests(now: Self.at(0))
        // 3–5 only the seed has, but one request at a time goes to it; 0–2 come from the peer, never the seed.
        #expect(first.filter { $0.parentID == "seed" }.count == 1)
        #expect(first.filter { $0.parentID == "seed" }.allSatisfy { $0.piece >= 3 })
        #expect(Set(first.filter { $0.parentID == "peer" }.map(\.piece)) == [0, 1, 2])
        // The peer fails piece 0: the seed is now its only usable holder.
        _ = dispatcher.failed(try #require(first.first { $0.piece == 0 }))
        let seedRequest = try #require(first.first { $0.parentID == "seed" })
        _ = dispatcher.completed(seedRequest, bytes: Int(4 * Self.mib), now: Self.at(1))
        let next = dispatcher.nextRequests(now: Self.at(1))
        #expect(next.map(\.parentID) == ["seed"])
        #expect(next.first.map { [0, 3, 4, 5].contains($0.piece) } == true)

        // Once the peer has every piece too, nothing is seed-only: the seed helps like any parent (one at a time).
        var helped = try Self.make(Self.config(endgameCopies: 1), count: 6, parents: ["peer": 0..<6])
        let helpedAdded = helped.addParent("seed", isSeed: true)
        #expect(helpedAdded)
        try helped.parent("seed", has: 0..<6)
        let shared = helped.nextRequests(now: Self.at(0))
        #expect(shared.filter { $0.parentID == "seed" }.count == 1)
        #expect(shared.filter { $0.parentID == "peer" }.count == 4)

        // With seedsLast off and a higher limit a seed is an ordinary parent: it gets the three pieces only it
        // has at once (0–2 go to the idle peer, the better expected rate).
        var plain = try Self.make(
            Self.config(endgameCopies: 1) {
                $0.seedsLast = false
                $0.seedRequestLimit = 4
            }, count: 6,
            parents: ["peer": 0..<3])
        let plainAdded = plain.addParent("seed", isSeed: true)
        #expect(plainAdded)
        try plain.parent("seed", has: 0..<6)
        #expect(plain.nextRequests(now: Self.at(0)).filter { $0.parentID == "seed" }.count == 3)
    }

    @Test func pieceWaitsForItsTrustedDigest() throws {
        var dispatcher = try Self.make(count: 4, parents: ["a": 0..<4], trusted: false)
        #expect(dispatcher.nextRequests(now: Self.at(0)).isEmpty)
        #expect(!dispatcher.isEndgame)
        try dispatcher.trust(digests: [2: Self.digest(2)])
        let requests = dispatcher.nextRequests(now: Self.at(1))
        #expect(requests.map(\.piece) == [2])
        #expect(requests.first?.digest == Self.digest(2))
        // Not the endgame while other pieces still wait for digests: no duplicate of piece 2.
        #expect(dispatcher.nextRequests(now: Self.at(2)).isEmpty)
        try dispatcher.trust(digests: [0: Self.digest(0), 3: Self.digest(3)])
        #expect(dispatcher.nextRequests(now: Self.at(3)).map(\.piece).sorted() == [0, 3])
        #expect(dispatcher.digest(ofPiece: 3) == Self.digest(3))
        #expect(dispatcher.digest(ofPiece: 1) == nil)
    }

    @Test func perParentAndTotalLimits() throws {
        var dispatcher = try Self.make(
            Self.config(maxInFlight: 10, perParentLimit: 4), count: 40,
            parents: ["a": 0..<40, "b": 0..<40, "c": 0..<40]
        )
        let first = dispatcher.nextRequests(now: Self.at(0))
        #expect(first.count == 10)
        #expect(Set(first.map(\.piece)).count == 10)
        let perParent = Dictionary(grouping: first, by: \.parentID).mapValues(\.count)
        #expect(perParent.values.allSatisfy { $0 <= 4 })
        #expect(dispatcher.inFlightRequestCount == 10)
        #expect(dispatcher.nextRequests(now: Self.at(1)).isEmpty)
        _ = dispatcher.completed(first[0], bytes: Int(4 * Self.mib), now: Self.at(2))
        let next = dispatcher.nextRequests(now: Self.at(2))
        #expect(next.count == 1)

        // One parent alone gets at most perParentLimit, however many slots remain.
        var single = try Self.make(count: 40, parents: ["a": 0..<40])
        #expect(single.nextRequests(now: Self.at(0)).count == 4)
        #expect(single.nextRequests(now: Self.at(0)).isEmpty)

        // Defaults: 16 in flight, 4 per parent.
        var many = try Self.make(
            count: 100, parents: ["a": 0..<100, "b": 0..<100, "c": 0..<100, "d": 0..<100, "e": 0..<100])
        let batch = many.nextRequests(now: Self.at(0))
        #expect(batch.count == 16)
        #expect(Dictionary(grouping: batch, by: \.parentID).values.allSatisfy { $0.count <= 4 })
    }

    @Test(arguments: [("fast", "slow"), ("b-fast", "a-slow")])
    func fasterParentIsPreferredOnceMeasured(fast: String, slow: String) throws {
        var dispatcher = try Self.make(
            Self.config(maxInFlight: 1), count: 20, parents: [fast: 0..<20, slow: 0..<20]
        )
        let size = Int(4 * Self.mib)
        var now = 0.0
        var parentsSeen: [String] = []
        // Both unmeasured at first: each gets a piece so both are measured.
        for _ in 0..<2 {
            let request = try #require(dispatcher.nextRequests(now: Self.at(now)).first)
            parentsSeen.append(request.parentID)
            now += request.parentID == fast ? 1 : 8
            _ = dispatcher.completed(request, bytes: size, now: Self.at(now))
        }
        #expect(Set(parentsSeen) == [fast, slow])
        #expect(try #require(dispatcher.throughput(ofParent: fast)) > #require(dispatcher.throughput(ofParent: slow)))
        for _ in 0..<5 {
            let request = try #require(dispatcher.nextRequests(now: Self.at(now)).first)
            #expect(request.parentID == fast)
            now += 1
            _ = dispatcher.completed(request, bytes: size, now: Self.at(now))
        }
    }

    @Test func fastParentTakesMoreButBusyOnesShare() throws {
        // A parent 10× faster gets requests until its expected share drops; the slow one is not starved of
        // work when the fast one is full.
        var dispatcher = try Self.make(
            Self.config(maxInFlight: 6, perParentLimit: 4), count: 30, parents: ["f": 0..<30, "s": 0..<30])
        let warmup = dispatcher.nextRequests(now: Self.at(0))
        for request in warmup {
            _ = dispatcher.completed(request, bytes: Int(4 * Self.mib), now: Self.at(request.parentID == "f" ? 1 : 10))
        }
        let batch = dispatcher.nextRequests(now: Self.at(10))
        let counts = Dictionary(grouping: batch, by: \.parentID).mapValues(\.count)
        #expect(counts["f"] == 4)
        #expect(counts["s"] == 2)
        #expect(batch.prefix(4).allSatisfy { $0.parentID == "f" })
    }

    @Test func heldPiecesAreNeverRequested() throws {
        var dispatcher = try Self.make(
            Self.config(endgameCopies: 1), count: 6, parents: ["a": 0..<6, "b": 0..<6], held: [1, 3]
        )
        #expect(dispatcher.heldPieceCount == 2)
        #expect(dispatcher.missingPieces == [0, 2, 4, 5])
        let requests = dispatcher.nextRequests(now: Self.at(0))
        #expect(requests.map(\.piece).sorted() == [0, 2, 4, 5])
        try dispatcher.parent("b", has: [1, 3])
        for request in requests { _ = dispatcher.completed(request, bytes: 1, now: Self.at(1)) }
        #expect(dispatcher.isComplete)
        #expect(dispatcher.nextRequests(now: Self.at(2)).isEmpty)
        #expect(dispatcher.missingPieces.isEmpty)
    }

    @Test func pieceFetchedFromSourceCancelsItsRequests() throws {
        var dispatcher = try Self.make(count: 2, parents: ["a": 0..<2])
        let requests = dispatcher.nextRequests(now: Self.at(0))
        #expect(requests.count == 2)
        let cancel = dispatcher.markHeld(0)
        #expect(cancel == requests.filter { $0.piece == 0 })
        #expect(dispatcher.inFlightRequestCount == 1)
        // The cancelled request reported afterwards is stale and changes nothing.
        #expect(dispatcher.failed(requests[0]) == .keep)
        #expect(dispatcher.heldPieceCount == 1)
    }

    // MARK: - Endgame

    @Test func endgameDuplicatesAndFirstCopyWins() throws {
        var dispatcher = try Self.make(count: 3, parents: ["a": 0..<3, "b": 0..<3])
        let requests = dispatcher.nextRequests(now: Self.at(0))
        // 3 originals and, since every missing piece is in flight and slots remain, 3 duplicates.
        let originals = requests.filter { !$0.isDuplicate }
        let duplicates = requests.filter(\.isDuplicate)
        #expect(originals.map(\.piece) == [0, 1, 2])
        #expect(duplicates.map(\.piece).sorted() == [0, 1, 2])
        #expect(dispatcher.isEndgame)
        for duplicate in duplicates {
            let original = try #require(originals.first { $0.piece == duplicate.piece })
            #expect(duplicate.parentID != original.parentID)
            #expect(duplicate.digest == original.digest)
        }
        // No third copy with endgameCopies = 2.
        #expect(dispatcher.nextRequests(now: Self.at(1)).isEmpty)

        // The original of 0 wins: its duplicate is cancelled.
        let original0 = try #require(originals.first { $0.piece == 0 })
        let duplicate0 = try #require(duplicates.first { $0.piece == 0 })
        #expect(dispatcher.completed(original0, bytes: Int(4 * Self.mib), now: Self.at(2)) == [duplicate0])
        // The duplicate of 1 wins: its original is cancelled.
        let original1 = try #require(originals.first { $0.piece == 1 })
        let duplicate1 = try #require(duplicates.first { $0.piece == 1 })
        #expect(dispatcher.completed(duplicate1, bytes: Int(4 * Self.mib), now: Self.at(2)) == [original1])
        // A cancelled copy that finishes anyway changes nothing.
        #expect(dispatcher.completed(duplicate0, bytes: Int(4 * Self.mib), now: Self.at(3)) == [])
        #expect(dispatcher.failed(original1) == .keep)
        #expect(dispatcher.heldPieceCount == 2)
        // Piece 2: the original fails, the duplicate still runs; nothing new is requested from the failed parent.
        let original2 = try #require(originals.first { $0.piece == 2 })
        #expect(dispatcher.failed(original2) == .keep)
        #expect(dispatcher.inFlightRequests == duplicates.filter { $0.piece == 2 })
        #expect(dispatcher.nextRequests(now: Self.at(4)).isEmpty)
        let duplicate2 = try #require(duplicates.first { $0.piece == 2 })
        #expect(dispatcher.completed(duplicate2, bytes: Int(4 * Self.mib), now: Self.at(5)) == [])
        #expect(dispatcher.isComplete)
    }

    @Test func endgameCanBeDisabled() throws {
        var dispatcher = try Self.make(Self.config(endgameCopies: 1), count: 3, parents: ["a": 0..<3, "b": 0..<3])
        #expect(dispatcher.nextRequests(now: Self.at(0)).count == 3)
        #expect(!dispatcher.isEndgame)
    }

    @Test func endgameWaitsWhilePiecesAreStillRequestable() throws {
        // 8 pieces, 4 slots: pieces are still waiting, so no duplicates yet.
        var dispatcher = try Self.make(Self.config(maxInFlight: 4), count: 8, parents: ["a": 0..<8, "b": 0..<8])
        let first = dispatcher.nextRequests(now: Self.at(0))
        #expect(first.count == 4)
        #expect(first.allSatisfy { !$0.isDuplicate })
        #expect(!dispatcher.isEndgame)
    }

    // MARK: - Stalls

    @Test func stallTimeoutScalesWithPieceSizeAndProgressResetsIt() throws {
        // Piece 0: 4 MiB → 2 s + 4 s; piece 1 (the remainder): 1 MiB → 2 s + 1 s.
        let config = Self.config(endgameCopies: 1) {
            $0.stallBase = .seconds(2)
            $0.stallMinimumRate = Self.mib
        }
        var dispatcher = try PieceDispatcher(
            configuration: config, pieceCount: 2, pieceLength: 4 * Self.mib, contentLength: 5 * Self.mib
        )
        try dispatcher.trust(digests: Self.digests(0..<2))
        #expect(dispatcher.addParent("a") == true)
        #expect(dispatcher.addParent("b") == true)
        try dispatcher.parent("a", has: 0..<2)
        try dispatcher.parent("b", has: 0..<2)
        #expect(dispatcher.stallTimeout(ofPiece: 0) == .seconds(6))
        #expect(dispatcher.stallTimeout(ofPiece: 1) == .seconds(3))

        let requests = dispatcher.nextRequests(now: Self.at(0))
        #expect(requests.map(\.parentID) == ["a", "b"])
        let request0 = try #require(requests.first { $0.piece == 0 })
        let request1 = try #require(requests.first { $0.piece == 1 })
        #expect(dispatcher.stalled(now: Self.at(2.9)).isEmpty)
        #expect(dispatcher.stalled(now: Self.at(3.5)).map(\.piece) == [1])
        #expect(dispatcher.nextStallDeadline == Self.at(3))

        // Bytes of piece 0 at 5 s push its deadline to 11 s; zero bytes do not count as progress.
        dispatcher.progressed(request0, bytes: 65_536, now: Self.at(5))
        dispatcher.progressed(request0, bytes: 0, now: Self.at(10))
        #expect(dispatcher.stalled(now: Self.at(6.5)) == [request1])
        #expect(!dispatcher.stalled(now: Self.at(10.9)).contains(request0))
        #expect(dispatcher.stalled(now: Self.at(11.5)).contains(request0))

        // The conductor cancels the stalled request and reports it: the piece goes to the other parent.
        let verdict = dispatcher.failed(request1)
        #expect(verdict == .keep)
        let retry = dispatcher.nextRequests(now: Self.at(12))
        #expect(retry.map(\.piece) == [1])
        #expect(retry.map(\.parentID) == ["a"])
    }

    // MARK: - Failures

    @Test func failedPieceRotatesToAnotherParent() throws {
        var dispatcher = try Self.make(Self.config(endgameCopies: 1), count: 1, parents: ["a": 0..<1, "b": 0..<1])
        let first = try #require(dispatcher.nextRequests(now: Self.at(0)).first)
        #expect(first.parentID == "a")
        #expect(dispatcher.failed(first) == .keep)
        let second = try #require(dispatcher.nextRequests(now: Self.at(1)).first)
        #expect(second.parentID == "b")
        #expect(second.piece == 0)
        #expect(second.serial != first.serial)
        #expect(!dispatcher.needsReschedule)
        // Both holders failed it: no source left while both are still announcing but avoided for it.
        #expect(dispatcher.failed(second) == .keep)
        #expect(dispatcher.nextRequests(now: Self.at(2)).isEmpty)
        #expect(dispatcher.piecesWithoutSource == [0])
        #expect(dispatcher.needsReschedule)
        // A new parent from a reschedule supplies it.
        #expect(dispatcher.addParent("c") == true)
        #expect(dispatcher.piecesWithoutSource == [])
        #expect(!dispatcher.needsReschedule)
        try dispatcher.parent("c", has: [0])
        #expect(dispatcher.nextRequests(now: Self.at(3)).map(\.parentID) == ["c"])
    }

    @Test func parentDroppedAfterConsecutiveFailures() throws {
        let config = Self.config { $0.parentFailureLimit = 2 }
        var dispatcher = try Self.make(config, count: 10, parents: ["a": 0..<10])
        var requests = dispatcher.nextRequests(now: Self.at(0))
        #expect(requests.count == 4)
        // Failure, success (the streak ends), failure: kept.
        #expect(dispatcher.failed(requests[0]) == .keep)
        _ = dispatcher.completed(requests[1], bytes: 1, now: Self.at(1))
        #expect(dispatcher.failed(requests[2]) == .keep)
        // A second consecutive failure drops it; its last request is returned to cancel.
        requests = dispatcher.nextRequests(now: Self.at(2))
        let remaining = dispatcher.inFlightRequests
        #expect(remaining.count == 4)
        let verdict = dispatcher.failed(remaining[0])
        #expect(verdict == .drop(cancel: Array(remaining.dropFirst())))
        #expect(dispatcher.parentIDs.isEmpty)
        #expect(dispatcher.inFlightRequestCount == 0)
        #expect(dispatcher.needsReschedule)
        // Reports about requests of the dropped parent are stale.
        #expect(dispatcher.failed(remaining[1]) == .keep)
        dispatcher.progressed(remaining[1], bytes: 10, now: Self.at(3))
        #expect(dispatcher.stalled(now: Self.at(1000)).isEmpty)
    }

    @Test func avoidancesAreBoundedPerParent() throws {
        // With room for one avoidance, a second failure makes the parent eligible for the first piece again.
        let config = Self.config(maxInFlight: 1, endgameCopies: 1) {
            $0.parentFailureLimit = 10
            $0.maxAvoidedPiecesPerParent = 1
        }
        var dispatcher = try Self.make(config, count: 2, parents: ["a": 0..<2])
        let first = try #require(dispatcher.nextRequests(now: Self.at(0)).first)
        #expect(first.piece == 0)
        #expect(dispatcher.failed(first) == .keep)
        let second = try #require(dispatcher.nextRequests(now: Self.at(1)).first)
        #expect(second.piece == 1)
        #expect(dispatcher.failed(second) == .keep)
        #expect(dispatcher.nextRequests(now: Self.at(2)).map(\.piece) == [0])
    }

    @Test func corruptPieceDropsTheParentAndIsRequestedElsewhere() throws {
        var dispatcher = try Self.make(count: 3, parents: ["a": 0..<3])
        let fromA = dispatcher.nextRequests(now: Self.at(0))
        #expect(fromA.map(\.piece) == [0, 1, 2])
        #expect(fromA.allSatisfy { $0.parentID == "a" && !$0.isDuplicate })
        #expect(dispatcher.addParent("b") == true)
        try dispatcher.parent("b", has: 0..<3)
        let cancel = dispatcher.corrupted(fromA[0])
        #expect(cancel == [fromA[1], fromA[2]])
        #expect(dispatcher.parentIDs == ["b"])
        let fromB = dispatcher.nextRequests(now: Self.at(1))
        #expect(fromB.map(\.piece) == [0, 1, 2])
        #expect(fromB.allSatisfy { $0.parentID == "b" && !$0.isDuplicate })
        // A corrupt report for a parent already gone changes nothing.
        #expect(dispatcher.corrupted(fromA[1]) == [])
        #expect(dispatcher.inFlightRequests == fromB)
    }

    // MARK: - Sources

    @Test func piecesWithoutSourceWhenTheOnlyHolderIsRemoved() throws {
        var dispatcher = try Self.make(count: 4, parents: ["a": 0..<4, "b": 0..<2])
        #expect(dispatcher.piecesWithoutSource.isEmpty)
        #expect(!dispatcher.needsReschedule)
        let requests = dispatcher.nextRequests(now: Self.at(0))
        let cancelled = dispatcher.removeParent("a")
        #expect(Set(cancelled) == Set(requests.filter { $0.parentID == "a" }))
        #expect(!cancelled.isEmpty)
        // "b" still announces: it may yet get 2 and 3.
        #expect(dispatcher.piecesWithoutSource.isEmpty)
        #expect(!dispatcher.needsReschedule)
        dispatcher.parentFinishedAnnouncing("b")
        #expect(dispatcher.piecesWithoutSource == [2, 3])
        #expect(dispatcher.needsReschedule)
        // No parent at all.
        _ = dispatcher.removeParent("b")
        #expect(dispatcher.piecesWithoutSource == [0, 1, 2, 3])
        #expect(dispatcher.needsReschedule)
        // New parents from the scheduler.
        #expect(dispatcher.addParent("c") == true)
        try dispatcher.parent("c", has: 0..<4)
        dispatcher.parentFinishedAnnouncing("c")
        #expect(dispatcher.piecesWithoutSource.isEmpty)
        #expect(!dispatcher.needsReschedule)
        #expect(dispatcher.nextRequests(now: Self.at(1)).map(\.piece) == [0, 1, 2, 3])
    }

    // MARK: - Piece count

    @Test func unknownPieceCountBecomesKnown() throws {
        var dispatcher = try PieceDispatcher(pieceCount: nil, pieceLength: 4 * Self.mib)
        #expect(!dispatcher.isComplete)
        #expect(dispatcher.needsReschedule)
        #expect(dispatcher.addParent("a") == true)
        try dispatcher.parent("a", has: 0..<3)
        try dispatcher.trust(digests: Self.digests(0..<3))
        #expect(dispatcher.missingPieces == [0, 1, 2])
        let first = dispatcher.nextRequests(now: Self.at(0))
        #expect(first.map(\.piece) == [0, 1, 2])
        #expect(!dispatcher.isEndgame)
        for request in first { _ = dispatcher.completed(request, bytes: Int(4 * Self.mib), now: Self.at(1)) }
        #expect(!dispatcher.isComplete)
        #expect(!dispatcher.needsReschedule)
        // The count arrives: one piece more than anyone announced.
        #expect(try dispatcher.setPieceCount(4, contentLength: 15 * Self.mib) == [])
        #expect(dispatcher.missingPieces == [3])
        #expect(!dispatcher.isComplete)
        #expect(dispatcher.stallTimeout(ofPiece: 3) < dispatcher.stallTimeout(ofPiece: 0))
        try dispatcher.trust(digests: [3: Self.digest(3)])
        #expect(dispatcher.nextRequests(now: Self.at(2)).isEmpty)
        try dispatcher.parent("a", has: [3])
        let last = try #require(dispatcher.nextRequests(now: Self.at(3)).first)
        #expect(last.piece == 3)
        _ = dispatcher.completed(last, bytes: Int(3 * Self.mib), now: Self.at(4))
        #expect(dispatcher.isComplete)
        #expect(!dispatcher.needsReschedule)
        // The same count again is fine; another is not.
        #expect(try dispatcher.setPieceCount(4) == [])
        #expect(throws: DragonflyError.self) { try dispatcher.setPieceCount(5) }
    }

    @Test func pieceCountBelowAnnouncedPiecesCancelsTheirRequests() throws {
        var dispatcher = try PieceDispatcher(pieceCount: nil, pieceLength: 4 * Self.mib)
        #expect(dispatcher.addParent("a") == true)
        try dispatcher.parent("a", has: 0..<5)
        try dispatcher.trust(digests: Self.digests(0..<5))
        let requests = dispatcher.nextRequests(now: Self.at(0))
        #expect(requests.map(\.piece) == [0, 1, 2, 3])
        let cancelled = try dispatcher.setPieceCount(3)
        #expect(cancelled == [requests[3]])
        #expect(dispatcher.missingPieces == [0, 1, 2])
        #expect(dispatcher.inFlightRequestCount == 3)
        #expect(throws: DragonflyError.self) { try dispatcher.parent("a", has: [3]) }
    }

    @Test func emptyTaskIsComplete() throws {
        let dispatcher = try PieceDispatcher(pieceCount: 0, pieceLength: 4 * Self.mib, contentLength: 0)
        #expect(dispatcher.isComplete)
        #expect(!dispatcher.needsReschedule)
    }

    // MARK: - Bad input

    @Test func badInputIsRejected() throws {
        var dispatcher = try Self.make(count: 4, parents: ["a": 0..<4])
        #expect(throws: DragonflyError.self) { try dispatcher.trust(digests: [4: "sha256:00"]) }
        #expect(throws: DragonflyError.self) { try dispatcher.trust(digests: [-1: "sha256:00"]) }
        #expect(throws: DragonflyError.self) { try dispatcher.trust(digests: [0: "sha256:ff"]) }
        #expect(dispatcher.digest(ofPiece: 0) == Self.digest(0))
        #expect(throws: DragonflyError.self) { try dispatcher.parent("a", has: [7]) }
        try dispatcher.parent("nobody", has: [1])  // an unknown (already removed) parent is ignored
        #expect(dispatcher.addParent("a") == false)
        #expect(dispatcher.removeParent("nobody") == [])
        #expect(throws: DragonflyError.self) {
            try PieceDispatcher(pieceCount: 3, pieceLength: 4 * Self.mib, contentLength: 20 * Self.mib)
        }
        #expect(throws: DragonflyError.self) { try PieceDispatcher(pieceCount: 70_000, pieceLength: 4 * Self.mib) }
        #expect(throws: DragonflyError.self) { try PieceDispatcher(pieceCount: 1, pieceLength: 0) }
        #expect(throws: DragonflyError.self) { try PieceDispatcher(pieceCount: 2, pieceLength: 1, held: [2]) }
        #expect(throws: DragonflyError.self) {
            try PieceDispatcher(configuration: Self.config(maxInFlight: 0), pieceCount: 1, pieceLength: 1)
        }
        var unknown = try PieceDispatcher(pieceCount: nil, pieceLength: 1)
        #expect(unknown.addParent("a") == true)
        #expect(throws: DragonflyError.self) { try unknown.parent("a", has: [PieceDispatcher.maxPieceCount]) }
    }

    @Test func parentCountIsCapped() throws {
        var dispatcher = try Self.make(Self.config { $0.maxParents = 3 }, count: 1)
        var added: [Bool] = []
        for index in 0..<5 { added.append(dispatcher.addParent("p\(index)")) }
        #expect(added == [true, true, true, false, false])
        _ = dispatcher.removeParent("p1")
        #expect(dispatcher.addParent("p4") == true)
        #expect(dispatcher.parentIDs == ["p0", "p2", "p4"])
    }

    // MARK: - Scale

    /// 65 536 pieces, 64 parents with overlapping holdings, some failures and a corrupt parent: runs to the end
    /// through the API (a quadratic step would not finish in the test's time limit).
    @Test(.timeLimit(.minutes(2))) func largeTaskRunsToCompletion() throws {
        let count = PieceDispatcher.maxPieceCount
        var dispatcher = try PieceDispatcher(
            pieceCount: count, pieceLength: 4 * Self.mib, contentLength: Int64(count) * 4 * Self.mib
        )
        try dispatcher.trust(digests: Self.digests(0..<count))
        let parents = (0..<PieceDispatcher.maxParentCount).map { "parent-\($0)" }
        for (index, id) in parents.enumerated() {
            #expect(dispatcher.addParent(id) == true)
            // Parent 0 is a seed; the others hold a varied stripe each, so availabilities differ.
            let pieces = index == 0 ? Array(0..<count) : (0..<count).filter { ($0 / 64 + index) % (index % 7 + 2) == 0 }
            try dispatcher.parent(id, has: pieces)
            dispatcher.parentFinishedAnnouncing(id)
        }
        #expect(dispatcher.addParent("one-too-many") == false)

        var completions = [Int](repeating: 0, count: count)
        var round = 0
        var issued = 0
        var corruptParent: String?
        while !dispatcher.isComplete {
            round += 1
            try #require(round < 4 * count, "no progress")
            let now = Self.at(Double(round) / 100)
            let requests = dispatcher.nextRequests(now: now)
            issued += requests.count
            try #require(dispatcher.inFlightRequestCount <= 16)
            for request in dispatcher.inFlightRequests {
                let done = Self.at(Double(round) / 100 + 0.005)
                if request.serial % 211 == 0 {
                    _ = dispatcher.failed(request)
                } else if round >= 1000 && corruptParent == nil && request.parentID != "parent-0" {
                    corruptParent = request.parentID
                    _ = dispatcher.corrupted(request)
                } else if request.serial % 3 != 0 || round % 2 == 0 {
                    // Pieces from a third of the requests take two rounds.
                    if dispatcher.inFlightRequests.contains(request) {
                        completions[request.piece] += 1
                        _ = dispatcher.completed(request, bytes: Int(4 * Self.mib), now: done)
                    }
                }
            }
        }
        #expect(completions.allSatisfy { $0 == 1 })
        #expect(issued >= count)
        let corrupt = try #require(corruptParent)
        #expect(!dispatcher.parentIDs.contains(corrupt))
        #expect(dispatcher.parentIDs.count == 63)
        #expect(dispatcher.missingPieces.isEmpty)
        #expect(!dispatcher.needsReschedule)
    }
}

/// Random event sequences checked step by step against a plain model of what the dispatcher must do.
@Suite struct PieceDispatcherModelTests {
    /// SplitMix64: the same walk on every run.
    struct SeededGenerator: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }

    /// What the dispatcher is told and what it answered, kept in plain collections.
    struct Model {
        let config: PieceDispatcher.Configuration
        /// The real piece count, which the dispatcher may learn late.
        let count: Int
        var isCountKnown: Bool
        /// Pieces the dispatcher tracks: the count once known, before that the highest piece seen + 1.
        var tracked: Int
        var holdings: [String: Set<Int>] = [:]
        var announcing: Set<String> = []
        var held: Set<Int> = []
        var trusted: Set<Int> = []
        var avoided: Set<[String]> = []
        var failures: [String: Int] = [:]
        var flights: [PieceDispatcher.Request] = []
        var lastProgress: [UInt64: ContinuousClock.Instant] = [:]

        func isAvoided(_ piece: Int, _ parent: String) -> Bool { avoided.contains([String(piece), parent]) }
        func inFlight(_ piece: Int) -> Bool { flights.contains { $0.piece == piece } }
        func load(_ parent: String) -> Int { flights.filter { $0.parentID == parent }.count }
        func availability(_ piece: Int) -> Int { holdings.values.filter { $0.contains(piece) }.count }
        var missing: [Int] { (0..<tracked).filter { !held.contains($0) } }
        var isComplete: Bool { isCountKnown && held.count == count }

        mutating func saw(_ pieces: some Sequence<Int>) {
            if !isCountKnown, let highest = pieces.max() { tracked = max(tracked, highest + 1) }
        }

        /// Missing, not in flight, with a holder that is not avoided for it (requestable or awaiting its digest).
        var hasSourcedPiece: Bool {
            missing.contains { piece in
                !inFlight(piece) && holdings.contains { $0.value.contains(piece) && !isAvoided(piece, $0.key) }
            }
        }

        var needsReschedule: Bool {
            guard !isComplete else { return false }
            if holdings.isEmpty || !withoutSource.isEmpty { return true }
            return !isCountKnown && announcing.isEmpty && flights.isEmpty && !hasSourcedPiece
        }

        /// Parents that could take a new request for `piece` now.
        func usable(_ piece: Int) -> [String] {
            holdings.filter { parent, pieces in
                pieces.contains(piece) && !isAvoided(piece, parent) && load(parent) < config.perParentLimit
                    && !flights.contains { $0.piece == piece && $0.parentID == parent }
            }.map(\.key)
        }

        /// Missing, trusted, not in flight, and some parent with a free slot can serve it.
        var servable: [Int] {
            missing.filter { trusted.contains($0) && !inFlight($0) && !usable($0).isEmpty }
        }

        var withoutSource: [Int] {
            missing.filter { piece in
                !inFlight(piece)
                    && holdings.allSatisfy { parent, pieces in
                        isAvoided(piece, parent) || (!pieces.contains(piece) && !announcing.contains(parent))
                    }
            }
        }

        var isEndgame: Bool {
            isCountKnown && config.endgameCopies > 1 && !flights.isEmpty
                && missing.allSatisfy { trusted.contains($0) }
                && missing.allSatisfy { piece in
                    inFlight(piece) || holdings.allSatisfy { !$0.value.contains(piece) || isAvoided(piece, $0.key) }
                }
        }

        mutating func remove(parent: String) {
            holdings[parent] = nil
            announcing.remove(parent)
            failures[parent] = nil
            avoided = avoided.filter { $0[1] != parent }
            flights.removeAll { $0.parentID == parent }
        }
    }

    static func sorted(_ requests: [PieceDispatcher.Request]) -> [PieceDispatcher.Request] {
        requests.sorted { ($0.piece, $0.serial) < ($1.piece, $1.serial) }
    }

    static let seeds: Range<UInt64> = 0..<16

    @Test(arguments: seeds) func randomEventsMatchTheModel(seed: UInt64) throws {
        _ = try Self.walk(seed: seed)
    }

    /// The walks reach every kind of state the checks are about.
    @Test func walksCoverDuplicatesDropsStallsAndMissingSources() throws {
        var total: [String: Int] = [:]
        for seed in Self.seeds { total.merge(try Self.walk(seed: seed), uniquingKeysWith: +) }
        for kind in ["requests", "duplicates", "drops", "stalls", "sourceless", "endgame", "complete", "countLearned"] {
            #expect(total[kind, default: 0] > 0, "no \(kind) in any walk")
        }
    }

    /// 1000 random events on a random task, each checked against the model; returns how often each kind of
    /// state or event occurred.
    static func walk(seed: UInt64) throws -> [String: Int] {
        var random = SeededGenerator(state: seed)
        var config = PieceDispatcher.Configuration()
        config.maxInFlight = Int.random(in: 1...12, using: &random)
        config.perParentLimit = Int.random(in: 1...4, using: &random)
        config.parentFailureLimit = Int.random(in: 2...4, using: &random)
        config.endgameCopies = Int.random(in: 1...3, using: &random)
        config.maxParents = 6
        config.maxAvoidedPiecesPerParent = 4096
        let count = Int.random(in: 1...120, using: &random)
        let pieceLength: Int64 = 1 << 20
        let contentLength = Int64(count) * pieceLength - Int64.random(in: 0..<pieceLength, using: &random)
        let isCountKnown = Bool.random(using: &random)
        var dispatcher = try PieceDispatcher(
            configuration: config, pieceCount: isCountKnown ? count : nil, pieceLength: pieceLength,
            contentLength: isCountKnown ? contentLength : nil
        )
        var model = PieceDispatcherModelTests.Model(
            config: config, count: count, isCountKnown: isCountKnown, tracked: isCountKnown ? count : 0
        )
        var nextParent = 0
        var clock = 0.0
        var stats: [String: Int] = [:]

        for _ in 0..<1000 {
            let now = PieceDispatcherTests.at(clock)
            switch Int.random(in: 0...100, using: &random) {
            case 0..<6 where model.holdings.count < config.maxParents:
                let id = "p\(nextParent)"
                nextParent += 1
                #expect(dispatcher.addParent(id) == true)
                let pieces = Set((0..<count).filter { _ in Int.random(in: 0..<3, using: &random) == 0 })
                try dispatcher.parent(id, has: pieces.sorted())
                model.holdings[id] = pieces
                model.saw(pieces)
                model.announcing.insert(id)
            case 6..<14:
                guard let id = model.holdings.keys.randomElement(using: &random) else { continue }
                let more = (0..<count).filter { _ in Int.random(in: 0..<8, using: &random) == 0 }
                try dispatcher.parent(id, has: more)
                model.holdings[id, default: []].formUnion(more)
                model.saw(more)
            case 14..<16:
                guard let id = model.announcing.randomElement(using: &random) else { continue }
                dispatcher.parentFinishedAnnouncing(id)
                model.announcing.remove(id)
            case 16..<22:
                let pieces = (0..<count).filter { _ in Int.random(in: 0..<4, using: &random) == 0 }
                try dispatcher.trust(digests: Dictionary(uniqueKeysWithValues: pieces.map { ($0, "sha256:\($0)") }))
                model.trusted.formUnion(pieces)
                model.saw(pieces)
            case 100 where !model.isCountKnown:
                let cancelled = try dispatcher.setPieceCount(count, contentLength: contentLength)
                #expect(cancelled.isEmpty)
                model.isCountKnown = true
                model.tracked = count
                stats["countLearned", default: 0] += 1
            case 22..<50:
                let requests = dispatcher.nextRequests(now: now)
                for request in requests {
                    let piece = request.piece
                    #expect(!model.held.contains(piece))
                    #expect(model.trusted.contains(piece))
                    #expect(request.digest == "sha256:\(piece)")
                    #expect(model.usable(piece).contains(request.parentID), "parent must hold it, be free, not avoided")
                    if request.isDuplicate {
                        #expect(model.isEndgame)
                        #expect(model.inFlight(piece))
                        #expect(model.flights.filter { $0.piece == piece }.count < config.endgameCopies)
                    } else {
                        // Rarest first among what free parents can serve, ties to the lowest number.
                        let servable = model.servable
                        let rarest = servable.min { (model.availability($0), $0) < (model.availability($1), $1) }
                        #expect(piece == rarest)
                    }
                    #expect(model.flights.count < config.maxInFlight)
                    stats[request.isDuplicate ? "duplicates" : "requests", default: 0] += 1
                    model.flights.append(request)
                    model.lastProgress[request.serial] = now
                }
                // Nothing servable is left behind while slots remain.
                if model.flights.count < config.maxInFlight {
                    #expect(model.servable.isEmpty)
                }
            case 50..<62:
                guard let request = model.flights.randomElement(using: &random) else { continue }
                let cancel = dispatcher.completed(request, bytes: 1 << 20, now: now)
                #expect(
                    Self.sorted(cancel)
                        == Self.sorted(model.flights.filter { $0.piece == request.piece && $0 != request }))
                model.flights.removeAll { $0.piece == request.piece }
                model.held.insert(request.piece)
                model.failures[request.parentID] = 0
            case 62..<72:
                guard let request = model.flights.randomElement(using: &random) else { continue }
                let verdict = dispatcher.failed(request)
                model.flights.removeAll { $0 == request }
                model.avoided.insert([String(request.piece), request.parentID])
                let failures = model.failures[request.parentID, default: 0] + 1
                model.failures[request.parentID] = failures
                if failures >= config.parentFailureLimit {
                    let others = model.flights.filter { $0.parentID == request.parentID }
                    guard case .drop(let cancel) = verdict else {
                        Issue.record("parent at its failure limit was kept")
                        continue
                    }
                    #expect(Self.sorted(cancel) == Self.sorted(others))
                    model.remove(parent: request.parentID)
                    stats["drops", default: 0] += 1
                } else {
                    #expect(verdict == .keep)
                }
            case 72..<75:
                guard let request = model.flights.randomElement(using: &random) else { continue }
                let cancel = dispatcher.corrupted(request)
                let others = model.flights.filter { $0.parentID == request.parentID && $0 != request }
                #expect(Self.sorted(cancel) == Self.sorted(others))
                model.remove(parent: request.parentID)
            case 75..<78:
                guard let id = model.holdings.keys.randomElement(using: &random) else { continue }
                let cancel = dispatcher.removeParent(id)
                #expect(Self.sorted(cancel) == Self.sorted(model.flights.filter { $0.parentID == id }))
                model.remove(parent: id)
            case 78..<86:
                guard let request = model.flights.randomElement(using: &random) else { continue }
                dispatcher.progressed(request, bytes: 1024, now: now)
                model.lastProgress[request.serial] = now
            case 86..<92:
                let stalled = dispatcher.stalled(now: now)
                let expected = model.flights.filter { request in
                    guard let last = model.lastProgress[request.serial] else { return false }
                    return now - last > dispatcher.stallTimeout(ofPiece: request.piece)
                }
                #expect(stalled == Self.sorted(expected))
                stats["stalls", default: 0] += stalled.count
            default:
                clock += Double.random(in: 0..<3, using: &random)
            }

            // The dispatcher's view matches the model after every event.
            #expect(dispatcher.inFlightRequests == Self.sorted(model.flights))
            #expect(dispatcher.heldPieceCount == model.held.count)
            #expect(dispatcher.isComplete == model.isComplete)
            #expect(dispatcher.pieceCount == (model.isCountKnown ? count : nil))
            #expect(dispatcher.parentIDs == model.holdings.keys.sorted())
            #expect(dispatcher.missingPieces == model.missing)
            #expect(dispatcher.piecesWithoutSource == model.withoutSource)
            #expect(dispatcher.needsReschedule == model.needsReschedule)
            #expect(dispatcher.isEndgame == model.isEndgame)
            if model.flights.isEmpty {
                #expect(dispatcher.nextStallDeadline == nil)
            }
            if !model.withoutSource.isEmpty { stats["sourceless", default: 0] += 1 }
            if model.isEndgame { stats["endgame", default: 0] += 1 }
        }
        if model.isComplete { stats["complete"] = 1 }
        return stats
    }
}
