import DragonflyCore
import GRPCNIOTransportHTTP2

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// TLS settings of a gRPC listener or client, as PEM file paths (DESIGN §11).
///
/// A server needs `certificateChainPath` and `privateKeyPath`; with `isMutual` it also requires and verifies a
/// client certificate against `trustRootsPath`. A client verifies the server against `trustRootsPath` (the
/// system roots when `nil`) and, with `isMutual`, presents its own chain and key.
package struct RPCTLSConfig: Sendable, Hashable, Codable {
    /// PEM file with the certificate chain to present, leaf first.
    package var certificateChainPath: String?
    /// PEM file with the private key of the leaf certificate.
    package var privateKeyPath: String?
    /// PEM file with the CA certificates to trust; `nil` trusts the system roots.
    package var trustRootsPath: String?
    /// Mutual TLS: servers require client certificates, clients present theirs.
    package var isMutual: Bool
    /// Clients only: also check that the server certificate names the host (off for IP-addressed clusters
    /// whose certificates do not carry IP SANs).
    package var verifiesHostname: Bool
    /// Clients only: the name to send in SNI and `:authority` instead of the target's host.
    package var serverName: String?

    package init(
        certificateChainPath: String? = nil,
        privateKeyPath: String? = nil,
        trustRootsPath: String? = nil,
        isMutual: Bool = false,
        verifiesHostname: Bool = true,
        serverName: String? = nil
    ) {
        self.certificateChainPath = certificateChainPath
        self.privateKeyPath = privateKeyPath
        self.trustRootsPath = trustRootsPath
        self.isMutual = isMutual
        self.verifiesHostname = verifiesHostname
        self.serverName = serverName
    }

    /// The server transport security for these settings.
    ///
    /// - Throws: `DragonflyError` with code `.configuration` when a needed file is not named or missing.
    func serverTransportSecurity() throws(DragonflyError) -> HTTP2ServerTransport.Posix.TransportSecurity {
        guard let chainPath = certificateChainPath, let keyPath = privateKeyPath else {
            throw DragonflyError(
                code: .configuration,
                message: "TLS for a gRPC server needs both a certificate chain and a private key (PEM file paths)"
            )
        }
        let chain: [TLSConfig.CertificateSource] = [.file(path: try Self.existing(chainPath), format: .pem)]
        let key: TLSConfig.PrivateKeySource = .file(path: try Self.existing(keyPath), format: .pem)
        let roots = try trustRoots()
        if isMutual {
            return .mTLS(certificateChain: chain, privateKey: key) { config in
                config.trustRoots = roots
                config.clientCertificateVerification = .noHostnameVerification
            }
        }
        return .tls(certificateChain: chain, privateKey: key) { config in
            config.trustRoots = roots
        }
    }

    /// The client transport security for these settings.
    ///
    /// - Throws: `DragonflyError` with code `.configuration` when a needed file is not named or missing.
    func clientTransportSecurity() throws(DragonflyError) -> HTTP2ClientTransport.Posix.TransportSecurity {
        let roots = try trustRoots()
        var chain: [TLSConfig.CertificateSource] = []
        var key: TLSConfig.PrivateKeySource?
        if let chainPath = certificateChainPath, let keyPath = privateKeyPath {
            chain = [.file(path: try Self.existing(chainPath), format: .pem)]
            key = .file(path: try Self.existing(keyPath), format: .pem)
        } else if isMutual {
            throw DragonflyError(
                code: .configuration,
                message:
                    "mutual TLS for a gRPC client needs both a certificate chain and a private key (PEM file paths)"
            )
        }
        let verification: TLSConfig.CertificateVerification =
            verifiesHostname ? .fullVerification : .noHostnameVerification
        return .tls { config in
            config.certificateChain = chain
            config.privateKey = key
            config.trustRoots = roots
            config.serverCertificateVerification = verification
        }
    }

    private func trustRoots() throws(DragonflyError) -> TLSConfig.TrustRootsSource {
        guard let path = trustRootsPath else { return .systemDefault }
        return .certificates([.file(path: try Self.existing(path), format: .pem)])
    }

    private static func existing(_ path: String) throws(DragonflyError) -> String {
        guard FileManager.default.isReadableFile(atPath: path) else {
            throw DragonflyError(code: .configuration, message: "TLS file '\(path)' does not exist or is not readable")
        }
        return path
    }
}
