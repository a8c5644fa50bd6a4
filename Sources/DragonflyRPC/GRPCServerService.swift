package import DragonflyCore
package import GRPCCore
import GRPCNIOTransportHTTP2
package import Logging
import NIOCore
import ServiceLifecycle
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Runs a gRPC server (HTTP/2 over NIO Posix) as a `Service` of a `ServiceGroup`.
///
/// On graceful shutdown the server stops accepting connections and returns once in-flight RPCs finish; the
/// group's cancellation ends any that outlive its drain budget. ``listeningAddress()`` reports the bound
/// address, which is how port 0 and `--ready-file` learn the real port.
///
/// For a Unix domain socket, `run()` creates the socket's parent directory, replaces a stale socket file (a
/// file of another type at the path is left alone and the bind fails), gives the socket mode `0660` (owner and
/// group may connect; the group is `socketGroup` when given) and removes it when it stops.
package struct GRPCServerService: Service {
    /// The address from the configuration (port 0 and all).
    package let address: RPCAddress
    private let server: GRPCServer<HTTP2ServerTransport.Posix>
    private let logger: Logger
    /// Receives the bound address (`IP:port`, or the socket path) once the server listens, for the ready file.
    package let listener: ListenerAddress
    /// The group a Unix domain socket is given (name or numeric ID); nil keeps the process's group.
    package let socketGroup: String?

    /// Creates the service; nothing is bound until `run()`.
    ///
    /// - Parameters:
    ///   - address: Where to listen: an IP literal and port (0 picks a free port), or a Unix domain socket.
    ///   - tls: TLS settings; `nil` serves plaintext.
    ///   - services: The gRPC services to serve.
    ///   - interceptors: Interceptors applied to every RPC, outermost first.
    ///   - logger: Logger for debug-level lifecycle messages.
    /// - Throws: `DragonflyError` (`.invalidArgument` for an unusable address, `.configuration` for TLS files).
    package init(
        address: RPCAddress,
        tls: RPCTLSConfig? = nil,
        services: [any RegistrableRPCService],
        interceptors: [any ServerInterceptor] = [],
        listenerName: String = "grpc",
        limits: GRPCServerLimits = GRPCServerLimits(),
        socketGroup: String? = nil,
        logger: Logger
    ) throws(DragonflyError) {
        self.listener = ListenerAddress(name: listenerName)
        self.socketGroup = socketGroup
        let transportSecurity = try tls?.serverTransportSecurity() ?? .plaintext
        let transport = HTTP2ServerTransport.Posix(
            address: try address.serverSocketAddress(),
            transportSecurity: transportSecurity,
            config: limits.transportConfig()
        )
        self.address = address
        self.server = GRPCServer(transport: transport, services: services, interceptors: interceptors)
        self.logger = logger
    }

    package func run() async throws {
        var logger = logger
        logger[metadataKey: "df.rpc.address"] = "\(address)"
        if case .unixDomainSocket(let path) = address {
            try Self.prepareSocketPath(path)
        }
        logger.debug("gRPC server starting")
        defer {
            if case .unixDomainSocket(let path) = address {
                Self.removeSocket(at: path)
            }
            logger.debug("gRPC server stopped")
        }
        try await withThrowingDiscardingTaskGroup { group in
            group.addTask {
                do {
                    let bound = try await listeningAddress()
                    if case .unixDomainSocket(let path) = bound {
                        try Self.restrictSocket(at: path, group: socketGroup)
                        listener.fulfil(path)
                    } else {
                        listener.fulfil(bound.description)
                    }
                } catch {
                    listener.fail(
                        DragonflyError(
                            code: .unavailable, message: "cannot listen on \(address) (\(listener.name) listener)",
                            cause: error)
                    )
                }
            }
            do {
                try await withGracefulShutdownHandler {
                    try await server.serve()
                } onGracefulShutdown: { [server] in
                    server.beginGracefulShutdown()
                }
            } catch {
                throw DragonflyError(
                    code: .unavailable,
                    message: "cannot listen on \(address) (\(listener.name) listener)",
                    cause: error
                )
            }
        }
    }

    /// The address the server is bound to, once it listens (waits until then).
    ///
    /// - Throws: When binding failed or the server has stopped.
    package func listeningAddress() async throws -> RPCAddress {
        let bound = try await server.transport.listeningAddress
        guard let address = RPCAddress(bound: bound) else {
            throw DragonflyError(code: .internalError, message: "gRPC server bound to an unsupported address \(bound)")
        }
        return address
    }

    /// Creates the parent directory of a socket path and removes a stale socket there.
    private static func prepareSocketPath(_ path: String) throws(DragonflyError) {
        let fileManager = FileManager.default
        do {
            if let slash = path.lastIndex(of: "/"), slash != path.startIndex {
                try fileManager.createDirectory(atPath: String(path[..<slash]), withIntermediateDirectories: true)
            }
        } catch {
            throw DragonflyError(
                code: .failedPrecondition,
                message: "cannot create the directory of socket '\(path)'",
                cause: error
            )
        }
        removeSocket(at: path)
    }

    /// Gives the socket at `path` mode `0660` and, when `group` is set, that group (a name or a numeric ID).
    static func restrictSocket(at path: String, group: String?) throws(DragonflyError) {
        if let group, !group.isEmpty {
            let gid: gid_t
            if let number = gid_t(group) {
                gid = number
            } else if let entry = getgrnam(group) {
                gid = entry.pointee.gr_gid
            } else {
                throw DragonflyError(
                    code: .configuration, message: "socketGroup: no group named '\(group)' for socket '\(path)'")
            }
            guard chown(path, uid_t.max, gid) == 0 else {
                throw DragonflyError(
                    code: .configuration,
                    message: "socketGroup: cannot give socket '\(path)' group '\(group)': "
                        + String(cString: strerror(errno)))
            }
        }
        guard chmod(path, 0o660) == 0 else {
            throw DragonflyError(
                code: .failedPrecondition,
                message: "cannot set the mode of socket '\(path)': " + String(cString: strerror(errno)))
        }
    }

    /// Removes the file at `path` if it is a socket; any other kind of file is left in place.
    private static func removeSocket(at path: String) {
        let fileManager = FileManager.default
        guard let attributes = try? fileManager.attributesOfItem(atPath: path),
            let type = attributes[.type] as? FileAttributeType, type == .typeSocket
        else { return }
        try? fileManager.removeItem(atPath: path)
    }
}

/// The resource limits of a gRPC listener (DESIGN §11, "Security, part 1" finding 11), the same for every listener
/// of every role: a hostile client can hold at most ``maxConnections`` connections, each with at most
/// ``maxConcurrentStreams`` open RPCs, and a connection without an open RPC is closed after ``maxIdleTime``.
/// Keepalive pings find half-open connections (a peer that vanished) and close them.
package struct GRPCServerLimits: Sendable, Hashable {
    /// Connections served at once; one more is closed as soon as it is accepted.
    package var maxConnections: Int = 4096
    /// `SETTINGS_MAX_CONCURRENT_STREAMS` advertised to every client: RPCs open at once on one connection. A
    /// daemon holds one `AnnouncePeer` stream per download in flight and one `SyncHost` stream.
    package var maxConcurrentStreams: Int = 1024
    /// A connection with no open RPC for this long is closed (GOAWAY).
    package var maxIdleTime: Duration = .seconds(5 * 60)
    /// The server pings a connection silent for this long ...
    package var keepaliveTime: Duration = .seconds(2 * 60)
    /// ... and closes it when the ping is not answered within this.
    package var keepaliveTimeout: Duration = .seconds(20)
    /// Largest request message accepted.
    package var maxRequestPayloadSize: Int = 4 << 20

    package init() {}

    func transportConfig() -> HTTP2ServerTransport.Posix.Config {
        var config = HTTP2ServerTransport.Posix.Config.defaults
        config.http2.maxConcurrentStreams = max(maxConcurrentStreams, 1)
        config.connection.maxIdleTime = maxIdleTime
        config.connection.keepalive.time = keepaliveTime
        config.connection.keepalive.timeout = keepaliveTimeout
        // Clients (ours ping every 30 s or more) may ping between calls, but no more often than every 10 s.
        config.connection.keepalive.clientBehavior.allowWithoutCalls = true
        config.connection.keepalive.clientBehavior.minPingIntervalWithoutCalls = .seconds(10)
        config.rpc.maxRequestPayloadSize = maxRequestPayloadSize
        let gate = ConnectionGate(limit: max(maxConnections, 1))
        config.channelDebuggingCallbacks.onAcceptTCPConnection = { channel in
            gate.admit(channel)
        }
        return config
    }
}

/// Counts a listener's open connections and closes the ones over the limit as soon as they are accepted.
private final class ConnectionGate: Sendable {
    private let limit: Int
    private let open = Mutex(0)

    init(limit: Int) {
        self.limit = limit
    }

    func admit(_ channel: any Channel) -> EventLoopFuture<Void> {
        let admitted = open.withLock { count -> Bool in
            guard count < limit else { return false }
            count += 1
            return true
        }
        guard admitted else {
            channel.close(promise: nil)
            return channel.eventLoop.makeSucceededVoidFuture()
        }
        channel.closeFuture.whenComplete { [self] _ in
            open.withLock { $0 -= 1 }
        }
        return channel.eventLoop.makeSucceededVoidFuture()
    }

    /// Connections open now.
    var count: Int { open.withLock { $0 } }
}
