import Crypto
import DragonflyClient
import DragonflyTestSupport
import Foundation
import Synchronization
import Testing

/// The public `Downloader` against a real `dragonfly daemon` (no scheduler: it reads the real nginx origin).
@Suite(.serialized, .timeLimit(.minutes(3)))
struct DownloaderTests {
    @Test func downloadsThroughARealDaemonAndHonoursTheDigest() async throws {
        var generator = SystemRandomNumberGenerator()
        let content = (0..<(6 << 20)).map { _ in UInt8.random(in: 0...255, using: &generator) }
        let digest = "sha256:" + SHA256.hash(data: content).map { String(format: "%02x", $0) }.joined()
        try await withNginxOrigin { origin in
            try origin.writeFile("f.bin", contents: content)
            try await withTemporaryDirectory { dir in
                let socket = dir.appending("run/daemon.sock")
                let arguments = [
                    "daemon", "--data-dir", dir.appending("data"), "--socket", socket, "--peer-listen", "127.0.0.1:0",
                    "--proxy-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--health-listen",
                    "127.0.0.1:0", "--piece-listen", "127.0.0.1:0",
                ]
                try await withDragonfly(arguments) { daemon in
                    _ = try await daemon.awaitReady(timeLimit: .seconds(60))
                    let downloader = Downloader(socketPath: socket)
                    let url = origin.url(for: "f.bin")
                    let out = dir.appending("out.bin")
                    let reports = ReportCount()
                    let result = try await downloader.download(
                        url, to: out, options: DownloadOptions(digest: digest)
                    ) { _ in reports.add() }
                    #expect(FileManager.default.contents(atPath: out).map(Array.init) == content)
                    #expect(result.taskID == downloader.taskID(for: url) && result.taskID.count == 64)
                    #expect(result.contentLength == Int64(content.count))
                    #expect(
                        result.bytesFromOrigin + result.bytesFromPeers + result.bytesFromCache >= Int64(content.count))
                    #expect(reports.value > 0)

                    // A wrong digest: an error naming it, and no file.
                    let wrong = "sha256:" + String(repeating: "0", count: 64)
                    let other = dir.appending("other.bin")
                    let mismatch = await #expect(throws: DownloaderError.self) {
                        try await downloader.download(url, to: other, options: DownloadOptions(digest: wrong))
                    }
                    #expect(mismatch?.isDaemonUnavailable == false)
                    #expect(!FileManager.default.fileExists(atPath: other))
                    let malformed = await #expect(throws: DownloaderError.self) {
                        try await downloader.download(url, to: other, options: DownloadOptions(digest: "sha1:00"))
                    }
                    #expect(malformed?.isDaemonUnavailable == false)
                }
                // No daemon on the socket any more: the caller is told to fall back.
                let gone = await #expect(throws: DownloaderError.self) {
                    try await Downloader(socketPath: socket).download(origin.url(for: "f.bin"), to: dir.appending("x"))
                }
                #expect(gone?.isDaemonUnavailable == true, "\(String(describing: gone))")
            }
        }
    }
}

/// Counts progress reports from a `@Sendable` closure.
private final class ReportCount: Sendable {
    private let count = Mutex(0)
    func add() { count.withLock { $0 += 1 } }
    var value: Int { count.withLock { $0 } }
}
