/// A fixed set of piece slots, each held or not: one bit per piece.
struct PieceBitmap: Sendable, Equatable {
    private var words: [UInt64]
    /// The number of slots.
    private(set) var count: Int
    /// The number of held slots.
    private(set) var heldCount: Int

    init(count: Int) {
        self.count = count
        self.words = [UInt64](repeating: 0, count: (count + 63) / 64)
        self.heldCount = 0
    }

    /// Decodes `count` slots from least-significant-bit-first bytes; nil when `bytes` is too short.
    init?(bytes: some Collection<UInt8>, count: Int) {
        guard bytes.count == (count + 7) / 8 else { return nil }
        self.init(count: count)
        for (index, byte) in bytes.enumerated() where byte != 0 {
            for bit in 0..<8 where byte & (1 << bit) != 0 {
                let slot = index * 8 + bit
                guard slot < count else { return nil }
                insert(slot)
            }
        }
    }

    func contains(_ slot: Int) -> Bool {
        guard slot >= 0 && slot < count else { return false }
        return words[slot / 64] & (1 << UInt64(slot % 64)) != 0
    }

    mutating func insert(_ slot: Int) {
        precondition(slot >= 0 && slot < count, "piece slot out of range")
        guard !contains(slot) else { return }
        words[slot / 64] |= 1 << UInt64(slot % 64)
        heldCount += 1
    }

    mutating func remove(_ slot: Int) {
        guard contains(slot) else { return }
        words[slot / 64] &= ~(1 << UInt64(slot % 64))
        heldCount -= 1
    }

    /// Grows or shrinks to `newCount` slots; slots beyond a smaller count are dropped.
    mutating func resize(to newCount: Int) {
        if newCount < count {
            for slot in newCount..<count { remove(slot) }
        }
        count = newCount
        let wordCount = (newCount + 63) / 64
        if words.count < wordCount {
            words.append(contentsOf: repeatElement(0, count: wordCount - words.count))
        } else {
            words.removeLast(words.count - wordCount)
        }
    }

    /// The held slots in ascending order.
    var heldSlots: [Int] { (0..<count).filter { contains($0) } }

    /// The slots not held, in ascending order.
    var missingSlots: [Int] { (0..<count).filter { !contains($0) } }

    /// The highest held slot.
    var highestHeld: Int? { (0..<count).last { contains($0) } }

    /// Least-significant-bit-first bytes.
    var bytes: [UInt8] {
        var out = [UInt8](repeating: 0, count: (count + 7) / 8)
        for slot in 0..<count where contains(slot) {
            out[slot / 8] |= 1 << UInt8(slot % 8)
        }
        return out
    }
}
