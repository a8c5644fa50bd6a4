/// Piece sizing (DESIGN §4).
package enum PieceMath {
    /// Smallest piece length: 4 MiB.
    package static let minimumPieceLength: Int64 = 4 << 20
    /// Largest piece length: 64 MiB.
    package static let maximumPieceLength: Int64 = 64 << 20

    /// `next_pow2(contentLength / 500)` clamped to [4 MiB, 64 MiB]; unknown lengths use 4 MiB.
    package static func pieceLength(forContentLength length: Int64?) -> Int64 {
        guard let length, length > 0 else { return minimumPieceLength }
        let target = length / 500
        var power: Int64 = 1
        while power < target && power < maximumPieceLength { power <<= 1 }
        return min(max(power, minimumPieceLength), maximumPieceLength)
    }

    /// Whether a caller-fixed piece length is allowed: a power of two in [4 MiB, 64 MiB].
    package static func isValidFixedPieceLength(_ length: Int64) -> Bool {
        length >= minimumPieceLength && length <= maximumPieceLength && length & (length - 1) == 0
    }
}
