/// The answer to a GET made by ``curlGet(_:prefix:timeLimit:)``.
package struct CurlResponse: Sendable, Hashable {
    /// The HTTP status, e.g. 200.
    package var status: Int
    /// The body, decoded as UTF-8 (invalid sequences repaired).
    package var body: String
}

/// The curl executable the cluster and netlab helpers use for HTTP (`apt-get install curl`, in
/// `scripts/install-deps`).
let curlPath = "/usr/bin/curl"

/// GETs `url` with curl and returns the status and body; any status counts as an answer.
///
/// curl rather than an in-process client, so the same request works from inside a network namespace:
/// `prefix` is put before the curl command, e.g. `[netlab, "exec", lab, host]` (see ``Netlab``). Proxy
/// variables are ignored (`--noproxy '*'`), so a request never leaves for a proxy.
///
/// - Throws: ``TestSupportError/Code/commandFailed`` with curl's message when no HTTP answer came (e.g.
///   connection refused); ``TestSupportError/Code/binaryNotFound`` without curl.
package func curlGet(_ url: String, prefix: [String] = [], timeLimit: Duration = .seconds(20)) async throws
    -> CurlResponse
{
    guard isExecutableFile(curlPath) else {
        throw TestSupportError(
            code: .binaryNotFound, message: "\(curlPath) not found; install it: apt-get install -y curl")
    }
    let seconds = max(1, Int(timeLimit.components.seconds))
    let command =
        prefix + [
            curlPath, "--silent", "--show-error", "--noproxy", "*", "--max-time", String(seconds),
            "--output", "-", "--write-out", "\n%{http_code}", url,
        ]
    let output = try await runCommand(command[0], Array(command.dropFirst()), timeLimit: timeLimit + .seconds(5))
    var body = output.standardOutput
    guard output.status.isSuccess, let newline = body.lastIndex(of: "\n"),
        let status = Int(body[body.index(after: newline)...]), status > 0
    else {
        throw TestSupportError(
            code: .commandFailed,
            message:
                "GET \(url) got no HTTP answer (curl \(output.status)): \(tail(output.standardError, maxBytes: 500))"
        )
    }
    body.removeSubrange(newline...)
    return CurlResponse(status: status, body: body)
}
