/// The scheme, host and port of an absolute URL, parsed without Foundation (enough for host matching,
/// same-origin checks and messages; AsyncHTTPClient does the real parsing).
struct URLParts: Hashable, Sendable {
    /// Lower-cased scheme, e.g. `https`.
    var scheme: String
    /// Lower-cased host without brackets, e.g. `example.com` or `::1`.
    var host: String
    /// The explicit port, or the scheme's default (80/443) when absent.
    var port: Int?
    /// Everything after the authority: path, query and fragment.
    var remainder: Substring

    init?(_ url: String) {
        guard let schemeEnd = url.firstRange(of: "://") else { return nil }
        let scheme = url[..<schemeEnd.lowerBound].lowercased()
        guard !scheme.isEmpty else { return nil }
        let afterScheme = url[schemeEnd.upperBound...]
        let authorityEnd = afterScheme.firstIndex { $0 == "/" || $0 == "?" || $0 == "#" } ?? afterScheme.endIndex
        var authority = afterScheme[..<authorityEnd]
        if let at = authority.lastIndex(of: "@") {
            authority = authority[authority.index(after: at)...]
        }
        var host: Substring
        var portText: Substring?
        if authority.hasPrefix("["), let close = authority.firstIndex(of: "]") {
            host = authority[authority.index(after: authority.startIndex)..<close]
            let rest = authority[authority.index(after: close)...]
            if rest.hasPrefix(":") { portText = rest.dropFirst() }
        } else if let colon = authority.lastIndex(of: ":") {
            host = authority[..<colon]
            portText = authority[authority.index(after: colon)...]
        } else {
            host = authority
        }
        self.scheme = scheme
        self.host = host.lowercased()
        if let portText, !portText.isEmpty {
            guard let port = Int(portText) else { return nil }
            self.port = port
        } else {
            self.port = scheme == "https" ? 443 : scheme == "http" ? 80 : nil
        }
        self.remainder = afterScheme[authorityEnd...]
    }

    /// `scheme://host:port`, for same-origin comparisons.
    var origin: String { "\(scheme)://\(host):\(port.map(String.init) ?? "")" }
}
