package import DragonflyCore
import GRPCNIOTransportHTTP2

/// Where a gRPC server listens or a client connects: a TCP `host:port` or a Unix domain socket.
///
/// The text form is `host:port` (`[v6]:port` for IPv6 literals) or `unix:/absolute/path`; it is what flags,
/// config files and `--ready-file` use.
package enum RPCAddress: Sendable, Hashable, CustomStringConvertible {
    /// A TCP address. A server needs an IP literal as `host`; a client may also use a DNS name.
    case tcp(host: String, port: Int)
    /// A Unix domain socket at an absolute or relative path.
    case unixDomainSocket(path: String)

    /// The scheme prefix of a Unix domain socket target.
    package static let unixPrefix = "unix:"

    /// Parses `host:port`, `[v6]:port` or `unix:/path` (also `unix:///path`).
    ///
    /// - Throws: `DragonflyError` with code `.invalidArgument` naming the text when it is malformed.
    package init(parsing text: String) throws(DragonflyError) {
        if text.hasPrefix(Self.unixPrefix) {
            var path = String(text.dropFirst(Self.unixPrefix.count))
            if path.hasPrefix("//") {
                path.removeFirst(2)
            }
            guard !path.isEmpty else {
                throw Self.malformed(text, "the socket path is empty")
            }
            self = .unixDomainSocket(path: path)
            return
        }
        guard let colon = text.lastIndex(of: ":") else {
            throw Self.malformed(text, "expected host:port or unix:/path")
        }
        var host = String(text[..<colon])
        let portText = text[text.index(after: colon)...]
        guard let port = Int(portText), (0...65_535).contains(port) else {
            throw Self.malformed(text, "the port must be a number from 0 to 65535")
        }
        if host.hasPrefix("[") && host.hasSuffix("]") {
            host = String(host.dropFirst().dropLast())
        } else if host.contains(":") {
            throw Self.malformed(text, "write an IPv6 address in brackets, e.g. [::1]:4000")
        }
        guard !host.isEmpty else {
            throw Self.malformed(text, "the host is empty")
        }
        self = .tcp(host: host, port: port)
    }

    /// `host:port`, `[v6]:port` or `unix:/path`.
    package var description: String {
        switch self {
        case .tcp(let host, let port):
            host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        case .unixDomainSocket(let path):
            Self.unixPrefix + path
        }
    }

    /// The port of a TCP address; `nil` for a Unix domain socket.
    package var port: Int? {
        if case .tcp(_, let port) = self { port } else { nil }
    }

    private static func malformed(_ text: String, _ problem: String) -> DragonflyError {
        DragonflyError(code: .invalidArgument, message: "invalid address '\(text)': \(problem)")
    }
}

extension RPCAddress {
    /// The address a server transport binds to.
    ///
    /// - Throws: `DragonflyError` with code `.invalidArgument` when a TCP host is not an IP literal.
    func serverSocketAddress() throws(DragonflyError) -> GRPCNIOTransportHTTP2.SocketAddress {
        switch self {
        case .tcp(let host, let port):
            switch IPLiteral.kind(of: host) {
            case .ipv4: return .ipv4(host: host, port: port)
            case .ipv6: return .ipv6(host: host, port: port)
            case .none:
                throw DragonflyError(
                    code: .invalidArgument,
                    message: "cannot listen on '\(self)': the host must be an IP address such as 0.0.0.0 or 127.0.0.1"
                )
            }
        case .unixDomainSocket(let path):
            return .unixDomainSocket(path: path)
        }
    }

    /// The target a client transport connects to: IP literals directly, other hosts through DNS.
    func clientTarget() -> any ResolvableTarget {
        switch self {
        case .tcp(let host, let port):
            switch IPLiteral.kind(of: host) {
            case .ipv4: ResolvableTargets.IPv4(addresses: [.init(host: host, port: port)])
            case .ipv6: ResolvableTargets.IPv6(addresses: [.init(host: host, port: port)])
            case .none: ResolvableTargets.DNS(host: host, port: port)
            }
        case .unixDomainSocket(let path):
            ResolvableTargets.UnixDomainSocket(address: .init(path: path), authority: nil)
        }
    }

    /// The address a transport reports as bound.
    init?(bound address: GRPCNIOTransportHTTP2.SocketAddress) {
        if let ipv4 = address.ipv4 {
            self = .tcp(host: ipv4.host, port: ipv4.port)
        } else if let ipv6 = address.ipv6 {
            self = .tcp(host: ipv6.host, port: ipv6.port)
        } else if let socket = address.unixDomainSocket {
            self = .unixDomainSocket(path: socket.path)
        } else {
            return nil
        }
    }
}

/// Recognises IP address literals without resolving anything.
enum IPLiteral {
    enum Kind {
        case ipv4, ipv6
    }

    static func kind(of host: String) -> Kind? {
        if host.contains(":") {
            let allowed = Set("0123456789abcdefABCDEF:.%")
            return host.allSatisfy { allowed.contains($0) } ? .ipv6 : nil
        }
        let parts = host.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        for part in parts {
            guard (1...3).contains(part.count), part.allSatisfy(\.isASCIIDigit), let value = Int(part), value <= 255
            else { return nil }
        }
        return .ipv4
    }
}

extension Character {
    fileprivate var isASCIIDigit: Bool { ("0"..."9").contains(self) }
}
