import DragonflyCore
import DragonflyProto
import DragonflyRPC
import DragonflyTestSupport
import Foundation
import GRPCCore
import ServiceLifecycle
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A real server on loopback TCP or a Unix socket, called by a real client.
@Suite(.timeLimit(.minutes(2)))
struct GRPCServerServiceTests {
    enum Listener: String, CaseIterable, CustomTestStringConvertible {
        case tcp, unixSocket
        var testDescription: String { rawValue }
    }

    /// Runs a Peer test server on `listener` and a client connected to it.
    func withPeerClient<Value: Sendable>(
        on listener: Listener,
        _ body: (Dragonfly_V1_Peer.Client<RPCClientTransport>, RPCAddress) async throws -> Value
    ) async throws -> Value {
        try await withTemporaryDirectory { directory in
            let address: RPCAddress =
                switch listener {
                case .tcp: .tcp(host: "127.0.0.1", port: 0)
                // A directory that does not exist yet: the service creates it.
                case .unixSocket: .unixDomainSocket(path: directory.appending("run/df/peer.sock"))
                }
            let server = try GRPCServerService(
                address: address,
                services: [Fixtures.peerService],
                logger: Fixtures.logger
            )
            return try await withRunningServer(server) { bound in
                try await withRPCClient(target: bound.description, logger: Fixtures.logger) { client in
                    try await body(Dragonfly_V1_Peer.Client(wrapping: client), bound)
                }
            }
        }
    }

    @Test(arguments: Listener.allCases)
    func statTaskAnswersKnownTask(listener: Listener) async throws {
        let task = try await withPeerClient(on: listener) { peer, bound in
            switch listener {
            case .tcp:
                #expect(bound.port.map { $0 > 0 } == true, "port 0 must be reported as the real port")
            case .unixSocket:
                #expect(bound.description.hasPrefix("unix:/"))
            }
            var request = Dragonfly_V1_StatTaskRequest()
            request.taskID = Fixtures.knownTaskID
            return try await peer.statTask(request)
        }
        #expect(task == Fixtures.knownTask)
    }

    @Test(arguments: Listener.allCases)
    func statTaskMapsMissingTaskToNotFound(listener: Listener) async throws {
        let error = try await withPeerClient(on: listener) { peer, _ in
            var request = Dragonfly_V1_StatTaskRequest()
            request.taskID = Fixtures.unknownTaskID
            return await #expect(throws: RPCError.self) { _ = try await peer.statTask(request) }
        }
        let rpcError = try #require(error)
        #expect(rpcError.code == .notFound)
        #expect(rpcError.message.contains(Fixtures.unknownTaskID))
        let mapped = DragonflyError(rpcError: rpcError)
        #expect(mapped.code == .notFound)
        #expect(mapped.message == rpcError.message)
    }

    @Test(arguments: Listener.allCases)
    func syncPiecesStreamsEveryPiece(listener: Listener) async throws {
        let pieces = try await withPeerClient(on: listener) { peer, _ in
            var request = Dragonfly_V1_SyncPiecesRequest()
            request.taskID = Fixtures.knownTaskID
            return try await peer.syncPieces(request) { response in
                var received: [Dragonfly_V1_PieceAvailable] = []
                for try await piece in response.messages {
                    received.append(piece)
                }
                return received
            }
        }
        #expect(pieces.map(\.number) == [0, 1, 2])
        #expect(pieces.map(\.isLast) == [false, false, true])
        #expect(pieces.map(\.digest) == Fixtures.knownTask.pieces.map(\.digest))
        #expect(pieces.last?.length == 10)
    }

    @Test func syncPiecesHonoursInterestedNumbers() async throws {
        let numbers = try await withPeerClient(on: .tcp) { peer, _ in
            var request = Dragonfly_V1_SyncPiecesRequest()
            request.taskID = Fixtures.knownTaskID
            request.interestedPieceNumbers = [2]
            return try await peer.syncPieces(request) { response in
                var numbers: [UInt32] = []
                for try await piece in response.messages {
                    numbers.append(piece.number)
                }
                return numbers
            }
        }
        #expect(numbers == [2])
    }

    @Test func unixSocketFileIsRemovedWhenTheServerStops() async throws {
        try await withTemporaryDirectory { directory in
            let path = directory.appending("peer.sock")
            let server = try GRPCServerService(
                address: .unixDomainSocket(path: path),
                services: [Fixtures.peerService],
                logger: Fixtures.logger
            )
            try await withRunningServer(server) { _ in
                #expect(FileManager.default.fileExists(atPath: path))
            }
            #expect(!FileManager.default.fileExists(atPath: path))
        }
    }

    @Test func staleUnixSocketIsReplaced() async throws {
        try await withTemporaryDirectory { directory in
            let path = directory.appending("stale.sock")
            try makeStaleSocket(at: path)
            #expect(FileManager.default.fileExists(atPath: path))
            let server = try GRPCServerService(
                address: .unixDomainSocket(path: path),
                services: [Fixtures.peerService],
                logger: Fixtures.logger
            )
            let health = try await withRunningServer(server) { bound in
                try await withRPCClient(target: bound.description, logger: Fixtures.logger) { client in
                    try await Dragonfly_V1_Peer.Client(wrapping: client).health(Dragonfly_V1_HealthRequest())
                }
            }
            #expect(health.isReady)
        }
    }

    @Test func regularFileAtSocketPathIsNotDeleted() async throws {
        try await withTemporaryDirectory { directory in
            let path = try directory.writeFile("not-a-socket", text: "keep me")
            let server = try GRPCServerService(
                address: .unixDomainSocket(path: path),
                services: [Fixtures.peerService],
                logger: Fixtures.logger
            )
            await #expect(throws: (any Error).self) { try await server.run() }
            #expect(try String(contentsOfFile: path, encoding: .utf8) == "keep me")
        }
    }

    @Test func gracefulShutdownThroughServiceGroupEndsTheServer() async throws {
        let server = try GRPCServerService(
            address: .tcp(host: "127.0.0.1", port: 0),
            services: [Fixtures.peerService],
            logger: Fixtures.logger
        )
        let group = ServiceGroup(
            configuration: ServiceGroupConfiguration(
                services: [ServiceGroupConfiguration.ServiceConfiguration(service: server)],
                logger: Fixtures.logger
            )
        )
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            let bound = try await server.listeningAddress()
            let health = try await withRPCClient(target: bound.description, logger: Fixtures.logger) { client in
                try await Dragonfly_V1_Peer.Client(wrapping: client).health(Dragonfly_V1_HealthRequest())
            }
            #expect(health.isReady)

            await group.triggerGracefulShutdown()
            // The group's run() returns only once the server service has returned.
            try await tasks.waitForAll()

            await #expect(throws: (any Error).self) { _ = try await server.listeningAddress() }
            let error = await #expect(throws: RPCError.self) {
                try await withRPCClient(target: bound.description, logger: Fixtures.logger) { client in
                    _ = try await Dragonfly_V1_Peer.Client(wrapping: client).health(Dragonfly_V1_HealthRequest())
                }
            }
            #expect(error?.code == .unavailable)
        }
    }

    @Test func listeningOnAHostNameIsRejected() {
        #expect(throws: DragonflyError.self) {
            _ = try GRPCServerService(
                address: .tcp(host: "localhost", port: 0),
                services: [],
                logger: Fixtures.logger
            )
        }
    }
}

/// Leaves a Unix socket file at `path` that nobody listens on (what a crashed daemon leaves behind).
private func makeStaleSocket(at path: String) throws {
    let descriptor = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
    guard descriptor >= 0 else { throw POSIXError(.EIO) }
    defer { close(descriptor) }
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    let capacity = MemoryLayout.size(ofValue: address.sun_path)
    let bytes = Array(path.utf8)
    guard bytes.count < capacity else { throw POSIXError(.ENAMETOOLONG) }
    withUnsafeMutableBytes(of: &address.sun_path) { buffer in
        buffer.copyBytes(from: bytes)
        buffer[bytes.count] = 0
    }
    let result = withUnsafePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
        }
    }
    guard result == 0 else { throw POSIXError(.EADDRINUSE) }
}
