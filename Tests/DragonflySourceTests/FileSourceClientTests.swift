import DragonflyCore
import DragonflySource
import DragonflyTestSupport
import Testing

@Suite("file source client", .timeLimit(.minutes(1)))
struct FileSourceClientTests {
    static let blob = randomBytes(count: 3 * (1 << 20) + 777, seed: 17)

    @Test func statReportsTheLengthValidatorsAndRangeSupport() async throws {
        try await withTemporaryDirectory { directory in
            let path = try directory.writeFile("blob.bin", contents: Self.blob)
            let url = FileURL.url(forPath: path)
            let metadata = try await FileSourceClient().stat(SourceRequest(url: url))
            #expect(metadata.contentLength == Int64(Self.blob.count))
            #expect(metadata.supportsRanges)
            #expect(metadata.etag?.hasSuffix("-\(String(Self.blob.count, radix: 16))\"") == true)
            #expect(metadata.lastModified?.hasSuffix(" GMT") == true)
            #expect(metadata.finalURL == url)
        }
    }

    @Test func fetchStreamsRangesInChunksOfAtMostOneMebibyte() async throws {
        try await withTemporaryDirectory { directory in
            let url = FileURL.url(forPath: try directory.writeFile("blob.bin", contents: Self.blob))
            let client = FileSourceClient()

            let whole = try await client.fetch(SourceRequest(url: url), range: nil)
            #expect(!whole.isPartial)
            let (bytes, chunks) = try await collect(whole.body)
            #expect(bytes == Self.blob)
            #expect(chunks.allSatisfy { $0 <= 1 << 20 })
            #expect(chunks.count == 4)

            let middle = try await client.fetch(SourceRequest(url: url), range: ByteRange(start: 1000, length: 2 << 20))
            #expect(middle.isPartial)
            #expect(try await collect(middle.body).bytes == Array(Self.blob[1000..<(1000 + (2 << 20))]))

            let tail = try await client.fetch(SourceRequest(url: url), range: ByteRange(start: 3 << 20, length: nil))
            #expect(try await collect(tail.body).bytes == Array(Self.blob[(3 << 20)...]))

            let clipped = try await client.fetch(
                SourceRequest(url: url), range: ByteRange(start: Int64(Self.blob.count) - 10, length: 100))
            #expect(try await collect(clipped.body).bytes == Array(Self.blob.suffix(10)))

            let beyond = try await #require(throws: DragonflyError.self) {
                try await client.fetch(
                    SourceRequest(url: url), range: ByteRange(start: Int64(Self.blob.count), length: 1))
            }
            #expect(beyond.code == .originError)
            #expect(beyond.message.contains(url))
        }
    }

    @Test func percentEncodedNamesAreDecoded() async throws {
        try await withTemporaryDirectory { directory in
            let path = try directory.writeFile("a name%with ü.bin", contents: [1, 2, 3])
            let url = FileURL.url(forPath: path)
            #expect(url.contains("a%20name%25with%20%C3%BC.bin"))
            let response = try await FileSourceClient().fetch(SourceRequest(url: url), range: nil)
            #expect(try await collect(response.body).bytes == [1, 2, 3])
        }
    }

    @Test func aMissingFileIsAnOriginErrorNamingIt() async throws {
        try await withTemporaryDirectory { directory in
            let path = directory.appending("missing.bin")
            let url = FileURL.url(forPath: path)
            for operation in ["stat", "fetch"] {
                let error = try await #require(throws: DragonflyError.self) {
                    if operation == "stat" {
                        _ = try await FileSourceClient().stat(SourceRequest(url: url))
                    } else {
                        _ = try await FileSourceClient().fetch(SourceRequest(url: url), range: nil)
                    }
                }
                #expect(error.code == .originError)
                #expect(error.message.hasPrefix("no such file \(path)"))
            }
        }
    }

    @Test func aDirectoryIsListedNotFetched() async throws {
        try await withTemporaryDirectory { directory in
            try directory.writeFile("tree/b.bin", contents: [UInt8](repeating: 7, count: 10))
            try directory.writeFile("tree/a.txt", text: "hello")
            try directory.writeFile("tree/sub/c.bin", contents: [1])
            let url = FileURL.url(forPath: directory.appending("tree"))
            let client = FileSourceClient()

            let error = try await #require(throws: DragonflyError.self) {
                try await client.stat(SourceRequest(url: url))
            }
            #expect(error.code == .invalidArgument)
            #expect(error.message.contains("is a directory"))

            let entries = try await client.list(SourceRequest(url: url))
            let base = FileURL.url(forPath: directory.appending("tree/"))
            #expect(
                entries == [
                    SourceEntry(url: base + "a.txt", isDirectory: false, contentLength: 5),
                    SourceEntry(url: base + "b.bin", isDirectory: false, contentLength: 10),
                    SourceEntry(url: base + "sub", isDirectory: true, contentLength: nil),
                ])

            let notDirectory = try await #require(throws: DragonflyError.self) {
                try await client.list(SourceRequest(url: base + "a.txt"))
            }
            #expect(notDirectory.code == .invalidArgument)
        }
    }

    @Test func piecesOfALocalFileAreFetchedWithRanges() async throws {
        try await withTemporaryDirectory { directory in
            let url = FileURL.url(forPath: try directory.writeFile("blob.bin", contents: Self.blob))
            let client = FileSourceClient()
            let request = SourceRequest(url: url)
            let metadata = try await client.stat(request)
            let sink = PieceSink()
            let summary = try await PieceFetcher(client: client).fetch(
                request, metadata: metadata, pieceLength: 512 << 10, consumer: sink.consumer)
            #expect(sink.reassembled == Self.blob)
            #expect(summary.pieceCount == 7)
            #expect(!summary.usedSingleStream)
        }
    }

    @Test(arguments: ["http://x/y", "file://otherhost/etc/passwd", "file:relative", "file:///bad%zz"])
    func malformedFileURLsAreInvalidArguments(url: String) throws {
        let error = try #require(throws: DragonflyError.self) { try FileURL.path(from: url) }
        #expect(error.code == .invalidArgument)
    }

    @Test func fileURLsRoundTrip() throws {
        #expect(try FileURL.path(from: "file:///tmp/a%20b") == "/tmp/a b")
        #expect(try FileURL.path(from: "file://localhost/tmp/x?query#frag") == "/tmp/x")
        #expect(try FileURL.path(from: FileURL.url(forPath: "/tmp/100% ?#.bin")) == "/tmp/100% ?#.bin")
    }
}
