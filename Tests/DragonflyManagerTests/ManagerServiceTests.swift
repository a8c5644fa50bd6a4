import DragonflyCore
import DragonflyProto
import DragonflyRPC
import DragonflyTestSupport
import GRPCCore
import Logging
import Testing

@testable import DragonflyManager

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Runs a real gRPC server with the Manager service over `store` on 127.0.0.1:0 and calls `body` with a client.
func withManagerService<Value: Sendable>(
    _ store: ManagerStore,
    _ body: (Dragonfly_V1_Manager.Client<RPCClientTransport>) async throws -> Value
) async throws -> Value {
    let server = try GRPCServerService(
        address: .tcp(host: "127.0.0.1", port: 0),
        services: [ManagerService(store: { store }, logger: storeTestLogger)],
        logger: storeTestLogger)
    return try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { try await server.run() }
        defer { group.cancelAll() }
        let address = try await server.listener.value()
        // No 30 s default deadline: a keep-alive stream below stays open while the test polls the store.
        let options = RPCClientOptions(defaultTimeout: .seconds(120))
        return try await withRPCClient(target: address, options: options, logger: storeTestLogger) { client in
            try await body(Dragonfly_V1_Manager.Client(wrapping: client))
        }
    }
}

func schedulerRequest(
    _ hostname: String, ip: String, port: UInt32 = 8002, cluster: Int? = nil
) -> Dragonfly_V1_RegisterSchedulerRequest {
    var request = Dragonfly_V1_RegisterSchedulerRequest()
    request.hostname = hostname
    request.ip = ip
    request.port = port
    if let cluster { request.schedulerClusterID = UInt64(cluster) }
    return request
}

func listRequest(ip: String, hostname: String = "daemon") -> Dragonfly_V1_ListSchedulersRequest {
    var request = Dragonfly_V1_ListSchedulersRequest()
    request.sourceType = .peer
    request.ip = ip
    request.hostname = hostname
    return request
}

/// The gRPC Manager service against a real store (SQLite and PostgreSQL) over a real gRPC connection.
@Suite(.timeLimit(.minutes(3)))
struct ManagerServiceTests {
    @Test("ListSchedulers ranks the cluster whose CIDR scope contains the host first", arguments: TestBackend.allCases)
    func cidrRanking(backend: TestBackend) async throws {
        try await withStore(backend) { store, _ in
            let scoped = try await store.createCluster(
                .scheduler, NewCluster(name: "rack-10-1", scopes: ClusterScopes(cidrs: ["10.1.0.0/16"])))
            let empty = try await store.createCluster(
                .scheduler, NewCluster(name: "empty", scopes: ClusterScopes(cidrs: ["10.0.0.0/8"])))
            try await withManagerService(store) { manager in
                let inDefault = try await manager.registerScheduler(schedulerRequest("s-default", ip: "10.9.0.1"))
                let inScoped = try await manager.registerScheduler(
                    schedulerRequest("s-scoped", ip: "10.1.0.1", cluster: scoped.id))
                #expect(inScoped.schedulerClusterID == UInt64(scoped.id) && inScoped.state == .active)
                #expect(inDefault.schedulerClusterID == UInt64(try await store.defaultCluster(.scheduler).id))

                let near = try await manager.listSchedulers(listRequest(ip: "10.1.77.5"))
                #expect(near.schedulers.map(\.hostname) == ["s-scoped", "s-default"])
                // A cluster with no active scheduler is never listed.
                #expect(!near.schedulers.contains { $0.schedulerClusterID == UInt64(empty.id) })
                let far = try await manager.listSchedulers(listRequest(ip: "192.168.1.1"))
                #expect(far.schedulers.map(\.hostname) == ["s-default", "s-scoped"])
            }
        }
    }

    @Test(
        "keep-alives keep a scheduler listed; missing ones or a closed stream make it inactive",
        arguments: TestBackend.allCases)
    func keepAliveExpiry(backend: TestBackend) async throws {
        try await withStore(backend) { store, _ in
            try await withManagerService(store) { manager in
                let info = try await manager.registerScheduler(schedulerRequest("s1", ip: "10.0.0.1"))
                let keepAlive = {
                    var message = Dragonfly_V1_KeepAliveRequest()
                    message.sourceType = .scheduler
                    message.id = info.id
                    message.hostname = "s1"
                    message.ip = "10.0.0.1"
                    message.clusterID = info.schedulerClusterID
                    return message
                }()

                // Sweeps mark it inactive at the latest 15 s after the last keep-alive (one sweep interval, 1 s,
                // earlier); ListSchedulers drops it.
                var config = ManagerConfig.KeepAliveConfig()
                config.timeout = .seconds(15)
                let expiry = MemberExpiryService(store: { store }, config: config, logger: storeTestLogger)
                let id = Int(info.id)
                let seen = try await store.member(.scheduler, id: id).lastKeepAliveAt
                try await expiry.sweep(store, now: seen.addingTimeInterval(13.5))
                #expect(try await store.member(.scheduler, id: id).state == .active)
                try await expiry.sweep(store, now: seen.addingTimeInterval(14.5))
                #expect(try await store.member(.scheduler, id: id).state == .inactive)
                #expect(try await manager.listSchedulers(listRequest(ip: "10.0.0.9")).schedulers.isEmpty)

                // A keep-alive stream makes it active again; ending the stream makes it inactive at once.
                try await manager.keepAlive(
                    requestProducer: { writer in
                        try await writer.write(keepAlive)
                        try await poll(timeLimit: .seconds(10), description: "scheduler active again") {
                            try await store.member(.scheduler, id: id).state == .active
                        }
                        #expect(
                            try await manager.listSchedulers(listRequest(ip: "10.0.0.9")).schedulers.map(\.id)
                                == [info.id])
                    })
                try await poll(timeLimit: .seconds(10), description: "scheduler inactive after its stream ended") {
                    try await store.member(.scheduler, id: id).state == .inactive
                }
            }
        }
    }

    @Test("KeepAlive refuses unknown members and mismatched identities", arguments: [TestBackend.sqlite])
    func keepAliveRefusals(backend: TestBackend) async throws {
        try await withStore(backend) { store, _ in
            try await withManagerService(store) { manager in
                let info = try await manager.registerScheduler(schedulerRequest("s1", ip: "10.0.0.1"))
                func send(_ message: Dragonfly_V1_KeepAliveRequest) async throws {
                    try await manager.keepAlive(requestProducer: { writer in try await writer.write(message) })
                }
                var unknown = Dragonfly_V1_KeepAliveRequest()
                unknown.sourceType = .scheduler
                unknown.id = 999
                let notFound = await #expect(throws: RPCError.self) { try await send(unknown) }
                #expect(notFound?.code == .notFound)

                var wrongHost = unknown
                wrongHost.id = info.id
                wrongHost.hostname = "someone-else"
                let mismatch = await #expect(throws: RPCError.self) { try await send(wrongHost) }
                #expect(mismatch?.code == .failedPrecondition)

                var noType = wrongHost
                noType.sourceType = .peer
                let invalid = await #expect(throws: RPCError.self) { try await send(noType) }
                #expect(invalid?.code == .invalidArgument)
                // None of the refusals touched the registered scheduler.
                let state = try await store.member(.scheduler, id: Int(info.id)).state
                #expect(state == .active)
            }
        }
    }

    @Test("registration validates its input", arguments: [TestBackend.sqlite])
    func registrationValidation(backend: TestBackend) async throws {
        try await withStore(backend) { store, _ in
            try await withManagerService(store) { manager in
                for request in [
                    schedulerRequest("", ip: "10.0.0.1"), schedulerRequest("s", ip: "not-an-ip"),
                    schedulerRequest("s", ip: "10.0.0.1", port: 0), schedulerRequest("s", ip: "10.0.0.1", port: 70000),
                    schedulerRequest(String(repeating: "h", count: 300), ip: "10.0.0.1"),
                ] {
                    let error = await #expect(throws: RPCError.self) { try await manager.registerScheduler(request) }
                    #expect(error?.code == .invalidArgument)
                }
                let unknownCluster = await #expect(throws: RPCError.self) {
                    try await manager.registerScheduler(schedulerRequest("s", ip: "10.0.0.1", cluster: 4242))
                }
                #expect(unknownCluster?.code == .notFound)
                let registered = try await store.members(.scheduler)
                #expect(registered.isEmpty)
            }
        }
    }

    @Test("seed peers register, are listed with their scheduler cluster, and expire", arguments: TestBackend.allCases)
    func seedPeers(backend: TestBackend) async throws {
        try await withStore(backend) { store, _ in
            try await withManagerService(store) { manager in
                var request = Dragonfly_V1_RegisterSeedPeerRequest()
                request.hostname = "cdn1"
                request.ip = "10.0.0.5"
                request.port = 65000
                request.pieceDataPort = 65002
                request.type = .super
                let seed = try await manager.registerSeedPeer(request)
                #expect(seed.state == .active && seed.pieceDataPort == 65002 && seed.type == .super)
                let scheduler = try await manager.registerScheduler(schedulerRequest("s1", ip: "10.0.0.1"))
                #expect(scheduler.seedPeers.map(\.hostname) == ["cdn1"])

                var list = Dragonfly_V1_ListSeedPeersRequest()
                list.schedulerClusterID = scheduler.schedulerClusterID
                #expect(try await manager.listSeedPeers(list).seedPeers.map(\.id) == [seed.id])
                #expect(
                    try await manager.listSchedulers(listRequest(ip: "10.0.0.9")).schedulers.first?.seedPeers.map(\.id)
                        == [seed.id])

                let expiry = MemberExpiryService(
                    store: { store }, config: ManagerConfig.KeepAliveConfig(), logger: storeTestLogger)
                try await expiry.sweep(store, now: Date().addingTimeInterval(60))
                #expect(try await manager.listSeedPeers(list).seedPeers.isEmpty)
                list.schedulerClusterID = 4242
                let unknown = await #expect(throws: RPCError.self) { try await manager.listSeedPeers(list) }
                #expect(unknown?.code == .notFound)
            }
        }
    }

    @Test("GetClusterConfig maps the cluster's config; unimplemented RPCs say so", arguments: [TestBackend.sqlite])
    func clusterConfig(backend: TestBackend) async throws {
        try await withStore(backend) { store, _ in
            let cluster = try await store.createCluster(
                .scheduler,
                NewCluster(
                    name: "tuned",
                    config: .object([
                        "candidate_parent_limit": .number(4), "strategy": .string("default"),
                        "filter_parent_limit": .number(-1), "custom": .bool(true),
                    ]),
                    clientConfig: .object(["concurrent_piece_count": .number(32)]),
                    scopes: ClusterScopes(cidrs: ["172.16.0.0/12"])))
            try await withManagerService(store) { manager in
                var request = Dragonfly_V1_GetClusterConfigRequest()
                request.schedulerClusterID = UInt64(cluster.id)
                let config = try await manager.getClusterConfig(request)
                #expect(config.schedulerClusterID == UInt64(cluster.id))
                #expect(config.scheduler.candidateParentLimit == 4 && config.scheduler.strategy == "default")
                #expect(!config.scheduler.hasFilterParentLimit, "an out-of-range value keeps the consumer's default")
                #expect(config.client.concurrentPieceCount == 32)
                #expect(config.schedulerConfigJson.contains("\"custom\":true"))
                #expect(config.revision > 0)

                // Cluster 0: the searcher's pick for the asking host.
                var byHost = Dragonfly_V1_GetClusterConfigRequest()
                byHost.ip = "172.20.0.1"
                #expect(try await manager.getClusterConfig(byHost).schedulerClusterID == UInt64(cluster.id))
                byHost.ip = "10.0.0.1"
                #expect(
                    try await manager.getClusterConfig(byHost).schedulerClusterID
                        == UInt64(try await store.defaultCluster(.scheduler).id))

                let certificate = await #expect(throws: RPCError.self) {
                    try await manager.issueCertificate(Dragonfly_V1_IssueCertificateRequest())
                }
                #expect(certificate?.code == .unimplemented)
                let channel = await #expect(throws: RPCError.self) {
                    try await manager.commandChannel(
                        requestProducer: { _ in },
                        onResponse: { response in
                            for try await _ in response.messages {}
                        })
                }
                #expect(channel?.code == .unimplemented)
            }
        }
    }
}
