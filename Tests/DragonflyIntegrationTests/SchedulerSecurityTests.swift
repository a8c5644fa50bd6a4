import Crypto
import DragonflyCore
import DragonflyProto
import DragonflyRPC
import DragonflyTestSupport
import Foundation
import GRPCCore
import Logging
import ServiceLifecycle
import Synchronization
import Testing

/// "Security, part 1" finding 2 end to end: real `dragonfly scheduler`, `cdn` and `daemon` processes and a real
/// nginx origin against an attacker that holds no cluster secret. The attacker announces a "super" host of its
/// own, registers the task first as if it had read the origin, reports its own piece digests and serves its
/// own bytes (a Peer gRPC service in this process and a second nginx for the piece data). A `get` through the
/// daemon must write nginx's bytes or fail, never the attacker's.
@Suite(.serialized)
struct SchedulerSecurityTests {
    static let secret = "integration-cluster-secret-0123456789"
    static let logger = Logger(label: "scheduler-security-test") { _ in SwiftLogNoOpLogHandler() }

    static func randomBytes(_ count: Int) throws -> [UInt8] {
        let handle = try #require(FileHandle(forReadingAtPath: "/dev/urandom"))
        defer { try? handle.close() }
        return Array(try #require(try handle.read(upToCount: count)))
    }

    static func digest(_ bytes: some Collection<UInt8>) -> String {
        "sha256:" + TaskID.hex(SHA256.hash(data: Array(bytes)))
    }

    @Test(.timeLimit(.minutes(5)))
    func anUnauthenticatedSuperHostCannotPoisonATask() async throws {
        let size = 10 << 20
        let real = try Self.randomBytes(size)
        let evil = try Self.randomBytes(size)
        let pieceLength = Int(PieceMath.pieceLength(forContentLength: Int64(size)))
        let pieceCount = (size + pieceLength - 1) / pieceLength
        let security = "security:\n  clusterSecret: \"\(Self.secret)\"\n"
        try await withNginxOrigin { origin in
            _ = try origin.writeFile("blob.bin", contents: real)
            let url = origin.url(for: "blob.bin")
            let taskID = TaskID.make(url: url).rawValue
            try await withNginxOrigin { evilPieces in
                for number in 0..<pieceCount {
                    let range = (number * pieceLength)..<min((number + 1) * pieceLength, size)
                    _ = try evilPieces.writeFile("pieces/\(taskID)/\(number)", contents: evil[range])
                }
                let evilPeer = EvilPeerService(
                    taskID: taskID, size: size, pieceLength: pieceLength,
                    digests: (0..<pieceCount).map { number in
                        Self.digest(evil[(number * pieceLength)..<min((number + 1) * pieceLength, size)])
                    })
                try await withEvilPeerServer(evilPeer) { evilPort in
                    try await withP2PCluster(
                        schedulers: 1, seeds: 1, daemons: 1, seedConfigYAML: security, schedulerConfigYAML: security,
                        schedulerArguments: ["--log-level", "debug"], seedArguments: ["--log-level", "debug"],
                        daemonArguments: ["--log-level", "debug"]
                    ) { cluster in
                        try await withRPCClient(
                            target: cluster.schedulerAddresses[0], logger: Self.logger
                        ) { rpc in
                            let scheduler = Dragonfly_V1_Scheduler.Client(wrapping: rpc)
                            try await Self.poison(
                                scheduler, url: url, taskID: taskID, size: size, pieceLength: pieceLength,
                                digests: evilPeer.digests, peerPort: evilPort, piecePort: evilPieces.port
                            ) {
                                let output = cluster.outputPath("victim.bin")
                                let result: DragonflyRunResult
                                do {
                                    result = try await cluster.get(
                                        url: url, on: cluster.daemons[0], output: output, timeLimit: .seconds(60))
                                } catch {
                                    Issue.record("get did not finish: \(error)\n\(cluster.logs(maxBytes: 6000))")
                                    return
                                }
                                let written = FileManager.default.contents(atPath: output).map { Array($0) }
                                #expect(written != evil, "the attacker's bytes were written\n\(cluster.logs())")
                                if result.status == .exited(0) {
                                    #expect(written == real, "exit 0 with wrong bytes\n\(cluster.logs())")
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Announces the attacker's super host, registers the task with its own length, reports every piece as read
    /// from the origin with its own digest and a finished download, runs `body`, then ends the stream.
    static func poison(
        _ scheduler: Dragonfly_V1_Scheduler.Client<RPCClientTransport>, url: String, taskID: String, size: Int,
        pieceLength: Int, digests: [String], peerPort: Int, piecePort: Int, _ body: () async throws -> Void
    ) async throws {
        var host = Dragonfly_V1_Host()
        host.id = "127.0.0.1-evil-\(peerPort)-seed"
        host.type = .super
        host.hostname = "evil"
        host.ip = "127.0.0.1"
        host.port = UInt32(peerPort)
        host.pieceDataPort = UInt32(piecePort)
        host.uploadSlots = 100
        var announce = Dragonfly_V1_AnnounceHostRequest()
        announce.host = host
        _ = try await scheduler.announceHost(announce)

        let (outgoing, sink) = AsyncStream.makeStream(of: Dragonfly_V1_AnnouncePeerRequest.self)
        func message(_ request: Dragonfly_V1_AnnouncePeerRequest.OneOf_Request) -> Dragonfly_V1_AnnouncePeerRequest {
            var message = Dragonfly_V1_AnnouncePeerRequest()
            message.hostID = host.id
            message.taskID = taskID
            message.peerID = "evil-peer"
            message.request = request
            return message
        }
        var register = Dragonfly_V1_RegisterPeerRequest()
        register.download.url = url
        register.contentLength = UInt64(size)
        register.pieceLength = UInt64(pieceLength)
        sink.yield(message(.register(register)))
        var started = Dragonfly_V1_BackToSourceStartedRequest()
        started.contentLength = UInt64(size)
        started.pieceLength = UInt64(pieceLength)
        sink.yield(message(.backToSourceStarted(started)))
        for (number, digest) in digests.enumerated() {
            var finished = Dragonfly_V1_PieceBackToSourceFinishedRequest()
            finished.piece.number = UInt32(number)
            finished.piece.offset = UInt64(number * pieceLength)
            finished.piece.length = UInt64(min(pieceLength, size - number * pieceLength))
            finished.piece.digest = digest
            sink.yield(message(.pieceBackToSourceFinished(finished)))
        }
        var done = Dragonfly_V1_BackToSourceFinishedRequest()
        done.contentLength = UInt64(size)
        done.pieceCount = UInt32(digests.count)
        sink.yield(message(.backToSourceFinished(done)))

        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                try? await scheduler.announcePeer(
                    requestProducer: { writer in
                        for await request in outgoing { try await writer.write(request) }
                    },
                    onResponse: { response in
                        for try await _ in response.messages {}
                    })
            }
            // The attacker's reports are in before the victim asks: its stream carries them in order, and a
            // StatTask answers after they were applied once the task is known.
            var stat = Dragonfly_V1_StatTaskRequest()
            stat.taskID = taskID
            try await poll(timeLimit: .seconds(20), description: "the scheduler knows the attacker's task") {
                (try? await scheduler.statTask(stat)) != nil
            }
            do {
                try await body()
            } catch {
                sink.finish()
                throw error
            }
            sink.finish()
            try await group.waitForAll()
        }
    }
}

/// The attacker's Peer service: claims every piece of one task with the attacker's digests.
final class EvilPeerService: Dragonfly_V1_Peer.SimpleServiceProtocol {
    let taskID: String
    let size: Int
    let pieceLength: Int
    let digests: [String]

    init(taskID: String, size: Int, pieceLength: Int, digests: [String]) {
        self.taskID = taskID
        self.size = size
        self.pieceLength = pieceLength
        self.digests = digests
    }

    func syncPieces(
        request: Dragonfly_V1_SyncPiecesRequest, response: RPCWriter<Dragonfly_V1_PieceAvailable>,
        context: ServerContext
    ) async throws {
        for (number, digest) in digests.enumerated() {
            var piece = Dragonfly_V1_PieceAvailable()
            piece.number = UInt32(number)
            piece.offset = UInt64(number * pieceLength)
            piece.length = UInt64(min(pieceLength, size - number * pieceLength))
            piece.digest = digest
            piece.contentLength = UInt64(size)
            piece.isLast = number == digests.count - 1
            try await response.write(piece)
        }
    }

    func statTask(request: Dragonfly_V1_StatTaskRequest, context: ServerContext) async throws -> Dragonfly_V1_TaskInfo {
        var info = Dragonfly_V1_TaskInfo()
        info.id = taskID
        info.contentLength = UInt64(size)
        info.pieceLength = UInt64(pieceLength)
        info.pieceCount = UInt32(digests.count)
        info.state = .succeeded
        return info
    }

    func downloadTask(
        request: Dragonfly_V1_DownloadTaskRequest, response: RPCWriter<Dragonfly_V1_DownloadProgress>,
        context: ServerContext
    ) async throws {
        var progress = Dragonfly_V1_DownloadProgress()
        progress.done = true
        try await response.write(progress)
    }

    func health(request: Dragonfly_V1_HealthRequest, context: ServerContext) async throws -> Dragonfly_V1_HealthResponse
    {
        var health = Dragonfly_V1_HealthResponse()
        health.isReady = true
        return health
    }
}

/// Runs `service` as a Peer gRPC server on 127.0.0.1:0 while `body` runs; passes its port.
func withEvilPeerServer<T: Sendable>(_ service: EvilPeerService, _ body: (Int) async throws -> T) async throws -> T {
    let server = try GRPCServerService(
        address: .tcp(host: "127.0.0.1", port: 0), services: [service], logger: SchedulerSecurityTests.logger)
    let group = ServiceGroup(
        configuration: ServiceGroupConfiguration(services: [server], logger: SchedulerSecurityTests.logger))
    return try await withThrowingTaskGroup(of: Void.self) { tasks in
        tasks.addTask { try await group.run() }
        let result: Result<T, any Error>
        do {
            let port = try #require(try await server.listeningAddress().port)
            result = .success(try await body(port))
        } catch {
            result = .failure(error)
        }
        await group.triggerGracefulShutdown()
        try await tasks.waitForAll()
        return try result.get()
    }
}
