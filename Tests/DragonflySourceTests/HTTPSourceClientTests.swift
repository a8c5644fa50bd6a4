import DragonflyCore
import DragonflySource
import DragonflyTestSupport
import Foundation
import Testing

@Suite("HTTP source client against nginx", .timeLimit(.minutes(2)))
struct HTTPSourceClientTests {
    static let blob = randomBytes(count: 1 << 20, seed: 7)

    @Test func statReportsLengthValidatorsAndRangeSupport() async throws {
        try await withNginxOrigin { origin in
            try origin.writeFile("blob.bin", contents: Self.blob)
            try origin.writeFile("empty.bin", contents: [UInt8]())
            try await withHTTPSource { client in
                let url = origin.url(for: "blob.bin")
                let metadata = try await client.stat(SourceRequest(url: url))
                #expect(metadata.contentLength == Int64(Self.blob.count))
                #expect(metadata.supportsRanges)
                #expect(metadata.etag?.hasPrefix("\"") == true)
                #expect(metadata.etag?.hasSuffix("-100000\"") == true)  // nginx: "<mtime hex>-<size hex>"
                #expect(metadata.lastModified?.hasSuffix(" GMT") == true)
                #expect(metadata.finalURL == url)
                #expect(metadata.headers.contains { $0.name.lowercased() == "content-type" })

                let empty = try await client.stat(SourceRequest(url: origin.url(for: "empty.bin")))
                #expect(empty.contentLength == 0)
            }
            let log = try await accessLog(of: origin, count: 2)
            #expect(log.map(\.method) == ["HEAD", "HEAD"])
        }
    }

    @Test func statWithoutLengthProbesWithARangedGet() async throws {
        // nginx's directory listing is chunked: HEAD has no length, and the ranged probe gets 200 (the
        // listing ignores Range), so the length is unknown and ranges are not supported.
        try await withNginxOrigin { origin in
            try origin.writeFile("listing/a.bin", contents: [1, 2, 3])
            try await withHTTPSource { client in
                let metadata = try await client.stat(SourceRequest(url: origin.url(for: "listing/")))
                #expect(metadata.contentLength == nil)
                #expect(!metadata.supportsRanges)
            }
            let log = try await accessLog(of: origin, count: 2)
            #expect(log.map(\.method) == ["HEAD", "GET"])
            #expect(log.last?.range == "bytes=0-0")
        }
    }

    @Test func refusedHeadFallsBackToARangedGet() async throws {
        // The launcher cannot refuse only HEAD, so the fallback is observed with /status/501, which refuses
        // both: the probe is sent and its answer is the error reported.
        try await withNginxOrigin { origin in
            let url = origin.statusURL(501)
            try await withHTTPSource { client in
                let error = try await #require(throws: DragonflyError.self) {
                    try await client.stat(SourceRequest(url: url))
                }
                #expect(error.code == .originError)
                #expect((error.cause as? OriginResponseError)?.status == 501)
                #expect(error.message.contains("origin returned 501 Not Implemented for \(url)"))
            }
            let log = try await accessLog(of: origin, count: 2)
            #expect(log.map(\.method) == ["HEAD", "GET"])
            #expect(log.map(\.range) == [nil, "bytes=0-0"])
        }
    }

    @Test func fetchOfARangeReturnsExactlyThoseBytes() async throws {
        try await withNginxOrigin { origin in
            try origin.writeFile("blob.bin", contents: Self.blob)
            let url = origin.url(for: "blob.bin")
            try await withHTTPSource { client in
                let response = try await client.fetch(
                    SourceRequest(url: url), range: ByteRange(start: 1000, length: 5000))
                #expect(response.isPartial)
                #expect(response.metadata.contentLength == Int64(Self.blob.count))
                #expect(response.metadata.supportsRanges)
                #expect(try await collect(response.body).bytes == Array(Self.blob[1000..<6000]))

                let tail = try await client.fetch(
                    SourceRequest(url: url), range: ByteRange(start: 1_000_000, length: nil))
                #expect(tail.isPartial)
                #expect(try await collect(tail.body).bytes == Array(Self.blob[1_000_000...]))

                let whole = try await client.fetch(SourceRequest(url: url), range: nil)
                #expect(!whole.isPartial)
                #expect(whole.metadata.contentLength == Int64(Self.blob.count))
                #expect(try await collect(whole.body).bytes == Self.blob)
            }
            let log = try await accessLog(of: origin, count: 3)
            #expect(log.map(\.range) == ["bytes=1000-5999", "bytes=1000000-", nil])
            #expect(log.map(\.bytesSent) == [5000, Self.blob.count - 1_000_000, Self.blob.count])
        }
    }

    @Test func rangeAnsweredWithTheWholeBodyIsNotPartial() async throws {
        try await withNginxOrigin { origin in
            try origin.writeFile("blob.bin", contents: Self.blob)
            try await withHTTPSource { client in
                let response = try await client.fetch(
                    SourceRequest(url: origin.rangeIgnoringURL(for: "blob.bin")),
                    range: ByteRange(start: 100, length: 10))
                #expect(!response.isPartial)
                #expect(!response.metadata.supportsRanges)
                #expect(response.metadata.contentLength == Int64(Self.blob.count))
                #expect(try await collect(response.body).bytes == Self.blob)
            }
        }
    }

    @Test func errorStatusesAreOriginErrorsWithTheStatus() async throws {
        try await withNginxOrigin { origin in
            try origin.writeFile("blob.bin", contents: Self.blob)
            try await withHTTPSource { client in
                for url in [origin.statusURL(404), origin.url(for: "missing.bin")] {
                    let error = try await #require(throws: DragonflyError.self) {
                        try await client.fetch(SourceRequest(url: url), range: nil)
                    }
                    #expect(error.code == .originError)
                    #expect(error.message.hasPrefix("origin returned 404 Not Found for \(url)"))
                    let cause = try #require(error.cause as? OriginResponseError)
                    #expect(cause.status == 404)
                    #expect(cause.reason == "Not Found")
                    #expect(cause.headers.contains { $0.name.lowercased() == "content-type" })
                    #expect(!cause.isTemporary)
                }

                let url = origin.url(for: "blob.bin")
                let beyond = try await #require(throws: DragonflyError.self) {
                    try await client.fetch(
                        SourceRequest(url: url), range: ByteRange(start: Int64(Self.blob.count) + 10, length: 10))
                }
                #expect(beyond.code == .originError)
                #expect((beyond.cause as? OriginResponseError)?.status == 416)
                #expect(beyond.message.contains("416"))
                #expect(beyond.message.contains(url))

                let unavailable = try await #require(throws: DragonflyError.self) {
                    try await client.stat(SourceRequest(url: origin.statusURL(503)))
                }
                #expect((unavailable.cause as? OriginResponseError)?.isTemporary == true)
            }
        }
    }

    @Test func redirectsAreFollowedAndTheFinalURLIsReused() async throws {
        // nginx redirects a directory without its trailing slash (301 to `/dir/`); that is the redirect the
        // test origin can make.
        try await withNginxOrigin { origin in
            try origin.writeFile("dir/a.bin", contents: [1, 2, 3])
            let original = origin.url(for: "dir")
            let final = origin.url(for: "dir/")
            try await withHTTPSource { client in
                let metadata = try await client.stat(SourceRequest(url: original))
                #expect(metadata.finalURL == final)
                #expect(client.cachedFinalURL(for: original) == final)
                let response = try await client.fetch(SourceRequest(url: original), range: nil)
                #expect(response.metadata.finalURL == final)
                #expect(String(decoding: try await collect(response.body).bytes, as: UTF8.self).contains("a.bin"))
            }
            // HEAD /dir (301), HEAD /dir/ (no length), probe GET straight to /dir/, GET straight to /dir/.
            let log = try await accessLog(of: origin, count: 4)
            #expect(log.map(\.uri) == ["/dir", "/dir/", "/dir/", "/dir/"])
            #expect(log.map(\.status) == [301, 200, 200, 200])
        }
    }

    @Test func aStaleRedirectTargetIsForgotten() async throws {
        try await withNginxOrigin { origin in
            try origin.writeFile("moved/a.bin", contents: [1, 2, 3])
            let original = origin.url(for: "moved")
            try await withHTTPSource { client in
                _ = try await client.fetch(SourceRequest(url: original), range: nil)
                #expect(client.cachedFinalURL(for: original) == origin.url(for: "moved/"))

                // The directory becomes a file: the remembered `/moved/` now answers 404.
                let blob = randomBytes(count: 1000, seed: 3)
                try FileManager.default.removeItem(atPath: origin.root + "/moved")
                try origin.writeFile("moved", contents: blob)
                let response = try await client.fetch(SourceRequest(url: original), range: nil)
                #expect(try await collect(response.body).bytes == blob)
                #expect(client.cachedFinalURL(for: original) == nil)
            }
            let log = try await accessLog(of: origin, count: 4)
            #expect(log.map(\.uri) == ["/moved", "/moved/", "/moved/", "/moved"])
            #expect(log.map(\.status) == [301, 200, 404, 200])
        }
    }

    @Test func requestHeadersArePassedThroughExceptRange() async throws {
        try await withNginxOrigin { origin in
            try origin.writeFile("blob.bin", contents: Self.blob)
            let url = origin.url(for: "blob.bin")
            try await withHTTPSource { client in
                let etag = try #require(try await client.stat(SourceRequest(url: url)).etag)
                // nginx answers the passed-through validator with 304, which is no body to download.
                let conditional = SourceRequest(url: url, headers: [HeaderField(name: "If-None-Match", value: etag)])
                let error = try await #require(throws: DragonflyError.self) {
                    try await client.fetch(conditional, range: nil)
                }
                #expect((error.cause as? OriginResponseError)?.status == 304)

                // A Range among the headers is dropped: ranges come from the `range` argument only.
                let ranged = SourceRequest(url: url, headers: [HeaderField(name: "Range", value: "bytes=0-9")])
                let response = try await client.fetch(ranged, range: nil)
                #expect(try await collect(response.body).bytes == Self.blob)
            }
            let log = try await accessLog(of: origin, count: 3)
            #expect(log.map(\.status) == [200, 304, 200])
            #expect(log.map(\.range) == [nil, nil, nil])
        }
    }

    @Test func refusedConnectionIsUnavailableAndNamesTheHost() async throws {
        let port = try freeLoopbackPort()
        let url = "http://127.0.0.1:\(port)/blob.bin"
        try await withHTTPSource { client in
            let error = try await #require(throws: DragonflyError.self) {
                try await client.stat(SourceRequest(url: url))
            }
            #expect(error.code == .unavailable)
            #expect(error.message.contains("127.0.0.1"))
            #expect(error.message.contains("127.0.0.1:\(port)"))
            #expect(error.message.contains("connection refused"))
        }
    }

    @Test func badURLsAndSchemesAreInvalidArguments() async throws {
        try await withHTTPSource { client in
            let error = try await #require(throws: DragonflyError.self) {
                try await client.stat(SourceRequest(url: "ftp://example.com/x"))
            }
            #expect(error.code == .invalidArgument)
        }
    }

    @Test func badTLSSettingsAreConfigurationErrorsNamingTheKey() throws {
        let missing = try #require(throws: DragonflyError.self) {
            _ = try HTTPSourceClient(configuration: HTTPSourceConfig(caCertificates: ["/nonexistent/ca.pem"]))
        }
        #expect(missing.code == .configuration)
        #expect(missing.message.contains("tls.caCerts[0]"))

        let badPattern = try #require(throws: DragonflyError.self) {
            _ = try HTTPSourceClient(configuration: HTTPSourceConfig(insecureHosts: ["(unclosed"]))
        }
        #expect(badPattern.code == .configuration)
        #expect(badPattern.message.contains("tls.insecureHosts[0]"))
    }
}
