import Crypto
import DragonflyCore
import NIOCore

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Everything the store knows about one task: geometry, origin headers, held pieces and their digests.
///
/// A value type: the store copies it (cheaply, copy-on-write) to encode a snapshot outside its lock.
struct TaskMetadata: Sendable, Equatable {
    /// The piece of an unknown-length task that is shorter than the piece length (the last one).
    struct ShortPiece: Sendable, Equatable {
        var number: Int
        var length: Int64
    }

    /// Response headers worth keeping (lowercase names).
    /// `x-dragonfly-private` marks a task first read with credentials (the daemon's `TaskPrivacy`).
    static let keptHeaderNames: Set<String> = ["etag", "last-modified", "content-type", "x-dragonfly-private"]
    /// Bytes of one SHA-256 digest.
    static let digestSize = 32

    var taskID: TaskID
    var url: String
    var contentLength: Int64?
    var pieceLength: Int64
    var headers: [String: String]
    var pieces: PieceBitmap
    /// `digestSize` bytes per slot; zero for slots not held.
    var digests: [UInt8]
    var shortPiece: ShortPiece?
    var createdAt: Date
    var accessedAt: Date
    var finishedAt: Date?
    var isFinished: Bool

    init(taskID: TaskID, url: String, contentLength: Int64?, pieceLength: Int64, headers: [String: String], now: Date) {
        self.taskID = taskID
        self.url = url
        self.contentLength = contentLength
        self.pieceLength = pieceLength
        self.headers = headers
        let slots = contentLength.map { Self.pieceCount(contentLength: $0, pieceLength: pieceLength) } ?? 0
        self.pieces = PieceBitmap(count: slots)
        self.digests = [UInt8](repeating: 0, count: slots * Self.digestSize)
        self.shortPiece = nil
        self.createdAt = now
        self.accessedAt = now
        self.finishedAt = nil
        self.isFinished = false
    }

    /// `ceil(contentLength / pieceLength)`.
    static func pieceCount(contentLength: Int64, pieceLength: Int64) -> Int {
        Int(contentLength / pieceLength + (contentLength % pieceLength == 0 ? 0 : 1))
    }

    /// The kept subset of `headers`, names lowercased.
    static func keptHeaders(_ headers: [String: String]) -> [String: String] {
        var kept: [String: String] = [:]
        for (name, value) in headers where keptHeaderNames.contains(name.lowercased()) {
            kept[name.lowercased()] = String(value.prefix(4096))
        }
        return kept
    }

    /// The number of pieces, when the content length is known.
    var pieceCount: Int? { contentLength.map { Self.pieceCount(contentLength: $0, pieceLength: pieceLength) } }

    /// The length piece `number` must have, when the content length is known.
    func expectedLength(ofPiece number: Int) -> Int64? {
        guard let contentLength, let pieceCount, number >= 0 && number < pieceCount else { return nil }
        return number == pieceCount - 1 ? contentLength - Int64(number) * pieceLength : pieceLength
    }

    /// The length of a held piece.
    func length(ofHeldPiece number: Int) -> Int64 {
        if let expected = expectedLength(ofPiece: number) { return expected }
        if let shortPiece, shortPiece.number == number { return shortPiece.length }
        return pieceLength
    }

    /// The bytes of all held pieces.
    var heldBytes: Int64 {
        var total = Int64(pieces.heldCount) * pieceLength
        if let pieceCount, pieceCount > 0, pieces.contains(pieceCount - 1),
            let last = expectedLength(ofPiece: pieceCount - 1)
        {
            total -= pieceLength - last
        } else if contentLength == nil, let shortPiece, pieces.contains(shortPiece.number) {
            total -= pieceLength - shortPiece.length
        }
        return total
    }

    /// Why a piece of `length` bytes cannot be piece `number`, or nil when it fits.
    func geometryProblem(piece number: Int, length: Int64, maximumPieceCount: Int) -> String? {
        guard number >= 0 else { return "piece number \(number) is negative" }
        if let expected = expectedLength(ofPiece: number) {
            return length == expected ? nil : "piece \(number) must be \(expected) bytes, not \(length)"
        }
        if contentLength != nil {
            return "piece \(number) is beyond the task's \(pieceCount ?? 0) pieces"
        }
        guard number < maximumPieceCount else {
            return "piece \(number) is beyond the limit of \(maximumPieceCount) pieces per task"
        }
        guard length > 0 && length <= pieceLength else {
            return "piece \(number) must be 1 to \(pieceLength) bytes, not \(length)"
        }
        if let shortPiece {
            if number > shortPiece.number {
                return "piece \(number) is beyond the last piece \(shortPiece.number)"
            }
            if number == shortPiece.number && length != shortPiece.length {
                return "piece \(number) must be \(shortPiece.length) bytes, not \(length)"
            }
            if number < shortPiece.number && length != pieceLength {
                return "only the last piece may be shorter than \(pieceLength) bytes"
            }
        } else if length < pieceLength, let highest = pieces.highestHeld, highest > number {
            return "only the last piece may be shorter than \(pieceLength) bytes"
        }
        return nil
    }

    /// The `sha256:<hex>` digest of a held piece.
    func digest(ofPiece number: Int) -> String? {
        guard pieces.contains(number) else { return nil }
        return "sha256:" + TaskID.hex(digestBytes(ofPiece: number))
    }

    func digestBytes(ofPiece number: Int) -> ArraySlice<UInt8> {
        let start = number * Self.digestSize
        return digests[start..<start + Self.digestSize]
    }

    /// Marks piece `number` held with `digest` (32 bytes), growing an unknown-length task's slots.
    mutating func insertPiece(_ number: Int, digest: [UInt8]) {
        if number >= pieces.count { resizeSlots(to: number + 1) }
        pieces.insert(number)
        digests.replaceSubrange(number * Self.digestSize..<(number + 1) * Self.digestSize, with: digest)
    }

    /// Forgets piece `number`.
    mutating func removePiece(_ number: Int) {
        guard pieces.contains(number) else { return }
        pieces.remove(number)
        digests.replaceSubrange(
            number * Self.digestSize..<(number + 1) * Self.digestSize,
            with: repeatElement(0, count: Self.digestSize))
        isFinished = false
        finishedAt = nil
    }

    mutating func resizeSlots(to count: Int) {
        pieces.resize(to: count)
        if digests.count > count * Self.digestSize {
            digests.removeLast(digests.count - count * Self.digestSize)
        } else {
            digests.append(contentsOf: repeatElement(0, count: count * Self.digestSize - digests.count))
        }
    }

    /// Why held pieces could not belong to a task of `length` bytes, or nil when they fit.
    func contentLengthProblem(_ length: Int64) -> String? {
        guard length >= 0 else { return "content length \(length) is negative" }
        let count = Self.pieceCount(contentLength: length, pieceLength: pieceLength)
        if let highest = pieces.highestHeld, highest >= count {
            return "piece \(highest) is beyond a content length of \(length)"
        }
        let lastLength = count > 0 ? length - Int64(count - 1) * pieceLength : 0
        if let shortPiece, pieces.contains(shortPiece.number) {
            if shortPiece.number != count - 1 || shortPiece.length != lastLength {
                return "the held short piece \(shortPiece.number) does not end at \(length)"
            }
        } else if count > 0 && pieces.contains(count - 1) && lastLength != pieceLength {
            return "the held piece \(count - 1) is longer than the content length allows"
        }
        return nil
    }

    /// Fixes the content length (after ``contentLengthProblem(_:)`` returned nil).
    mutating func adoptContentLength(_ length: Int64) {
        contentLength = length
        resizeSlots(to: Self.pieceCount(contentLength: length, pieceLength: pieceLength))
        shortPiece = nil
    }

    /// Why existing metadata cannot be resumed by a download with these parameters, or nil when it can.
    func incompatibility(contentLength newLength: Int64?, pieceLength newPieceLength: Int64, headers: [String: String])
        -> String?
    {
        if newPieceLength != pieceLength { return "piece length changed from \(pieceLength) to \(newPieceLength)" }
        for name in ["etag", "last-modified"] {
            if let new = headers[name], let old = self.headers[name], new != old { return "\(name) changed" }
        }
        switch (contentLength, newLength) {
        case (let old?, let new?) where old != new: return "content length changed from \(old) to \(new)"
        case (nil, let new?): return contentLengthProblem(new)
        default: return nil
        }
    }
}

// MARK: - Binary format

/// Version 1 of the `meta` file, little-endian:
///
/// ```
/// "DFMT"  version:u16  flags:u16 (bit 0 finished)
/// task id: 64 ASCII bytes
/// content length:i64 (-1 unknown)  piece length:i64  slots:u32
/// created/accessed/finished ms since 1970: i64 ×3 (finished -1 when not finished)
/// short piece number:i32 (-1 none)  short piece length:i64
/// url: u32 length + UTF-8
/// headers: u16 count, each u16 name length + name, u16 value length + value
/// bitmap: ceil(slots / 8) bytes, least significant bit first
/// digests: 32 bytes of SHA-256 per held piece, in piece order
/// trailer: SHA-256 of everything above
/// ```
///
/// The trailer makes a torn or bit-flipped file detectable; any mismatch drops the task on reload.
extension TaskMetadata {
    static let magic: [UInt8] = Array("DFMT".utf8)
    static let formatVersion: UInt16 = 1

    func encoded() -> [UInt8] {
        var buffer = ByteBuffer()
        buffer.reserveCapacity(256 + url.utf8.count + pieces.count / 8 + pieces.heldCount * Self.digestSize)
        buffer.writeBytes(Self.magic)
        buffer.writeInteger(Self.formatVersion, endianness: .little)
        buffer.writeInteger(UInt16(isFinished ? 1 : 0), endianness: .little)
        buffer.writeString(taskID.rawValue)
        buffer.writeInteger(contentLength ?? -1, endianness: .little)
        buffer.writeInteger(pieceLength, endianness: .little)
        buffer.writeInteger(UInt32(pieces.count), endianness: .little)
        buffer.writeInteger(Self.milliseconds(createdAt), endianness: .little)
        buffer.writeInteger(Self.milliseconds(accessedAt), endianness: .little)
        buffer.writeInteger(finishedAt.map(Self.milliseconds) ?? -1, endianness: .little)
        buffer.writeInteger(Int32(shortPiece?.number ?? -1), endianness: .little)
        buffer.writeInteger(shortPiece?.length ?? 0, endianness: .little)
        let urlBytes = Array(url.utf8)
        buffer.writeInteger(UInt32(urlBytes.count), endianness: .little)
        buffer.writeBytes(urlBytes)
        let sortedHeaders = headers.sorted { $0.key < $1.key }
        buffer.writeInteger(UInt16(sortedHeaders.count), endianness: .little)
        for (name, value) in sortedHeaders {
            let nameBytes = Array(name.utf8.prefix(Int(UInt16.max)))
            let valueBytes = Array(value.utf8.prefix(Int(UInt16.max)))
            buffer.writeInteger(UInt16(nameBytes.count), endianness: .little)
            buffer.writeBytes(nameBytes)
            buffer.writeInteger(UInt16(valueBytes.count), endianness: .little)
            buffer.writeBytes(valueBytes)
        }
        buffer.writeBytes(pieces.bytes)
        for slot in pieces.heldSlots {
            buffer.writeBytes(digestBytes(ofPiece: slot))
        }
        let checksum = buffer.withUnsafeReadableBytes { bytes in
            var hasher = SHA256()
            hasher.update(bufferPointer: bytes)
            return Array(hasher.finalize())
        }
        buffer.writeBytes(checksum)
        return Array(buffer.readableBytesView)
    }

    /// Decodes a `meta` file; throws `dataLoss` naming the first problem found.
    static func decode(_ bytes: [UInt8], maximumPieceCount: Int) throws(DragonflyError) -> TaskMetadata {
        func corrupt(_ why: String) -> DragonflyError {
            DragonflyError(code: .dataLoss, message: "corrupt task metadata: \(why)")
        }
        guard bytes.count > digestSize + magic.count else { throw corrupt("too short") }
        let body = bytes[..<(bytes.count - digestSize)]
        var hasher = SHA256()
        body.withUnsafeBytes { hasher.update(bufferPointer: $0) }
        guard Array(hasher.finalize()) == Array(bytes[(bytes.count - digestSize)...]) else {
            throw corrupt("checksum mismatch")
        }
        var buffer = ByteBuffer(bytes: body)
        guard buffer.readBytes(length: magic.count) == magic else { throw corrupt("bad magic") }
        guard let version: UInt16 = buffer.readInteger(endianness: .little), version == formatVersion else {
            throw corrupt("unsupported version")
        }
        guard let flags: UInt16 = buffer.readInteger(endianness: .little),
            let idText = buffer.readString(length: 64), let taskID = TaskID(idText),
            let contentLength: Int64 = buffer.readInteger(endianness: .little),
            let pieceLength: Int64 = buffer.readInteger(endianness: .little),
            let slots: UInt32 = buffer.readInteger(endianness: .little),
            let created: Int64 = buffer.readInteger(endianness: .little),
            let accessed: Int64 = buffer.readInteger(endianness: .little),
            let finished: Int64 = buffer.readInteger(endianness: .little),
            let shortNumber: Int32 = buffer.readInteger(endianness: .little),
            let shortLength: Int64 = buffer.readInteger(endianness: .little),
            let urlLength: UInt32 = buffer.readInteger(endianness: .little),
            let url = buffer.readString(length: Int(urlLength)),
            let headerCount: UInt16 = buffer.readInteger(endianness: .little)
        else { throw corrupt("truncated header") }
        guard pieceLength > 0, contentLength >= -1, Int(slots) <= maximumPieceCount else {
            throw corrupt("bad geometry")
        }
        var headers: [String: String] = [:]
        for _ in 0..<headerCount {
            guard let nameLength: UInt16 = buffer.readInteger(endianness: .little),
                let name = buffer.readString(length: Int(nameLength)),
                let valueLength: UInt16 = buffer.readInteger(endianness: .little),
                let value = buffer.readString(length: Int(valueLength))
            else { throw corrupt("truncated headers") }
            headers[name] = value
        }
        guard let bitmapBytes = buffer.readBytes(length: (Int(slots) + 7) / 8),
            let pieces = PieceBitmap(bytes: bitmapBytes, count: Int(slots))
        else { throw corrupt("bad piece bitmap") }
        guard buffer.readableBytes == pieces.heldCount * digestSize else { throw corrupt("digest count mismatch") }

        var metadata = TaskMetadata(
            taskID: taskID, url: url, contentLength: contentLength >= 0 ? contentLength : nil,
            pieceLength: pieceLength, headers: headers, now: date(milliseconds: created))
        guard metadata.pieces.count == Int(slots) || metadata.contentLength == nil else {
            throw corrupt("slot count does not match the content length")
        }
        metadata.resizeSlots(to: Int(slots))
        for slot in pieces.heldSlots {
            guard let digest = buffer.readBytes(length: digestSize) else { throw corrupt("truncated digests") }
            metadata.insertPiece(slot, digest: digest)
        }
        metadata.accessedAt = date(milliseconds: accessed)
        metadata.isFinished = flags & 1 != 0
        metadata.finishedAt = finished >= 0 ? date(milliseconds: finished) : nil
        if shortNumber >= 0 {
            guard metadata.contentLength == nil, shortLength > 0, shortLength < pieceLength,
                Int(shortNumber) < maximumPieceCount
            else { throw corrupt("bad short piece") }
            metadata.shortPiece = ShortPiece(number: Int(shortNumber), length: shortLength)
        }
        if metadata.isFinished {
            guard let count = metadata.pieceCount, metadata.pieces.heldCount == count else {
                throw corrupt("finished task with missing pieces")
            }
        }
        return metadata
    }

    static func milliseconds(_ date: Date) -> Int64 {
        Int64((date.timeIntervalSince1970 * 1000).rounded())
    }

    static func date(milliseconds: Int64) -> Date {
        Date(timeIntervalSince1970: Double(milliseconds) / 1000)
    }

    /// Now, truncated to whole milliseconds so a decoded time equals the one in memory.
    static func now() -> Date {
        date(milliseconds: milliseconds(Date()))
    }
}
