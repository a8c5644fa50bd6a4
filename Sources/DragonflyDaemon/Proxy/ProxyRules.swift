package import DragonflyCore

/// The proxy rules of DESIGN §8, compiled: the first rule whose regex matches an absolute URL decides whether a
/// GET goes P2P, which URL is fetched (`useTLS`, `redirect`) and which query keys the task ID ignores.
package struct ProxyRuleSet: Sendable {
    private let compiled: [(rule: ProxyRule, regex: CompiledRegex)]

    /// Compiles `rules` (already validated by ``DaemonConfig/validate()``).
    package init(rules: [ProxyRule]) throws(DragonflyError) {
        let regexes = try CompiledRegex.compile(rules.map(\.regex)) { "proxy.rules[\($0)].regex" }
        compiled = Array(zip(rules, regexes))
    }

    /// How the request for `url` (absolute, `http://` or `https://`) with `method` is served; `forceP2P` is
    /// `X-Dragonfly-Use-P2P: true`. Only GET goes P2P.
    package func route(url: String, method: String, forceP2P: Bool) -> ProxyRoute {
        let isGET = method == "GET"
        for entry in compiled where entry.regex.matches(in: url) {
            var target = url
            if entry.rule.useTLS, target.hasPrefix("http://") { target = "https://" + target.dropFirst(7) }
            if !entry.rule.redirect.isEmpty { target = Self.replacingAuthority(of: target, with: entry.rule.redirect) }
            let filter = entry.rule.filteredQueryParams.isEmpty ? nil : entry.rule.filteredQueryParams
            return ProxyRoute(
                url: target, isP2P: isGET && (forceP2P || !entry.rule.direct), filteredQueryParams: filter)
        }
        return ProxyRoute(url: url, isP2P: isGET && forceP2P, filteredQueryParams: nil)
    }

    /// `url` with its `host[:port]` replaced.
    static func replacingAuthority(of url: String, with authority: String) -> String {
        guard let schemeEnd = url.firstRange(of: "://") else { return url }
        let rest = url[schemeEnd.upperBound...]
        let pathStart = rest.firstIndex(where: { $0 == "/" || $0 == "?" || $0 == "#" }) ?? rest.endIndex
        return url[..<schemeEnd.upperBound] + authority + rest[pathStart...]
    }
}

/// Where and how one proxied request is served.
package struct ProxyRoute: Sendable, Equatable {
    /// The absolute URL fetched (after `useTLS` and `redirect`).
    package var url: String
    /// Whether the body comes P2P from a task (GET only); otherwise the request is forwarded as it is.
    package var isP2P: Bool
    /// Query keys the task ID ignores; nil means the default list (DESIGN §4).
    package var filteredQueryParams: [String]?

    package init(url: String, isP2P: Bool, filteredQueryParams: [String]?) {
        self.url = url
        self.isP2P = isP2P
        self.filteredQueryParams = filteredQueryParams
    }
}

/// A request's `Range` header, resolved against the object's length.
package enum ProxyByteRange: Sendable, Equatable {
    /// `bytes=first-last` (last inclusive) or `bytes=first-` (`last` nil).
    case from(Int64, through: Int64?)
    /// `bytes=-count`: the last `count` bytes.
    case suffix(Int64)

    /// Parses a single-range `Range` value; nil for anything else (multiple ranges, other units, malformed),
    /// which a server may ignore and answer with the whole body (RFC 9110 §14.2).
    package init?(header value: String) {
        let trimmed = value.trimmingSpaces()
        guard trimmed.hasPrefix("bytes=") else { return nil }
        let spec = String(trimmed.dropFirst(6)).trimmingSpaces()
        guard !spec.contains(","), let dash = spec.firstIndex(of: "-") else { return nil }
        let first = String(spec[..<dash]).trimmingSpaces()
        let last = String(spec[spec.index(after: dash)...]).trimmingSpaces()
        func number(_ text: String) -> Int64? {
            guard !text.isEmpty, text.utf8.count <= 18, text.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }) else {
                return nil
            }
            return Int64(text)
        }
        if first.isEmpty {
            guard let count = number(last), count > 0 else { return nil }
            self = .suffix(count)
            return
        }
        guard let start = number(first) else { return nil }
        if last.isEmpty {
            self = .from(start, through: nil)
            return
        }
        guard let end = number(last), end >= start else { return nil }
        self = .from(start, through: end)
    }

    /// The bytes to send of an object of `length` bytes; nil when the range is unsatisfiable (416).
    package func resolve(length: Int64) -> Range<Int64>? {
        switch self {
        case .from(let start, let end):
            guard start < length else { return nil }
            return start..<min((end ?? (length - 1)) + 1, length)
        case .suffix(let count):
            guard length > 0 else { return nil }
            return max(length - count, 0)..<length
        }
    }

    /// The range the download needs before it can answer, when it is known without the object's length.
    package var downloadRange: ByteRange? {
        switch self {
        case .from(let start, let end): ByteRange(start: start, length: end.map { $0 - start + 1 })
        case .suffix: nil
        }
    }
}

/// Resolves registry mirror requests (origin-form `/v2/…` requests with no absolute URI) to an upstream.
package struct RegistryMirror: Sendable {
    /// `scheme://host[:port]` of the default upstream.
    package let defaultUpstream: String
    private let defaultHost: String
    private let insecure: Set<String>
    private let allowed: [String]

    package init(config: DaemonConfig.RegistryMirrorConfig) {
        var url = config.url
        while url.hasSuffix("/") { url.removeLast() }
        defaultUpstream = url
        defaultHost = String(url.split(separator: "/", omittingEmptySubsequences: true).dropFirst().first ?? "")
            .lowercased()
        insecure = Set(config.insecureRegistries.map { $0.lowercased() })
        allowed = config.allowedRegistries.map { $0.trimmingSpaces().lowercased() }.filter { !$0.isEmpty }
    }

    /// Whether a mirror request may name the registry `authority` (`host[:port]`): the default upstream's, or
    /// one matching `allowedRegistries` (`host` matches any port, `host:port` that port, `*.suffix[:port]`
    /// every subdomain).
    package func allowsRegistry(_ authority: String) -> Bool {
        let lowered = authority.lowercased()
        if lowered == defaultHost { return true }
        let (host, port) = Self.split(authority: lowered)
        for entry in allowed {
            let (patternHost, patternPort) = Self.split(authority: entry)
            if let patternPort, patternPort != port { continue }
            if patternHost.hasPrefix("*.") {
                let suffix = patternHost.dropFirst(2)
                if host == suffix || host.hasSuffix("." + suffix) { return true }
            } else if host == patternHost {
                return true
            }
        }
        return false
    }

    /// The host (without brackets) and port of `host[:port]` or `[v6][:port]`.
    static func split(authority: String) -> (host: String, port: String?) {
        if authority.hasPrefix("["), let close = authority.firstIndex(of: "]") {
            let host = String(authority[authority.index(after: authority.startIndex)..<close])
            let rest = authority[authority.index(after: close)...]
            return (host, rest.hasPrefix(":") ? String(rest.dropFirst()) : nil)
        }
        guard let colon = authority.lastIndex(of: ":") else { return (authority, nil) }
        return (String(authority[..<colon]), String(authority[authority.index(after: colon)...]))
    }

    /// The absolute upstream URL of origin-form `target` (`/v2/…?…`): the registry from `registryHeader`
    /// (`X-Dragonfly-Registry`, with a scheme), else the `ns` query parameter, else the default; `ns` is removed
    /// from the URL. Throws `invalidArgument` for a malformed header, `ns` or target, and `permissionDenied`
    /// for a path outside `/v2/` or a registry the config does not list.
    package func upstreamURL(target: String, registryHeader: String?) throws(DragonflyError) -> String {
        guard target.hasPrefix("/") else {
            throw DragonflyError(code: .invalidArgument, message: "request target '\(target.prefix(80))' is not a path")
        }
        var path = Substring(target)
        var query: [Substring] = []
        if let mark = target.firstIndex(of: "?") {
            path = target[..<mark]
            query = target[target.index(after: mark)...].split(separator: "&", omittingEmptySubsequences: true)
        }
        guard Self.isRegistryPath(path) else {
            throw DragonflyError(
                code: .permissionDenied,
                message: "the registry mirror serves only the registry API (paths under /v2/)")
        }
        var namespace: String?
        query.removeAll { item in
            let key = item.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)[0]
            guard key == "ns" else { return false }
            if namespace == nil {
                namespace = URLFilter.percentDecoded(item.dropFirst(3))
            }
            return true
        }
        let upstream: String
        if let header = registryHeader?.trimmingSpaces(), !header.isEmpty {
            upstream = try Self.validatedUpstream(header)
        } else if let namespace, !namespace.isEmpty {
            upstream = try upstreamURL(namespace: namespace)
        } else {
            upstream = defaultUpstream
        }
        if upstream != defaultUpstream {
            let authority = String(
                upstream.split(separator: "/", omittingEmptySubsequences: true).dropFirst().first ?? "")
            // `ns=docker.io` may be listed as `docker.io` or as `index.docker.io`.
            let fromHeader = registryHeader.map { !$0.trimmingSpaces().isEmpty } ?? false
            let named = fromHeader ? authority : (namespace?.lowercased() ?? authority)
            guard allowsRegistry(authority) || allowsRegistry(named) else {
                throw DragonflyError(
                    code: .permissionDenied,
                    message: "the registry mirror does not serve \(named.prefix(100)); list it in "
                        + "proxy.registryMirror.allowedRegistries to allow it")
            }
        }
        let rest = query.isEmpty ? "" : "?" + query.joined(separator: "&")
        return upstream + path + rest
    }

    /// Whether `path` is `/v2` or under `/v2/` without a `.` or `..` segment (percent-encoded or not) or a
    /// backslash, so the upstream sees the registry API and nothing else.
    static func isRegistryPath(_ path: Substring) -> Bool {
        guard path == "/v2" || path.hasPrefix("/v2/"), !path.contains("\\") else { return false }
        return !path.split(separator: "/", omittingEmptySubsequences: false).contains { segment in
            let decoded = URLFilter.percentDecoded(segment)
            return decoded == "." || decoded == ".." || decoded.contains("/") || decoded.contains("\\")
        }
    }

    /// `scheme://host` for a registry named by `ns` (containerd): https unless insecure or the default's host.
    private func upstreamURL(namespace: String) throws(DragonflyError) -> String {
        let host = namespace.lowercased()
        guard Self.isAuthority(host) else {
            throw DragonflyError(code: .invalidArgument, message: "ns '\(namespace.prefix(80))' is not a registry host")
        }
        if host == "docker.io" { return "https://index.docker.io" }
        if host == defaultHost { return defaultUpstream }
        return (insecure.contains(host) ? "http://" : "https://") + host
    }

    private static func validatedUpstream(_ header: String) throws(DragonflyError) -> String {
        var value = header
        while value.hasSuffix("/") { value.removeLast() }
        for scheme in ["http://", "https://"] where value.lowercased().hasPrefix(scheme) {
            let authority = String(value.dropFirst(scheme.count))
            if isAuthority(authority) { return scheme + authority }
        }
        throw DragonflyError(
            code: .invalidArgument,
            message: "X-Dragonfly-Registry '\(header.prefix(80))' is not http(s)://host[:port]")
    }

    /// `host[:port]` of letters, digits, `.`, `-`, `_`, or a bracketed IPv6 address.
    static func isAuthority(_ text: String) -> Bool {
        guard !text.isEmpty, text.utf8.count <= 255 else { return false }
        return text.utf8.allSatisfy { byte in
            (byte >= 48 && byte <= 58) || (byte >= 65 && byte <= 90) || (byte >= 97 && byte <= 122)
                || byte == 45 || byte == 46 || byte == 95 || byte == 91 || byte == 93
        }
    }

    /// Whether origin-form `target` asks for a blob (`/v2/<repo>/blobs/sha256:<64 hex>`), which goes P2P.
    package static func isBlob(target: String) -> Bool {
        var path = Substring(target)
        if let mark = path.firstIndex(of: "?") { path = path[..<mark] }
        let parts = path.split(separator: "/", omittingEmptySubsequences: false)
        // "", "v2", repository components…, "blobs", "sha256:<hex>"
        guard parts.count >= 5, parts[0].isEmpty, parts[1] == "v2", parts[parts.count - 2] == "blobs",
            parts[2..<(parts.count - 2)].allSatisfy({ !$0.isEmpty })
        else { return false }
        let digest = parts[parts.count - 1]
        guard digest.hasPrefix("sha256:") else { return false }
        let hex = digest.dropFirst(7)
        return hex.utf8.count == 64 && hex.utf8.allSatisfy { ($0 >= 48 && $0 <= 57) || ($0 >= 97 && $0 <= 102) }
    }
}

/// Proxy basic authentication (RFC 7617 over `Proxy-Authorization`).
package enum ProxyAuthorization {
    /// Whether `header` carries the required credentials (always true when none are required). Compares in
    /// time independent of where the values differ.
    package static func isAuthorized(_ header: String?, required: String?) -> Bool {
        guard let required else { return true }
        guard let header else { return false }
        let given = Array(header.trimmingSpaces().utf8)
        let expected = Array(required.utf8)
        var difference = given.count ^ expected.count
        for index in 0..<expected.count {
            difference |= Int(expected[index] ^ (index < given.count ? given[index] : 0))
        }
        return difference == 0
    }

    /// Standard base64 with padding.
    package static func base64(_ bytes: [UInt8]) -> String {
        let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
        var out: [UInt8] = []
        var index = 0
        while index < bytes.count {
            let chunk = bytes[index..<min(index + 3, bytes.count)]
            let value = chunk.enumerated().reduce(UInt32(0)) { $0 | UInt32($1.element) << (16 - 8 * UInt32($1.offset)) }
            for position in 0..<4 {
                out.append(position <= chunk.count ? alphabet[Int((value >> (18 - 6 * UInt32(position))) & 63)] : 61)
            }
            index += 3
        }
        return String(decoding: out, as: UTF8.self)
    }
}
