package import DragonflyCore

/// Conversions between `file:` URLs and absolute paths.
package enum FileURL {
    /// The absolute path named by a `file:///abs/path` URL (or `file://localhost/abs/path`), percent-decoded.
    /// A query or fragment is ignored.
    ///
    /// - Throws: ``DragonflyError/Code/invalidArgument`` for another scheme, a remote host, a relative path,
    ///   bad percent-encoding or a NUL byte.
    package static func path(from url: String) throws(DragonflyError) -> String {
        let prefix = "file://"
        guard url.count > prefix.count, url.prefix(prefix.count).lowercased() == prefix else {
            throw DragonflyError(
                code: .invalidArgument, message: "'\(Redaction.url(url))' is not a file:///absolute/path URL")
        }
        var rest = url.dropFirst(prefix.count)
        if let end = rest.firstIndex(where: { $0 == "?" || $0 == "#" }) {
            rest = rest[..<end]
        }
        let slash = rest.firstIndex(of: "/") ?? rest.endIndex
        let host = rest[..<slash].lowercased()
        guard host.isEmpty || host == "localhost" else {
            throw DragonflyError(
                code: .invalidArgument,
                message:
                    "'\(Redaction.url(url))' names host '\(host)'; file URLs must name a local path (file:///absolute/path)"
            )
        }
        let encoded = rest[slash...]
        guard encoded.hasPrefix("/") else {
            throw DragonflyError(
                code: .invalidArgument, message: "'\(Redaction.url(url))' has no absolute path (file:///absolute/path)")
        }
        guard let path = percentDecoded(encoded), !path.contains("\0") else {
            throw DragonflyError(
                code: .invalidArgument, message: "'\(Redaction.url(url))' has an invalid percent-encoded path")
        }
        return path
    }

    /// The `file:///…` URL of an absolute path, percent-encoding what a URL path cannot hold.
    package static func url(forPath path: String) -> String {
        var encoded = "file://"
        for byte in path.utf8 {
            if isAllowedInPath(byte) {
                encoded.unicodeScalars.append(Unicode.Scalar(byte))
            } else {
                encoded += "%" + String(hexDigits[Int(byte >> 4)]) + String(hexDigits[Int(byte & 0x0F)])
            }
        }
        return encoded
    }

    private static let hexDigits = Array("0123456789ABCDEF")

    private static func isAllowedInPath(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
            UInt8(ascii: "0")...UInt8(ascii: "9"):
            return true
        default:
            return "-._~/!$&'()*+,;=:@".utf8.contains(byte)
        }
    }

    private static func percentDecoded(_ text: Substring) -> String? {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(text.utf8.count)
        var iterator = text.utf8.makeIterator()
        while let byte = iterator.next() {
            guard byte == UInt8(ascii: "%") else {
                bytes.append(byte)
                continue
            }
            guard let high = iterator.next().flatMap(hexValue), let low = iterator.next().flatMap(hexValue) else {
                return nil
            }
            bytes.append(high << 4 | low)
        }
        return String(validating: bytes, as: UTF8.self)
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}

/// IMF-fixdate formatting (`Sun, 06 Nov 1994 08:49:37 GMT`) for `Last-Modified` values of local files.
enum HTTPDate {
    private static let weekdays = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]
    private static let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]

    /// The date `secondsSinceEpoch` seconds after 1970-01-01T00:00:00Z.
    static func format(secondsSinceEpoch seconds: Int) -> String {
        let days = seconds >= 0 ? seconds / 86_400 : (seconds - 86_399) / 86_400
        let secondOfDay = seconds - days * 86_400
        // Civil date from a day count (Howard Hinnant's algorithm).
        let shifted = days + 719_468
        let era = (shifted >= 0 ? shifted : shifted - 146_096) / 146_097
        let dayOfEra = shifted - era * 146_097
        let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36_524 - dayOfEra / 146_096) / 365
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
        let monthIndex = (5 * dayOfYear + 2) / 153
        let day = dayOfYear - (153 * monthIndex + 2) / 5 + 1
        let month = monthIndex < 10 ? monthIndex + 3 : monthIndex - 9
        let year = yearOfEra + era * 400 + (month <= 2 ? 1 : 0)
        let weekday = ((days % 7) + 11) % 7  // 1970-01-01 was a Thursday (4)
        return "\(weekdays[weekday]), \(twoDigits(day)) \(months[month - 1]) \(year) "
            + "\(twoDigits(secondOfDay / 3600)):\(twoDigits(secondOfDay / 60 % 60)):\(twoDigits(secondOfDay % 60)) GMT"
    }

    private static func twoDigits(_ value: Int) -> String {
        value < 10 ? "0\(value)" : "\(value)"
    }
}
