import AsyncHTTPClient
import DragonflyCore
import DragonflyDaemon
import DragonflyProto
import DragonflyRPC
import DragonflyStorage
import DragonflyTelemetry
import DragonflyTestSupport
import Foundation
import GRPCCore
import Logging
import NIOCore
import NIOHTTP1
import ServiceLifecycle
import Testing

/// `makeDaemonServices` in-process, on port 0, with a real ServiceGroup (no subprocess).
@Suite(.serialized) struct DaemonServicesTests {
    static func config(_ dir: TemporaryDirectory) -> DaemonConfig {
        var config = DaemonConfig()
        config.dataDir = dir.appending("data")
        config.socket = dir.appending("run/daemon.sock")
        let any = ListenAddress(host: "127.0.0.1", port: 0)
        config.listen.peer = any
        config.listen.proxy = any
        config.listen.metrics = any
        config.listen.health = any
        config.listen.piece = any
        return config
    }

    /// A registry with the built-in storage media, as the CLI makes it (no source clients: these tests never
    /// read an origin).
    static func registry() throws -> PluginRegistry {
        let registry = PluginRegistry()
        try registerBuiltinMedia(into: registry)
        return registry
    }

    static func withDaemon<T: Sendable>(
        _ dir: TemporaryDirectory,
        _ body: ([String: String]) async throws -> T
    ) async throws -> T {
        let logger = Logger(label: "test")
        let role = try makeDaemonServices(
            config: config(dir), mode: .normal, registry: registry(), telemetry: Telemetry(role: "daemon"),
            logger: logger
        )
        let group = ServiceGroup(configuration: ServiceGroupConfiguration(services: role.services, logger: logger))
        return try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            var listeners: [String: String] = [:]
            for listener in role.listeners { listeners[listener.name] = try await listener.value() }
            try await role.readiness()
            let result: T
            do {
                result = try await body(listeners)
            } catch {
                await group.triggerGracefulShutdown()
                try? await tasks.waitForAll()
                throw error
            }
            await group.triggerGracefulShutdown()
            try await tasks.waitForAll()
            withExtendedLifetime(role.retained) {}
            return result
        }
    }

    static func status(_ url: String) async throws -> Int {
        let response = try await HTTPClient.shared.execute(HTTPClientRequest(url: url), timeout: .seconds(10))
        _ = try await response.body.collect(upTo: 1 << 20)
        return Int(response.status.code)
    }

    @Test(.timeLimit(.minutes(1)))
    func listenersBindAndThePieceServerValidatesInput() async throws {
        try await withTemporaryDirectory { dir in
            try await Self.withDaemon(dir) { listeners in
                #expect(Set(listeners.keys) == ["peer", "proxy", "metrics", "health", "piece"])
                // The local API socket exists once the role is ready.
                #expect(FileManager.default.fileExists(atPath: dir.appending("run/daemon.sock")))
                let piece = try #require(listeners["piece"])
                let task = String(repeating: "ab", count: 32)
                #expect(try await Self.status("http://\(piece)/pieces/not-a-task/0") == 400)
                #expect(try await Self.status("http://\(piece)/pieces/\(task.uppercased())/0") == 400)
                #expect(try await Self.status("http://\(piece)/pieces/..%2F..%2Fetc%2Fpasswd/0") == 400)
                #expect(try await Self.status("http://\(piece)/pieces/\(task)/-1") == 400)
                #expect(try await Self.status("http://\(piece)/pieces/\(task)/0") == 404)
                #expect(try await Self.status("http://\(try #require(listeners["health"]))/healthy") == 200)
            }
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func theLocalServiceIsNotServedOnTheTCPPeerListener() async throws {
        try await withTemporaryDirectory { dir in
            try await Self.withDaemon(dir) { listeners in
                let peer = try #require(listeners["peer"])
                try await withRPCClient(target: peer, logger: Logger(label: "test")) { client in
                    // The Peer service answers there ...
                    _ = try await Dragonfly_V1_Peer.Client(wrapping: client).health(Dragonfly_V1_HealthRequest())
                    // ... the Local service, which writes files as the daemon's user, does not.
                    var stat = Dragonfly_V1_StatLocalTaskRequest()
                    stat.taskID = String(repeating: "ab", count: 32)
                    do {
                        _ = try await Dragonfly_V1_Local.Client(wrapping: client).statTask(stat)
                        Issue.record("the Local service answered on the TCP listener \(peer)")
                    } catch let error as RPCError {
                        #expect(error.code == .unimplemented, "\(error)")
                    }
                    var delete = Dragonfly_V1_DeleteTaskRequest()
                    delete.taskID = stat.taskID
                    await #expect(throws: RPCError.self) {
                        _ = try await Dragonfly_V1_Local.Client(wrapping: client).deleteTask(delete)
                    }
                }
            }
        }
    }

    @Test func aSecondDaemonOnTheSameDataDirIsRefused() async throws {
        _ = try await withTemporaryDirectory { dir in
            try await Self.withDaemon(dir) { _ in
                // Say what happened, whatever it was: a second set of services that starts is as wrong as
                // one refused for another reason.
                let outcome: String
                do {
                    let second = try makeDaemonServices(
                        config: Self.config(dir), mode: .seed, registry: Self.registry(),
                        telemetry: Telemetry(role: "cdn"), logger: Logger(label: "test"))
                    outcome = "started \(second.role) on a locked data dir"
                } catch let error as DragonflyError {
                    outcome = "\(error.code): \(error.message)"
                } catch {
                    outcome = "\(type(of: error)): \(error)"
                }
                #expect(
                    outcome.hasPrefix("\(DragonflyError.Code.failedPrecondition):")
                        && outcome.contains("locked by process \(getpid())"), "\(outcome)")
            }
        }
    }
}
