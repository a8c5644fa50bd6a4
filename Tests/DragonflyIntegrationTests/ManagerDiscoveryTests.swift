import DragonflyCore
import DragonflyProto
import DragonflyRPC
import DragonflyTestSupport
import Foundation
import GRPCCore
import Logging
import Testing

/// Issue 5's manager acceptance lines with real processes: schedulers register and keep alive (and are
/// inactive soon after a SIGKILL), `ListSchedulers` ranks by CIDR scope, and a daemon whose manager is down
/// at start uses the scheduler list it saved.
@Suite(.serialized, .timeLimit(.minutes(5)))
struct ManagerDiscoveryTests {
    static let logger = Logger(label: "df.test.manager") { _ in SwiftLogNoOpLogHandler() }

    typealias ManagerClient = Dragonfly_V1_Manager.Client<RPCClientTransport>

    /// Runs `body` with a Manager client for `address`.
    static func withManagerClient<Value: Sendable>(
        _ address: String,
        _ body: (ManagerClient) async throws -> Value
    ) async throws -> Value {
        try await withRPCClient(target: address, logger: logger) { client in
            try await body(ManagerClient(wrapping: client))
        }
    }

    /// The schedulers the manager lists for a host at `ip`, as `IP:port`, best first.
    static func listed(_ manager: ManagerClient, ip: String = "127.0.0.1") async throws -> [String] {
        var request = Dragonfly_V1_ListSchedulersRequest()
        request.sourceType = .peer
        request.hostname = "test-host"
        request.ip = ip
        return try await manager.listSchedulers(request).schedulers.map { "\($0.ip):\($0.port)" }
    }

    /// Like ``listed(_:ip:)``, but an unreachable manager lists nothing.
    static func listedIfReachable(_ manager: ManagerClient, ip: String = "127.0.0.1") async -> [String] {
        (try? await listed(manager, ip: ip)) ?? []
    }

    @Test func schedulerRegistersReRegistersAndIsInactiveSoonAfterSIGKILL() async throws {
        try await withTemporaryDirectory { dir in
            let port = try freeLoopbackPort()
            let managerAddress = "127.0.0.1:\(port)"
            let managerArguments = RoleArguments.manager(dataDirectory: dir.appending("manager"), grpcPort: port)
            try await withDragonfly(managerArguments) { first in
                _ = try await first.awaitReady(timeLimit: .seconds(60))
                try await withDragonfly(RoleArguments.scheduler(manager: managerAddress)) { scheduler in
                    // Ready means the manager acknowledged the registration (DESIGN §15).
                    let ready = try await scheduler.awaitReady(timeLimit: .seconds(60))
                    let schedulerAddress = try #require(ready.listeners["grpc"])
                    try await Self.withManagerClient(managerAddress) { manager in
                        let listed = try await Self.listed(manager)
                        #expect(listed == [schedulerAddress])
                    }

                    // The manager goes away and comes back on the same port, having lost its state (a fresh
                    // data dir), so the scheduler is listed again only once it registered again.
                    try first.signal(.terminate)
                    #expect(try await first.waitForExit(timeLimit: .seconds(10)) == .exited(0))
                    let secondArguments = RoleArguments.manager(
                        dataDirectory: dir.appending("manager2"), grpcPort: port)
                    try await withDragonfly(secondArguments) { second in
                        _ = try await second.awaitReady(timeLimit: .seconds(60))
                        try await Self.withManagerClient(managerAddress) { manager in
                            try await poll(timeLimit: .seconds(30), description: "the scheduler registered again") {
                                await Self.listedIfReachable(manager) == [schedulerAddress]
                            }
                            // A crash (no goodbye): inactive within the 15 s keep-alive timeout.
                            try scheduler.signal(.kill)
                            _ = try await scheduler.waitForExit(timeLimit: .seconds(10))
                            try await poll(timeLimit: .seconds(15), description: "the killed scheduler unlisted") {
                                try await Self.listed(manager).isEmpty
                            }
                        }
                    }
                }
            }
        }
    }

    @Test func listSchedulersRanksTheCIDRScopedClusterFirstAndTheStoreSeesAKilledSchedulerInactive() async throws {
        try await withPostgres { pg in
            try await withTemporaryDirectory { dir in
                let managerArguments = RoleArguments.manager(
                    dataDirectory: dir.appending("manager"), database: pg.url)
                try await withDragonfly(managerArguments) { managerProcess in
                    let managerReady = try await managerProcess.awaitReady(timeLimit: .seconds(60))
                    let managerAddress = try #require(managerReady.listeners["grpc"])
                    // A cluster for hosts in 10.20.0.0/16 (the REST API is not there yet: straight into the store).
                    let scopes = #"{"cidrs":["10.20.0.0/16"],"hostnames":[],"idc":"","location":""}"#
                    let clusterID =
                        try await pg.psql(
                            """
                            insert into scheduler_clusters (name, bio, config, client_config, scopes, is_default, \
                            created_at, updated_at) values ('near', '', '{}', '{}', '\(scopes)', false, now(), now()) \
                            returning id
                            """
                        ).split(separator: "\n").first.map { $0.trimmingCharacters(in: .whitespaces) } ?? ""
                    #expect(Int(clusterID) != nil, "insert returned '\(clusterID)'")
                    let scopedConfig = try dir.writeFile(
                        "near.yaml", text: "manager:\n  schedulerClusterID: \(clusterID)\n")

                    try await withDragonfly(RoleArguments.scheduler(manager: managerAddress)) { plain in
                        try await withDragonfly(RoleArguments.scheduler(manager: managerAddress, config: scopedConfig))
                        {
                            scoped in
                            let plainAddress = try #require(
                                try await plain.awaitReady(timeLimit: .seconds(60)).listeners["grpc"])
                            let scopedReady = try await scoped.awaitReady(timeLimit: .seconds(60))
                            let scopedAddress = try #require(scopedReady.listeners["grpc"])
                            let scopedPort = try #require(scopedReady.port(of: "grpc"))
                            try await Self.withManagerClient(managerAddress) { manager in
                                let near = try await Self.listed(manager, ip: "10.20.3.4")
                                let far = try await Self.listed(manager, ip: "192.168.0.7")
                                #expect(near == [scopedAddress, plainAddress])
                                #expect(far == [plainAddress, scopedAddress])
                            }
                            let state = "select state from schedulers where port = \(scopedPort)"
                            #expect(try await pg.psql(state) == "active")

                            try scoped.signal(.kill)
                            _ = try await scoped.waitForExit(timeLimit: .seconds(10))
                            try await poll(timeLimit: .seconds(15), description: "the store marks it inactive") {
                                try await pg.psql(state) == "inactive"
                            }
                            try await Self.withManagerClient(managerAddress) { manager in
                                let near = try await Self.listed(manager, ip: "10.20.3.4")
                                #expect(near == [plainAddress])
                            }
                        }
                    }
                }
            }
        }
    }

    @Test func aDaemonStartedWhileTheManagerIsDownUsesItsSavedList() async throws {
        try await withNginxOrigin { origin in
            try await withTemporaryDirectory { dir in
                _ = try origin.writeFile("first.bin", contents: [UInt8](repeating: 7, count: 3 << 20))
                _ = try origin.writeFile("second.bin", contents: [UInt8](repeating: 9, count: 3 << 20))
                try dir.makeDirectory("out")
                let port = try freeLoopbackPort()
                let managerAddress = "127.0.0.1:\(port)"
                let daemonDirectory = try dir.makeDirectory("daemon")
                let savedList = RoleArguments.dataDirectory(in: daemonDirectory) + "/schedulers.json"
                let managerArguments = RoleArguments.manager(dataDirectory: dir.appending("manager"), grpcPort: port)
                let daemonArguments = RoleArguments.daemon(directory: daemonDirectory, manager: managerAddress)
                try await withDragonfly(managerArguments) { manager in
                    _ = try await manager.awaitReady(timeLimit: .seconds(60))
                    try await withDragonfly(RoleArguments.scheduler(manager: managerAddress)) { scheduler in
                        let schedulerReady = try await scheduler.awaitReady(timeLimit: .seconds(60))
                        let schedulerAddress = try #require(schedulerReady.listeners["grpc"])
                        let schedulerMetrics = try #require(schedulerReady.listeners["metrics"])
                        let registrations = "dragonfly_scheduler_peer_registrations_total"

                        // With the manager up, the daemon learns the scheduler from it and saves the list.
                        try await withDragonfly(daemonArguments) { daemon in
                            _ = try await daemon.awaitReady(timeLimit: .seconds(60))
                            try await poll(timeLimit: .seconds(30), description: "the saved scheduler list") {
                                (try? String(contentsOfFile: savedList, encoding: .utf8))?.contains(schedulerAddress)
                                    ?? false
                            }
                            let got = try await runDragonfly(
                                RoleArguments.get(
                                    url: origin.url(for: "first.bin"), output: dir.appending("out/first.bin"),
                                    daemonDirectory: daemonDirectory))
                            #expect(got.exitCode == 0, "\(got.stderr)\n\(daemon.stderrText())")
                            try daemon.signal(.terminate)
                            #expect(try await daemon.waitForExit(timeLimit: .seconds(10)) == .exited(0))
                        }
                        let before = try await metricTotal(registrations, at: schedulerMetrics)
                        #expect(before >= 1, "the first download went through the scheduler")

                        // The manager goes down; the daemon restarts and downloads through the saved scheduler.
                        try manager.signal(.terminate)
                        #expect(try await manager.waitForExit(timeLimit: .seconds(10)) == .exited(0))
                        try await withDragonfly(daemonArguments) { daemon in
                            _ = try await daemon.awaitReady(timeLimit: .seconds(60))
                            let got = try await runDragonfly(
                                RoleArguments.get(
                                    url: origin.url(for: "second.bin"), output: dir.appending("out/second.bin"),
                                    daemonDirectory: daemonDirectory))
                            #expect(got.exitCode == 0, "\(got.stderr)\n\(daemon.stderrText())")
                            let output = try Data(contentsOf: URL(fileURLWithPath: dir.appending("out/second.bin")))
                            #expect(output == Data(repeating: 9, count: 3 << 20))
                            #expect(
                                try await metricTotal(registrations, at: schedulerMetrics) > before,
                                "the second download registered with the saved scheduler\n\(daemon.stderrText())")
                        }
                    }
                }
            }
        }
    }

    @Test func aCdnRegistersAsASeedPeerOfItsSchedulersCluster() async throws {
        try await withTemporaryDirectory { dir in
            try await withDragonfly(RoleArguments.manager(dataDirectory: dir.appending("manager"))) { manager in
                let managerAddress = try #require(
                    try await manager.awaitReady(timeLimit: .seconds(60)).listeners["grpc"])
                try await withDragonfly(RoleArguments.scheduler(manager: managerAddress)) { scheduler in
                    let schedulerAddress = try #require(
                        try await scheduler.awaitReady(timeLimit: .seconds(60)).listeners["grpc"])
                    let cdnDirectory = try dir.makeDirectory("cdn")
                    let arguments = RoleArguments.daemon(role: "cdn", directory: cdnDirectory, manager: managerAddress)
                    try await withDragonfly(arguments) { cdn in
                        let cdnReady = try await cdn.awaitReady(timeLimit: .seconds(60))
                        let peerPort = try #require(cdnReady.port(of: "peer"))
                        let piecePort = try #require(cdnReady.port(of: "piece"))
                        try await Self.withManagerClient(managerAddress) { client in
                            func seedPeers() async throws -> [Dragonfly_V1_SeedPeerInfo] {
                                var request = Dragonfly_V1_ListSchedulersRequest()
                                request.ip = "127.0.0.1"
                                let schedulers = try await client.listSchedulers(request).schedulers
                                return schedulers.first?.seedPeers ?? []
                            }
                            try await poll(timeLimit: .seconds(30), description: "the cdn listed as a seed peer") {
                                try await seedPeers().map(\.port) == [UInt32(peerPort)]
                            }
                            let seed = try #require(try await seedPeers().first)
                            #expect(seed.pieceDataPort == UInt32(piecePort) && seed.type == .super)
                            // The cdn found its scheduler through the manager too.
                            let saved = RoleArguments.dataDirectory(in: cdnDirectory) + "/schedulers.json"
                            try await poll(timeLimit: .seconds(30), description: "the cdn's saved scheduler list") {
                                (try? String(contentsOfFile: saved, encoding: .utf8))?.contains(schedulerAddress)
                                    ?? false
                            }
                            // A graceful stop ends its keep-alive stream: no longer a seed peer.
                            try cdn.signal(.terminate)
                            #expect(try await cdn.waitForExit(timeLimit: .seconds(10)) == .exited(0))
                            try await poll(timeLimit: .seconds(15), description: "the stopped cdn unlisted") {
                                try await seedPeers().isEmpty
                            }
                        }
                    }
                }
            }
        }
    }
}
