/// The requestable pieces of a ``PieceDispatcher`` (missing, digest trusted, not in flight, some usable holder),
/// bucketed by availability so the rarest one a free parent can serve is found without scanning every piece.
///
/// Bucket `a` (availability `a`, 1...64) holds a bitset of its pieces, one bit per piece, and an OR-tree over
/// the bitset's 64-bit words: leaf `w` is the OR of the usable-parent masks (`holders & ~avoided`) of the
/// bucket's pieces in word `w`, an inner node the OR of its children. A subtree whose OR shares no bit with the
/// mask of parents that have free slots holds no piece those parents can serve, so the lowest servable piece
/// of a bucket is found in O(log words + 64) steps however many pieces are blocked behind busy parents.
///
/// Changes mark leaves dirty; ``flush(holders:avoided:)`` recomputes them before a search. Memory: per
/// allocated bucket three words per 64 pieces (bitset, tree) — at most 64 buckets × 24 KiB for 65 536 pieces.
struct PieceDispatcherCandidates: Sendable {
    private struct Bucket: Sendable {
        /// Bit `p % 64` of word `p / 64`: piece `p` is a candidate in this bucket. Empty until first used.
        var bits: [UInt64] = []
        /// `tree[1]` is the root; leaves at `leafCount + w`.
        var tree: [UInt64] = []
        /// Whether leaf `w` needs recomputing.
        var isDirty: [Bool] = []
        /// The dirty leaves, each once.
        var dirtyWords: [Int] = []
        /// Pieces in the bucket.
        var count = 0
    }

    /// Availability `a` lives at index `a - 1`.
    private var buckets: [Bucket] = Array(repeating: Bucket(), count: 64)
    /// Bit `a - 1`: bucket `a` holds at least one piece.
    private var nonEmpty: UInt64 = 0
    /// Words per bucket (a power of two, at least 1); pieces `0 ..< leafCount * 64` fit.
    private var leafCount = 1

    init() {}

    /// Makes room for pieces `0 ..< pieceCount`.
    mutating func reserve(pieceCount: Int) {
        guard pieceCount > leafCount * 64 else { return }
        var newLeafCount = leafCount
        while newLeafCount * 64 < pieceCount { newLeafCount *= 2 }
        let oldLeafCount = leafCount
        leafCount = newLeafCount
        for index in buckets.indices where !buckets[index].bits.isEmpty {
            buckets[index].bits += Array(repeating: 0, count: newLeafCount - oldLeafCount)
            buckets[index].isDirty += Array(repeating: false, count: newLeafCount - oldLeafCount)
            var tree = [UInt64](repeating: 0, count: 2 * newLeafCount)
            for word in 0..<oldLeafCount { tree[newLeafCount + word] = buckets[index].tree[oldLeafCount + word] }
            var node = newLeafCount - 1
            while node >= 1 {
                tree[node] = tree[2 * node] | tree[2 * node + 1]
                node -= 1
            }
            buckets[index].tree = tree
        }
    }

    /// Adds `piece` to the bucket of `availability` (1...64).
    mutating func insert(_ piece: Int, availability: Int) {
        let index = availability - 1
        if buckets[index].bits.isEmpty {
            buckets[index].bits = Array(repeating: 0, count: leafCount)
            buckets[index].tree = Array(repeating: 0, count: 2 * leafCount)
            buckets[index].isDirty = Array(repeating: false, count: leafCount)
        }
        buckets[index].bits[piece >> 6] |= 1 << UInt64(piece & 63)
        buckets[index].count += 1
        nonEmpty |= 1 << UInt64(index)
        markDirty(piece, availability: availability)
    }

    /// Removes `piece` from the bucket of `availability` (1...64).
    mutating func remove(_ piece: Int, availability: Int) {
        let index = availability - 1
        buckets[index].bits[piece >> 6] &= ~(1 << UInt64(piece & 63))
        buckets[index].count -= 1
        if buckets[index].count == 0 { nonEmpty &= ~(1 << UInt64(index)) }
        markDirty(piece, availability: availability)
    }

    /// Notes that the usable-parent mask of `piece`, in the bucket of `availability`, changed.
    mutating func markDirty(_ piece: Int, availability: Int) {
        let index = availability - 1
        let word = piece >> 6
        guard !buckets[index].isDirty[word] else { return }
        buckets[index].isDirty[word] = true
        buckets[index].dirtyWords.append(word)
    }

    /// Recomputes the dirty leaves and their ancestors from the pieces' holder and avoided masks.
    mutating func flush(holders: [UInt64], avoided: [UInt64]) {
        for index in buckets.indices where !buckets[index].dirtyWords.isEmpty {
            let dirty = buckets[index].dirtyWords
            buckets[index].dirtyWords.removeAll(keepingCapacity: true)
            for word in dirty {
                buckets[index].isDirty[word] = false
                var bits = buckets[index].bits[word]
                var mask: UInt64 = 0
                while bits != 0 {
                    let piece = word << 6 | bits.trailingZeroBitCount
                    mask |= holders[piece] & ~avoided[piece]
                    bits &= bits - 1
                }
                buckets[index].tree[leafCount + word] = mask
            }
            if dirty.count * 8 > leafCount {
                var node = leafCount - 1
                while node >= 1 {
                    buckets[index].tree[node] = buckets[index].tree[2 * node] | buckets[index].tree[2 * node + 1]
                    node -= 1
                }
            } else {
                for word in dirty {
                    var node = (leafCount + word) >> 1
                    while node >= 1 {
                        buckets[index].tree[node] = buckets[index].tree[2 * node] | buckets[index].tree[2 * node + 1]
                        node >>= 1
                    }
                }
            }
        }
    }

    /// The rarest candidate some parent in `eligible` can serve, or nil: lowest availability, then the first
    /// piece at or after `start`, wrapping around to piece 0. Peers that break ties from different starts fetch
    /// different pieces first, so they soon hold pieces worth trading; with one start for all (say 0) every
    /// peer of a swarm would fetch the same pieces in the same order. Call ``flush(holders:avoided:)`` first.
    func first(eligible: UInt64, holders: [UInt64], avoided: [UInt64], start: Int = 0) -> Int? {
        var remaining = nonEmpty
        while remaining != 0 {
            let index = remaining.trailingZeroBitCount
            remaining &= remaining - 1
            let tree = buckets[index].tree
            guard tree[1] & eligible != 0 else { continue }
            if start > 0, let piece = servable(in: index, from: start, eligible, holders, avoided) { return piece }
            if let piece = servable(in: index, from: 0, eligible, holders, avoided) { return piece }
        }
        return nil
    }

    /// The lowest piece `>= from` of bucket `index` that a parent in `eligible` can serve.
    private func servable(
        in index: Int, from: Int, _ eligible: UInt64, _ holders: [UInt64], _ avoided: [UInt64]
    ) -> Int? {
        let bucket = buckets[index]
        var word = from >> 6
        while word < leafCount, let leaf = firstLeaf(bucket.tree, from: word, eligible) {
            var bits = bucket.bits[leaf]
            if leaf == from >> 6 { bits &= ~0 << UInt64(from & 63) }
            while bits != 0 {
                let piece = leaf << 6 | bits.trailingZeroBitCount
                if holders[piece] & ~avoided[piece] & eligible != 0 { return piece }
                bits &= bits - 1
            }
            word = leaf + 1
        }
        return nil
    }

    /// The first leaf (word) at or after `from` whose subtree's mask shares a bit with `eligible`.
    private func firstLeaf(_ tree: [UInt64], from: Int, _ eligible: UInt64) -> Int? {
        // Node `node` covers leaves `low ..< high`; depth first, left before right, pruning empty subtrees.
        var stack: [(node: Int, low: Int, high: Int)] = [(1, 0, leafCount)]
        while let (node, low, high) = stack.popLast() {
            guard high > from, tree[node] & eligible != 0 else { continue }
            if node >= leafCount { return node - leafCount }
            let middle = (low + high) / 2
            stack.append((2 * node + 1, middle, high))
            stack.append((2 * node, low, middle))
        }
        return nil
    }
}
