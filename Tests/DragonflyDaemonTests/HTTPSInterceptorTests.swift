import Crypto
import DragonflyCore
import Foundation
import SwiftASN1
import Testing
import X509

@testable import DragonflyDaemon

/// The leaf certificates the proxy mints for intercepted hosts: names, signature, validity and the key checks.
struct HTTPSInterceptorTests {
    static func makeCA(notValidAfter: Date = Date().addingTimeInterval(365 * 24 * 3600), isCA: Bool = true)
        throws -> (Certificate, Certificate.PrivateKey)
    {
        let key = Certificate.PrivateKey(P256.Signing.PrivateKey())
        let name = try DistinguishedName { CommonName("test CA") }
        let certificate = try Certificate(
            version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: key.publicKey,
            notValidBefore: Date().addingTimeInterval(-60), notValidAfter: notValidAfter, issuer: name, subject: name,
            extensions: try Certificate.Extensions {
                Critical(isCA ? BasicConstraints.isCertificateAuthority(maxPathLength: 0) : .notCertificateAuthority)
            },
            issuerPrivateKey: key)
        return (certificate, key)
    }

    @Test func leavesNameTheHostAndAreSignedByTheCA() throws {
        let (ca, key) = try Self.makeCA()
        let interceptor = try HTTPSInterceptor(hosts: [#"^registry\.test:443$"#], caCertificate: ca, caKey: key)
        #expect(interceptor.intercepts(authority: "registry.test:443"))
        #expect(!interceptor.intercepts(authority: "registry.test:8443"))
        #expect(!interceptor.intercepts(authority: "other.test:443"))
        let now = Date()
        for (host, name) in [
            ("registry.test", GeneralName.dnsName("registry.test")),
            ("127.0.0.1", .ipAddress(.init(contentBytes: [127, 0, 0, 1]))),
            ("::1", .ipAddress(.init(contentBytes: ArraySlice([UInt8](repeating: 0, count: 15) + [1])))),
        ] {
            let leaf = try interceptor.mintLeaf(for: host, now: now)
            #expect(ca.publicKey.isValidSignature(leaf.signature, for: leaf), "\(host)")
            #expect(leaf.issuer == ca.subject)
            #expect(Array(try #require(try leaf.extensions.subjectAlternativeNames)) == [name])
            #expect(try leaf.extensions.basicConstraints == .notCertificateAuthority)
            #expect(leaf.notValidBefore < now && leaf.notValidAfter > now)
        }
        // Contexts are cached per host.
        #expect(try interceptor.serverContext(for: "registry.test") === interceptor.serverContext(for: "registry.test"))
    }

    @Test func aLeafNeverOutlivesItsCA() throws {
        let end = Date().addingTimeInterval(3600)
        let (ca, key) = try Self.makeCA(notValidAfter: end)
        let interceptor = try HTTPSInterceptor(hosts: ["x"], caCertificate: ca, caKey: key)
        let leaf = try interceptor.mintLeaf(for: "x.test", now: Date())
        #expect(leaf.notValidAfter <= ca.notValidAfter)
    }

    @Test func aKeyThatIsNotTheCAsOrACertificateThatIsNoCAIsRefused() throws {
        let (ca, _) = try Self.makeCA()
        let (_, otherKey) = try Self.makeCA()
        #expect(throws: DragonflyError.self) {
            try HTTPSInterceptor(hosts: ["x"], caCertificate: ca, caKey: otherKey)
        }
        let (leafOnly, leafKey) = try Self.makeCA(isCA: false)
        let error = #expect(throws: DragonflyError.self) {
            try HTTPSInterceptor(hosts: ["x"], caCertificate: leafOnly, caKey: leafKey)
        }
        #expect(error?.message.contains("proxy.hijackHTTPS.cert") == true)
    }
}
