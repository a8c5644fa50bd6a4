import AsyncHTTPClient
import DragonflyTestSupport
import NIOCore  // ByteBuffer (via AsyncHTTPClient)
import NIOHTTP1  // HTTPHeaders, HTTPResponseStatus (via AsyncHTTPClient)
import Testing

@Suite(.serialized) struct NginxOriginTests {
    /// 4 KiB of distinct bytes, so a wrong offset shows.
    static let blob: [UInt8] = (0..<4096).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ $0 >> 8) }

    static func get(_ url: String, headers: [(String, String)] = []) async throws -> (HTTPClientResponse, [UInt8]) {
        var request = HTTPClientRequest(url: url)
        for (name, value) in headers {
            request.headers.add(name: name, value: value)
        }
        let response = try await HTTPClient.shared.execute(request, timeout: .seconds(30))
        let body = try await response.body.collect(upTo: 16 << 20)
        return (response, Array(buffer: body))
    }

    @Test(.timeLimit(.minutes(1)))
    func fullGetReturnsTheFileWithAnETag() async throws {
        try await withNginxOrigin { origin in
            try origin.writeFile("blob.bin", contents: Self.blob)
            let (response, body) = try await Self.get(origin.url(for: "blob.bin"))
            #expect(response.status.code == 200)
            #expect(body == Self.blob)
            #expect(response.headers.first(name: "ETag")?.isEmpty == false)
            #expect(response.headers.first(name: "Accept-Ranges") == "bytes")
            #expect(origin.url(for: "blob.bin") == "http://127.0.0.1:\(origin.port)/blob.bin")
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func rangeGetReturns206AndIsLoggedWithItsBytes() async throws {
        try await withNginxOrigin { origin in
            try origin.writeFile("blob.bin", contents: Self.blob)
            let (response, body) = try await Self.get(
                origin.url(for: "blob.bin"), headers: [("Range", "bytes=100-1123")])
            #expect(response.status.code == 206)
            #expect(body.count == 1024)
            #expect(body == Array(Self.blob[100...1123]))
            #expect(response.headers.first(name: "Content-Range") == "bytes 100-1123/4096")

            try await poll(timeLimit: .seconds(10), description: "the access log entry for the range request") {
                try !origin.accessLog().isEmpty
            }
            let entries = try origin.accessLog()
            #expect(entries.count == 1)
            let entry = try #require(entries.first)
            #expect(entry.method == "GET")
            #expect(entry.uri == "/blob.bin")
            #expect(entry.status == 206)
            #expect(entry.bytesSent == 1024)
            #expect(entry.range == "bytes=100-1123")
            #expect(try origin.totalBytesSent() == 1024)
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func statusLocationsAnswerWithTheirCode() async throws {
        try await withNginxOrigin { origin in
            let (unavailable, _) = try await Self.get(origin.statusURL(503))
            #expect(unavailable.status.code == 503)
            let (notFound, _) = try await Self.get(origin.statusURL(404))
            #expect(notFound.status.code == 404)
            try await poll(timeLimit: .seconds(10), description: "two access log entries") {
                try origin.accessLog().count == 2
            }
            #expect(try origin.accessLog().map(\.status) == [503, 404])
            #expect(try origin.accessLog().allSatisfy { $0.range == nil })
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func unsatisfiableRangeGives416AndRangeIgnoringLocationGives200() async throws {
        try await withNginxOrigin { origin in
            try origin.writeFile("dir/blob.bin", contents: Self.blob)
            let (outside, _) = try await Self.get(
                origin.url(for: "dir/blob.bin"), headers: [("Range", "bytes=5000-6000")])
            #expect(outside.status.code == 416)
            let (ignored, body) = try await Self.get(
                origin.rangeIgnoringURL(for: "dir/blob.bin"),
                headers: [("Range", "bytes=0-9")]
            )
            #expect(ignored.status.code == 200)
            #expect(body == Self.blob)
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func rateLimitedLocationSlowsTheResponse() async throws {
        try await withNginxOrigin { origin in
            let payload = [UInt8](repeating: 7, count: 48 * 1024)
            try origin.writeFile("slow.bin", contents: payload)
            let clock = ContinuousClock()
            let start = clock.now
            let (response, body) = try await Self.get(origin.rateLimitedURL(for: "slow.bin", bytesPerSecond: 32 * 1024))
            let elapsed = clock.now - start
            #expect(response.status.code == 200)
            #expect(body == payload)
            // 48 KiB at 32 KiB/s takes about 1.5 s; allow for nginx's coarse rate accounting.
            #expect(elapsed >= .milliseconds(700))
            try await poll(timeLimit: .seconds(10), description: "the rate-limited request in the access log") {
                try origin.accessLog().count == 1
            }
            #expect(try origin.accessLog().first?.uri == "/rl/slow.bin?bps=32768")
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func globalLimitRateIsAccepted() async throws {
        try await withNginxOrigin(limitRate: 64 * 1024 * 1024) { origin in
            try origin.writeFile("blob.bin", contents: Self.blob)
            let (response, body) = try await Self.get(origin.url(for: "blob.bin"))
            #expect(response.status.code == 200)
            #expect(body == Self.blob)
        }
    }
}
