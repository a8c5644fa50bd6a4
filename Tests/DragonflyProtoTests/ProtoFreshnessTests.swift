import Crypto
import Foundation
import Testing

/// Fails when the `.proto` files or the generator versions changed without `scripts/gen-proto.sh` being run.
///
/// The fingerprint recipe is the one in `scripts/gen-proto.sh` (keep both in step): SHA-256 over, for each
/// `.proto` file sorted by file name (byte order), `"<file name>\n"` followed by the file's bytes, then
/// `"protoc-gen-swift <swift-protobuf version>\n"` and `"protoc-gen-grpc-swift-2 <grpc-swift-protobuf version>\n"`
/// with the versions pinned in `Package.resolved`; stored as lowercase hex plus `"\n"` in
/// `Sources/DragonflyProto/proto.sha256`.
@Suite struct ProtoFreshnessTests {
    /// The repository root, found from this file's path (`<root>/Tests/DragonflyProtoTests/<file>`).
    static let repositoryRoot: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent()
        .deletingLastPathComponent()
        .deletingLastPathComponent()

    @Test func generatedCodeMatchesProtoFiles() throws {
        let protoDirectory = Self.repositoryRoot.appendingPathComponent("Sources/DragonflyProto/proto")
        let names = try FileManager.default.contentsOfDirectory(atPath: protoDirectory.path)
            .filter { $0.hasSuffix(".proto") }
            .sorted { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }
        #expect(!names.isEmpty, "no .proto files in \(protoDirectory.path)")

        var hasher = SHA256()
        for name in names {
            hasher.update(data: Data("\(name)\n".utf8))
            hasher.update(data: try Data(contentsOf: protoDirectory.appendingPathComponent(name)))
        }
        let resolved = try PackageResolved.load(from: Self.repositoryRoot.appendingPathComponent("Package.resolved"))
        let swiftProtobuf = try #require(resolved.version(of: "swift-protobuf"), "swift-protobuf not pinned")
        let grpcProtobuf = try #require(resolved.version(of: "grpc-swift-protobuf"), "grpc-swift-protobuf not pinned")
        hasher.update(data: Data("protoc-gen-swift \(swiftProtobuf)\n".utf8))
        hasher.update(data: Data("protoc-gen-grpc-swift-2 \(grpcProtobuf)\n".utf8))
        let expected = hasher.finalize().map { String(format: "%02x", $0) }.joined()

        let stampURL = Self.repositoryRoot.appendingPathComponent("Sources/DragonflyProto/proto.sha256")
        let stamp = String(decoding: try Data(contentsOf: stampURL), as: UTF8.self)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(
            stamp == expected,
            "the generated Swift code is stale (proto files or generator versions changed): run scripts/gen-proto.sh"
        )
    }
}

/// The parts of SwiftPM's `Package.resolved` (version 2 or 3) the fingerprint needs.
private struct PackageResolved: Decodable {
    struct Pin: Decodable {
        struct State: Decodable {
            var version: String?
        }
        var identity: String
        var state: State
    }
    var pins: [Pin]

    static func load(from url: URL) throws -> PackageResolved {
        try JSONDecoder().decode(PackageResolved.self, from: Data(contentsOf: url))
    }

    func version(of identity: String) -> String? {
        pins.first { $0.identity == identity }?.state.version
    }
}
