package import DragonflyCore

/// What the searcher knows about the host asking for schedulers.
package struct SearchedHost: Sendable, Hashable {
    package var hostname: String
    package var ip: String
    package var idc: String
    /// Location path `a|b|c`.
    package var location: String

    package init(hostname: String, ip: String, idc: String = "", location: String = "") {
        self.hostname = hostname
        self.ip = ip
        self.idc = idc
        self.location = location
    }
}

/// Ranks scheduler clusters for a host (DESIGN §5 "searcher").
///
/// Clusters are compared on these criteria, each one deciding only when the previous ones tie:
/// 1. a CIDR of the cluster's scopes contains the host's IP (the longest matching prefix wins);
/// 2. a hostname regular expression of the scopes matches the host name (anywhere in it, as Go's
///    `regexp.MatchString` does);
/// 3. the host's IDC is one of the scope's IDCs (`|`-separated, case-insensitive);
/// 4. the number of leading location components (`a|b|c`) the host shares with the scope's location;
/// 5. the cluster is the default one;
/// 6. the lower cluster ID (so the order is total and stable).
///
/// Malformed CIDRs and regular expressions in a scope are ignored (they match nothing): one bad scope never
/// hides the other clusters.
package struct SchedulerSearcher: Sendable {
    /// Longest hostname pattern the searcher compiles; longer ones are ignored.
    package static let maxPatternLength = 1024

    package init() {}

    /// How well one cluster matches a host; larger is better.
    package struct Score: Sendable, Hashable, Comparable, CustomStringConvertible {
        /// Prefix length of the longest matching CIDR; `nil` when none matches.
        package var cidrPrefixLength: Int?
        package var hostnameMatches: Bool
        package var idcMatches: Bool
        package var locationDepth: Int
        package var isDefault: Bool

        package static func < (lhs: Score, rhs: Score) -> Bool {
            let left = lhs.cidrPrefixLength ?? -1
            let right = rhs.cidrPrefixLength ?? -1
            if left != right { return left < right }
            if lhs.hostnameMatches != rhs.hostnameMatches { return !lhs.hostnameMatches }
            if lhs.idcMatches != rhs.idcMatches { return !lhs.idcMatches }
            if lhs.locationDepth != rhs.locationDepth { return lhs.locationDepth < rhs.locationDepth }
            if lhs.isDefault != rhs.isDefault { return !lhs.isDefault }
            return false
        }

        package var description: String {
            "cidr=\(cidrPrefixLength.map(String.init) ?? "-") hostname=\(hostnameMatches) idc=\(idcMatches) "
                + "location=\(locationDepth) default=\(isDefault)"
        }
    }

    /// The score of a cluster with `scopes` (and `isDefault`) for `host`.
    package func score(scopes: ClusterScopes, isDefault: Bool, for host: SearchedHost) -> Score {
        Score(
            cidrPrefixLength: Self.longestMatchingPrefix(cidrs: scopes.cidrs, ip: host.ip),
            hostnameMatches: Self.hostnameMatches(patterns: scopes.hostnames, hostname: host.hostname),
            idcMatches: Self.idcMatches(scope: scopes.idc, idc: host.idc),
            locationDepth: Self.sharedLocationDepth(scope: scopes.location, location: host.location),
            isDefault: isDefault
        )
    }

    /// `clusters` best first for `host`.
    package func rank(_ clusters: [ClusterRecord], for host: SearchedHost) -> [ClusterRecord] {
        let scored: [(cluster: ClusterRecord, score: Score)] = clusters.map { cluster in
            (cluster, score(scopes: cluster.scopes, isDefault: cluster.isDefault, for: host))
        }
        let ranked = scored.sorted {
            (lhs: (cluster: ClusterRecord, score: Score), rhs: (cluster: ClusterRecord, score: Score)) -> Bool in
            if lhs.score == rhs.score { return lhs.cluster.id < rhs.cluster.id }
            return rhs.score < lhs.score
        }
        return ranked.map(\.cluster)
    }

    // MARK: Criteria

    static func longestMatchingPrefix(cidrs: [String], ip: String) -> Int? {
        guard let address = IPAddressBytes(parsing: ip) else { return nil }
        var best: Int?
        for cidr in cidrs {
            guard let network = CIDRBlock(parsing: cidr), network.contains(address) else { continue }
            best = max(best ?? -1, network.prefixLength)
        }
        return best
    }

    static func hostnameMatches(patterns: [String], hostname: String) -> Bool {
        guard !hostname.isEmpty else { return false }
        for pattern in patterns where !pattern.isEmpty && pattern.utf8.count <= maxPatternLength {
            guard let regex = try? Regex(pattern) else { continue }
            if (try? regex.firstMatch(in: hostname)) != nil { return true }
        }
        return false
    }

    static func idcMatches(scope: String, idc: String) -> Bool {
        guard !idc.isEmpty else { return false }
        let wanted = idc.lowercased()
        return scope.split(separator: "|").contains { $0.trimmingSpaces().lowercased() == wanted }
    }

    static func sharedLocationDepth(scope: String, location: String) -> Int {
        guard !scope.isEmpty, !location.isEmpty else { return 0 }
        let scopeParts = scope.split(separator: "|", omittingEmptySubsequences: false)
        let hostParts = location.split(separator: "|", omittingEmptySubsequences: false)
        var depth = 0
        for (lhs, rhs) in zip(scopeParts, hostParts) {
            guard !lhs.isEmpty, lhs.lowercased() == rhs.lowercased() else { break }
            depth += 1
        }
        return depth
    }
}

extension Substring {
    fileprivate func trimmingSpaces() -> Substring {
        var text = self
        while text.first == " " { text.removeFirst() }
        while text.last == " " { text.removeLast() }
        return text
    }
}

/// A network `address/prefixLength`; a bare address is a host route (/32 or /128).
package struct CIDRBlock: Sendable, Hashable {
    package var network: IPAddressBytes
    package var prefixLength: Int

    package init?(parsing text: String) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 1 || parts.count == 2,
            let address = IPAddressBytes(parsing: String(parts[0].trimmingSpaces()))
        else { return nil }
        let bits = address.bytes.count * 8
        if parts.count == 2 {
            guard let length = Int(parts[1].trimmingSpaces()), (0...bits).contains(length) else { return nil }
            prefixLength = length
        } else {
            prefixLength = bits
        }
        network = address
    }

    package func contains(_ address: IPAddressBytes) -> Bool {
        guard address.bytes.count == network.bytes.count else { return false }
        var remaining = prefixLength
        for (lhs, rhs) in zip(address.bytes, network.bytes) where remaining > 0 {
            let mask: UInt8 = remaining >= 8 ? 0xFF : ~(UInt8(0xFF) >> UInt8(remaining))
            if lhs & mask != rhs & mask { return false }
            remaining -= 8
        }
        return true
    }
}
