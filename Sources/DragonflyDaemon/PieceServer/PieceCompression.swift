import CLZ4
package import DragonflyCore
package import NIOCore

/// Dynamic LZ4 compression of pieces on the data plane (DESIGN §5, `Accept-Encoding: lz4`).
///
/// The wire contract: a child that sends `Accept-Encoding: lz4` may get a 200 with `Content-Encoding: lz4`;
/// then the body is one raw LZ4 **block** (not a frame) of the piece, `Content-Length` is the compressed size,
/// `X-Dragonfly-Piece-Length` the piece's length, and `X-Dragonfly-Piece-Digest` still the digest of the
/// uncompressed bytes. ``decompress(_:pieceLength:)`` turns the body back into the piece. A parent compresses
/// only when a probe of the piece's start shrinks well, so incompressible data (gzip layers, media) keeps
/// going out with `sendfile`.
package enum PieceCompression {
    /// The `Content-Encoding` and `Accept-Encoding` token.
    package static let token = "lz4"
    /// The header carrying the uncompressed piece length of a compressed body.
    package static let pieceLengthHeader = "X-Dragonfly-Piece-Length"
    /// Bytes probed before compressing a whole piece.
    package static let probeLength = 64 << 10
    /// Compress only when the probe shrinks to at most this fraction.
    package static let worthwhileRatio = 0.8
    /// The largest piece compressed (LZ4 blocks take at most about 2 GB; pieces are at most 64 MiB).
    package static let maximumPieceLength = 256 << 20

    /// Whether an `Accept-Encoding` header value allows `lz4` (a `q=0` parameter refuses it).
    package static func isAccepted(by acceptEncoding: [String]) -> Bool {
        for value in acceptEncoding {
            for item in value.split(separator: ",") {
                let parts = item.split(separator: ";").map { $0.filter { $0 != " " && $0 != "\t" } }
                guard parts.first?.lowercased() == token else { continue }
                let refused = parts.dropFirst().contains { $0.hasPrefix("q=") && Double($0.dropFirst(2)) == 0 }
                return !refused
            }
        }
        return false
    }

    /// The LZ4 block of `bytes`, or nil when it would not be at most ``worthwhileRatio`` of their size.
    package static func compress(_ bytes: ByteBuffer) -> ByteBuffer? {
        let count = bytes.readableBytes
        guard count > 0, count <= maximumPieceLength else { return nil }
        let bound = Int(LZ4_compressBound(Int32(count)))
        let limit = Int(Double(count) * worthwhileRatio)
        var output = ByteBuffer()
        output.reserveCapacity(bound)
        let written = bytes.withUnsafeReadableBytes { source in
            output.writeWithUnsafeMutableBytes(minimumWritableBytes: bound) { target in
                let size = LZ4_compress_default(
                    source.baseAddress?.assumingMemoryBound(to: CChar.self),
                    target.baseAddress?.assumingMemoryBound(to: CChar.self), Int32(count), Int32(target.count))
                return max(Int(size), 0)
            }
        }
        guard written > 0, written <= limit else { return nil }
        return output
    }

    /// Whether the first ``probeLength`` bytes of a piece compress well enough to compress it all.
    package static func isWorthCompressing(probe: ByteBuffer) -> Bool {
        compress(probe) != nil
    }

    /// The piece from a compressed body.
    ///
    /// - Throws: `dataLoss` when the body is not an LZ4 block of exactly `pieceLength` bytes.
    package static func decompress(_ body: ByteBuffer, pieceLength: Int) throws(DragonflyError) -> ByteBuffer {
        guard pieceLength > 0, pieceLength <= maximumPieceLength, body.readableBytes <= Int32.max else {
            throw DragonflyError(code: .dataLoss, message: "an lz4 piece of \(pieceLength) bytes is out of bounds")
        }
        var output = ByteBuffer()
        let produced = body.withUnsafeReadableBytes { source in
            output.writeWithUnsafeMutableBytes(minimumWritableBytes: pieceLength) { target in
                let size = LZ4_decompress_safe(
                    source.baseAddress?.assumingMemoryBound(to: CChar.self),
                    target.baseAddress?.assumingMemoryBound(to: CChar.self), Int32(source.count), Int32(pieceLength))
                return max(Int(size), 0)
            }
        }
        guard produced == pieceLength else {
            throw DragonflyError(
                code: .dataLoss, message: "an lz4 piece decompressed to \(produced) bytes instead of \(pieceLength)")
        }
        return output
    }
}
