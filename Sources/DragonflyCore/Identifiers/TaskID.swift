import Crypto

/// A task's identity: 64 lowercase hex characters (a SHA-256), validated before it touches a path.
package struct TaskID: Hashable, Sendable, Comparable, CustomStringConvertible, Codable {
    /// The 64 lowercase hex characters.
    package let rawValue: String

    /// Accepts exactly 64 lowercase hex characters; anything else is rejected.
    package init?(_ text: some StringProtocol) {
        guard text.utf8.count == 64, text.utf8.allSatisfy({ ($0 >= 48 && $0 <= 57) || ($0 >= 97 && $0 <= 102) })
        else { return nil }
        self.rawValue = String(text)
    }

    /// Validates untrusted input, throwing `invalidArgument` with the reason.
    package static func validated(_ text: String) throws(DragonflyError) -> TaskID {
        guard let id = TaskID(text) else {
            throw DragonflyError(
                code: .invalidArgument, message: "'\(text.prefix(80))' is not a task ID (64 lowercase hex characters)")
        }
        return id
    }

    /// The storage shard directory: the first 3 characters.
    package var shard: String { String(rawValue.prefix(3)) }

    package var description: String { rawValue }

    package static func < (lhs: TaskID, rhs: TaskID) -> Bool { lhs.rawValue < rhs.rawValue }

    package init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        let text = try container.decode(String.self)
        guard let id = TaskID(text) else {
            throw DecodingError.dataCorruptedError(in: container, debugDescription: "not a task ID")
        }
        self = id
    }

    package func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(rawValue)
    }

    /// Lowercase hex of a digest.
    package static func hex(_ bytes: some Sequence<UInt8>) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out = [UInt8]()
        for byte in bytes {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 0x0f)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// The task ID of DESIGN §4: SHA-256 over `filteredURL`, `tag`, `application`, the piece length (only when
    /// the caller fixed one) and `STANDARD`, concatenated without separators, empty parts skipped.
    package static func make(
        url: String,
        tag: String = "",
        application: String = "",
        pieceLength: Int64? = nil,
        filteredQueryParams: [String]? = nil
    ) -> TaskID {
        let filtered = URLFilter.filter(url, removing: filteredQueryParams ?? URLFilter.defaultFilteredQueryParams)
        var hasher = SHA256()
        for part in [filtered, tag, application, pieceLength.map(String.init) ?? "", "STANDARD"] where !part.isEmpty {
            hasher.update(data: Array(part.utf8))
        }
        // The hex of a SHA-256 is always 64 lowercase hex characters.
        return TaskID(unchecked: hex(hasher.finalize()))
    }

    private init(unchecked: String) { self.rawValue = unchecked }
}
