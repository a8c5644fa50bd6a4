/// Consecutive pieces fetched with one range request: `count` pieces from `first`.
package struct PieceRun: Hashable, Sendable, CustomStringConvertible {
    package var first: Int
    package var count: Int

    package init(first: Int, count: Int) {
        self.first = first
        self.count = count
    }

    /// One past the last piece.
    package var end: Int { first + count }

    package var description: String { count == 1 ? "piece \(first)" : "pieces \(first)..<\(end)" }
}

/// How the needed pieces of an object are grouped into range requests (pure, tested without I/O).
///
/// A request covers a run of consecutive needed pieces, so a fresh download of a large object is not one
/// request per piece: every request costs a round trip before its first byte (and money on object stores).
/// Runs are cut short so that (1) no request carries more than `maximumBytesPerRequest` and (2) there are at
/// least about four requests per connection, which keeps all connections busy to the end instead of leaving
/// one long request as the tail. Small objects and scattered missing pieces therefore get one request per
/// piece; a 1 GiB object with 4 MiB pieces and 4 connections gets 16 requests of 64 MiB.
package enum PiecePlan {
    /// The most pieces one request may cover.
    package static func piecesPerRequest(
        neededCount: Int,
        pieceLength: Int64,
        concurrency: Int,
        maximumBytesPerRequest: Int64
    ) -> Int {
        let byBytes = max(1, pieceLength > 0 ? Int(clamping: maximumBytesPerRequest / pieceLength) : 1)
        let byBalance = max(1, neededCount / (max(concurrency, 1) * 4))
        return min(byBytes, byBalance)
    }

    /// Groups `pieces` (any order, no duplicates) into runs of consecutive numbers of at most `maximumCount`
    /// pieces, in ascending order.
    package static func runs(of pieces: some Sequence<Int>, maximumCount: Int) -> [PieceRun] {
        let limit = max(maximumCount, 1)
        var runs: [PieceRun] = []
        for piece in pieces.sorted() {
            if var last = runs.last, last.end == piece, last.count < limit {
                last.count += 1
                runs[runs.count - 1] = last
            } else if runs.last?.end ?? -1 > piece {
                continue  // a duplicate
            } else {
                runs.append(PieceRun(first: piece, count: 1))
            }
        }
        return runs
    }
}
