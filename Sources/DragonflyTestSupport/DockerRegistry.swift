import Foundation

/// A running CNCF distribution registry (`docker-registry` from apt, RECIPES §3) on 127.0.0.1, storing into a
/// temporary directory, and the OCI tools around it (`skopeo`, `umoci`).
package struct DockerRegistry: Sendable {
    /// Always `127.0.0.1`.
    package let host: String
    /// The bound port.
    package let port: Int
    /// The registry's log (logfmt, one `response completed` line per request).
    package let logPath: String
    /// A scratch directory that lives as long as the registry.
    package let directory: TemporaryDirectory
    /// `user:password` when the registry wants credentials.
    package let credentials: String?

    /// `host:port`, as an image reference or `registries.conf` location uses it.
    package var authority: String { "\(host):\(port)" }

    /// `http://host:port`.
    package var baseURL: String { "http://\(authority)" }

    /// One answered request, from the registry's log.
    package struct LoggedRequest: Sendable, Hashable {
        package var method: String
        package var uri: String
        package var status: Int
        /// Body bytes written.
        package var bytesWritten: Int
    }

    /// Every request the registry logged so far.
    package func requests() -> [LoggedRequest] {
        readFileText(logPath).split(separator: "\n").compactMap { line in
            guard line.contains("msg=\"response completed") else { return nil }
            func field(_ name: String) -> String? {
                guard let start = line.firstRange(of: " \(name)=")?.upperBound else { return nil }
                var rest = line[start...]
                if rest.first == "\"" {
                    rest = rest.dropFirst()
                    return String(rest.prefix { $0 != "\"" })
                }
                return String(rest.prefix { $0 != " " })
            }
            guard let method = field("http.request.method"), let uri = field("http.request.uri"),
                let status = field("http.response.status").flatMap({ Int($0) })
            else { return nil }
            return LoggedRequest(
                method: method, uri: uri, status: status,
                bytesWritten: field("http.response.written").flatMap { Int($0) } ?? 0)
        }
    }

    /// Pushes a one-layer OCI image whose layer holds `layerFile` (at `/data/blob.bin`) as `repository:tag`,
    /// built offline with umoci; returns the digests (`sha256:<hex>`) of the blobs pushed.
    @discardableResult
    package func pushImage(repository: String, tag: String, layerFile: [UInt8]) async throws -> [String] {
        let work = try directory.makeDirectory("image-\(repository.replacingOccurrences(of: "/", with: "-"))-\(tag)")
        func run(_ tool: String, _ arguments: [String]) async throws {
            let output = try await runCommand(tool, arguments, workingDirectory: work, timeLimit: .seconds(120))
            guard output.status.isSuccess else {
                throw TestSupportError(
                    code: .commandFailed,
                    message:
                        "\(tool) \(arguments.joined(separator: " ")) \(output.status): \(tail(output.standardError))")
            }
        }
        try await run(umociPath, ["init", "--layout", "oci"])
        try await run(umociPath, ["new", "--image", "oci:\(tag)"])
        try await run(umociPath, ["unpack", "--rootless", "--image", "oci:\(tag)", "bundle"])
        try DragonflyTestSupport.writeFile(work + "/bundle/rootfs/blob.bin", bytes: layerFile)
        try await run(umociPath, ["repack", "--image", "oci:\(tag)", "bundle"])
        try await run(umociPath, ["gc", "--layout", "oci"])
        try await run(
            skopeoPath,
            ["copy", "--dest-tls-verify=false"] + (credentials.map { ["--dest-creds", $0] } ?? []) + [
                "oci:oci:\(tag)", "docker://\(authority)/\(repository):\(tag)",
            ])
        let blobs = (try? FileManager.default.contentsOfDirectory(atPath: work + "/oci/blobs/sha256")) ?? []
        return blobs.map { "sha256:" + $0 }
    }
}

/// The skopeo executable (`apt-get install skopeo`).
package let skopeoPath = "/usr/bin/skopeo"
/// The umoci executable (`apt-get install umoci`).
package let umociPath = "/usr/bin/umoci"
/// The registry executable (`apt-get install docker-registry`).
package let dockerRegistryPath = "/usr/bin/docker-registry"

/// Why the OCI tools cannot run here, or nil when docker-registry, skopeo and umoci are installed.
package func dockerRegistryUnavailableReason() -> String? {
    let missing = [dockerRegistryPath, skopeoPath, umociPath].filter { !isExecutableFile($0) }
    return missing.isEmpty ? nil : "missing \(missing.joined(separator: ", ")) (scripts/install-deps)"
}

/// The result of ``runOCITool(_:_:timeLimit:)``.
package struct ToolOutput: Sendable {
    /// Whether the tool exited 0.
    package var succeeded: Bool
    /// How it ended, for messages.
    package var status: String
    package var standardOutput: String
    package var standardError: String
}

/// Runs `skopeo` or `umoci` (or any short command) to completion.
package func runOCITool(_ executablePath: String, _ arguments: [String], timeLimit: Duration = .seconds(120))
    async throws -> ToolOutput
{
    try await runTool(executablePath, arguments, timeLimit: timeLimit)
}

/// The htpasswd executable (`apt-get install apache2-utils`), for a registry that wants credentials.
package let htpasswdPath = "/usr/bin/htpasswd"

/// Token authentication of a registry (distribution's `auth: token`): the registry answers a request without
/// a valid bearer token with 401 and a `Bearer realm="…",service="…"` challenge (with `scope="…"` when the
/// request names a repository), and accepts JWTs issued by `issuer` for `service` whose `x5c` certificate chain
/// leads to one of `rootCertificatesPEM`. The token server at `realm` is the test's own.
package struct RegistryTokenAuth: Sendable {
    /// The token server's URL, where clients get their tokens.
    package var realm: String
    /// The registry's service name (the tokens' `aud`).
    package var service: String
    /// The tokens' `iss`.
    package var issuer: String
    /// The certificates the registry trusts for token signatures, PEM (one or more).
    package var rootCertificatesPEM: String

    package init(realm: String, service: String, issuer: String, rootCertificatesPEM: String) {
        self.realm = realm
        self.service = service
        self.issuer = issuer
        self.rootCertificatesPEM = rootCertificatesPEM
    }
}

/// Starts docker-registry on a free loopback port with storage in a temporary directory, runs `body`, and
/// kills the registry and deletes its directory at the end, also when `body` throws. Ready means `/v2/`
/// accepts connections (polled, never a sleep).
///
/// - Parameters:
///   - credentials: When given without `tokenAuth`, the registry answers every request without them with
///     401 and a `Basic` challenge (htpasswd auth). ``DockerRegistry/pushImage(repository:tag:layerFile:)``
///     uses them (with `tokenAuth`, to get its token from the token server).
///   - tokenAuth: When given, the registry wants bearer tokens (see ``RegistryTokenAuth``).
package func withDockerRegistry<Value>(
    credentials: (user: String, password: String)? = nil,
    tokenAuth: RegistryTokenAuth? = nil,
    isolation: isolated (any Actor)? = #isolation,
    _ body: (DockerRegistry) async throws -> Value
) async throws -> Value {
    if let reason = dockerRegistryUnavailableReason() {
        throw TestSupportError(code: .binaryNotFound, message: reason)
    }
    let directory = try TemporaryDirectory(prefix: "dragonfly-test-registry-")
    defer { directory.remove() }
    let port = try freeLoopbackPort()
    let data = try directory.makeDirectory("data")
    var auth = ""
    if let tokenAuth {
        let bundle = try directory.writeFile("token-roots.pem", text: tokenAuth.rootCertificatesPEM)
        auth = [
            "", "auth:", "  token:", "    realm: \"\(tokenAuth.realm)\"", "    service: \"\(tokenAuth.service)\"",
            "    issuer: \"\(tokenAuth.issuer)\"", "    rootcertbundle: \(bundle)",
        ].joined(separator: "\n")
    } else if let credentials {
        guard isExecutableFile(htpasswdPath) else {
            throw TestSupportError(code: .binaryNotFound, message: "missing \(htpasswdPath) (scripts/install-deps)")
        }
        let output = try await runCommand(
            htpasswdPath, ["-Bbn", credentials.user, credentials.password], timeLimit: .seconds(30))
        guard output.status.isSuccess else {
            throw TestSupportError(code: .commandFailed, message: "htpasswd \(output.status): \(output.standardError)")
        }
        let file = try directory.writeFile("htpasswd", text: output.standardOutput)
        auth = "\nauth:\n  htpasswd: {realm: dragonfly-test, path: \(file)}"
    }
    let config = try directory.writeFile(
        "config.yml",
        text: """
            version: 0.1
            log: {level: info}
            storage:
              filesystem: {rootdirectory: \(data)}
              delete: {enabled: true}
            http:
              addr: 127.0.0.1:\(port)
              debug: {addr: ""}
            health:
              storagedriver: {enabled: false}\(auth)
            """)
    let registry = DockerRegistry(
        host: "127.0.0.1", port: port, logPath: directory.appending("registry.stderr"), directory: directory,
        credentials: credentials.map { "\($0.user):\($0.password)" })
    return try await withLaunchedProcess(
        executablePath: dockerRegistryPath,
        arguments: ["serve", config],
        filesDirectory: directory,
        filesPrefix: "registry",
        name: "docker-registry"
    ) { launched in
        try await poll(every: .milliseconds(20), timeLimit: .seconds(20), description: "docker-registry on \(port)") {
            if let status = try launched.child.exitStatus() {
                throw TestSupportError(
                    code: .processExitedEarly,
                    message: "docker-registry \(status) while starting: \(tail(launched.standardErrorText()))")
            }
            return await isAcceptingConnections(host: "127.0.0.1", port: port)
        }
        return try await body(registry)
    }
}
