import Crypto
import DragonflyClient
import DragonflyCore
import DragonflySource
import DragonflyStorage
import DragonflyTestSupport
import Foundation
import Logging
import Testing

/// The `--no-daemon` engine in-process over the real `file` source and a real disk store.
@Suite struct OriginDownloadTests {
    static func content(_ count: Int) -> [UInt8] {
        (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ ($0 >> 12)) }
    }

    static func run(_ request: GetRequest, dir: TemporaryDirectory) async throws -> GetSummary {
        let registry = PluginRegistry()
        try registry.register(source: FileSourceClient())
        let data = dir.appending("data")
        try DataDirectoryLock.makeDirectories(data)
        let store = PieceStore(dataDirectory: data, medium: DiskMedium(dataDirectory: data), logger: Logger(label: "t"))
        _ = try await store.reload()
        defer { Task { try? await store.close() } }
        return try await OriginDownload(request: request, registry: registry, store: store, logger: Logger(label: "t"))
            .run { _ in }
    }

    @Test func downloadsAFileURLAndVerifiesTheDigest() async throws {
        try await withTemporaryDirectory { dir in
            let bytes = Self.content(9 << 20 + 5)
            let source = try dir.writeFile("src.bin", contents: bytes)
            let digest = try FileDigest(
                parsing: "sha256:" + SHA256.hash(data: bytes).map { String(format: "%02x", $0) }.joined())
            let out = dir.appending("out.bin")
            let summary = try await Self.run(GetRequest(url: "file://" + source, output: out, digest: digest), dir: dir)
            #expect(summary.outputBytes == Int64(bytes.count))
            #expect(summary.originBytes == Int64(bytes.count))
            #expect(FileManager.default.contents(atPath: out).map(Array.init) == bytes)
            // The second run is served from the store.
            let again = try await Self.run(GetRequest(url: "file://" + source, output: out), dir: dir)
            #expect(again.originBytes == 0)
            #expect(again.cachedBytes == Int64(bytes.count))
        }
    }

    @Test func digestMismatchWritesNothing() async throws {
        try await withTemporaryDirectory { dir in
            let source = try dir.writeFile("src.bin", contents: Self.content(1000))
            let wrong = try FileDigest(parsing: "md5:" + String(repeating: "0", count: 32))
            let out = dir.appending("out.bin")
            await #expect {
                _ = try await Self.run(GetRequest(url: "file://" + source, output: out, digest: wrong), dir: dir)
            } throws: { ($0 as? DragonflyError)?.code == .dataLoss }
            #expect(!FileManager.default.fileExists(atPath: out))
        }
    }

    @Test func rangeFetchesOnlyTheTouchedPieces() async throws {
        try await withTemporaryDirectory { dir in
            let bytes = Self.content(12 << 20)
            let source = try dir.writeFile("src.bin", contents: bytes)
            let out = dir.appending("part.bin")
            let request = GetRequest(
                url: "file://" + source, output: out, range: ByteRange(start: 5 << 20, length: 100))
            let summary = try await Self.run(request, dir: dir)
            #expect(
                FileManager.default.contents(atPath: out).map(Array.init) == Array(bytes[(5 << 20)..<((5 << 20) + 100)])
            )
            // One 4 MiB piece read from the origin, not the whole object.
            #expect(summary.originBytes == 4 << 20)
        }
    }

    @Test func disabledBackToSourceFailsClearly() async throws {
        try await withTemporaryDirectory { dir in
            let source = try dir.writeFile("src.bin", contents: Self.content(10))
            await #expect {
                _ = try await Self.run(
                    GetRequest(url: "file://" + source, output: dir.appending("o"), disableBackToSource: true), dir: dir
                )
            } throws: { error in
                let error = error as? DragonflyError
                return error?.code == .unavailable && error?.message.contains("back-to-source is disabled") == true
            }
        }
    }

    @Test func taskIDFollowsTheFilterRules() {
        let request = GetRequest(url: "https://example.com", output: nil, tag: "foo", application: "bar")
        #expect(request.taskID.rawValue == "06408fbf247ddaca478f8cb9565fe5591c28efd0994b8fea80a6a87d3203c5ca")
        let custom = GetRequest(url: "https://h/p?token=1", output: nil, filteredQueryParams: ["token"])
        #expect(custom.taskID == TaskID.make(url: "https://h/p"))
    }
}
