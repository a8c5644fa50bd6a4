/// Removes signature and other per-request query parameters from URLs so that presigned URLs of one object
/// map to one task (DESIGN §4).
package enum URLFilter {
    /// The default list: S3 `X-Amz-*`, GCS `X-Goog-*`, OSS, OBS and COS signature parameters, containerd's `ns`.
    /// An entry ending in `*` matches every key with that prefix.
    package static let defaultFilteredQueryParams: [String] = [
        "X-Amz-*", "X-Goog-*",
        "OSSAccessKeyId", "Expires", "Signature", "security-token",
        "AccessKeyId", "X-Obs-Date", "X-Obs-Security-Token",
        "q-sign-algorithm", "q-ak", "q-sign-time", "q-key-time", "q-header-list", "q-url-param-list",
        "q-signature", "x-cos-security-token",
        "ns",
    ]

    /// Parses a filter flag or header value: keys separated by `&` (`X-Amz-Date&X-Amz-Signature`).
    package static func parseList(_ text: String) -> [String] {
        text.split(separator: "&").map { String($0).trimmingSpaces() }.filter { !$0.isEmpty }
    }

    /// `url` with every query parameter whose (percent-decoded) key matches `keys` removed, the others kept in
    /// their original order and spelling, `?` dropped when nothing remains, and a lone `/` path dropped.
    package static func filter(_ url: String, removing keys: [String]) -> String {
        var rest = Substring(url)
        var fragment: Substring = ""
        if let hash = rest.firstIndex(of: "#") {
            fragment = rest[hash...]
            rest = rest[..<hash]
        }
        var query: Substring? = nil
        if let mark = rest.firstIndex(of: "?") {
            query = rest[rest.index(after: mark)...]
            rest = rest[..<mark]
        }
        // Drop a lone "/" path: scheme://authority/ → scheme://authority
        if let colon = rest.firstIndex(of: ":"), rest[colon...].hasPrefix("://") {
            let afterAuthority = rest[rest.index(colon, offsetBy: 3)...]
            if let slash = afterAuthority.firstIndex(of: "/"), afterAuthority[slash...] == "/" {
                rest = rest[..<slash]
            }
        }
        var out = String(rest)
        if let query {
            let kept = query.split(separator: "&", omittingEmptySubsequences: true).filter { parameter in
                let rawKey = parameter.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
                let key = percentDecoded(rawKey)
                return !keys.contains { matches(key, $0) }
            }
            if !kept.isEmpty { out += "?" + kept.joined(separator: "&") }
        }
        return out + fragment
    }

    private static func matches(_ key: String, _ pattern: String) -> Bool {
        if pattern.hasSuffix("*") { return key.hasPrefix(pattern.dropLast()) }
        return key == pattern
    }

    /// Percent-decodes `text` (and `+` as space, as form-encoded queries do); invalid escapes stay as written.
    package static func percentDecoded(_ text: some StringProtocol) -> String {
        var bytes = [UInt8]()
        let utf8 = Array(text.utf8)
        var index = 0
        func hexValue(_ c: UInt8) -> UInt8? {
            switch c {
            case 48...57: c - 48
            case 65...70: c - 55
            case 97...102: c - 87
            default: nil
            }
        }
        while index < utf8.count {
            let c = utf8[index]
            if c == 37, index + 2 < utf8.count, let hi = hexValue(utf8[index + 1]), let lo = hexValue(utf8[index + 2]) {
                bytes.append(hi << 4 | lo)
                index += 3
            } else {
                bytes.append(c == 43 ? 32 : c)
                index += 1
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
