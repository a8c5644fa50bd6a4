import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// This machine's name and addresses, for what a role tells others about itself.
package enum HostNetwork {
    /// The system host name (`localhost` when it cannot be read).
    package static func systemHostname() -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count - 1) == 0 else { return "localhost" }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// The first IPv4 address of an interface that is not loopback, if any.
    package static func firstNonLoopbackIPv4() -> String? {
        guard let devices = try? System.enumerateDevices() else { return nil }
        for device in devices {
            guard case .v4 = device.address, let ip = device.address?.ipAddress, !ip.hasPrefix("127.") else {
                continue
            }
            return ip
        }
        return nil
    }

    /// The IP to advertise: `configured` when set, else `boundIP` unless it is a wildcard, in which case the
    /// first non-loopback IPv4 address (or 127.0.0.1).
    package static func advertisedIP(configured: String, boundIP: String) -> String {
        if !configured.isEmpty { return configured }
        guard boundIP == "0.0.0.0" || boundIP == "::" || boundIP.isEmpty else { return boundIP }
        return firstNonLoopbackIPv4() ?? "127.0.0.1"
    }

    /// Splits `IP:port` or `[IPv6]:port` into its IP (without brackets) and port (0 when missing).
    package static func split(_ address: String) -> (ip: String, port: Int) {
        guard let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]) else {
            return (address, 0)
        }
        var host = String(address[..<colon])
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        return (host, port)
    }

    /// `ip:port`, bracketing an IPv6 address.
    package static func join(ip: String, port: Int) -> String {
        ip.contains(":") ? "[\(ip)]:\(port)" : "\(ip):\(port)"
    }
}
