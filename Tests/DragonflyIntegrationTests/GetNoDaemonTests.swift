import Crypto
import DragonflyCore
import DragonflyTestSupport
import Foundation
import Testing

/// `dragonfly get --no-daemon` against a real nginx origin (DESIGN §6 step 7, §15).
@Suite(.serialized, .timeLimit(.minutes(3)))
struct GetNoDaemonTests {
    /// Deterministic pseudo-random bytes (xorshift), so every offset is distinct.
    static func bytes(_ count: Int, seed: UInt64 = 0x9E37_79B9_7F4A_7C15) -> [UInt8] {
        var state = seed
        var out = [UInt8](repeating: 0, count: count)
        var index = 0
        while index < count {
            state ^= state << 13
            state ^= state >> 7
            state ^= state << 17
            withUnsafeBytes(of: state.littleEndian) { word in
                for byte in word where index < count {
                    out[index] = byte
                    index += 1
                }
            }
        }
        return out
    }

    static func sha256(_ bytes: [UInt8]) -> String {
        SHA256.hash(data: bytes).map { String(format: "%02x", $0) }.joined()
    }

    static func read(_ path: String) -> [UInt8]? {
        FileManager.default.contents(atPath: path).map(Array.init)
    }

    static func entries(_ dir: String) throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: dir).sorted()
    }

    static let fileSize = 64 << 20

    @Test func downloadsTheWholeFileAndCachesIt() async throws {
        let content = Self.bytes(Self.fileSize)
        try await withNginxOrigin { origin in
            try origin.writeFile("blob.bin", contents: content)
            try await withTemporaryDirectory { dir in
                let out = dir.appending("out/blob.bin")
                try dir.makeDirectory("out")
                let args = [
                    "get", origin.url(for: "blob.bin"), "-O", out, "--no-daemon", "--data-dir", dir.appending("data"),
                ]
                let first = try await runDragonfly(args + ["--digest", "sha256:" + Self.sha256(content)])
                #expect(first.exitCode == 0, "\(first.stderr)")
                #expect(Self.read(out) == content)
                #expect(first.stderr.contains("dragonfly: \(origin.url(for: "blob.bin")) -> \(out)"), "\(first.stderr)")
                #expect(try Self.entries(dir.appending("out")) == ["blob.bin"])
                // Piece-aligned concurrent range requests, each byte read from the origin once.
                let log = try origin.accessLog().filter { $0.method == "GET" }
                #expect(log.count >= 4)
                let pieceLength = 4 << 20
                for entry in log {
                    let range = try #require(entry.range)
                    let bounds = range.dropFirst("bytes=".count).split(separator: "-").compactMap { Int($0) }
                    #expect(bounds.count == 2 && bounds[0] % pieceLength == 0, "\(range) is not piece-aligned")
                    #expect(bounds.count == 2 && ((bounds[1] + 1) % pieceLength == 0 || bounds[1] + 1 == Self.fileSize))
                }
                #expect(try origin.totalBytesSent() == Self.fileSize)

                // The second run is served from the cache without reading the origin again.
                try FileManager.default.removeItem(atPath: out)
                let second = try await runDragonfly(args)
                #expect(second.exitCode == 0, "\(second.stderr)")
                #expect(Self.read(out) == content)
                #expect(try origin.totalBytesSent() == Self.fileSize)
            }
        }
    }

    @Test func rangeRequestsToTheOriginRunConcurrently() async throws {
        // 32 MiB at 8 MiB/s per request: each 4 MiB piece takes half a second, so requests that ran one after
        // another could not overlap, and more than --origin-connections could not be open at once.
        let content = Self.bytes(32 << 20)
        try await withNginxOrigin { origin in
            try origin.writeFile("slow.bin", contents: content)
            try await withTemporaryDirectory { dir in
                let out = dir.appending("slow.bin")
                let result = try await runDragonfly([
                    "get", origin.rateLimitedURL(for: "slow.bin", bytesPerSecond: 8 << 20), "-O", out, "--no-daemon",
                    "--data-dir", dir.appending("data"), "--origin-connections", "3",
                ])
                #expect(result.exitCode == 0, "\(result.stderr)")
                #expect(Self.read(out) == content)
                let requests = try origin.accessLog().filter { $0.method == "GET" && $0.range != nil }
                #expect(requests.count == 8)
                // The most requests open at one instant, from nginx's start and end times.
                let edges = requests.flatMap { [($0.startedAt, 1), ($0.finishedAt, -1)] }
                    .sorted { ($0.0, $0.1) < ($1.0, $1.1) }
                var open = 0
                var mostOpen = 0
                for (_, change) in edges {
                    open += change
                    mostOpen = max(mostOpen, open)
                }
                #expect(mostOpen >= 2 && mostOpen <= 3, "at most \(mostOpen) range requests were open at once")
            }
        }
    }

    @Test func wrongDigestLeavesTheDestinationUnchanged() async throws {
        let content = Self.bytes(5 << 20 + 7)
        try await withNginxOrigin { origin in
            try origin.writeFile("blob.bin", contents: content)
            try await withTemporaryDirectory { dir in
                let out = try dir.writeFile("out/blob.bin", text: "previous contents\n")
                let wrong = "sha256:" + String(repeating: "0", count: 64)
                let result = try await runDragonfly([
                    "get", origin.url(for: "blob.bin"), "-O", out, "--no-daemon", "--data-dir", dir.appending("data"),
                    "--digest", wrong,
                ])
                #expect(result.exitCode == 1)
                #expect(result.stderr.contains("digest mismatch"), "\(result.stderr)")
                #expect(Self.read(out) == Array("previous contents\n".utf8))
                #expect(try Self.entries(dir.appending("out")) == ["blob.bin"])
            }
        }
    }

    @Test func originErrorNamesTheStatusAndCreatesNothing() async throws {
        try await withNginxOrigin { origin in
            try await withTemporaryDirectory { dir in
                try dir.makeDirectory("out")
                let url = origin.url(for: "missing.bin")
                let result = try await runDragonfly([
                    "get", url, "-O", dir.appending("out/x"), "--no-daemon", "--data-dir", dir.appending("data"),
                ])
                #expect(result.exitCode == 1)
                #expect(result.stderr.contains("origin returned 404 Not Found for \(url)"), "\(result.stderr)")
                #expect(try Self.entries(dir.appending("out")).isEmpty)
            }
        }
    }

    @Test func rangeWritesOnlyThoseBytesAndBeyondTheEndIs416() async throws {
        let content = Self.bytes(9 << 20 + 100)
        try await withNginxOrigin { origin in
            try origin.writeFile("blob.bin", contents: content)
            try await withTemporaryDirectory { dir in
                let out = dir.appending("part.bin")
                let base = ["get", origin.url(for: "blob.bin"), "--no-daemon", "--data-dir", dir.appending("data")]
                let result = try await runDragonfly(base + ["-O", out, "--range", "4194000-8388700"])
                #expect(result.exitCode == 0, "\(result.stderr)")
                #expect(Self.read(out) == Array(content[4_194_000...8_388_700]))
                let tail = try await runDragonfly(base + ["-O", dir.appending("tail.bin"), "--range", "9437000-"])
                #expect(tail.exitCode == 0, "\(tail.stderr)")
                #expect(Self.read(dir.appending("tail.bin")) == Array(content[9_437_000...]))
                let beyond = try await runDragonfly(base + ["-O", dir.appending("none.bin"), "--range", "99999999-"])
                #expect(beyond.exitCode == 1)
                #expect(beyond.stderr.contains("416"), "\(beyond.stderr)")
                #expect(!FileManager.default.fileExists(atPath: dir.appending("none.bin")))
            }
        }
    }

    @Test func standardOutputReceivesTheBytesInOrder() async throws {
        let content = Self.bytes(6 << 20 + 3)
        try await withNginxOrigin { origin in
            try origin.writeFile("blob.bin", contents: content)
            try await withTemporaryDirectory { dir in
                let arguments = [
                    "get", origin.url(for: "blob.bin"), "-O", "-", "--no-daemon", "--data-dir", dir.appending("data"),
                ]
                try await withDragonfly(arguments, readyFile: false) { process in
                    let status = try await process.waitForExit(timeLimit: .seconds(60))
                    #expect(status == .exited(0), "\(process.stderrText())")
                    let written = Self.read(process.standardOutputPath) ?? []
                    #expect(written.count == content.count)
                    #expect(written == content)
                }
            }
        }
    }

    @Test func standardOutputStreamsWhileDownloading() async throws {
        let content = Self.bytes(16 << 20, seed: 21)
        try await withNginxOrigin { origin in
            try origin.writeFile("blob.bin", contents: content)
            try await withTemporaryDirectory { dir in
                // 4 pieces at 4 MiB/s over one connection: about 4 s in all, the first piece after about 1 s.
                let slow = origin.rateLimitedURL(for: "blob.bin", bytesPerSecond: 4 << 20)
                let arguments = [
                    "get", slow, "-O", "-", "--no-daemon", "--data-dir", dir.appending("data"), "--origin-connections",
                    "1",
                ]
                try await withDragonfly(arguments, readyFile: false) { process in
                    try await poll(timeLimit: .seconds(60), description: "the first piece on standard output") {
                        (Self.read(process.standardOutputPath)?.count ?? 0) >= 4 << 20
                    }
                    // Bytes arrived before the download finished: streamed, not written at the end.
                    #expect(try process.exitStatus() == nil)
                    #expect(try await process.waitForExit(timeLimit: .seconds(60)) == .exited(0))
                    #expect(Self.read(process.standardOutputPath) == content)
                }
                let rangeArguments = [
                    "get", origin.url(for: "blob.bin"), "-O", "-", "--no-daemon", "--data-dir", dir.appending("data2"),
                    "--range", "5000000-9000000",
                ]
                try await withDragonfly(rangeArguments, readyFile: false) { process in
                    let status = try await process.waitForExit(timeLimit: .seconds(60))
                    #expect(status == .exited(0))
                    #expect(Self.read(process.standardOutputPath) == Array(content[5_000_000...9_000_000]))
                }
            }
        }
    }

    @Test func outputPathRules() async throws {
        try await withNginxOrigin { origin in
            try origin.writeFile("small.bin", contents: Self.bytes(1000))
            try await withTemporaryDirectory { dir in
                let url = origin.url(for: "small.bin")
                let directory = try await runDragonfly(["get", url, "-O", dir.path, "--no-daemon"])
                #expect(directory.exitCode == 2)
                #expect(directory.stderr.contains("is a directory"), "\(directory.stderr)")
                let missing = try await runDragonfly(["get", url, "-O", dir.appending("nope/out.bin"), "--no-daemon"])
                #expect(missing.exitCode == 1)
                #expect(missing.stderr.contains("does not exist"), "\(missing.stderr)")
                #expect(!FileManager.default.fileExists(atPath: dir.appending("nope")))
                for bad in [
                    ["--digest", "sha256:abc"], ["--range", "10-5"], ["-H", "no colon"], ["--piece-length", "3M"],
                ] {
                    let result = try await runDragonfly(["get", url, "-O", dir.appending("x")] + bad)
                    #expect(result.exitCode == 2, "\(bad): \(result.stderr)")
                    #expect(result.stderr.contains(bad[0]), "the message does not name \(bad[0]): \(result.stderr)")
                }
                let scheme = try await runDragonfly(["get", "gopher://x/y", "-O", dir.appending("x"), "--no-daemon"])
                #expect(scheme.exitCode == 2, "\(scheme.stderr)")
                #expect(scheme.stderr.contains("gopher"))
            }
        }
    }

    @Test func presignedURLsOfOneObjectShareTheTask() async throws {
        let content = Self.bytes(3 << 20)
        try await withNginxOrigin { origin in
            try origin.writeFile("obj.bin", contents: content)
            try await withTemporaryDirectory { dir in
                let data = dir.appending("data")
                let first = origin.url(for: "obj.bin") + "?X-Amz-Signature=aaa&X-Amz-Date=1"
                let second = origin.url(for: "obj.bin") + "?X-Amz-Signature=bbb&X-Amz-Date=2"
                let a = try await runDragonfly([
                    "get", first, "-O", dir.appending("a"), "--no-daemon", "--data-dir", data,
                ])
                #expect(a.exitCode == 0, "\(a.stderr)")
                let sent = try origin.totalBytesSent()
                let b = try await runDragonfly([
                    "get", second, "-O", dir.appending("b"), "--no-daemon", "--data-dir", data,
                ])
                #expect(b.exitCode == 0, "\(b.stderr)")
                #expect(Self.read(dir.appending("b")) == content)
                #expect(try origin.totalBytesSent() == sent)
            }
        }
    }

    @Test(arguments: [(ProcessSignal.interrupt, Int32(130)), (ProcessSignal.terminate, Int32(143))])
    func interruptionLeavesTheDestinationAndResumes(signal: ProcessSignal, code: Int32) async throws {
        let content = Self.bytes(8 << 20)
        try await withNginxOrigin { origin in
            try origin.writeFile("blob.bin", contents: content)
            try await withTemporaryDirectory { dir in
                let out = try dir.writeFile("out/blob.bin", text: "old\n")
                let data = dir.appending("data")
                // 4 MiB/s: the first piece lands after about a second, the second never before the signal.
                let slow = origin.rateLimitedURL(for: "blob.bin", bytesPerSecond: 4 << 20)
                try await withDragonfly(
                    ["get", slow, "-O", out, "--no-daemon", "--data-dir", data, "--origin-connections", "1"],
                    readyFile: false
                ) { process in
                    try await poll(timeLimit: .seconds(30), description: "the first origin request") {
                        try origin.accessLog().isEmpty == false
                            || FileManager.default.fileExists(atPath: data + "/tasks")
                    }
                    try process.signal(signal)
                    let status = try await process.waitForExit(timeLimit: .seconds(10))
                    #expect(status == .exited(code), "\(process.stderrText())")
                }
                #expect(Self.read(out) == Array("old\n".utf8))
                #expect(try Self.entries(dir.appending("out")) == ["blob.bin"])
                // A rerun over the same data dir completes and writes the new bytes.
                let rerun = try await runDragonfly([
                    "get", origin.url(for: "blob.bin"), "-O", out, "--no-daemon", "--data-dir", data,
                ])
                #expect(rerun.exitCode == 0, "\(rerun.stderr)")
                #expect(Self.read(out) == content)
            }
        }
    }

    /// Bytes of every task's data file under `data`.
    static func cachedBytes(_ data: String) -> Int {
        let tasks = data + "/tasks"
        let paths = (try? FileManager.default.subpathsOfDirectory(atPath: tasks)) ?? []
        return paths.filter { $0.hasSuffix("/data") }.reduce(0) { total, path in
            let size = (try? FileManager.default.attributesOfItem(atPath: tasks + "/" + path))?[.size] as? Int
            return total + (size ?? 0)
        }
    }

    @Test func theCacheOverItsQuotaIsTrimmedToItsLowWatermark() async throws {
        try await withNginxOrigin { origin in
            for name in ["a", "b", "c"] {
                try origin.writeFile("\(name).bin", contents: Self.bytes(4 << 20, seed: UInt64(name.utf8.first ?? 0)))
            }
            try await withTemporaryDirectory { dir in
                // Quota 10 MiB: over 8 MiB (80 %) the cache is trimmed to 5 MiB (50 %), least recently used first.
                let config = try dir.writeFile(
                    "daemon.yaml", text: "storage:\n  quota: 10M\n  highWatermark: 80\n  lowWatermark: 50\n")
                let data = dir.appending("data")
                for name in ["a", "b", "c"] {
                    let result = try await runDragonfly([
                        "get", origin.url(for: "\(name).bin"), "-O", dir.appending("\(name).bin"), "--no-daemon",
                        "--data-dir", data, "--daemon-config", config, "--no-progress",
                    ])
                    #expect(result.exitCode == 0, "\(result.stderr)")
                    #expect(Self.read(dir.appending("\(name).bin"))?.count == 4 << 20)
                }
                // Before the third get the cache held 8 MiB; with c it went over the quota's high watermark.
                #expect(Self.cachedBytes(data) <= 5 << 20, "\(Self.cachedBytes(data)) bytes cached")
                #expect(Self.cachedBytes(data) >= 4 << 20, "the latest task stays")
            }
        }
    }

    @Test func timeoutFailsClearly() async throws {
        try await withNginxOrigin { origin in
            try origin.writeFile("blob.bin", contents: Self.bytes(4 << 20))
            try await withTemporaryDirectory { dir in
                let slow = origin.rateLimitedURL(for: "blob.bin", bytesPerSecond: 64 << 10)
                let result = try await runDragonfly([
                    "get", slow, "-O", dir.appending("x"), "--no-daemon", "--data-dir", dir.appending("data"),
                    "--timeout", "1s",
                ])
                #expect(result.exitCode == 1)
                #expect(result.stderr.contains("timed out after 1s"), "\(result.stderr)")
                #expect(!FileManager.default.fileExists(atPath: dir.appending("x")))
            }
        }
    }
}
