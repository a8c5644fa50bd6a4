package import DragonflyCore

/// The target of a request to the piece data plane (DESIGN §5), parsed from its method and URI without I/O.
package enum PieceRequest: Equatable, Sendable {
    /// `GET /pieces/<taskID>/<number>` with valid parts.
    case piece(TaskID, number: Int)
    /// A `/pieces/…` path whose task ID or piece number is malformed (400); the reason says which.
    case malformed(String)
    /// A `/pieces/…` path with a method other than GET (405).
    case methodNotAllowed
    /// Any other path (404).
    case unknownPath

    /// The largest piece number accepted in a path (far above any task's piece count).
    package static let maximumPieceNumber = 1 << 30

    /// Parses `uri` (the request target, query ignored) for `method` (`GET`, `HEAD`, …).
    package init(method: String, uri: String) {
        var path = Substring(uri)
        if let query = path.firstIndex(where: { $0 == "?" || $0 == "#" }) { path = path[..<query] }
        let prefix = "/pieces/"
        guard path.hasPrefix(prefix) else {
            self = .unknownPath
            return
        }
        guard method == "GET" else {
            self = .methodNotAllowed
            return
        }
        let parts = path.dropFirst(prefix.count).split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let id = TaskID(parts[0]) else {
            let shown = path.dropFirst(prefix.count).prefix(80)
            self = .malformed("'\(shown)' is not <task ID>/<piece number> (64 lowercase hex characters, then digits)")
            return
        }
        let digits = parts[1]
        guard !digits.isEmpty, digits.utf8.count <= 10, digits.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }),
            let number = Int(digits), number <= Self.maximumPieceNumber
        else {
            self = .malformed("piece number '\(digits.prefix(20))' is not a non-negative integer")
            return
        }
        self = .piece(id, number: number)
    }
}
