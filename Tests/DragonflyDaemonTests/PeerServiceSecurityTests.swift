import DragonflyCore
import DragonflyDaemon
import DragonflyProto
import DragonflyRPC
import DragonflyStorage
import DragonflyTestSupport
import GRPCCore
import Logging
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// What a stranger who reaches a daemon's Peer port (`:4000`) may not do (issue "Security, part 1"):
/// make it read a local path (finding 1), or list, stat or sync a private task without its grant (finding 3).
@Suite struct PeerServiceSecurityTests {
    typealias PeerClient = PeerServiceTests.PeerClient

    /// Remembers the URLs the service passed on, to show which downloads were refused before any work.
    final class RecordingDownloader: TaskDownloading {
        let urls = Mutex<[String]>([])
        func download(
            _ download: Dragonfly_V1_Download,
            progress: @escaping @Sendable (Dragonfly_V1_DownloadProgress) async -> Void
        ) async throws -> Dragonfly_V1_DownloadProgress {
            urls.withLock { $0.append(download.url) }
            var report = Dragonfly_V1_DownloadProgress()
            report.done = true
            return report
        }
    }

    static func withPeer<T: Sendable>(
        _ fixture: PieceFixture,
        announcer: PieceAnnouncer,
        downloader: RecordingDownloader = RecordingDownloader(),
        allowedFileDirectories: [String] = [],
        _ body: (PeerClient) async throws -> T
    ) async throws -> T {
        let logger = Logger(label: "test")
        let service = PeerService(
            store: fixture.store, announcer: announcer, downloader: downloader,
            hostID: { "127.0.0.1-test-4000" }, hostType: .super, grants: announcer.grants,
            allowedFileDirectories: allowedFileDirectories, logger: logger)
        let server = try GRPCServerService(
            address: .tcp(host: "127.0.0.1", port: 0), services: [service], listenerName: "peer", logger: logger)
        return try await withRunningService(server) {
            let address = try await server.listener.value()
            return try await withRPCClient(target: address, logger: logger) { client in
                try await body(PeerClient(wrapping: client))
            }
        }
    }

    static func downloadRequest(_ url: String) -> Dragonfly_V1_DownloadTaskRequest {
        var request = Dragonfly_V1_DownloadTaskRequest()
        request.download.url = url
        return request
    }

    static func runDownload(_ peer: PeerClient, _ url: String) async throws {
        try await peer.downloadTask(Self.downloadRequest(url)) { response in
            for try await _ in response.messages {}
        }
    }

    /// Before the fix a `DownloadTask` of `file:///etc/shadow` was read into the cache and served on `:4005`.
    @Test(.timeLimit(.minutes(1)))
    func aDownloadAskedOverTheNetworkNeverReadsALocalPath() async throws {
        try await withTemporaryDirectory { dir in
            let shared = try dir.makeDirectory("shared")
            try dir.writeFile("shared/model.bin", text: "weights")
            let secret = try dir.writeFile("secret", text: "secret")
            #expect(symlink(secret, shared + "/escape") == 0)
            try await PieceFixture.with { fixture in
                let downloader = RecordingDownloader()
                try await Self.withPeer(
                    fixture, announcer: PieceAnnouncer(), downloader: downloader, allowedFileDirectories: []
                ) { peer in
                    for url in ["file:///etc/shadow", "FILE:///etc/passwd", "file://localhost/etc/shadow"] {
                        await PeerServiceTests.expectCode(.permissionDenied) { try await Self.runDownload(peer, url) }
                    }
                    for url in ["ftp://example.com/x", "unix:///run/x.sock", "/etc/shadow", "gopher://x/"] {
                        do {
                            try await Self.runDownload(peer, url)
                            Issue.record("\(url) was accepted")
                        } catch let error as RPCError {
                            #expect([.permissionDenied, .invalidArgument].contains(error.code), "\(error)")
                        }
                    }
                    try await Self.runDownload(peer, "https://example.com/ok.bin")
                }
                #expect(downloader.urls.withLock { $0 } == ["https://example.com/ok.bin"])

                // With a shared directory, jobs may read below it, and only below it (no `..` or symlink escape).
                let allowed = RecordingDownloader()
                try await Self.withPeer(
                    fixture, announcer: PieceAnnouncer(), downloader: allowed, allowedFileDirectories: [shared]
                ) { peer in
                    try await Self.runDownload(peer, "file://\(shared)/model.bin")
                    for url in [
                        "file://\(shared)/../secret", "file://\(shared)/escape", "file://\(shared)/missing",
                        "file://\(shared)/%2e%2e/secret", "file:///etc/shadow",
                    ] {
                        await PeerServiceTests.expectCode(.permissionDenied) { try await Self.runDownload(peer, url) }
                    }
                }
                let passed = allowed.urls.withLock { $0 }
                #expect(passed.count == 1)
                #expect(passed.first?.hasSuffix("/shared/model.bin") == true)
            }
        }
    }

    /// Before the fix `StatTask` and `SyncPieces` described any cached task, private ones included.
    @Test(.timeLimit(.minutes(1)))
    func aPrivateTaskIsStatedAndSyncedOnlyWithItsGrant() async throws {
        try await PieceFixture.with { fixture in
            let announcer = PieceAnnouncer()
            let id = PieceFixture.taskID("private-sync")
            _ = try await fixture.store.openTask(
                id: id, url: "https://user:pw@example.com/private-sync?X-Amz-Signature=abc", contentLength: 1000,
                pieceLength: 1024, headers: ["x-dragonfly-private": "1"])
            try await fixture.write(id, 0, contentLength: 1000, pieceLength: 1024)
            announcer.grants.record("grant-1", for: id)
            try await Self.withPeer(fixture, announcer: announcer) { peer in
                var stat = Dragonfly_V1_StatTaskRequest()
                stat.taskID = id.rawValue
                await PeerServiceTests.expectCode(.permissionDenied) { _ = try await peer.statTask(stat) }
                stat.transferGrant = "guess"
                await PeerServiceTests.expectCode(.permissionDenied) { _ = try await peer.statTask(stat) }
                stat.transferGrant = "grant-1"
                let info = try await peer.statTask(stat)
                // Even to a granted caller, no userinfo or signature leaves the host.
                #expect(!info.url.contains("pw"))
                #expect(!info.url.contains("abc"))
                #expect(info.pieces.count == 1)

                var sync = PeerServiceTests.syncRequest(id.rawValue)
                await PeerServiceTests.expectCode(.permissionDenied) {
                    try await peer.syncPieces(sync) { response in for try await _ in response.messages {} }
                }
                sync.transferGrant = "grant-1"
                let numbers = try await peer.syncPieces(sync) { response in
                    var numbers: [UInt32] = []
                    for try await message in response.messages { numbers.append(message.number) }
                    return numbers
                }
                #expect(numbers == [0])
            }
        }
    }
}
