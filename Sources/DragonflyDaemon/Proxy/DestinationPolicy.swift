import DragonflyCore
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Where the proxy may connect (`proxy.allowedDestinations`): every public address, and loopback, link-local
/// and private addresses (``IPAddressBytes/restrictedNetworks``) only when an allowlist entry names them (a
/// network that holds the address, or a host pattern that matches the name asked for).
///
/// A host name is resolved once and every address it resolves to is checked; the caller connects to those
/// checked addresses (so a name that resolves to a public address for the check and to `127.0.0.1` for the
/// connection — DNS rebinding — reaches nothing it should not).
struct DestinationPolicy: Sendable {
    private let allowed: [AddressPattern]

    init(allowed entries: [String]) {
        allowed = entries.compactMap { AddressPattern(parsing: $0) }
    }

    /// Whether `host` (a name or an address literal, no brackets) is named by an allowlist host pattern.
    private func allowsName(_ host: String) -> Bool {
        allowed.contains { pattern in
            switch pattern {
            case .network: false
            case .host, .suffix: pattern.matches(host: host)
            }
        }
    }

    /// Whether connecting to `address` is allowed.
    func allows(address: IPAddressBytes) -> Bool {
        !address.isRestricted || allowed.contains { $0.matches(address: address) }
    }

    /// The addresses to connect to for `host:port`, each checked.
    ///
    /// - Throws: ``DragonflyError/Code/permissionDenied`` naming the host when one of its addresses is refused;
    ///   ``DragonflyError/Code/unavailable`` when the name does not resolve.
    func resolve(host: String, port: Int) async throws(DragonflyError) -> [SocketAddress] {
        let addresses: [SocketAddress]
        if let literal = IPAddressBytes(parsing: host) {
            let text = Self.text(of: literal)
            do {
                addresses = [try SocketAddress(ipAddress: text, port: port)]
            } catch {
                throw DragonflyError(code: .invalidArgument, message: "'\(host.prefix(80))' is not an address")
            }
        } else {
            addresses = try await Self.lookUp(host: host, port: port)
        }
        guard !allowsName(host) else { return addresses }
        for address in addresses {
            guard let bytes = address.ipAddress.flatMap({ IPAddressBytes(parsing: $0) }) else { continue }
            if !allows(address: bytes) {
                throw Self.refusal(host: host)
            }
        }
        return addresses
    }

    /// The error for a refused destination: one line a person can act on.
    static func refusal(host: String) -> DragonflyError {
        DragonflyError(
            code: .permissionDenied,
            message: "the proxy does not connect to \(host.prefix(100)): it is a loopback, link-local or private "
                + "address; list it in proxy.allowedDestinations to allow it")
    }

    private static func text(of address: IPAddressBytes) -> String {
        if address.bytes.count == 4 { return address.bytes.map(String.init).joined(separator: ".") }
        var groups: [String] = []
        for index in stride(from: 0, to: 16, by: 2) {
            groups.append(String(UInt16(address.bytes[index]) << 8 | UInt16(address.bytes[index + 1]), radix: 16))
        }
        return groups.joined(separator: ":")
    }

    /// `getaddrinfo` on NIO's thread pool (it blocks).
    private static func lookUp(host: String, port: Int) async throws(DragonflyError) -> [SocketAddress] {
        let found: [SocketAddress]
        do {
            found = try await NIOThreadPool.singleton.runIfActive { () throws -> [SocketAddress] in
                var hints = addrinfo()
                hints.ai_family = AF_UNSPEC
                #if canImport(Glibc)
                hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
                #else
                hints.ai_socktype = SOCK_STREAM
                #endif
                var result: UnsafeMutablePointer<addrinfo>?
                guard getaddrinfo(host, String(port), &hints, &result) == 0, let first = result else {
                    throw DragonflyError(code: .unavailable, message: "cannot resolve \(host.prefix(100))")
                }
                defer { freeaddrinfo(first) }
                var out: [SocketAddress] = []
                var cursor: UnsafeMutablePointer<addrinfo>? = first
                while let entry = cursor, out.count < 64 {
                    if let raw = entry.pointee.ai_addr {
                        switch entry.pointee.ai_family {
                        case AF_INET:
                            raw.withMemoryRebound(to: sockaddr_in.self, capacity: 1) {
                                out.append(SocketAddress($0.pointee, host: host))
                            }
                        case AF_INET6:
                            raw.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) {
                                out.append(SocketAddress($0.pointee, host: host))
                            }
                        default:
                            break
                        }
                    }
                    cursor = entry.pointee.ai_next
                }
                return out
            }
        } catch let error as DragonflyError {
            throw error
        } catch {
            throw DragonflyError(code: .unavailable, message: "cannot resolve \(host.prefix(100))", cause: error)
        }
        guard !found.isEmpty else {
            throw DragonflyError(code: .unavailable, message: "\(host.prefix(100)) has no address")
        }
        return found
    }
}
