/// The one place that decides what of a URL or a header may leave the process (logs, error messages, answers
/// to other hosts, job results): DESIGN §11 "secrets never logged".
///
/// - URLs keep scheme, host, port and path; every query value becomes `REDACTED` (keys stay, so a reader can
///   tell which parameters were there) and userinfo becomes `REDACTED@`. A fragment is dropped.
/// - Headers keep their value only when the name is on ``safeHeaderNames``; every other value becomes
///   `REDACTED`. Unknown headers are treated as secrets, because a custom `X-Api-Key` is as likely as not.
package enum Redaction {
    /// What a removed secret is replaced with.
    package static let placeholder = "REDACTED"

    /// Header names (lowercase) whose values are never secret.
    package static let safeHeaderNames: Set<String> = [
        "accept", "accept-encoding", "accept-language", "accept-ranges", "age", "cache-control", "connection",
        "content-encoding", "content-length", "content-range", "content-type", "date", "etag", "expires",
        "host", "if-match", "if-modified-since", "if-none-match", "if-range", "if-unmodified-since",
        "last-modified", "range", "retry-after", "server", "transfer-encoding", "user-agent",
        "vary", "docker-content-digest", "docker-distribution-api-version", "x-dragonfly-task-id",
        "x-dragonfly-tag", "x-dragonfly-application", "x-dragonfly-priority", "x-dragonfly-use-p2p",
        "x-dragonfly-filtered-query-params", "x-dragonfly-registry",
    ]

    /// `url` with query values and userinfo replaced by ``placeholder`` and any fragment dropped. Text that is
    /// not a URL is returned with everything after the first `?` or `#` replaced.
    package static func url(_ url: some StringProtocol) -> String {
        var rest = Substring(url)
        if let hash = rest.firstIndex(of: "#") { rest = rest[..<hash] }
        var query: Substring?
        if let mark = rest.firstIndex(of: "?") {
            query = rest[rest.index(after: mark)...]
            rest = rest[..<mark]
        }
        var out = String(rest)
        if let schemeEnd = rest.firstRange(of: "://") {
            let authorityStart = schemeEnd.upperBound
            let authorityEnd = rest[authorityStart...].firstIndex(of: "/") ?? rest.endIndex
            let authority = rest[authorityStart..<authorityEnd]
            if let at = authority.lastIndex(of: "@") {
                out =
                    String(rest[..<authorityStart]) + placeholder + "@"
                    + String(rest[rest.index(after: at)...])
            }
        }
        if let query {
            let parameters = query.split(separator: "&", omittingEmptySubsequences: true).map { parameter in
                let key = parameter.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
                return parameter.contains("=") ? "\(key)=\(placeholder)" : "\(key)"
            }
            if !parameters.isEmpty { out += "?" + parameters.joined(separator: "&") }
        }
        return out
    }

    /// `value` as it may be shown for a header called `name`.
    package static func headerValue(name: some StringProtocol, value: String) -> String {
        let lowered = name.lowercased()
        if lowered == "location" || lowered == "content-location" || lowered == "referer" {
            return url(value)
        }
        return safeHeaderNames.contains(lowered) ? value : placeholder
    }

    /// Every header of `headers` with its value redacted as ``headerValue(name:value:)`` says.
    package static func headers(_ headers: [String: String]) -> [String: String] {
        var out: [String: String] = [:]
        for (name, value) in headers { out[name] = headerValue(name: name, value: value) }
        return out
    }

    /// A header line as a user typed it (`Name: value`), for error messages: never echoes the value, and
    /// without a colon nothing of the line at all (it may be a bare token).
    package static func headerLine(_ line: some StringProtocol) -> String {
        guard let colon = line.firstIndex(of: ":") else { return "(a line without ':')" }
        let name = String(line[..<colon]).trimmingSpaces()
        return "\(name.prefix(100)): \(placeholder)"
    }

    /// Any message text: every URL-looking word is passed through ``url(_:)``.
    package static func message(_ text: String) -> String {
        guard text.contains("://") else { return text }
        return text.split(separator: " ", omittingEmptySubsequences: false)
            .map { $0.contains("://") ? url($0) : String($0) }
            .joined(separator: " ")
    }
}
