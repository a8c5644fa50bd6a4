/// A CA for the proxy's HTTPS interception, made by the repository's own `scripts/make-proxy-ca` (so the
/// script is what the tests exercise).
package struct ProxyCA: Sendable {
    /// The CA certificate (PEM); clients trust it.
    package var certificatePath: String
    /// The CA's private key (PEM).
    package var keyPath: String

    /// Runs `scripts/make-proxy-ca` of the source tree this module was built from into `directory/name`.
    package static func make(in directory: TemporaryDirectory, name: String = "proxy-ca", filePath: String = #filePath)
        async throws -> ProxyCA
    {
        // <root>/Sources/DragonflyTestSupport/ProxyCA.swift
        let root = directoryName(of: directoryName(of: directoryName(of: filePath)))
        let target = directory.appending(name)
        let output = try await runCommand(
            "/bin/bash", [root + "/scripts/make-proxy-ca", target, "dragonfly test proxy CA"], timeLimit: .seconds(30))
        guard output.status.isSuccess else {
            throw TestSupportError(
                code: .commandFailed,
                message: "scripts/make-proxy-ca failed (\(output.status)): \(output.standardError)")
        }
        return ProxyCA(certificatePath: target + "/ca.crt", keyPath: target + "/ca.key")
    }
}
