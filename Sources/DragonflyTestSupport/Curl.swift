import Foundation

/// A whole HTTP answer read by ``curlRequest(_:proxy:method:headers:body:tunnel:proxyUser:caCertificate:timeLimit:)``.
package struct CurlAnswer: Sendable {
    /// The final response's status (after any `100 Continue`).
    package var status: Int
    /// The final response's header fields in order.
    package var headers: [(name: String, value: String)]
    /// The body bytes.
    package var body: [UInt8]
    /// curl's message when it exited with an error after some answer (e.g. a `CONNECT`'s 200 followed by a
    /// TLS failure); nil when it succeeded.
    package var failure: String? = nil

    /// The first value of header `name` (case-insensitive).
    package func header(_ name: String) -> String? {
        let lowered = name.lowercased()
        return headers.first { $0.name.lowercased() == lowered }?.value
    }
}

/// Sends one request with curl and returns the answer, any status included.
///
/// With `proxy` (`IP:port`) the request goes through that HTTP proxy as an absolute-URI request, as every
/// `HTTP_PROXY` client sends it (with `tunnel`, inside a `CONNECT` tunnel); without, directly (proxy
/// variables ignored). `HEAD` uses `--head`.
///
/// - Throws: ``TestSupportError/Code/commandFailed`` with curl's message when no HTTP answer came.
package func curlRequest(
    _ url: String,
    proxy: String? = nil,
    method: String = "GET",
    headers: [(String, String)] = [],
    body: [UInt8]? = nil,
    tunnel: Bool = false,
    proxyUser: String? = nil,
    caCertificate: String? = nil,
    timeLimit: Duration = .seconds(120)
) async throws -> CurlAnswer {
    guard isExecutableFile(curlPath) else {
        throw TestSupportError(
            code: .binaryNotFound, message: "\(curlPath) not found; install it: apt-get install -y curl")
    }
    let directory = try TemporaryDirectory(prefix: "dragonfly-test-curl-")
    defer { directory.remove() }
    let bodyPath = directory.appending("body")
    let headerPath = directory.appending("headers")
    var arguments = [
        "--silent", "--show-error", "--max-time", String(max(1, Int(timeLimit.components.seconds))),
        "--output", bodyPath, "--dump-header", headerPath,
    ]
    if let proxy {
        arguments += ["--proxy", "http://\(proxy)"]
        if tunnel { arguments.append("--proxytunnel") }
        if let proxyUser { arguments += ["--proxy-user", proxyUser] }
    } else {
        arguments += ["--noproxy", "*"]
    }
    if method == "HEAD" {
        arguments.append("--head")
    } else if method != "GET" || body != nil {
        arguments += ["--request", method]
    }
    if let caCertificate { arguments += ["--cacert", caCertificate] }
    for (name, value) in headers { arguments += ["--header", "\(name): \(value)"] }
    if let body {
        let path = try directory.writeFile("request-body", contents: body)
        arguments += ["--data-binary", "@" + path, "--header", "Expect:"]
    }
    arguments.append(url)
    let output = try await runCommand(curlPath, arguments, timeLimit: timeLimit + .seconds(5))
    let headerText = readFileText(headerPath)
    // The last block is the final response (a `100 Continue` block may come first).
    guard output.status.isSuccess || !headerText.isEmpty,
        let block = headerText.components(separatedBy: "\r\n\r\n").last(where: { $0.hasPrefix("HTTP/") })
    else {
        throw TestSupportError(
            code: .commandFailed,
            message: "\(method) \(url) got no HTTP answer (curl \(output.status)): \(tail(output.standardError))")
    }
    var lines = block.components(separatedBy: "\r\n")
    let statusLine = lines.removeFirst().split(separator: " ")
    guard statusLine.count >= 2, let status = Int(statusLine[1]) else {
        throw TestSupportError(code: .commandFailed, message: "\(method) \(url): bad status line in \(block)")
    }
    let fields = lines.compactMap { line -> (name: String, value: String)? in
        guard let colon = line.firstIndex(of: ":") else { return nil }
        let value = line[line.index(after: colon)...].drop { $0 == " " || $0 == "\t" }
        return (String(line[..<colon]), String(value))
    }
    // With --head, curl writes the headers to --output too: a HEAD answer has no body.
    let bytes = method == "HEAD" ? [] : readFileBytes(bodyPath) ?? []
    return CurlAnswer(
        status: status, headers: fields, body: bytes,
        failure: output.status.isSuccess ? nil : "curl \(output.status): \(tail(output.standardError))")
}
