import DragonflyCore
import DragonflyProto
import DragonflyRPC
import DragonflyTestSupport
import Foundation
import GRPCCore
import Testing

/// The `openssl` tool that makes the test certificates, if installed.
private let opensslPath: String? = ["/usr/bin/openssl", "/usr/local/bin/openssl"]
    .first { FileManager.default.isExecutableFile(atPath: $0) }

/// TLS and mutual TLS between a real server and client, with a certificate made by the `openssl` tool.
@Suite(.timeLimit(.minutes(2)), .enabled(if: opensslPath != nil, "needs the openssl command"))
struct TLSTests {
    /// A self-signed certificate for 127.0.0.1 and its key, used as its own trust root.
    struct Credentials {
        var certificate: String
        var key: String
    }

    static func makeCredentials(in directory: TemporaryDirectory) async throws -> Credentials {
        let certificate = directory.appending("cert.pem")
        let key = directory.appending("key.pem")
        let status = try await run(
            try #require(opensslPath),
            [
                "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", key, "-out", certificate, "-days", "1", "-subj", "/CN=localhost",
                "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            ]
        )
        try #require(status == 0, "openssl failed with status \(status)")
        return Credentials(certificate: certificate, key: key)
    }

    /// Runs a program to completion without blocking the caller's thread.
    static func run(_ executable: String, _ arguments: [String]) async throws -> Int32 {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        return try await withCheckedThrowingContinuation { continuation in
            process.terminationHandler = { continuation.resume(returning: $0.terminationStatus) }
            do {
                try process.run()
            } catch {
                process.terminationHandler = nil
                continuation.resume(throwing: error)
            }
        }
    }

    /// Runs a TLS Peer server and calls `Health` with the given client TLS settings.
    func health(server serverTLS: RPCTLSConfig, client clientTLS: RPCTLSConfig?) async throws -> Bool {
        let server = try GRPCServerService(
            address: .tcp(host: "127.0.0.1", port: 0),
            tls: serverTLS,
            services: [Fixtures.peerService],
            logger: Fixtures.logger
        )
        return try await withRunningServer(server) { bound in
            let options = RPCClientOptions(tls: clientTLS, defaultTimeout: .seconds(10))
            return try await withRPCClient(target: bound.description, options: options, logger: Fixtures.logger) {
                try await Dragonfly_V1_Peer.Client(wrapping: $0).health(Dragonfly_V1_HealthRequest()).isReady
            }
        }
    }

    @Test func tlsClientTrustingTheServerConnects() async throws {
        try await withTemporaryDirectory { directory in
            let credentials = try await Self.makeCredentials(in: directory)
            let serverTLS = RPCTLSConfig(certificateChainPath: credentials.certificate, privateKeyPath: credentials.key)
            let clientTLS = RPCTLSConfig(trustRootsPath: credentials.certificate)
            #expect(try await health(server: serverTLS, client: clientTLS))
        }
    }

    @Test func plaintextClientCannotTalkToATLSServer() async throws {
        try await withTemporaryDirectory { directory in
            let credentials = try await Self.makeCredentials(in: directory)
            let serverTLS = RPCTLSConfig(certificateChainPath: credentials.certificate, privateKeyPath: credentials.key)
            let error = await #expect(throws: RPCError.self) {
                _ = try await health(server: serverTLS, client: nil)
            }
            #expect(error?.code == .unavailable)
        }
    }

    @Test func mutualTLSRequiresAClientCertificate() async throws {
        try await withTemporaryDirectory { directory in
            let credentials = try await Self.makeCredentials(in: directory)
            let serverTLS = RPCTLSConfig(
                certificateChainPath: credentials.certificate,
                privateKeyPath: credentials.key,
                trustRootsPath: credentials.certificate,
                isMutual: true
            )
            let anonymous = RPCTLSConfig(trustRootsPath: credentials.certificate)
            await #expect(throws: RPCError.self) { _ = try await health(server: serverTLS, client: anonymous) }

            let identified = RPCTLSConfig(
                certificateChainPath: credentials.certificate,
                privateKeyPath: credentials.key,
                trustRootsPath: credentials.certificate,
                isMutual: true
            )
            #expect(try await health(server: serverTLS, client: identified))
        }
    }

    @Test func incompleteOrMissingFilesAreConfigurationErrors() async throws {
        try await withTemporaryDirectory { directory in
            let noKey = #expect(throws: DragonflyError.self) {
                _ = try GRPCServerService(
                    address: .tcp(host: "127.0.0.1", port: 0),
                    tls: RPCTLSConfig(certificateChainPath: directory.appending("cert.pem")),
                    services: [],
                    logger: Fixtures.logger
                )
            }
            #expect(noKey?.code == .configuration)

            let missing = directory.appending("missing.pem")
            let missingFile = #expect(throws: DragonflyError.self) {
                _ = try makeRPCClient(
                    target: "127.0.0.1:1",
                    options: RPCClientOptions(tls: RPCTLSConfig(trustRootsPath: missing)),
                    logger: Fixtures.logger
                )
            }
            #expect(missingFile?.code == .configuration)
            #expect(missingFile?.message.contains(missing) == true)
        }
    }
}
