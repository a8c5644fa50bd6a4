package import DragonflyCore

/// Decides which piece of a task to fetch from which parent (DESIGN §6 steps 4–5).
///
/// A value type with no I/O, no clock and no locks: the download conductor feeds it events (parents, their
/// pieces, trusted digests, request progress and outcomes) with the current instant and performs what it returns.
///
/// - Up to ``Configuration/maxInFlight`` requests at once, at most ``Configuration/perParentLimit`` per parent.
/// - Rarest first: the requestable piece held by the fewest current parents, ties to the lowest number at or after
///   ``Configuration/tieBreakStart`` (wrapping around).
/// - For that piece, among the parents that hold it, have a free slot and have not failed it, the one with the best
///   expected rate: its measured throughput (an EWMA of completed pieces; a parent not yet measured counts as the
///   best measured one) divided by its requests in flight plus one. Ties go to an unmeasured parent, then to fewer
///   requests in flight, then to the lower parent ID.
/// - A piece is requestable only once its digest is trusted (``trust(digests:)``), and never while held.
/// - Endgame: when every missing piece is trusted and in flight and slots remain, the oldest requests are
///   duplicated on another parent; the first completed copy wins and ``completed(_:bytes:now:)`` returns the
///   others to cancel.
/// - A request with no bytes for `stallBase + pieceLength / stallMinimumRate` is reported by ``stalled(now:)``.
/// - A failed request frees the piece for another parent and the failing parent is avoided for that piece; after
///   ``Configuration/parentFailureLimit`` consecutive failures the parent is dropped. Corrupt bytes drop the
///   parent at once (``corrupted(_:)``).
/// - ``needsReschedule`` says when no current parent can supply some missing piece.
///
/// How the conductor drives it (one dispatcher per download, owned by one task, so no lock):
/// - `NormalTask` → `init` (or ``setPieceCount(_:contentLength:)``), ``trust(digests:)`` with its digests,
///   ``addParent(_:)`` per parent; `PieceDigests` → ``trust(digests:)``; each `PieceAvailable` of a parent's
///   SyncPieces stream → ``parent(_:has:)``; its last one or the stream's clean end →
///   ``parentFinishedAnnouncing(_:)``; the stream failing or a `Reschedule` replacing it → ``removeParent(_:)``.
/// - After every event: ``nextRequests(now:)``, start a fetch per request.
/// - Bytes arriving → ``progressed(_:bytes:now:)``; verified → ``completed(_:bytes:now:)`` (cancel what it returns,
///   then store the piece, send `PieceFinished`); HTTP/connection error, 404, 429 → ``failed(_:)``; digest
///   mismatch → ``corrupted(_:)``; a piece from the origin → ``markHeld(_:)``.
/// - A timer at ``nextStallDeadline``: cancel each of ``stalled(now:)`` and report it with ``failed(_:)``.
/// - A dropped parent (``ParentVerdict/drop(cancel:)``, ``corrupted(_:)``) → `PieceFailed` to the scheduler;
///   ``needsReschedule`` → `Reschedule` (rate-limited) or, after the retry limit, back to source for
///   ``missingPieces``; done when ``isComplete``.
///
/// Costs: memory is O(pieces + parents); every event is O(log pieces) amortised per piece it touches, except
/// ``removeParent(_:)``, ``setPieceCount(_:contentLength:)`` and the list-returning properties, which are
/// O(pieces). Pieces are capped at ``maxPieceCount``, parents at ``Configuration/maxParents`` (≤ 64).
package struct PieceDispatcher: Sendable {
    /// The most pieces a task may have (DESIGN §4: 64 MiB pieces of a 4 TiB object).
    package static let maxPieceCount = 65_536
    /// The most parents one dispatcher tracks at once (parents are bits of a 64-bit mask).
    package static let maxParentCount = 64

    /// Tunables; every value has a default.
    package struct Configuration: Sendable, Hashable {
        /// Requests in flight at once, duplicates included.
        package var maxInFlight = 16
        /// Requests in flight to one parent at once.
        package var perParentLimit = 4
        /// Consecutive failures after which a parent is dropped.
        package var parentFailureLimit = 3
        /// Pieces one parent is avoided for at once; beyond it the oldest avoidance is forgotten (that parent may
        /// be asked for that piece again).
        package var maxAvoidedPiecesPerParent = 64
        /// The fixed part of the stall timeout.
        package var stallBase: Duration = .seconds(5)
        /// Bytes per second below which a piece counts as stalled: the timeout grows by `pieceLength / rate`.
        package var stallMinimumRate: Int64 = 1 << 20
        /// Copies of a piece in flight at once in the endgame (1 disables the endgame).
        package var endgameCopies = 2
        /// Parents tracked at once (1...64); ``PieceDispatcher/addParent(_:)`` refuses more.
        package var maxParents = PieceDispatcher.maxParentCount
        /// Weight of the newest sample in a parent's throughput EWMA (0 < weight ≤ 1).
        package var throughputSmoothing = 0.3
        /// Among equally rare pieces, the first one asked for is the lowest at or after this number (wrapping to
        /// 0). The conductor draws it at random per download so a swarm's peers start in different places.
        package var tieBreakStart = 0
        /// While a seed parent (``addParent(_:isSeed:)``) still holds pieces no other parent has, it serves only
        /// those: its upload is then the swarm's bottleneck (every byte leaves it at least once), so it should send
        /// each piece once and leave the copying to the peers that have it. Once every missing piece has another
        /// holder the seed is an ordinary parent again, so its upload also helps when the hosts' is the limit.
        package var seedsLast = true
        /// Requests in flight to one seed parent at once (at most ``perParentLimit``): a seed shared by a whole
        /// swarm finishes a few pieces early, which peers then copy among themselves, rather than all of them late.
        package var seedRequestLimit = 1

        /// The defaults.
        package init() {}

        /// Throws `invalidArgument` naming the first out-of-range field.
        package func validate() throws(DragonflyError) {
            func check(_ ok: Bool, _ field: String, _ rule: String) throws(DragonflyError) {
                guard ok else {
                    throw DragonflyError(code: .invalidArgument, message: "piece dispatcher: \(field) must be \(rule)")
                }
            }
            try check((1...4096).contains(maxInFlight), "maxInFlight", "in 1...4096")
            try check((1...4096).contains(perParentLimit), "perParentLimit", "in 1...4096")
            try check((1...4096).contains(seedRequestLimit), "seedRequestLimit", "in 1...4096")
            try check((1...1000).contains(parentFailureLimit), "parentFailureLimit", "in 1...1000")
            try check((1...4096).contains(maxAvoidedPiecesPerParent), "maxAvoidedPiecesPerParent", "in 1...4096")
            try check(stallBase >= .zero, "stallBase", "non-negative")
            try check(stallMinimumRate > 0, "stallMinimumRate", "positive")
            try check((1...8).contains(endgameCopies), "endgameCopies", "in 1...8")
            try check((1...PieceDispatcher.maxParentCount).contains(maxParents), "maxParents", "in 1...64")
            try check(throughputSmoothing > 0 && throughputSmoothing <= 1, "throughputSmoothing", "in (0, 1]")
            try check((0..<PieceDispatcher.maxPieceCount).contains(tieBreakStart), "tieBreakStart", "in 0..<65536")
        }
    }

    /// One piece requested from one parent. The conductor fetches `piece` from `parentID` and verifies it
    /// against `digest`; it reports the outcome with this value (matched by `serial`, unique per dispatcher).
    package struct Request: Sendable, Hashable {
        /// The piece number.
        package let piece: Int
        /// The parent (peer ID) to fetch it from.
        package let parentID: String
        /// The trusted digest (`sha256:<hex>`) to verify the bytes against.
        package let digest: String
        /// Whether this is an endgame copy of a piece already requested from another parent.
        package let isDuplicate: Bool
        /// Distinguishes requests of the same piece to the same parent over time.
        package let serial: UInt64
    }

    /// What happened to a parent after a failed request.
    package enum ParentVerdict: Sendable, Hashable {
        /// The parent stays.
        case keep
        /// The parent reached its failure limit and is gone; cancel `cancel` (its other requests, already
        /// forgotten here) and tell the scheduler (`PieceFailed`, `Reschedule`).
        case drop(cancel: [Request])
    }

    private struct Flight: Sendable {
        let request: Request
        let slot: Int
        let started: ContinuousClock.Instant
        var lastProgress: ContinuousClock.Instant
    }

    private struct Parent: Sendable {
        let id: String
        var isSeed = false
        var inFlight = 0
        var throughput: Double?
        var consecutiveFailures = 0
        /// Pieces this parent is avoided for, oldest first (at most `maxAvoidedPiecesPerParent`).
        var avoidedPieces: [Int] = []
    }

    /// Where a missing piece stands; exactly one per tracked piece.
    private enum Status: Int, Sendable {
        case held, inFlight, sourceless, awaitingDigest, candidate
    }

    /// The configuration in force.
    package let configuration: Configuration
    /// The number of pieces, once known.
    package private(set) var pieceCount: Int?
    /// The task's piece length (the last piece holds the remainder when the content length is known).
    package let pieceLength: Int64
    /// The content length, once known.
    package private(set) var contentLength: Int64?

    // Per piece, for pieces 0 ..< trackedCount (the piece count, or while unknown the highest piece seen + 1).
    private var isHeld: [Bool] = []
    /// Pieces to request before any other (``prioritize(_:)``), ascending; held ones are dropped as seen.
    private var urgent: [Int] = []
    private var digests: [String?] = []
    /// Bit `s`: the parent in slot `s` has the piece.
    private var holders: [UInt64] = []
    /// Bit `s`: the parent in slot `s` failed the piece and is not asked for it again.
    private var avoided: [UInt64] = []
    /// `avoided`, plus the seed parents when a usable non-seed parent holds the piece (``Configuration/seedsLast``):
    /// the parents not to ask for it now. Re-derived by `refresh`.
    private var shunned: [UInt64] = []
    /// The piece is missing and only seed parents can supply it.
    private var seedOnly: [Bool] = []
    private var seedOnlyCount = 0
    /// Whether seeds are asked last now: ``Configuration/seedsLast`` and some piece is seed-only (see
    /// `updateSeedScarcity`).
    private var seedsScarce = false
    private var copies: [UInt8] = []
    private var status: [Status] = []
    /// The candidate bucket (availability) the piece is filed under, 0 when not a candidate.
    private var filedUnder: [UInt8] = []

    private var candidates = PieceDispatcherCandidates()
    private var statusCounts = [Int](repeating: 0, count: 5)
    private var heldCount = 0
    private var untrustedMissing = 0

    private var flights: [Int: [Flight]] = [:]
    private var inFlightCount = 0
    private var nextSerial: UInt64 = 0

    private var parents = [Parent?](repeating: nil, count: PieceDispatcher.maxParentCount)
    private var slots: [String: Int] = [:]
    private var parentMask: UInt64 = 0
    /// Bit `s`: the parent in slot `s` is a seed peer.
    private var seedMask: UInt64 = 0
    private var fullMask: UInt64 = 0
    private var announcingMask: UInt64 = 0
    /// The best measured throughput, the estimate for parents not yet measured.
    private var bestThroughput: Double?

    /// Creates a dispatcher.
    ///
    /// - Parameters:
    ///   - pieceCount: The number of pieces, or nil while unknown (``setPieceCount(_:contentLength:)`` later).
    ///   - pieceLength: The task's piece length (positive).
    ///   - contentLength: The content length when known (must match `pieceCount`; gives it when that is nil).
    ///   - held: Pieces already in local storage; never requested.
    /// - Throws: `invalidArgument` for a bad configuration, piece length, piece count or held piece.
    package init(
        configuration: Configuration = Configuration(),
        pieceCount: Int?,
        pieceLength: Int64,
        contentLength: Int64? = nil,
        held: Set<Int> = []
    ) throws(DragonflyError) {
        try configuration.validate()
        guard pieceLength > 0 else {
            throw DragonflyError(code: .invalidArgument, message: "piece dispatcher: piece length must be positive")
        }
        self.configuration = configuration
        self.pieceLength = pieceLength
        if let count = pieceCount
            ?? contentLength.map({ PieceMath.pieceCount(contentLength: $0, pieceLength: pieceLength) })
        {
            _ = try setPieceCount(count, contentLength: contentLength)
        }
        for piece in held.sorted() {
            try track(piece)
            markHeldInternal(piece)
        }
    }

    // MARK: - Task facts

    /// Sets the piece count once it is known (the scheduler's `NormalTask`, or the seed finishing). Pieces at or
    /// beyond it that parents announced are forgotten; their requests are returned to cancel.
    ///
    /// - Throws: `invalidArgument` when the count is out of range, disagrees with `contentLength`, or differs
    ///   from a count set before.
    package mutating func setPieceCount(_ count: Int, contentLength: Int64? = nil) throws(DragonflyError) -> [Request] {
        guard (0...Self.maxPieceCount).contains(count) else {
            throw DragonflyError(
                code: .invalidArgument, message: "piece dispatcher: piece count \(count) is not in 0...65536"
            )
        }
        if let contentLength {
            let expected = PieceMath.pieceCount(contentLength: contentLength, pieceLength: pieceLength)
            guard contentLength >= 0, expected == count else {
                throw DragonflyError(
                    code: .invalidArgument,
                    message:
                        "piece dispatcher: content length \(contentLength) makes \(expected) pieces of \(pieceLength) bytes, not \(count)"
                )
            }
        }
        if let pieceCount {
            guard pieceCount == count else {
                throw DragonflyError(
                    code: .invalidArgument,
                    message: "piece dispatcher: piece count changed from \(pieceCount) to \(count)"
                )
            }
            if self.contentLength == nil { self.contentLength = contentLength }
            return []
        }
        var cancelled: [Request] = []
        if count < trackedCount {
            for piece in count..<trackedCount {
                cancelled += removeFlights(of: piece).map(\.request)
                if filedUnder[piece] > 0 { candidates.remove(piece, availability: Int(filedUnder[piece])) }
                statusCounts[status[piece].rawValue] -= 1
                if seedOnly[piece] { seedOnlyCount -= 1 }
                if isHeld[piece] {
                    heldCount -= 1
                } else if digests[piece] == nil {
                    untrustedMissing -= 1
                }
            }
            let excess = trackedCount - count
            isHeld.removeLast(excess)
            digests.removeLast(excess)
            holders.removeLast(excess)
            avoided.removeLast(excess)
            shunned.removeLast(excess)
            seedOnly.removeLast(excess)
            copies.removeLast(excess)
            status.removeLast(excess)
            filedUnder.removeLast(excess)
            for slot in parents.indices where parents[slot] != nil {
                parents[slot]?.avoidedPieces.removeAll { $0 >= count }
            }
        } else {
            grow(to: count)
        }
        pieceCount = count
        self.contentLength = contentLength
        return cancelled
    }

    /// Records trusted digests (`sha256:<hex>`, from the scheduler); pieces become requestable as theirs arrive.
    /// A digest already known is kept.
    ///
    /// - Throws: `invalidArgument` (recording nothing) for a piece out of range or a digest that contradicts the
    ///   one already trusted.
    package mutating func trust(digests newDigests: [Int: String]) throws(DragonflyError) {
        for (piece, digest) in newDigests {
            try checkRange(piece, what: "digest")
            if piece < trackedCount, let known = digests[piece], known != digest {
                throw DragonflyError(
                    code: .invalidArgument,
                    message: "piece dispatcher: digest \(digest) for piece \(piece) contradicts the trusted \(known)"
                )
            }
        }
        for (piece, digest) in newDigests.sorted(by: { $0.key < $1.key }) {
            try track(piece)
            guard digests[piece] == nil else { continue }
            digests[piece] = digest
            if !isHeld[piece] { untrustedMissing -= 1 }
            refresh(piece)
        }
    }

    /// The trusted digest of `piece`, if known.
    package func digest(ofPiece piece: Int) -> String? {
        piece >= 0 && piece < trackedCount ? digests[piece] : nil
    }

    // MARK: - Parents

    /// Adds a parent (from `NormalTask` or a reschedule) with no known pieces, announcing (its SyncPieces stream
    /// is expected to report pieces). `isSeed`: a seed peer, asked last (``Configuration/seedsLast``).
    ///
    /// - Returns: false when it is already present or ``Configuration/maxParents`` are tracked.
    @discardableResult
    package mutating func addParent(_ id: String, isSeed: Bool = false) -> Bool {
        guard slots[id] == nil, slots.count < configuration.maxParents,
            let slot = parents.firstIndex(where: { $0 == nil })
        else { return false }
        parents[slot] = Parent(id: id, isSeed: isSeed)
        slots[id] = slot
        parentMask |= 1 << UInt64(slot)
        announcingMask |= 1 << UInt64(slot)
        if isSeed && configuration.seedsLast { seedMask |= 1 << UInt64(slot) }
        return true
    }

    /// Removes a parent (its SyncPieces stream failed, the scheduler replaced it, …).
    ///
    /// - Returns: Its requests in flight, already forgotten here, for the conductor to cancel. Empty for an unknown
    ///   parent.
    package mutating func removeParent(_ id: String) -> [Request] {
        guard let slot = slots[id] else { return [] }
        return dropParent(slot: slot)
    }

    /// Records pieces a parent has (its SyncPieces stream). Unknown parents are ignored; pieces already held here
    /// are skipped.
    ///
    /// - Throws: `invalidArgument` at the first piece out of range (pieces before it are recorded); the parent
    ///   is misbehaving and the conductor should remove it.
    package mutating func parent(_ id: String, has pieces: some Sequence<Int>) throws(DragonflyError) {
        guard let slot = slots[id] else { return }
        let bit: UInt64 = 1 << UInt64(slot)
        for piece in pieces {
            try checkRange(piece, what: "parent \(id) announced")
            try track(piece)
            guard !isHeld[piece], holders[piece] & bit == 0 else { continue }
            holders[piece] |= bit
            refresh(piece)
        }
    }

    /// Records that a parent will announce no more pieces (its SyncPieces stream ended cleanly: it finished or
    /// stopped downloading). Used by ``needsReschedule``: an announcing parent may still get a missing piece.
    package mutating func parentFinishedAnnouncing(_ id: String) {
        guard let slot = slots[id] else { return }
        announcingMask &= ~(1 << UInt64(slot))
    }

    /// How many current parents announced `piece`.
    package func holderCount(ofPiece piece: Int) -> Int {
        piece >= 0 && piece < trackedCount ? holders[piece].nonzeroBitCount : 0
    }

    /// The current parents' IDs, sorted.
    package var parentIDs: [String] { slots.keys.sorted() }

    /// The measured throughput (bytes/s, EWMA) of a parent; nil when unknown or not yet measured.
    package func throughput(ofParent id: String) -> Double? {
        slots[id].flatMap { parents[$0]?.throughput }
    }

    // MARK: - Requests

    /// Chooses new requests, up to the limits, and marks them in flight. Call after every event that may free a
    /// slot or make a piece requestable (a parent or pieces added, digests trusted, a request finished).
    package mutating func nextRequests(now: ContinuousClock.Instant) -> [Request] {
        updateSeedScarcity()
        var chosen: [Request] = []
        // Pieces a caller waits for go first, each from the best parent with a free slot that holds it.
        if !urgent.isEmpty {
            // Held pieces are dropped in place (a closure reading `status` would overlap the mutation).
            var count = 0
            for index in urgent.indices where urgent[index] >= trackedCount || status[urgent[index]] != .held {
                urgent[count] = urgent[index]
                count += 1
            }
            urgent.removeLast(urgent.count - count)
            for piece in urgent
            where piece < trackedCount && inFlightCount < configuration.maxInFlight && status[piece] == .candidate {
                let eligible = parentMask & ~fullMask
                guard let slot = bestParent(among: holders[piece] & ~shunned[piece] & eligible),
                    let request = start(piece: piece, slot: slot, isDuplicate: false, now: now)
                else { continue }
                chosen.append(request)
            }
        }
        candidates.flush(holders: holders, avoided: shunned)
        while inFlightCount < configuration.maxInFlight {
            let eligible = parentMask & ~fullMask
            guard eligible != 0,
                let piece = candidates.first(
                    eligible: eligible, holders: holders, avoided: shunned, start: configuration.tieBreakStart)
            else { break }
            guard let slot = bestParent(among: holders[piece] & ~shunned[piece] & eligible),
                let request = start(piece: piece, slot: slot, isDuplicate: false, now: now)
            else { break }
            chosen.append(request)
            candidates.flush(holders: holders, avoided: shunned)
        }
        if isEndgame { chosen += endgameRequests(now: now) }
        return chosen
    }

    /// Makes `pieces` (those a caller is waiting for) the first ones requested, lowest first, whatever their
    /// rarity; replaces the previous set. Pieces outside the task or already held are ignored.
    package mutating func prioritize(_ pieces: Set<Int>) {
        let limit = pieceCount ?? .max
        urgent = pieces.filter { $0 >= 0 && $0 < limit }.sorted()
    }

    /// Records bytes of a request received (the delta since the last report); any positive count resets the
    /// stall clock. Requests no longer in flight are ignored.
    package mutating func progressed(_ request: Request, bytes: Int, now: ContinuousClock.Instant) {
        guard bytes > 0, let index = flights[request.piece]?.firstIndex(where: { $0.request.serial == request.serial })
        else { return }
        flights[request.piece]?[index].lastProgress = now
    }

    /// Records a piece fetched and verified against its digest (and stored): it is held from now on, the parent's
    /// throughput is updated with `bytes` over the time since the request started, and its failure streak ends.
    /// A stale request (a cancelled duplicate that still finished) still marks the piece held.
    ///
    /// - Returns: The other requests for the piece (endgame duplicates), already forgotten here, to cancel.
    package mutating func completed(_ request: Request, bytes: Int, now: ContinuousClock.Instant) -> [Request] {
        guard request.piece >= 0, request.piece < trackedCount else { return [] }
        var cancel: [Request] = []
        for flight in removeFlights(of: request.piece) {
            guard flight.request.serial == request.serial else {
                cancel.append(flight.request)
                continue
            }
            guard var parent = parents[flight.slot] else { continue }
            parent.consecutiveFailures = 0
            let seconds = Self.seconds(now - flight.started)
            if seconds > 0, bytes > 0 {
                let sample = Double(bytes) / seconds
                let weight = configuration.throughputSmoothing
                parent.throughput = parent.throughput.map { weight * sample + (1 - weight) * $0 } ?? sample
            }
            parents[flight.slot] = parent
            updateBestThroughput()
        }
        markHeldInternal(request.piece)
        return cancel
    }

    /// Records a piece obtained some other way (back to source): it is held from now on.
    ///
    /// - Returns: Its requests in flight, already forgotten here, to cancel.
    package mutating func markHeld(_ piece: Int) -> [Request] {
        guard piece >= 0, piece < trackedCount else { return [] }
        let cancel = removeFlights(of: piece).map(\.request)
        markHeldInternal(piece)
        return cancel
    }

    /// Records a failed request (an HTTP or connection error, a 404/429, or a stall the conductor cancelled):
    /// the piece is free for another parent and this parent is avoided for it. Stale requests are ignored.
    ///
    /// - Returns: Whether the parent stays or, at its failure limit, was dropped (with its requests to cancel).
    package mutating func failed(_ request: Request) -> ParentVerdict {
        guard let flight = removeFlight(request) else { return .keep }
        let slot = flight.slot
        guard var parent = parents[slot] else { return .keep }
        let bit: UInt64 = 1 << UInt64(slot)
        if avoided[request.piece] & bit == 0 {
            avoided[request.piece] |= bit
            parent.avoidedPieces.append(request.piece)
        }
        var forgotten: Int?
        if parent.avoidedPieces.count > configuration.maxAvoidedPiecesPerParent {
            forgotten = parent.avoidedPieces.removeFirst()
        }
        parent.consecutiveFailures += 1
        parents[slot] = parent
        refresh(request.piece)
        if let forgotten {
            avoided[forgotten] &= ~bit
            refresh(forgotten)
        }
        guard parent.consecutiveFailures >= configuration.parentFailureLimit else { return .keep }
        return .drop(cancel: dropParent(slot: slot))
    }

    /// Records a piece whose bytes did not match the trusted digest: the parent is corrupt and dropped at once;
    /// the piece is free for other parents.
    ///
    /// - Returns: The parent's other requests, already forgotten here, to cancel. Empty when the parent is gone.
    package mutating func corrupted(_ request: Request) -> [Request] {
        if removeFlight(request) != nil { refresh(request.piece) }
        guard let slot = slots[request.parentID] else { return [] }
        return dropParent(slot: slot)
    }

    /// The requests with no bytes for longer than their stall timeout (`stallBase + length / stallMinimumRate`,
    /// the length of that piece), sorted by piece. The conductor cancels each and reports it with ``failed(_:)``.
    package func stalled(now: ContinuousClock.Instant) -> [Request] {
        var result: [Request] = []
        for (piece, list) in flights {
            let timeout = stallTimeout(ofPiece: piece)
            for flight in list where now - flight.lastProgress > timeout { result.append(flight.request) }
        }
        return result.sorted { ($0.piece, $0.serial) < ($1.piece, $1.serial) }
    }

    /// The earliest instant at which ``stalled(now:)`` may report a request (for the conductor's timer), or nil
    /// with nothing in flight.
    package var nextStallDeadline: ContinuousClock.Instant? {
        var earliest: ContinuousClock.Instant?
        for (piece, list) in flights {
            let timeout = stallTimeout(ofPiece: piece)
            for flight in list {
                let deadline = flight.lastProgress + timeout
                if earliest.map({ deadline < $0 }) ?? true { earliest = deadline }
            }
        }
        return earliest
    }

    /// The stall timeout of `piece`: `stallBase + length / stallMinimumRate`.
    package func stallTimeout(ofPiece piece: Int) -> Duration {
        var length = pieceLength
        if let contentLength,
            let span = PieceMath.span(ofPiece: piece, contentLength: contentLength, pieceLength: pieceLength)
        {
            length = span.length
        }
        let seconds = length / configuration.stallMinimumRate
        let remainder = length % configuration.stallMinimumRate
        return configuration.stallBase + .seconds(seconds)
            + .seconds(Double(remainder) / Double(configuration.stallMinimumRate))
    }

    // MARK: - State

    /// Whether every piece is held (false while the piece count is unknown).
    package var isComplete: Bool { pieceCount.map { heldCount == $0 } ?? false }

    /// Pieces held.
    package var heldPieceCount: Int { heldCount }

    /// Requests in flight (duplicates included).
    package var inFlightRequestCount: Int { inFlightCount }

    /// The requests in flight, sorted by piece then serial.
    package var inFlightRequests: [Request] {
        flights.values.flatMap { $0.map(\.request) }.sorted { ($0.piece, $0.serial) < ($1.piece, $1.serial) }
    }

    /// Whether the endgame is on: the piece count is known, every missing piece is trusted, and none is waiting
    /// for a request (each is in flight or has no source).
    package var isEndgame: Bool {
        pieceCount != nil && configuration.endgameCopies > 1 && untrustedMissing == 0
            && statusCounts[Status.candidate.rawValue] == 0 && inFlightCount > 0
    }

    /// The pieces not held, ascending; while the piece count is unknown, those below the highest piece seen.
    /// O(pieces).
    package var missingPieces: [Int] {
        isHeld.indices.filter { !isHeld[$0] }
    }

    /// The missing pieces no current parent can supply, ascending: not in flight, no parent that is not avoided
    /// for it has it, and no parent that is not avoided for it is still announcing. O(pieces).
    package var piecesWithoutSource: [Int] {
        status.indices.filter {
            status[$0] == .sourceless && announcingMask & parentMask & ~avoided[$0] == 0
        }
    }

    /// Whether the conductor should ask the scheduler for new parents (`Reschedule`) or go back to source: the
    /// download is not complete and there is no parent, or ``piecesWithoutSource`` is not empty, or (piece count
    /// unknown) nothing is in flight, requestable or awaiting a digest and no parent is announcing. Cheap: O(1)
    /// unless a piece has no usable holder while parents announce, then O(avoided pieces) (bounded by parents ×
    /// ``Configuration/maxAvoidedPiecesPerParent``). It stays true until new parents or pieces change that;
    /// rate-limit the reschedules it triggers.
    package var needsReschedule: Bool {
        guard !isComplete else { return false }
        if parentMask == 0 { return true }
        if statusCounts[Status.sourceless.rawValue] > 0 {
            // A sourceless piece waits for an announcing parent unless every announcing parent is avoided for it;
            // only pieces with an avoided parent can be in that state.
            if announcingMask == 0 { return true }
            for parent in parents {
                for piece in parent?.avoidedPieces ?? []
                where status[piece] == .sourceless && announcingMask & ~avoided[piece] == 0 {
                    return true
                }
            }
        }
        return announcingMask == 0 && pieceCount == nil && inFlightCount == 0
            && statusCounts[Status.candidate.rawValue] == 0 && statusCounts[Status.awaitingDigest.rawValue] == 0
    }

    // MARK: - Internals

    private var trackedCount: Int { isHeld.count }

    private func checkRange(_ piece: Int, what: @autoclosure () -> String) throws(DragonflyError) {
        let limit = pieceCount ?? Self.maxPieceCount
        guard piece >= 0, piece < limit else {
            throw DragonflyError(
                code: .invalidArgument, message: "piece dispatcher: \(what()) piece \(piece) outside 0..<\(limit)"
            )
        }
    }

    /// Starts tracking pieces up to `piece` (while the count is unknown).
    private mutating func track(_ piece: Int) throws(DragonflyError) {
        try checkRange(piece, what: "tracked")
        if piece >= trackedCount { grow(to: piece + 1) }
    }

    private mutating func grow(to count: Int) {
        let added = count - trackedCount
        guard added > 0 else { return }
        candidates.reserve(pieceCount: count)
        isHeld += repeatElement(false, count: added)
        digests += repeatElement(nil, count: added)
        holders += repeatElement(0, count: added)
        avoided += repeatElement(0, count: added)
        shunned += repeatElement(0, count: added)
        seedOnly += repeatElement(false, count: added)
        copies += repeatElement(0, count: added)
        status += repeatElement(.sourceless, count: added)
        filedUnder += repeatElement(0, count: added)
        statusCounts[Status.sourceless.rawValue] += added
        untrustedMissing += added
    }

    /// Re-derives the status of `piece` from its facts and files it accordingly.
    private mutating func refresh(_ piece: Int) {
        let usable = holders[piece] & ~avoided[piece]
        let onlySeeds = !isHeld[piece] && usable != 0 && usable & ~seedMask == 0
        if onlySeeds != seedOnly[piece] {
            seedOnly[piece] = onlySeeds
            seedOnlyCount += onlySeeds ? 1 : -1
        }
        shunned[piece] = avoided[piece] | (seedsScarce && usable & ~seedMask != 0 ? seedMask : 0)
        let newStatus: Status
        var bucket: UInt8 = 0
        if isHeld[piece] {
            newStatus = .held
        } else if copies[piece] > 0 {
            newStatus = .inFlight
        } else if holders[piece] & ~avoided[piece] == 0 {
            newStatus = .sourceless
        } else if digests[piece] == nil {
            newStatus = .awaitingDigest
        } else {
            newStatus = .candidate
            bucket = UInt8(holders[piece].nonzeroBitCount)
        }
        let oldStatus = status[piece]
        if oldStatus != newStatus {
            statusCounts[oldStatus.rawValue] -= 1
            statusCounts[newStatus.rawValue] += 1
            status[piece] = newStatus
        }
        let oldBucket = filedUnder[piece]
        if oldBucket != bucket {
            if oldBucket > 0 { candidates.remove(piece, availability: Int(oldBucket)) }
            if bucket > 0 { candidates.insert(piece, availability: Int(bucket)) }
            filedUnder[piece] = bucket
        } else if bucket > 0 {
            candidates.markDirty(piece, availability: Int(bucket))
        }
    }

    private mutating func markHeldInternal(_ piece: Int) {
        guard !isHeld[piece] else { return }
        isHeld[piece] = true
        heldCount += 1
        if digests[piece] == nil { untrustedMissing -= 1 }
        refresh(piece)
    }

    private mutating func start(piece: Int, slot: Int, isDuplicate: Bool, now: ContinuousClock.Instant) -> Request? {
        guard let digest = digests[piece], let id = parents[slot]?.id else { return nil }
        nextSerial += 1
        let request = Request(piece: piece, parentID: id, digest: digest, isDuplicate: isDuplicate, serial: nextSerial)
        flights[piece, default: []].append(Flight(request: request, slot: slot, started: now, lastProgress: now))
        copies[piece] += 1
        inFlightCount += 1
        parents[slot]?.inFlight += 1
        let limit =
            parents[slot]?.isSeed == true
            ? min(configuration.perParentLimit, configuration.seedRequestLimit) : configuration.perParentLimit
        if (parents[slot]?.inFlight ?? 0) >= limit { fullMask |= 1 << UInt64(slot) }
        refresh(piece)
        return request
    }

    /// Forgets one flight (matched by serial) and its slot use; the caller refreshes the piece.
    private mutating func removeFlight(_ request: Request) -> Flight? {
        guard var list = flights[request.piece],
            let index = list.firstIndex(where: { $0.request.serial == request.serial })
        else { return nil }
        let flight = list.remove(at: index)
        flights[request.piece] = list.isEmpty ? nil : list
        release(flight)
        return flight
    }

    /// Forgets every flight of `piece` and their slot use; the caller refreshes the piece.
    private mutating func removeFlights(of piece: Int) -> [Flight] {
        guard let list = flights.removeValue(forKey: piece) else { return [] }
        for flight in list { release(flight) }
        return list
    }

    private mutating func release(_ flight: Flight) {
        copies[flight.request.piece] -= 1
        inFlightCount -= 1
        parents[flight.slot]?.inFlight -= 1
        fullMask &= ~(1 << UInt64(flight.slot))
    }

    /// Removes the parent in `slot`, its pieces and avoidances; returns its flights to cancel.
    private mutating func dropParent(slot: Int) -> [Request] {
        guard let parent = parents[slot] else { return [] }
        let bit: UInt64 = 1 << UInt64(slot)
        var cancel: [Request] = []
        for piece in flights.keys.sorted() {
            guard var list = flights[piece] else { continue }
            let mine = list.filter { $0.slot == slot }
            guard !mine.isEmpty else { continue }
            list.removeAll { $0.slot == slot }
            flights[piece] = list.isEmpty ? nil : list
            for flight in mine {
                release(flight)
                cancel.append(flight.request)
            }
            refresh(piece)
        }
        parents[slot] = nil
        slots[parent.id] = nil
        parentMask &= ~bit
        seedMask &= ~bit
        fullMask &= ~bit
        announcingMask &= ~bit
        for piece in parent.avoidedPieces where piece < trackedCount {
            avoided[piece] &= ~bit
            refresh(piece)
        }
        for piece in holders.indices where holders[piece] & bit != 0 {
            holders[piece] &= ~bit
            refresh(piece)
        }
        updateBestThroughput()
        return cancel
    }

    /// The best parent in `mask` for one more request: highest expected rate (throughput, or the best measured
    /// for an unmeasured parent, over requests in flight + 1), then unmeasured, then fewer in flight, then lower ID.
    private func bestParent(among mask: UInt64) -> Int? {
        var best: (slot: Int, score: Double, rank: (Int, Int), id: String)?
        var remaining = mask
        while remaining != 0 {
            let slot = remaining.trailingZeroBitCount
            remaining &= remaining - 1
            guard let parent = parents[slot] else { continue }
            let estimate = parent.throughput ?? bestThroughput ?? 1
            let score = estimate / Double(parent.inFlight + 1)
            // Ties: unmeasured first (so each parent gets measured), then fewer in flight, then lower ID.
            let rank = (parent.throughput == nil ? 0 : 1, parent.inFlight)
            if let current = best {
                if score < current.score { continue }
                if score == current.score && (rank.0, rank.1, parent.id) >= (current.rank.0, current.rank.1, current.id)
                {
                    continue
                }
            }
            best = (slot, score, rank, parent.id)
        }
        return best?.slot
    }

    /// Seeds are scarce while some missing piece only they hold; when that changes every piece's `shunned` is
    /// re-derived (O(pieces), once per change).
    private mutating func updateSeedScarcity() {
        let scarce = seedOnlyCount > 0
        guard scarce != seedsScarce else { return }
        seedsScarce = scarce
        for piece in 0..<trackedCount { refresh(piece) }
    }

    private mutating func updateBestThroughput() {
        bestThroughput = parents.compactMap { $0?.throughput }.max()
    }

    /// Endgame duplicates: the oldest in-flight pieces get another copy from a parent not fetching them.
    private mutating func endgameRequests(now: ContinuousClock.Instant) -> [Request] {
        var chosen: [Request] = []
        var progress = true
        while progress && inFlightCount < configuration.maxInFlight {
            progress = false
            let ordered = flights.map { piece, list in
                (piece: piece, started: list.map(\.started).min() ?? now, copies: list.count)
            }
            .sorted { ($0.started, $0.piece) < ($1.started, $1.piece) }
            for entry in ordered where entry.copies < configuration.endgameCopies {
                guard inFlightCount < configuration.maxInFlight else { break }
                let fetching = flights[entry.piece]?.reduce(UInt64(0)) { $0 | 1 << UInt64($1.slot) } ?? 0
                let usable = holders[entry.piece] & ~shunned[entry.piece] & parentMask & ~fullMask & ~fetching
                guard usable != 0, let slot = bestParent(among: usable),
                    let request = start(piece: entry.piece, slot: slot, isDuplicate: true, now: now)
                else { continue }
                chosen.append(request)
                progress = true
            }
        }
        return chosen
    }

    private static func seconds(_ duration: Duration) -> Double {
        let (seconds, attoseconds) = duration.components
        return Double(seconds) + Double(attoseconds) / 1e18
    }
}
