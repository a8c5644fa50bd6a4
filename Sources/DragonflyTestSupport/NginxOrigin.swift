#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// One request as nginx's access log recorded it.
package struct AccessLogEntry: Sendable, Hashable, Decodable {
    /// The request method, e.g. `GET`.
    package var method: String
    /// The request URI as sent, with its query, e.g. `/rl/blob.bin?bps=1m`.
    package var uri: String
    /// The response status, e.g. `206`.
    package var status: Int
    /// Body bytes sent to the client (`$body_bytes_sent`): less than the body when the client went away.
    package var bytesSent: Int
    /// The request's `Range` header, or `nil` if it had none.
    package var range: String?
    /// When the response was done, seconds since the epoch with millisecond resolution (`$msec`).
    package var finishedAt: Double
    /// How long the request took, in seconds with millisecond resolution (`$request_time`).
    package var duration: Double

    /// When nginx read the request's first bytes.
    package var startedAt: Double { finishedAt - duration }

    private enum CodingKeys: String, CodingKey {
        case method, uri, status
        case bytesSent = "bytes"
        case range
        case finishedAt = "msec"
        case duration = "time"
    }

    package init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        method = try container.decode(String.self, forKey: .method)
        uri = try container.decode(String.self, forKey: .uri)
        status = try container.decode(Int.self, forKey: .status)
        bytesSent = try container.decode(Int.self, forKey: .bytesSent)
        let range = try container.decode(String.self, forKey: .range)
        self.range = range.isEmpty ? nil : range
        finishedAt = try container.decode(Double.self, forKey: .finishedAt)
        duration = try container.decode(Double.self, forKey: .duration)
    }
}

/// A real nginx serving files from a temporary `www` root on `127.0.0.1:<port>`, as a test origin.
///
/// Started by ``withNginxOrigin(limitRate:tls:serverConfiguration:isolation:_:)``. Put files into ``root`` (or
/// use ``writeFile(_:contents:)``) and fetch them with ``url(for:)``. What it serves (RECIPES §1):
/// - `/<path>`: the file with `ETag`, `Last-Modified` and Range support (single ranges answer 206 with
///   `Content-Range`; an unsatisfiable one 416), directory listings on; limited to `limitRate` bytes/s if set.
/// - `/rl/<path>?bps=<rate>`: the same file sent at `rate` bytes/s (`500k`, `1m` allowed; none = unlimited),
///   see ``rateLimitedURL(for:bytesPerSecond:)``.
/// - `/norange/<path>`: the same file, but Range headers are ignored (200 with the whole body), for the
///   "origin ignores Range" case.
/// - `/status/<code>` for each code in ``statusCodes``: that status (nginx cannot return a status taken
///   from the URI, so the set is fixed), see ``statusURL(_:)``.
///
/// Every request is logged unbuffered, one JSON object per line, and read back with ``accessLog()``. nginx
/// writes the entry when the response is finished, which can be a moment after the client has the last
/// byte: wait for an entry with ``poll(every:timeLimit:description:until:)``.
package struct NginxOrigin: Sendable {
    /// The status codes served under `/status/<code>`.
    package static let statusCodes = [200, 204, 400, 401, 403, 404, 410, 416, 429, 500, 501, 502, 503, 504]

    /// Always `127.0.0.1`.
    package let host: String
    /// The port nginx listens on.
    package let port: Int
    /// The directory served at `/`; the test puts its files here.
    package let root: String
    /// nginx's prefix directory (config, logs, temp files).
    package let prefix: String
    /// The access log (JSON lines).
    package let accessLogPath: String
    /// nginx's error log.
    package let errorLogPath: String
    /// With `tls: true`: the port of the HTTPS server (the same locations as ``port``).
    package var tlsPort: Int? = nil
    /// With `tls: true`: the PEM of nginx's own self-signed certificate, for `127.0.0.1` and `localhost`
    /// (trust it to reach ``httpsURL(for:)``).
    package var tlsCertificatePath: String? = nil

    /// `https://127.0.0.1:<tlsPort>/<path>`; only with `tls: true`.
    package func httpsURL(for path: String, host: String = "127.0.0.1") -> String {
        precondition(tlsPort != nil, "the origin was started without tls: true")
        return "https://\(host):\(tlsPort ?? 0)/" + path.drop { $0 == "/" }
    }

    /// `http://127.0.0.1:<port>`.
    package var baseURL: String { "http://\(host):\(port)" }

    /// `host:port`, e.g. for a `Host` header or a proxy rule.
    package var authority: String { "\(host):\(port)" }

    /// The URL of a file under ``root``, e.g. `url(for: "blob.bin")` → `http://127.0.0.1:41234/blob.bin`.
    /// `path` is used as given (no percent-encoding).
    package func url(for path: String) -> String {
        baseURL + "/" + path.drop { $0 == "/" }
    }

    /// The URL of a file under ``root`` served at `bytesPerSecond` (nginx `limit_rate`).
    package func rateLimitedURL(for path: String, bytesPerSecond: Int) -> String {
        "\(baseURL)/rl/\(path.drop { $0 == "/" })?bps=\(bytesPerSecond)"
    }

    /// The URL of a file under ``root`` served without Range support (always 200 with the whole body).
    package func rangeIgnoringURL(for path: String) -> String {
        "\(baseURL)/norange/\(path.drop { $0 == "/" })"
    }

    /// The URL that answers with `code`, which must be one of ``statusCodes``.
    /// `/liarange/<path>`: advertises `Accept-Ranges: bytes` but answers every Range request with 200 and the
    /// whole body, to test that clients detect it.
    package func rangeLyingURL(for path: String) -> String {
        "\(baseURL)/liarange/\(path.drop { $0 == "/" })"
    }

    package func statusURL(_ code: Int) -> String {
        precondition(Self.statusCodes.contains(code), "NginxOrigin serves /status/ only for \(Self.statusCodes)")
        return "\(baseURL)/status/\(code)"
    }

    /// Writes a file (mode 0644) under ``root``, creating parent directories, and returns its path.
    @discardableResult
    package func writeFile(_ path: String, contents: some Collection<UInt8>) throws -> String {
        let relative = String(path.drop { $0 == "/" })
        let target = root + "/" + relative
        let parent = directoryName(of: target)
        if parent != root {
            do {
                try FileManager.default.createDirectory(
                    atPath: parent,
                    withIntermediateDirectories: true,
                    attributes: [.posixPermissions: 0o755]
                )
            } catch {
                throw TestSupportError(code: .systemCallFailed, message: "could not create \(parent)", cause: error)
            }
        }
        try DragonflyTestSupport.writeFile(target, bytes: contents)
        return target
    }

    /// Every request logged so far, oldest first.
    package func accessLog() throws -> [AccessLogEntry] {
        guard let bytes = readFileBytes(accessLogPath) else { return [] }
        let decoder = JSONDecoder()
        var entries: [AccessLogEntry] = []
        // Each entry is one write() of a whole line; a line without its newline is still being written.
        var lines = bytes.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false)
        lines.removeLast()
        for line in lines where !line.isEmpty {
            do {
                entries.append(try decoder.decode(AccessLogEntry.self, from: Data(line)))
            } catch {
                throw TestSupportError(
                    code: .commandFailed,
                    message:
                        "unexpected line in nginx access log \(accessLogPath): \(String(decoding: line, as: UTF8.self))",
                    cause: error
                )
            }
        }
        return entries
    }

    /// The sum of body bytes nginx sent over all logged requests (origin traffic).
    package func totalBytesSent() throws -> Int {
        try accessLog().reduce(0) { $0 + $1.bytesSent }
    }

    /// nginx's error log so far.
    package func errorLog() -> String {
        readFileText(errorLogPath)
    }
}

/// Starts nginx as an HTTP origin (see ``NginxOrigin``), runs `body`, and stops nginx and deletes its
/// directory at the end of the scope, also when `body` throws.
///
/// nginx runs in the foreground (`daemon off;`) as our child in its own process group, so it is killed with
/// the scope. It listens on a port from ``freeLoopbackPort()``; if another process grabbed that port first
/// (nginx exits with "Address already in use"), it is started again on a fresh port, at most 5 times.
/// Readiness is nginx's PID file (written only after its listening socket is bound) plus a successful TCP
/// connect, never a sleep.
///
/// - Parameters:
///   - limitRate: A rate limit in bytes per second for every response under `/`; `nil` for none.
///   - tls: Also serve HTTPS on a second port, with a self-signed certificate made by `openssl` for
///     `127.0.0.1` and `localhost` (``NginxOrigin/tlsCertificatePath``).
///   - serverConfiguration: More nginx directives for the `server` block, e.g. a `location` a test needs (such
///     as a `try_files` fallback to another directory); placed after the built-in locations. The root is
///     ``NginxOrigin/root``, so `$uri` paths resolve under it.
package func withNginxOrigin<Value>(
    limitRate: Int? = nil,
    tls: Bool = false,
    serverConfiguration: String = "",
    isolation: isolated (any Actor)? = #isolation,
    _ body: (NginxOrigin) async throws -> Value
) async throws -> Value {
    let nginx = "/usr/sbin/nginx"
    guard isExecutableFile(nginx) else {
        throw TestSupportError(
            code: .binaryNotFound, message: "\(nginx) not found; install it: apt-get install -y nginx")
    }
    let directory = try TemporaryDirectory(prefix: "dragonfly-test-nginx-")
    defer { directory.remove() }
    let root = try directory.makeDirectory("www")
    try directory.makeDirectory("logs")
    try directory.makeDirectory("tmp")
    var certificate: (certificate: String, key: String)?
    if tls {
        let paths = (directory.appending("tls/origin.crt"), directory.appending("tls/origin.key"))
        try directory.makeDirectory("tls")
        let output = try await runCommand(
            "/usr/bin/openssl",
            [
                "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", paths.1, "-out", paths.0, "-days", "2", "-subj", "/CN=dragonfly test origin",
                "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            ], timeLimit: .seconds(30))
        guard output.status.isSuccess else {
            throw TestSupportError(
                code: .commandFailed,
                message: "openssl could not make the origin's certificate: \(output.standardError)")
        }
        certificate = paths
    }

    let maximumAttempts = 5
    var failures: [String] = []
    for attempt in 1...maximumAttempts {
        let port = try freeLoopbackPort()
        var origin = NginxOrigin(
            host: "127.0.0.1",
            port: port,
            root: root,
            prefix: directory.path,
            accessLogPath: directory.appending("logs/access.log"),
            errorLogPath: directory.appending("logs/error.log")
        )
        if let certificate {
            origin.tlsPort = try freeLoopbackPort()
            origin.tlsCertificatePath = certificate.certificate
        }
        let pidFile = directory.appending("logs/nginx.pid")
        _ = try? FileManager.default.removeItem(atPath: pidFile)
        _ = try? FileManager.default.removeItem(atPath: origin.errorLogPath)
        let configPath = try directory.writeFile(
            "nginx.conf",
            text: nginxConfiguration(
                origin: origin, pidFile: pidFile, limitRate: limitRate, tlsKeyPath: certificate?.key,
                serverConfiguration: serverConfiguration)
        )

        let outcome: NginxAttempt<Value> = try await withLaunchedProcess(
            executablePath: nginx,
            arguments: ["-p", directory.path + "/", "-c", configPath, "-e", origin.errorLogPath],
            filesDirectory: directory,
            filesPrefix: "nginx-\(attempt)",
            name: "nginx"
        ) { launched in
            var exited: ProcessExitStatus?
            do {
                try await poll(
                    every: .milliseconds(20), timeLimit: .seconds(20), description: "nginx on \(origin.authority)"
                ) {
                    if let status = try launched.child.exitStatus() {
                        exited = status
                        return true
                    }
                    guard readFileText(pidFile).trimmingWhitespace() == String(launched.child.pid) else {
                        return false
                    }
                    return await isAcceptingConnections(host: origin.host, port: port)
                }
            } catch let error as TestSupportError where error.code == .timedOut {
                throw TestSupportError(
                    code: .timedOut,
                    message: "\(error.message); nginx error log:\n\(tail(origin.errorLog()))"
                )
            }
            if let exited {
                let errors = origin.errorLog() + launched.standardErrorText()
                if errors.contains("Address already in use") {
                    return .portTaken("port \(port): \(exited)")
                }
                throw TestSupportError(
                    code: .processExitedEarly,
                    message: "nginx \(exited) while starting; error log:\n\(tail(errors))"
                )
            }
            return .finished(try await body(origin))
        }
        switch outcome {
        case .finished(let value):
            return value
        case .portTaken(let failure):
            failures.append(failure)
        }
    }
    throw TestSupportError(
        code: .portUnavailable,
        message: "nginx could not bind a free port in \(maximumAttempts) attempts: \(failures.joined(separator: "; "))"
    )
}

private enum NginxAttempt<Value> {
    case finished(Value)
    case portTaken(String)
}

private func nginxConfiguration(
    origin: NginxOrigin, pidFile: String, limitRate: Int?, tlsKeyPath: String?, serverConfiguration: String
) -> String {
    let tlsListen =
        if let tlsPort = origin.tlsPort, let certificate = origin.tlsCertificatePath, let tlsKeyPath {
            """
            listen \(origin.host):\(tlsPort) ssl;
                            ssl_certificate \(certificate);
                            ssl_certificate_key \(tlsKeyPath);
            """
        } else {
            ""
        }
    let statusLocations = NginxOrigin.statusCodes
        .map { "        location = /status/\($0) { return \($0); }" }
        .joined(separator: "\n")
    // As root, nginx's workers would switch to `nobody`, which cannot read files a test wrote into a
    // directory it created with a restrictive mode or umask. Running the workers as root instead keeps
    // every file servable whatever its mode; the server only listens on loopback in a throwaway prefix.
    // (Not as root, nginx ignores `user` with a warning, so it is left out.)
    let user = isRunningAsRoot ? "user root;" : ""
    return """
        # Generated by DragonflyTestSupport.withNginxOrigin; see RECIPES §1.
        \(user)
        daemon off;
        master_process on;
        worker_processes 1;
        pid \(pidFile);
        error_log \(origin.errorLogPath) warn;
        events { worker_connections 1024; }
        http {
            # One JSON object per request. No `buffer=`/`flush=`, so every entry is written when its request ends.
            log_format dragonfly escape=json '{"method":"$request_method","uri":"$request_uri",'
                '"status":$status,"bytes":$body_bytes_sent,"range":"$http_range","msec":$msec,'
                '"time":$request_time}';
            access_log \(origin.accessLogPath) dragonfly;
            client_body_temp_path \(origin.prefix)/tmp/body;
            proxy_temp_path \(origin.prefix)/tmp/proxy;
            fastcgi_temp_path \(origin.prefix)/tmp/fastcgi;
            uwsgi_temp_path \(origin.prefix)/tmp/uwsgi;
            scgi_temp_path \(origin.prefix)/tmp/scgi;
            types { application/octet-stream bin; text/plain txt; text/html html; application/json json; }
            default_type application/octet-stream;
            sendfile on;
            keepalive_requests 10000;
            # Per-request rate for /rl/: ?bps=500k; no parameter means unlimited (limit_rate 0).
            map $arg_bps $dragonfly_rate { "" 0; default $arg_bps; }
            server {
                listen \(origin.host):\(origin.port);
                \(tlsListen)
                root \(origin.root);
                etag on;
                location / {
                    autoindex on;
                    limit_rate \(limitRate ?? 0);
                }
                location /rl/ {
                    alias \(origin.root)/;
                    limit_rate $dragonfly_rate;
                }
                location /norange/ {
                    alias \(origin.root)/;
                    max_ranges 0;
                }
                location /liarange/ {
                    alias \(origin.root)/;
                    max_ranges 0;
                    add_header Accept-Ranges bytes;
                }
        \(statusLocations)
                \(serverConfiguration)
            }
        }

        """
}

extension String {
    /// The string without leading and trailing spaces and newlines.
    func trimmingWhitespace() -> String {
        let isSpace: (Character) -> Bool = { $0 == " " || $0 == "\n" || $0 == "\t" || $0 == "\r" }
        guard let first = firstIndex(where: { !isSpace($0) }), let last = lastIndex(where: { !isSpace($0) }) else {
            return ""
        }
        return String(self[first...last])
    }
}
