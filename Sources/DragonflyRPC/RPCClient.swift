package import DragonflyCore
package import GRPCCore
package import GRPCNIOTransportHTTP2
package import Logging

/// The client transport every dragonfly gRPC client uses (HTTP/2 over NIO Posix), so that callers can name
/// `Dragonfly_V1_Peer.Client<RPCClientTransport>` without depending on the transport module.
package typealias RPCClientTransport = HTTP2ClientTransport.Posix

/// A gRPC client over ``RPCClientTransport``.
package typealias RPCClient = GRPCClient<RPCClientTransport>

/// How a gRPC client connects and what every call gets by default.
package struct RPCClientOptions: Sendable, Hashable {
    /// TLS settings; `nil` connects in plaintext.
    package var tls: RPCTLSConfig?
    /// Deadline of every call that does not set `CallOptions.timeout` itself (the shorter one wins);
    /// `nil` leaves calls unbounded. Streams that live as long as a download should pass their own timeout.
    package var defaultTimeout: Duration?
    /// Transparent retries by the gRPC client of calls that fail `UNAVAILABLE` before any response arrived;
    /// `nil` disables them. For retries around several calls use ``withRetry(policy:deadline:isRetryable:logger:operation:)``.
    package var retryPolicy: RPCRetryPolicy?
    /// Calls wait for the connection (until their deadline) instead of failing fast while it is down.
    package var waitsForReady: Bool
    /// Longest wait between two reconnection attempts after the connection failed; `nil` keeps gRPC's default
    /// (up to 2 min). Clients that must notice a server coming back soon (the manager's) set a few seconds.
    package var maxReconnectBackoff: Duration?

    package init(
        tls: RPCTLSConfig? = nil,
        defaultTimeout: Duration? = .seconds(30),
        retryPolicy: RPCRetryPolicy? = nil,
        waitsForReady: Bool = false,
        maxReconnectBackoff: Duration? = nil
    ) {
        self.tls = tls
        self.defaultTimeout = defaultTimeout
        self.retryPolicy = retryPolicy
        self.waitsForReady = waitsForReady
        self.maxReconnectBackoff = maxReconnectBackoff
    }

    /// Plaintext, 30 s default deadline, no transparent retries, fail fast.
    package static let defaults = RPCClientOptions()

    /// The service config applying these defaults to every method.
    var serviceConfig: ServiceConfig {
        var method = MethodConfig(names: [MethodConfig.Name(service: "")])
        method.timeout = defaultTimeout
        method.waitForReady = waitsForReady
        if let retryPolicy, let grpcPolicy = retryPolicy.grpcRetryPolicy {
            method.executionPolicy = .retry(grpcPolicy)
        }
        return ServiceConfig(methodConfig: [method])
    }
}

/// Creates a gRPC client for `target` (`host:port`, `[v6]:port` or `unix:/path`).
///
/// The caller runs it: `try await client.runConnections()` in a task of its own task group, and
/// `client.beginGracefulShutdown()` when done. ``withRPCClient(target:options:interceptors:logger:_:)`` does both.
///
/// - Throws: `DragonflyError` (`.invalidArgument` for a malformed target, `.configuration` for TLS files).
package func makeRPCClient(
    target: String,
    options: RPCClientOptions = .defaults,
    interceptors: [any ClientInterceptor] = [],
    logger: Logger
) throws(DragonflyError) -> RPCClient {
    try makeRPCClient(
        address: RPCAddress(parsing: target),
        options: options,
        interceptors: interceptors,
        logger: logger
    )
}

/// Creates a gRPC client for an address; see ``makeRPCClient(target:options:interceptors:logger:)``.
package func makeRPCClient(
    address: RPCAddress,
    options: RPCClientOptions = .defaults,
    interceptors: [any ClientInterceptor] = [],
    logger: Logger
) throws(DragonflyError) -> RPCClient {
    let transportSecurity = try options.tls?.clientTransportSecurity() ?? .plaintext
    var config = HTTP2ClientTransport.Posix.Config.defaults
    if let serverName = options.tls?.serverName {
        config.http2.authority = serverName
    }
    if let maxReconnectBackoff = options.maxReconnectBackoff {
        config.backoff.max = max(.milliseconds(100), maxReconnectBackoff)
        config.backoff.initial = min(config.backoff.initial, config.backoff.max)
    }
    let transport: RPCClientTransport
    do {
        transport = try HTTP2ClientTransport.Posix(
            target: address.clientTarget(),
            transportSecurity: transportSecurity,
            config: config,
            serviceConfig: options.serviceConfig
        )
    } catch {
        throw DragonflyError(
            code: .configuration,
            message: "cannot create a gRPC client for '\(address)'",
            cause: error
        )
    }
    logger.trace("gRPC client created", metadata: ["df.rpc.target": "\(address)"])
    return GRPCClient(transport: transport, interceptors: interceptors)
}

/// Runs a gRPC client for `target` while `body` runs, then shuts it down gracefully.
///
/// - Throws: What `body` throws, or `DragonflyError` when the client cannot be created.
package func withRPCClient<Value: Sendable>(
    target: String,
    options: RPCClientOptions = .defaults,
    interceptors: [any ClientInterceptor] = [],
    logger: Logger,
    isolation: isolated (any Actor)? = #isolation,
    _ body: (RPCClient) async throws -> Value
) async throws -> Value {
    let client = try makeRPCClient(target: target, options: options, interceptors: interceptors, logger: logger)
    return try await withThrowingDiscardingTaskGroup { group in
        group.addTask {
            try await client.runConnections()
        }
        defer { client.beginGracefulShutdown() }
        return try await body(client)
    }
}
