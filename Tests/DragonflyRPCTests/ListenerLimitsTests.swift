import DragonflyCore
import DragonflyProto
import DragonflyRPC
import DragonflyTestSupport
import GRPCCore
import Testing

/// The limits every gRPC listener has (connection cap, idle timeout) and the cluster-secret interceptor, against
/// a real server on loopback called by real clients.
@Suite(.timeLimit(.minutes(2)))
struct ListenerLimitsTests {
    func withServer<Value: Sendable>(
        limits: GRPCServerLimits = GRPCServerLimits(),
        interceptors: [any ServerInterceptor] = [],
        _ body: (String) async throws -> Value
    ) async throws -> Value {
        let server = try GRPCServerService(
            address: .tcp(host: "127.0.0.1", port: 0), services: [Fixtures.peerService], interceptors: interceptors,
            limits: limits, logger: Fixtures.logger)
        return try await withRunningServer(server) { bound in try await body(bound.description) }
    }

    func health(_ target: String, timeout: Duration = .seconds(10), secret: String? = nil) async throws {
        let interceptors = ClusterSecret(secret: secret).map { [ClusterSecretClientInterceptor(secret: $0)] } ?? []
        try await withRPCClient(
            target: target, options: RPCClientOptions(defaultTimeout: timeout), interceptors: interceptors,
            logger: Fixtures.logger
        ) { client in
            _ = try await Dragonfly_V1_Peer.Client(wrapping: client).health(Dragonfly_V1_HealthRequest())
        }
    }

    @Test func connectionsOverTheCapAreClosed() async throws {
        var limits = GRPCServerLimits()
        limits.maxConnections = 1
        try await withServer(limits: limits) { target in
            try await withRPCClient(target: target, logger: Fixtures.logger) { holder in
                let peer = Dragonfly_V1_Peer.Client(wrapping: holder)
                _ = try await peer.health(Dragonfly_V1_HealthRequest())
                // The first client keeps its connection: a second one is refused.
                await #expect(throws: RPCError.self) { try await health(target, timeout: .seconds(2)) }
                _ = try await peer.health(Dragonfly_V1_HealthRequest())
            }
        }
    }

    @Test func anIdleConnectionIsClosedAndFreesItsPlace() async throws {
        var limits = GRPCServerLimits()
        limits.maxConnections = 1
        limits.maxIdleTime = .milliseconds(300)
        try await withServer(limits: limits) { target in
            try await withRPCClient(target: target, logger: Fixtures.logger) { holder in
                _ = try await Dragonfly_V1_Peer.Client(wrapping: holder).health(Dragonfly_V1_HealthRequest())
                // The holder stays idle: the server closes its connection, and another client gets the place.
                try await poll(timeLimit: .seconds(20), description: "a second client is served") {
                    (try? await health(target, timeout: .seconds(2))) != nil
                }
            }
        }
    }

    @Test func theClusterSecretInterceptorGuardsOnlyTheProtectedMethods() async throws {
        let secret = try #require(ClusterSecret(secret: "  s3cret-token \n"))
        #expect(ClusterSecret(secret: nil) == nil && ClusterSecret(secret: "  ") == nil)
        let interceptor = ClusterSecretInterceptor(
            secret: secret, protectedMethods: ["dragonfly.v1.Peer/StatTask"])
        try await withServer(interceptors: [interceptor]) { target in
            func stat(_ presented: String?) async throws {
                let interceptors =
                    ClusterSecret(secret: presented).map { [ClusterSecretClientInterceptor(secret: $0)] } ?? []
                try await withRPCClient(target: target, interceptors: interceptors, logger: Fixtures.logger) {
                    client in
                    var request = Dragonfly_V1_StatTaskRequest()
                    request.taskID = Fixtures.knownTaskID
                    _ = try await Dragonfly_V1_Peer.Client(wrapping: client).statTask(request)
                }
            }
            let missing = await #expect(throws: RPCError.self) { try await stat(nil) }
            #expect(missing?.code == .permissionDenied)
            #expect(missing?.message == "this call needs the cluster secret (security.clusterSecret)")
            let wrong = await #expect(throws: RPCError.self) { try await stat("s3cret-tokem") }
            #expect(wrong?.code == .permissionDenied)
            let longer = await #expect(throws: RPCError.self) { try await stat("s3cret-token-and-more") }
            #expect(longer?.code == .permissionDenied)
            try await stat("s3cret-token")
            // An unprotected method needs nothing.
            try await health(target)
        }
        // Lab mode: no secret configured, nothing is refused.
        try await withServer(
            interceptors: [ClusterSecretInterceptor(secret: nil, protectedMethods: ["dragonfly.v1.Peer/Health"])]
        ) { target in
            try await health(target)
        }
    }

    @Test func constantTimeComparison() {
        #expect(ClusterSecret.constantTimeEqual(Array("abc".utf8), Array("abc".utf8)))
        #expect(!ClusterSecret.constantTimeEqual(Array("abc".utf8), Array("abd".utf8)))
        #expect(!ClusterSecret.constantTimeEqual(Array("abc".utf8), Array("abcd".utf8)))
        #expect(!ClusterSecret.constantTimeEqual([], Array("a".utf8)))
        #expect(ClusterSecret.constantTimeEqual([], []))
    }
}
