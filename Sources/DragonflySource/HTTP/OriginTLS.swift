import DragonflyCore
package import NIOSSL

/// The client TLS settings for HTTPS origins (`tls.caCerts`, `tls.insecureHosts`, DESIGN §9), shared by the
/// `https` source client and the proxy's direct requests so both trust the same origins.
package struct OriginTLS: Sendable {
    /// System roots plus the configured extra roots; certificates are verified.
    package let verified: TLSConfiguration
    /// The same without verification, for hosts matching ``insecureHosts``.
    package let unverified: TLSConfiguration
    private let insecureHosts: [CompiledRegex]

    /// Reads the PEM files of `caCertificates` and checks the `insecureHosts` patterns.
    ///
    /// - Throws: ``DragonflyError/Code/configuration`` naming `tls.caCerts[i]` when a PEM file cannot be read
    ///   or holds no certificate, or `tls.insecureHosts[i]` when a pattern is not a regular expression.
    package init(caCertificates: [String], insecureHosts: [String]) throws {
        var tls = TLSConfiguration.makeClientConfiguration()
        var roots: [NIOSSLCertificate] = []
        for (index, path) in caCertificates.enumerated() {
            let certificates: [NIOSSLCertificate]
            do {
                certificates = try NIOSSLCertificate.fromPEMFile(path)
            } catch {
                throw DragonflyError.configuration(
                    keyPath: "tls.caCerts[\(index)]", "cannot read PEM certificates from \(path) (\(error))")
            }
            guard !certificates.isEmpty else {
                throw DragonflyError.configuration(keyPath: "tls.caCerts[\(index)]", "\(path) holds no certificate")
            }
            roots.append(contentsOf: certificates)
        }
        if !roots.isEmpty {
            tls.additionalTrustRoots = [.certificates(roots)]
        }
        self.insecureHosts = try CompiledRegex.compile(insecureHosts) { "tls.insecureHosts[\($0)]" }
        var insecure = tls
        insecure.certificateVerification = .none
        verified = tls
        unverified = insecure
    }

    /// Whether `host`'s certificate goes unverified (a pattern matches the whole host name).
    package func isInsecure(host: String) -> Bool {
        insecureHosts.contains { $0.matchesWhole(host) }
    }

    /// The configuration a request to `host` needs when it differs from ``verified``, else nil.
    package func override(forHost host: String) -> TLSConfiguration? {
        isInsecure(host: host) ? unverified : nil
    }
}
