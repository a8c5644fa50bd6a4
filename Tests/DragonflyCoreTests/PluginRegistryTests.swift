import DragonflyCore
import NIOCore
import Testing

private struct EchoSource: SourceClient {
    let schemes: [String]
    func stat(_ request: SourceRequest) async throws -> SourceMetadata {
        SourceMetadata(contentLength: Int64(request.url.utf8.count), supportsRanges: false)
    }
    func fetch(_ request: SourceRequest, range: ByteRange?) async throws -> SourceResponse {
        let body = AsyncThrowingStream<ByteBuffer, any Error> { continuation in
            continuation.yield(ByteBuffer(string: request.url))
            continuation.finish()
        }
        return SourceResponse(metadata: try await stat(request), isPartial: false, body: body)
    }
}

private struct NamedStrategy: SchedulingStrategy {
    let name: String
    func score(_ candidate: ParentCandidate, for child: ChildContext) -> Double { 0.5 }
}

@Suite struct PluginRegistryTests {
    @Test func sourceClientsResolveByScheme() async throws {
        let registry = PluginRegistry()
        try registry.register(source: EchoSource(schemes: ["echo", "ECHO2"]))
        #expect(registry.sourceSchemes == ["echo", "echo2"])
        let client = try registry.sourceClient(forURL: "Echo://host/path")
        let metadata = try await client.stat(SourceRequest(url: "echo://x"))
        #expect(metadata.contentLength == 8)
        _ = try registry.sourceClient(forScheme: "echo2")
        var collected = ""
        for try await chunk in try await client.fetch(SourceRequest(url: "echo://hello"), range: nil).body {
            collected += String(buffer: chunk)
        }
        #expect(collected == "echo://hello")
    }

    @Test func unknownSchemeNamesTheSupportedOnes() throws {
        let registry = PluginRegistry()
        try registry.register(source: EchoSource(schemes: ["echo"]))
        #expect {
            _ = try registry.sourceClient(forURL: "gopher://x")
        } throws: { error in
            let error = error as? DragonflyError
            return error?.code == .unimplemented && error?.message.contains("'gopher'") == true
                && error?.message.contains("echo") == true
        }
        #expect(throws: DragonflyError.self) { _ = try registry.sourceClient(forURL: "no-scheme-here") }
    }

    @Test func duplicateRegistrationIsRejected() throws {
        let registry = PluginRegistry()
        try registry.register(source: EchoSource(schemes: ["echo"]))
        #expect(throws: DragonflyError.self) { try registry.register(source: EchoSource(schemes: ["x", "echo"])) }
        // The failed registration registered nothing.
        #expect(registry.sourceSchemes == ["echo"])
        try registry.register(strategy: NamedStrategy(name: "default"))
        #expect(throws: DragonflyError.self) { try registry.register(strategy: NamedStrategy(name: "Default")) }
        try registry.register(medium: "memory") { _ in throw DragonflyError(code: .unimplemented, message: "test") }
        #expect(throws: DragonflyError.self) {
            try registry.register(medium: "memory") { _ in throw DragonflyError(code: .unimplemented, message: "x") }
        }
    }

    @Test func strategiesAndMediaResolveByName() throws {
        let registry = PluginRegistry()
        try registry.register(strategy: NamedStrategy(name: "bandwidth"))
        try registry.register(strategy: NamedStrategy(name: "default"))
        #expect(registry.strategyNames == ["bandwidth", "default"])
        #expect(try registry.strategy(named: "BANDWIDTH").name == "bandwidth")
        #expect(throws: DragonflyError.self) { _ = try registry.strategy(named: "nope") }
        try registry.register(medium: "memory") { context in
            throw DragonflyError(code: .unimplemented, message: "capacity \(context.capacity)")
        }
        #expect(registry.mediumNames == ["memory"])
        #expect {
            _ = try registry.makeMedium(
                named: "memory", context: StorageMediumContext(dataDirectory: "/tmp", capacity: 7))
        } throws: { ($0 as? DragonflyError)?.message == "capacity 7" }
        #expect(throws: DragonflyError.self) {
            _ = try registry.makeMedium(
                named: "disk", context: StorageMediumContext(dataDirectory: "/tmp", capacity: 0))
        }
    }
}
