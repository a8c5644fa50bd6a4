import Crypto

/// A whole-file digest given with `--digest` (`sha256:<hex>`, `sha512:<hex>`, `md5:<hex>`), verified before
/// the output appears (DESIGN §4).
package struct FileDigest: Hashable, Sendable, CustomStringConvertible {
    /// The supported algorithms.
    package enum Algorithm: String, Sendable, CaseIterable {
        case sha256, sha512, md5
        /// Hex characters in a digest of this algorithm.
        package var hexLength: Int {
            switch self {
            case .sha256: 64
            case .sha512: 128
            case .md5: 32
            }
        }
    }

    package var algorithm: Algorithm
    /// Lowercase hex.
    package var hex: String

    /// Parses `alg:hex` (algorithm case-insensitive, hex of the right length, either case).
    package init(parsing text: String) throws(DragonflyError) {
        let parts = text.split(separator: ":", maxSplits: 1)
        guard parts.count == 2, let algorithm = Algorithm(rawValue: parts[0].lowercased()) else {
            throw DragonflyError(
                code: .usage,
                message: "digest '\(text.prefix(140))' must be sha256:<hex>, sha512:<hex> or md5:<hex>"
            )
        }
        let hex = parts[1].lowercased()
        guard hex.count == algorithm.hexLength,
            hex.utf8.allSatisfy({ ($0 >= 48 && $0 <= 57) || ($0 >= 97 && $0 <= 102) })
        else {
            throw DragonflyError(
                code: .usage,
                message:
                    "digest '\(text.prefix(140))': \(algorithm.rawValue) needs \(algorithm.hexLength) hex characters"
            )
        }
        self.algorithm = algorithm
        self.hex = hex
    }

    package var description: String { "\(algorithm.rawValue):\(hex)" }

    /// An incremental hasher for this digest's algorithm.
    package func makeHasher() -> FileHasher { FileHasher(algorithm) }
}

/// Incremental hashing for ``FileDigest`` verification.
package struct FileHasher {
    private enum State {
        case sha256(SHA256)
        case sha512(SHA512)
        case md5(Insecure.MD5)
    }
    private var state: State

    package init(_ algorithm: FileDigest.Algorithm) {
        switch algorithm {
        case .sha256: state = .sha256(SHA256())
        case .sha512: state = .sha512(SHA512())
        case .md5: state = .md5(Insecure.MD5())
        }
    }

    package mutating func update(_ bytes: UnsafeRawBufferPointer) {
        switch state {
        case .sha256(var h):
            h.update(bufferPointer: bytes)
            state = .sha256(h)
        case .sha512(var h):
            h.update(bufferPointer: bytes)
            state = .sha512(h)
        case .md5(var h):
            h.update(bufferPointer: bytes)
            state = .md5(h)
        }
    }

    /// Lowercase hex of the digest.
    package func finalize() -> String {
        switch state {
        case .sha256(let h): TaskID.hex(h.finalize())
        case .sha512(let h): TaskID.hex(h.finalize())
        case .md5(let h): TaskID.hex(h.finalize())
        }
    }
}
