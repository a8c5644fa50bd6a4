/// A parsed `Content-Range` response header: `bytes 0-1023/4096`, `bytes 0-1023/*` or `bytes */4096`.
struct ContentRange: Hashable, Sendable {
    /// The first byte's offset; nil for an unsatisfied-range answer (`bytes */4096`).
    var first: Int64?
    /// The last byte's offset (inclusive); nil for an unsatisfied-range answer.
    var last: Int64?
    /// The complete length; nil when the origin does not know it (`/*`).
    var total: Int64?

    init(first: Int64?, last: Int64?, total: Int64?) {
        self.first = first
        self.last = last
        self.total = total
    }

    init?(_ header: String) {
        var text = Substring(header).drop { $0 == " " }
        guard text.lowercased().hasPrefix("bytes ") else { return nil }
        text = text.dropFirst("bytes ".count).drop { $0 == " " }
        guard let slash = text.firstIndex(of: "/") else { return nil }
        let span = text[..<slash]
        let totalText = text[text.index(after: slash)...].trimmingSuffix(" ")
        if totalText == "*" {
            total = nil
        } else {
            guard let value = Int64(totalText), value >= 0 else { return nil }
            total = value
        }
        if span == "*" {
            guard total != nil else { return nil }
            first = nil
            last = nil
            return
        }
        guard let dash = span.firstIndex(of: "-"),
            let first = Int64(span[..<dash]),
            let last = Int64(span[span.index(after: dash)...]),
            first >= 0, last >= first
        else { return nil }
        if let total, last >= total { return nil }
        self.first = first
        self.last = last
    }
}

extension Substring {
    fileprivate func trimmingSuffix(_ character: Character) -> Substring {
        var result = self
        while result.last == character { result.removeLast() }
        return result
    }
}
