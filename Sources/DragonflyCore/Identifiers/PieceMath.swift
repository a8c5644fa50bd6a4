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

    /// The number of pieces of an object of `contentLength` bytes.
    package static func pieceCount(contentLength: Int64, pieceLength: Int64) -> Int {
        guard contentLength > 0, pieceLength > 0 else { return 0 }
        return Int((contentLength + pieceLength - 1) / pieceLength)
    }

    /// The pieces holding bytes `range` (half-open) of an object of `contentLength` bytes; the range is clamped
    /// to the object, so an empty or out-of-bounds range touches no piece.
    package static func pieces(covering range: Range<Int64>, contentLength: Int64, pieceLength: Int64) -> ClosedRange<
        Int
    >? {
        let lower = max(range.lowerBound, 0)
        let upper = min(range.upperBound, contentLength)
        guard pieceLength > 0, lower < upper else { return nil }
        return Int(lower / pieceLength)...Int((upper - 1) / pieceLength)
    }

    /// Offset and length of piece `number`; the last piece holds the remainder.
    package static func span(ofPiece number: Int, contentLength: Int64, pieceLength: Int64) -> (
        offset: Int64, length: Int64
    )? {
        let offset = Int64(number) * pieceLength
        guard number >= 0, offset < contentLength else { return nil }
        return (offset, min(pieceLength, contentLength - offset))
    }
}

/// How the scheduler treats a task by size (DESIGN §4).
package enum SizeScope: String, Sendable, Hashable, CaseIterable {
    /// 0 bytes: nothing to transfer.
    case empty
    /// At most 128 bytes: carried inline in scheduler messages.
    case tiny
    /// One piece.
    case small
    /// More than one piece.
    case normal

    /// The largest object carried inline.
    package static let tinyLimit: Int64 = 128

    /// The scope of an object of `contentLength` bytes cut into `pieceLength` pieces; unknown lengths are normal.
    package init(contentLength: Int64?, pieceLength: Int64) {
        guard let contentLength else {
            self = .normal
            return
        }
        if contentLength <= 0 {
            self = .empty
        } else if contentLength <= Self.tinyLimit {
            self = .tiny
        } else if contentLength <= pieceLength {
            self = .small
        } else {
            self = .normal
        }
    }
}
