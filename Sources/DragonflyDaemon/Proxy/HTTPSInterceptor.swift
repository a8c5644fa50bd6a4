import Crypto
package import DragonflyCore
import Foundation
package import NIOSSL
import SwiftASN1
import Synchronization
package import X509

/// The certificate authority of HTTPS interception (`proxy.hijackHTTPS`, DESIGN §8): decides which `CONNECT`s
/// are intercepted and hands out a TLS server context per host, whose leaf certificate it mints and signs with
/// the configured CA.
///
/// Leaves share one P-256 key made at start, name the host in their subject alternative name (DNS name or IP
/// address), are valid from an hour ago for ``leafLifetime`` (never past the CA's own end) and are re-minted
/// after ``leafReuse``. At most ``cacheCapacity`` hosts keep a context; the least recently used goes first.
package final class HTTPSInterceptor: Sendable {
    /// How long a minted leaf is valid.
    static let leafLifetime: TimeInterval = 7 * 24 * 3600
    /// How long a minted leaf is handed out before a fresh one replaces it.
    static let leafReuse: TimeInterval = 24 * 3600
    /// Hosts whose TLS context is kept.
    static let cacheCapacity = 512

    private struct Minted {
        let context: NIOSSLContext
        let mintedAt: Date
    }

    private let hosts: [CompiledRegex]
    private let caCertificate: Certificate
    private let caNIOCertificate: NIOSSLCertificate
    private let caKey: Certificate.PrivateKey
    private let leafKey: P256.Signing.PrivateKey
    private let leafNIOKey: NIOSSLPrivateKey
    private let contexts = Mutex(LRUCache<String, Minted>(capacity: HTTPSInterceptor.cacheCapacity))

    /// Loads the CA of `config`; nil when no host is to be intercepted.
    ///
    /// - Throws: ``DragonflyError/Code/configuration`` naming `proxy.hijackHTTPS.cert` or `.key` when a file
    ///   cannot be read or parsed, the certificate is not a CA, or the key is not the certificate's.
    package convenience init?(config: DaemonConfig.HijackHTTPSConfig) throws(DragonflyError) {
        guard !config.hosts.isEmpty else { return nil }
        let certificatePEM = try Self.read(config.cert, key: "proxy.hijackHTTPS.cert")
        let keyPEM = try Self.read(config.key, key: "proxy.hijackHTTPS.key")
        let certificate: Certificate
        do {
            certificate = try Certificate(pemEncoded: certificatePEM)
        } catch {
            throw .configuration(
                keyPath: "proxy.hijackHTTPS.cert", "\(config.cert) holds no PEM certificate (\(error))")
        }
        let key: Certificate.PrivateKey
        do {
            key = try Certificate.PrivateKey(pemEncoded: keyPEM)
        } catch {
            throw .configuration(keyPath: "proxy.hijackHTTPS.key", "\(config.key) holds no PEM private key (\(error))")
        }
        try self.init(hosts: config.hosts, caCertificate: certificate, caKey: key)
    }

    /// An interceptor for `hosts` (regexes of `host:port`) with the CA `caCertificate` and its `caKey`.
    package init(hosts: [String], caCertificate: Certificate, caKey: Certificate.PrivateKey) throws(DragonflyError) {
        guard caKey.publicKey == caCertificate.publicKey else {
            throw .configuration(keyPath: "proxy.hijackHTTPS.key", "the private key is not the CA certificate's")
        }
        let constraints = try? caCertificate.extensions.basicConstraints
        guard case .isCertificateAuthority = constraints else {
            throw .configuration(
                keyPath: "proxy.hijackHTTPS.cert",
                "the certificate is not a CA (basicConstraints CA:TRUE is needed to sign leaf certificates)")
        }
        self.hosts = try CompiledRegex.compile(hosts) { "proxy.hijackHTTPS.hosts[\($0)]" }
        do {
            self.caCertificate = caCertificate
            self.caNIOCertificate = try NIOSSLCertificate(bytes: Self.der(caCertificate), format: .der)
            self.caKey = caKey
            let leafKey = P256.Signing.PrivateKey()
            self.leafKey = leafKey
            self.leafNIOKey = try NIOSSLPrivateKey(bytes: Array(leafKey.pemRepresentation.utf8), format: .pem)
        } catch {
            throw .configuration(keyPath: "proxy.hijackHTTPS.cert", "cannot use the CA certificate (\(error))")
        }
    }

    /// Whether a `CONNECT` to `authority` (`host:port`) is intercepted.
    package func intercepts(authority: String) -> Bool {
        hosts.contains { $0.matches(in: authority) }
    }

    /// The TLS server context presenting a leaf certificate for `host` (a name or an IP address, without port
    /// or brackets), minted now unless a recent one is cached.
    package func serverContext(for host: String) throws -> NIOSSLContext {
        let now = Date()
        if let cached = contexts.withLock({ $0.value(forKey: host) }),
            now.timeIntervalSince(cached.mintedAt) < Self.leafReuse
        {
            return cached.context
        }
        let leaf = try mintLeaf(for: host, now: now)
        var tls = TLSConfiguration.makeServerConfiguration(
            certificateChain: [
                .certificate(try NIOSSLCertificate(bytes: Self.der(leaf), format: .der)),
                .certificate(caNIOCertificate),
            ],
            privateKey: .privateKey(leafNIOKey))
        tls.applicationProtocols = ["http/1.1"]
        let context = try NIOSSLContext(configuration: tls)
        contexts.withLock { $0.setValue(Minted(context: context, mintedAt: now), forKey: host) }
        return context
    }

    /// A leaf certificate for `host`, signed by the CA.
    func mintLeaf(for host: String, now: Date) throws -> Certificate {
        let publicKey = Certificate.PublicKey(leafKey.publicKey)
        let name: GeneralName
        if let address = IPAddressBytes(parsing: host) {
            name = .ipAddress(ASN1OctetString(contentBytes: ArraySlice(address.bytes)))
        } else {
            name = .dnsName(host)
        }
        let caKeyIdentifier =
            (try? caCertificate.extensions.subjectKeyIdentifier)?.keyIdentifier
            ?? SubjectKeyIdentifier(hash: caCertificate.publicKey).keyIdentifier
        let notAfter = min(now.addingTimeInterval(Self.leafLifetime), caCertificate.notValidAfter)
        let subject = try DistinguishedName {
            OrganizationName("dragonfly proxy")
            CommonName(String(host.prefix(64)))
        }
        return try Certificate(
            version: .v3,
            serialNumber: Certificate.SerialNumber(),
            publicKey: publicKey,
            notValidBefore: now.addingTimeInterval(-3600),
            notValidAfter: notAfter,
            issuer: caCertificate.subject,
            subject: subject,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.notCertificateAuthority)
                Critical(KeyUsage(digitalSignature: true))
                try ExtendedKeyUsage([.serverAuth])
                SubjectAlternativeNames([name])
                AuthorityKeyIdentifier(keyIdentifier: caKeyIdentifier)
                SubjectKeyIdentifier(hash: publicKey)
            },
            issuerPrivateKey: caKey)
    }

    private static func der(_ certificate: Certificate) throws -> [UInt8] {
        var serializer = DER.Serializer()
        try serializer.serialize(certificate)
        return serializer.serializedBytes
    }

    private static func read(_ path: String, key: String) throws(DragonflyError) -> String {
        guard !path.isEmpty else { throw .configuration(keyPath: key, "names no file") }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw .configuration(keyPath: key, "cannot read \(path)")
        }
        return String(decoding: data, as: UTF8.self)
    }
}
