#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Default locations of data directories and sockets (DESIGN §2): system paths as root, else per user.
package enum RolePaths {
    /// Whether the process runs as root.
    package static var isRoot: Bool { geteuid() == 0 }

    private static func environment(_ name: String) -> String? {
        guard let value = getenv(name) else { return nil }
        let text = String(cString: value)
        return text.isEmpty ? nil : text
    }

    private static var home: String { environment("HOME") ?? "/tmp" }

    /// The data directory a role uses when its config leaves `dataDir` empty.
    package static func defaultDataDirectory(role: String) -> String {
        let leaf = role == "cdn" ? "seed" : role
        return isRoot ? "/var/lib/dragonfly/\(leaf)" : "\(home)/.dragonfly/\(leaf)"
    }

    /// The local API socket a daemon (`dfdaemon.sock`) or cdn (`seed.sock`) uses when `socket` is empty.
    package static func defaultSocket(role: String) -> String {
        let name = role == "cdn" ? "seed.sock" : "dfdaemon.sock"
        if isRoot { return "/var/run/dragonfly/\(name)" }
        if let runtime = environment("XDG_RUNTIME_DIR") { return "\(runtime)/dragonfly/\(name)" }
        return "\(home)/.dragonfly/run/\(name)"
    }

    /// `value` unless empty, else `fallback`.
    package static func resolve(_ value: String, default fallback: String) -> String {
        value.isEmpty ? fallback : value
    }
}
