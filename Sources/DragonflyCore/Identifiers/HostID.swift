#if canImport(FoundationEssentials)
package import FoundationEssentials
#else
package import Foundation
#endif

/// A host's identity: `<ip>-<hostname>-<peer port>`, with `-seed` for seed hosts, so several daemons on one
/// machine are distinct hosts (DESIGN §4).
package struct HostID: Hashable, Sendable, Comparable, CustomStringConvertible {
    package let rawValue: String

    package init(ip: String, hostname: String, peerPort: Int, isSeed: Bool) {
        rawValue = "\(ip)-\(hostname)-\(peerPort)" + (isSeed ? "-seed" : "")
    }

    package init(rawValue: String) { self.rawValue = rawValue }

    package var description: String { rawValue }

    package static func < (lhs: HostID, rhs: HostID) -> Bool { lhs.rawValue < rhs.rawValue }
}

/// One download attempt of one task on one host: `<ip>-<hostname>-<uuid>` (DESIGN §4).
package struct PeerID: Hashable, Sendable, Comparable, CustomStringConvertible {
    package let rawValue: String

    /// A fresh peer ID for a download on the host at `ip` named `hostname`.
    package init(ip: String, hostname: String, uuid: UUID = UUID()) {
        rawValue = "\(ip)-\(hostname)-\(uuid.uuidString.lowercased())"
    }

    package init(rawValue: String) { self.rawValue = rawValue }

    package var description: String { rawValue }

    package static func < (lhs: PeerID, rhs: PeerID) -> Bool { lhs.rawValue < rhs.rawValue }
}
