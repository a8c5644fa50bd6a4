/// The set of piece numbers a peer holds, as a growable bitmap with a running count.
package struct PieceBitmap: Sendable, Hashable {
    private var words: [UInt64] = []
    /// Number of pieces in the set.
    package private(set) var count = 0

    package init() {}

    package init(_ numbers: some Sequence<UInt32>) {
        for number in numbers { insert(number) }
    }

    /// Adds a piece; returns `false` when it was already present.
    @discardableResult
    package mutating func insert(_ number: UInt32) -> Bool {
        let (word, bit) = Self.position(number)
        if word >= words.count { words.append(contentsOf: repeatElement(0, count: word - words.count + 1)) }
        let mask: UInt64 = 1 << UInt64(bit)
        guard words[word] & mask == 0 else { return false }
        words[word] |= mask
        count += 1
        return true
    }

    /// Whether the piece is present.
    package func contains(_ number: UInt32) -> Bool {
        let (word, bit) = Self.position(number)
        guard word < words.count else { return false }
        return words[word] & (1 << UInt64(bit)) != 0
    }

    /// The piece numbers in ascending order.
    package var numbers: [UInt32] {
        var result: [UInt32] = []
        result.reserveCapacity(count)
        for (index, word) in words.enumerated() where word != 0 {
            for bit in 0..<64 where word & (1 << UInt64(bit)) != 0 {
                result.append(UInt32(index * 64 + bit))
            }
        }
        return result
    }

    private static func position(_ number: UInt32) -> (word: Int, bit: Int) {
        (Int(number / 64), Int(number % 64))
    }
}
