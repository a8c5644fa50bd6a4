/// One entry of an address allowlist in the config: a network (`10.0.0.0/8`, `fd00::/8`, or a single address),
/// an exact host name (`registry.local`) or a host suffix pattern (`*.corp.example`, which matches
/// `a.corp.example` and `corp.example`).
package enum AddressPattern: Sendable, Hashable {
    /// Addresses whose first `prefixLength` bits equal `address`'s.
    case network(IPAddressBytes, prefixLength: Int)
    /// A host name, lowercase, compared whole.
    case host(String)
    /// Host names ending in `.suffix` (lowercase, without the dot), and `suffix` itself.
    case suffix(String)

    /// Parses a config entry; nil for anything else (an empty string, a bad prefix length, a name with
    /// characters a host name cannot have).
    package init?(parsing text: String) {
        let trimmed = text.trimmingSpaces().lowercased()
        guard !trimmed.isEmpty, trimmed.utf8.count <= 255 else { return nil }
        var addressText = Substring(trimmed)
        var prefix: Int?
        if let slash = trimmed.firstIndex(of: "/") {
            guard let bits = Int(trimmed[trimmed.index(after: slash)...]) else { return nil }
            prefix = bits
            addressText = trimmed[..<slash]
        }
        if let address = IPAddressBytes(parsing: String(addressText)) {
            let width = address.bytes.count * 8
            // An IPv4-mapped `::ffff:a.b.c.d/n` is read as IPv4: its prefix counts from bit 96.
            var bits = prefix ?? width
            if address.bytes.count == 4, addressText.contains(":"), let given = prefix { bits = given - 96 }
            guard (0...width).contains(bits) else { return nil }
            self = .network(address, prefixLength: bits)
            return
        }
        guard prefix == nil else { return nil }
        if trimmed.hasPrefix("*.") {
            let suffix = String(trimmed.dropFirst(2))
            guard Self.isHostName(suffix) else { return nil }
            self = .suffix(suffix)
            return
        }
        guard Self.isHostName(trimmed) else { return nil }
        self = .host(trimmed)
    }

    /// Whether the entry names addresses (a CIDR or an address) rather than host names.
    package var isNetwork: Bool {
        if case .network = self { return true }
        return false
    }

    /// Whether `address` is in this network (never for a host pattern).
    package func matches(address: IPAddressBytes) -> Bool {
        guard case .network(let network, let prefixLength) = self, network.bytes.count == address.bytes.count
        else { return false }
        var remaining = prefixLength
        for index in 0..<network.bytes.count where remaining > 0 {
            let bits = min(remaining, 8)
            let mask = UInt8(truncatingIfNeeded: 0xFF << (8 - bits))
            if network.bytes[index] & mask != address.bytes[index] & mask { return false }
            remaining -= bits
        }
        return true
    }

    /// Whether the host `name` (a name or an address literal, without port or brackets) matches.
    package func matches(host name: String) -> Bool {
        let lowered = name.lowercased()
        switch self {
        case .network:
            guard let address = IPAddressBytes(parsing: lowered) else { return false }
            return matches(address: address)
        case .host(let host):
            return lowered == host
        case .suffix(let suffix):
            return lowered == suffix || lowered.hasSuffix("." + suffix)
        }
    }

    /// Letters, digits, `-`, `_` and dots between non-empty labels.
    static func isHostName(_ text: String) -> Bool {
        guard !text.isEmpty, !text.hasPrefix("."), !text.hasSuffix("."), !text.contains("..") else { return false }
        return text.utf8.allSatisfy { byte in
            (byte >= 48 && byte <= 57) || (byte >= 97 && byte <= 122) || byte == 45 || byte == 46 || byte == 95
        }
    }
}

extension IPAddressBytes {
    /// Networks a proxy or any other network-facing fetcher must not reach unless the config allows them:
    /// "this network" (0.0.0.0/8), RFC 1918, carrier-grade NAT (100.64.0.0/10), loopback, link-local (with
    /// cloud metadata at 169.254.169.254), benchmarking (198.18.0.0/15), multicast and reserved IPv4; the
    /// unspecified and loopback IPv6 addresses, unique local (fc00::/7), link-local (fe80::/10), site-local
    /// (fec0::/10) and multicast (ff00::/8). IPv4-mapped IPv6 addresses are read as IPv4 already.
    package static let restrictedNetworks: [AddressPattern] = [
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
        "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15", "224.0.0.0/3",
        "::/128", "::1/128", "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8", "64:ff9b::/96", "::/96",
    ].compactMap { AddressPattern(parsing: $0) }

    /// Whether the address is loopback, link-local, private or otherwise not a public unicast address
    /// (``restrictedNetworks``).
    package var isRestricted: Bool {
        Self.restrictedNetworks.contains { $0.matches(address: self) }
    }
}
