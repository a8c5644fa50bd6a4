import DragonflyCore
package import NIOSSL

/// The client TLS settings for HTTPS origins (`tls.caCerts`, `tls.insecureHosts`, DESIGN §9), shared by the
/// `https` source client and the proxy's direct requests so both trust the same origins.
package struct OriginTLS: Sendable {
    /// System roots plus the configured extra roots; certificates are verified.
    package let verified: TLSConfiguration
    /// The same without verification, for hosts matching ``insecureHostPatterns``.
    package let unverified: TLSConfiguration
    /// Validated at init; compiled per check because `Regex<AnyRegexOutput>` is not `Sendable` (a check is
    /// microseconds, next to a network request).
    private let insecureHostPatterns: [String]

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
        for (index, pattern) in insecureHosts.enumerated() {
            do {
                _ = try Regex(pattern)
            } catch {
                throw DragonflyError.configuration(
                    keyPath: "tls.insecureHosts[\(index)]", "'\(pattern)' is not a valid regular expression")
            }
        }
        var insecure = tls
        insecure.certificateVerification = .none
        verified = tls
        unverified = insecure
        insecureHostPatterns = insecureHosts
    }

    /// Whether `host`'s certificate goes unverified (a pattern matches the whole host name).
    package func isInsecure(host: String) -> Bool {
        insecureHostPatterns.contains { pattern in
            (try? Regex(pattern).wholeMatch(in: host)) != nil
        }
    }

    /// The configuration a request to `host` needs when it differs from ``verified``, else nil.
    package func override(forHost host: String) -> TLSConfiguration? {
        isInsecure(host: host) ? unverified : nil
    }
}
