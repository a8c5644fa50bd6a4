#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// An IPv4 (4 bytes) or IPv6 (16 bytes) address in network order; IPv4-mapped IPv6 addresses are read as IPv4.
package struct IPAddressBytes: Sendable, Hashable {
    package var bytes: [UInt8]

    package init?(parsing text: String) {
        var trimmed = Substring(text)
        if trimmed.hasPrefix("["), trimmed.hasSuffix("]") { trimmed = trimmed.dropFirst().dropLast() }
        guard !trimmed.isEmpty, trimmed.utf8.count <= 64 else { return nil }
        let string = String(trimmed)
        var v4 = in_addr()
        if inet_pton(AF_INET, string, &v4) == 1 {
            bytes = withUnsafeBytes(of: &v4) { Array($0) }
            return
        }
        var v6 = in6_addr()
        guard inet_pton(AF_INET6, string, &v6) == 1 else { return nil }
        let raw = withUnsafeBytes(of: &v6) { Array($0) }
        if raw[0..<10].allSatisfy({ $0 == 0 }) && raw[10] == 0xFF && raw[11] == 0xFF {
            bytes = Array(raw[12..<16])
        } else {
            bytes = raw
        }
    }

    /// Whether this is a usable unicast address to advertise (not unspecified).
    package var isUnspecified: Bool { bytes.allSatisfy { $0 == 0 } }
}
