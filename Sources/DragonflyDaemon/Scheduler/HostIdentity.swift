package import DragonflyCore
package import DragonflyProto
import NIOCore
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Who this daemon is to schedulers and other peers (DESIGN §4): known once its listeners are bound.
package struct HostIdentity: Sendable, Hashable {
    package var hostID: String
    package var ip: String
    package var hostname: String
    package var peerPort: Int
    package var piecePort: Int
    package var proxyPort: Int
    package var isSeed: Bool
    package var idc: String
    package var location: String
    package var uploadSlots: Int

    /// Builds the identity from the bound listener addresses (`IP:port`).
    ///
    /// The IP is `advertiseIP` when set, else the peer listener's bound IP (the first non-loopback IPv4 address
    /// of the machine when bound to a wildcard); the hostname is the configured one, else the system's.
    package init(config: DaemonConfig, isSeed: Bool, peer: String, piece: String, proxy: String) {
        let (boundIP, peerPort) = Self.split(peer)
        var ip = config.host.advertiseIP
        if ip.isEmpty {
            ip = (boundIP == "0.0.0.0" || boundIP == "::") ? (Self.firstNonLoopbackIPv4() ?? "127.0.0.1") : boundIP
        }
        var hostname = config.host.hostname
        if hostname.isEmpty { hostname = Self.systemHostname() }
        self.ip = ip
        self.hostname = hostname
        self.peerPort = peerPort
        self.piecePort = Self.split(piece).port
        self.proxyPort = Self.split(proxy).port
        self.isSeed = isSeed
        self.idc = config.host.idc
        self.location = config.host.location
        self.uploadSlots = config.upload.slots
        self.hostID = HostID(ip: ip, hostname: hostname, peerPort: peerPort, isSeed: isSeed).rawValue
    }

    /// A new peer ID for one download attempt on this host.
    package func makePeerID() -> String { PeerID(ip: ip, hostname: hostname).rawValue }

    /// The `Host` message of `AnnounceHost`.
    package func hostMessage(uploadSlotsUsed: Int, maxTxBandwidth: UInt64) -> Dragonfly_V1_Host {
        var host = Dragonfly_V1_Host()
        host.id = hostID
        host.type = isSeed ? .super : .normal
        host.hostname = hostname
        host.ip = ip
        host.port = UInt32(peerPort)
        host.pieceDataPort = UInt32(piecePort)
        host.proxyPort = UInt32(proxyPort)
        host.idc = idc
        host.location = location
        host.uploadSlots = UInt32(max(uploadSlots, 0))
        host.uploadSlotsUsed = UInt32(max(uploadSlotsUsed, 0))
        var network = Dragonfly_V1_Network()
        network.maxTxBandwidth = maxTxBandwidth
        host.network = network
        var build = Dragonfly_V1_Build()
        build.version = DragonflyVersion.current
        host.build = build
        return host
    }

    static func split(_ address: String) -> (host: String, port: Int) {
        guard let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]) else {
            return (address, 0)
        }
        var host = String(address[..<colon])
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        return (host, port)
    }

    static func systemHostname() -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count - 1) == 0 else { return "localhost" }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// The first IPv4 address of an interface that is not loopback, from NIO's device list (no raw
    /// `sockaddr_in` handling here: which C module defines its members depends on the build order).
    static func firstNonLoopbackIPv4() -> String? {
        guard let devices = try? System.enumerateDevices() else { return nil }
        for device in devices {
            guard case .v4 = device.address, let ip = device.address?.ipAddress, !ip.hasPrefix("127.") else {
                continue
            }
            return ip
        }
        return nil
    }
}

/// A value published once (the host identity after binding); awaiting it suspends until then.
package final class Published<Value: Sendable>: Sendable {
    private enum State {
        case pending([CheckedContinuation<Value, any Error>])
        case ready(Value)
        case failed(any Error)
    }
    private let state = Mutex(State.pending([]))

    package init() {}

    /// Publishes the value; later calls are ignored.
    package func publish(_ value: Value) { settle(.success(value)) }

    /// Fails every waiter (e.g. a listener could not bind).
    package func fail(_ error: any Error) { settle(.failure(error)) }

    /// The value, if published.
    package var current: Value? {
        state.withLock { state in
            if case .ready(let value) = state { return value }
            return nil
        }
    }

    /// Waits for the value.
    package func value() async throws -> Value {
        try await withCheckedThrowingContinuation { continuation in
            let immediate: Result<Value, any Error>? = state.withLock { state in
                switch state {
                case .pending(var waiters):
                    waiters.append(continuation)
                    state = .pending(waiters)
                    return nil
                case .ready(let value): return .success(value)
                case .failed(let error): return .failure(error)
                }
            }
            if let immediate { continuation.resume(with: immediate) }
        }
    }

    private func settle(_ result: Result<Value, any Error>) {
        let waiters: [CheckedContinuation<Value, any Error>] = state.withLock { state in
            guard case .pending(let waiters) = state else { return [] }
            switch result {
            case .success(let value): state = .ready(value)
            case .failure(let error): state = .failed(error)
            }
            return waiters
        }
        for waiter in waiters { waiter.resume(with: result) }
    }
}
