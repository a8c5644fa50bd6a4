import Crypto
import DragonflyCore
import DragonflyStorage
import DragonflyTestSupport
import Foundation
import Logging
import NIOCore
import Testing

/// Edge cases of `get --no-daemon` against real nginx: origins without ranges, error statuses, sizes at the
/// piece boundaries, and crash safety of the cache (issue acceptance of the storage/origin work).
@Suite(.serialized, .timeLimit(.minutes(3)))
struct GetOriginEdgeTests {
    static func get(_ url: String, _ out: String, _ dir: TemporaryDirectory, _ extra: [String] = []) async throws
        -> DragonflyRunResult
    {
        try await runDragonfly(["get", url, "-O", out, "--no-daemon", "--data-dir", dir.appending("data")] + extra)
    }

    @Test func originWithoutRangesIsReadAsOneStream() async throws {
        let content = GetNoDaemonTests.bytes(10 << 20 + 77, seed: 7)
        try await withNginxOrigin { origin in
            try origin.writeFile("blob.bin", contents: content)
            try await withTemporaryDirectory { dir in
                for (name, url) in [
                    ("norange", origin.rangeIgnoringURL(for: "blob.bin")),
                    ("liar", origin.rangeLyingURL(for: "blob.bin")),
                ] {
                    let out = dir.appending(name)
                    let result = try await Self.get(url, out, dir, ["--data-dir", dir.appending("data-\(name)")])
                    #expect(result.exitCode == 0, "\(name): \(result.stderr)")
                    #expect(GetNoDaemonTests.read(out) == content, "\(name)")
                }
                // Each origin sent the body once per stream it was asked for, never a whole body per piece.
                let norange = try origin.accessLog().filter { $0.uri.hasPrefix("/norange/") && $0.method == "GET" }
                #expect(norange.reduce(0) { $0 + $1.bytesSent } == content.count)
                let liar = try origin.accessLog().filter { $0.uri.hasPrefix("/liarange/") && $0.method == "GET" }
                #expect(liar.reduce(0) { $0 + $1.bytesSent } <= 2 * content.count)
            }
        }
    }

    @Test(arguments: [404, 500])
    func originErrorsLeaveTheDestinationAsItWas(status: Int) async throws {
        try await withNginxOrigin { origin in
            try await withTemporaryDirectory { dir in
                try dir.makeDirectory("out")
                let url = origin.statusURL(status)
                let absent = try await Self.get(url, dir.appending("out/absent"), dir)
                #expect(absent.exitCode == 1)
                #expect(absent.stderr.contains("origin returned \(status)"), "\(absent.stderr)")
                let existing = try dir.writeFile("out/existing", text: "keep me\n")
                let second = try await Self.get(url, existing, dir)
                #expect(second.exitCode == 1)
                #expect(GetNoDaemonTests.read(existing) == Array("keep me\n".utf8))
                #expect(try GetNoDaemonTests.entries(dir.appending("out")) == ["existing"])
            }
        }
    }

    @Test func matchingDigestReplacesAnExistingFile() async throws {
        let content = GetNoDaemonTests.bytes(3 << 20 + 1, seed: 3)
        try await withNginxOrigin { origin in
            try origin.writeFile("blob.bin", contents: content)
            try await withTemporaryDirectory { dir in
                let out = try dir.writeFile("out/blob.bin", text: "old\n")
                let digest = "sha256:" + GetNoDaemonTests.sha256(content)
                let result = try await Self.get(origin.url(for: "blob.bin"), out, dir, ["--digest", digest])
                #expect(result.exitCode == 0, "\(result.stderr)")
                #expect(GetNoDaemonTests.read(out) == content)
                #expect(try GetNoDaemonTests.entries(dir.appending("out")) == ["blob.bin"])
            }
        }
    }

    @Test(arguments: [0, 1, 4 << 20, 8 << 20])
    func sizesAtPieceBoundaries(size: Int) async throws {
        let content = GetNoDaemonTests.bytes(size, seed: UInt64(size) + 11)
        try await withNginxOrigin { origin in
            try origin.writeFile("blob.bin", contents: content)
            try await withTemporaryDirectory { dir in
                let out = dir.appending("blob.bin")
                let result = try await Self.get(origin.url(for: "blob.bin"), out, dir)
                #expect(result.exitCode == 0, "\(result.stderr)")
                #expect(GetNoDaemonTests.read(out) == content)
            }
        }
    }

    @Test func rangeOfAThousandBytes() async throws {
        let content = GetNoDaemonTests.bytes(2 << 20, seed: 5)
        try await withNginxOrigin { origin in
            try origin.writeFile("blob.bin", contents: content)
            try await withTemporaryDirectory { dir in
                let out = dir.appending("part")
                let result = try await Self.get(origin.url(for: "blob.bin"), out, dir, ["--range", "1000-1999"])
                #expect(result.exitCode == 0, "\(result.stderr)")
                #expect(GetNoDaemonTests.read(out) == Array(content[1000...1999]))
            }
        }
    }

    /// A real `get` is SIGKILLed while writing; every piece its metadata lists must verify, and finishing the
    /// task must fetch exactly the missing pieces.
    @Test func killedDownloadResumesFromVerifiedPieces() async throws {
        let pieceLength = 4 << 20
        let content = GetNoDaemonTests.bytes(12 * pieceLength, seed: 99)
        try await withNginxOrigin { origin in
            try origin.writeFile("blob.bin", contents: content)
            try await withTemporaryDirectory { dir in
                let data = dir.appending("data")
                let slow = origin.rateLimitedURL(for: "blob.bin", bytesPerSecond: 4 << 20)
                let taskID = TaskID.make(url: slow)
                try await withDragonfly(
                    [
                        "get", slow, "-O", dir.appending("out"), "--no-daemon", "--data-dir", data,
                        "--origin-connections", "2",
                    ],
                    readyFile: false
                ) { process in
                    // 12 one-piece requests over 2 connections at 4 MiB/s each take about 6 s. Kill once the
                    // metadata has grown past its first version, i.e. a batch listing pieces was persisted.
                    let meta = data + "/tasks/\(taskID.shard)/\(taskID)/meta"
                    func metaSize() -> Int? {
                        (try? FileManager.default.attributesOfItem(atPath: meta))?[.size] as? Int
                    }
                    try await poll(timeLimit: .seconds(60), description: "the first metadata") { metaSize() != nil }
                    let first = metaSize() ?? 0
                    try await poll(timeLimit: .seconds(60), description: "metadata listing more pieces") {
                        (metaSize() ?? 0) > first
                    }
                    try process.signal(.kill)
                    #expect(try await process.waitForExit(timeLimit: .seconds(10)) == .signaled(SIGKILL))
                }
                #expect(!FileManager.default.fileExists(atPath: dir.appending("out")))

                // Every piece the metadata lists is intact.
                let logger = Logger(label: "test")
                let store = PieceStore(dataDirectory: data, medium: DiskMedium(dataDirectory: data), logger: logger)
                _ = try await store.reload()
                let held = try store.finishedPieces(taskID: taskID)
                let digests = try store.pieceDigests(taskID: taskID)
                let listing = (FileManager.default.subpaths(atPath: data) ?? []).map { path -> String in
                    let size =
                        (try? FileManager.default.attributesOfItem(atPath: data + "/" + path)[.size] as? Int) ?? -1
                    return "\(path)=\(size)"
                }
                #expect(!held.isEmpty && held.count < 12, "held \(held), task \(taskID), files \(listing)")
                for number in held {
                    let expected = Array(content[(number * pieceLength)..<((number + 1) * pieceLength)])
                    let bytes = try await store.readPiece(taskID: taskID, number: number)
                    #expect(Array(buffer: bytes) == expected, "piece \(number)")
                    #expect(digests[number] == "sha256:" + GetNoDaemonTests.sha256(expected))
                }
                try await store.close()

                // Finishing fetches only the missing pieces.
                let before = try origin.totalBytesSent()
                let rerun = try await runDragonfly([
                    "get", slow, "-O", dir.appending("out"), "--no-daemon", "--data-dir", data,
                ])
                #expect(rerun.exitCode == 0, "\(rerun.stderr)")
                #expect(GetNoDaemonTests.read(dir.appending("out")) == content)
                #expect(try origin.totalBytesSent() - before == (12 - held.count) * pieceLength)
            }
        }
    }
}
