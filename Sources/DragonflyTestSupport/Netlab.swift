import Synchronization

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The outcome of a command run inside a lab host by ``Netlab/run(on:_:timeLimit:)``.
package struct NetlabCommandResult: Sendable, Hashable {
    /// How the command ended.
    package var status: ProcessExitStatus
    /// Everything it wrote to stdout.
    package var stdout: String
    /// Everything it wrote to stderr.
    package var stderr: String
}

/// Emulated hosts in network namespaces on this machine (`scripts/netlab`, DESIGN §13), started by
/// ``withNetlab(hosts:origin:rate:isolation:_:)`` or ``withNetlab(hostNames:rate:isolation:_:)``.
///
/// Each host is a namespace with one `eth0` on a private /24 that exists only inside the lab, with tc
/// `tbf` on both ends of its link when a rate is given. Nothing is reachable from the test process itself:
/// every command, server and request runs inside a host through `scripts/netlab exec LAB HOST …` (which
/// execs, so the PID of a started process is the command's own). Valid only inside the scope that made it.
package struct Netlab: Sendable {
    /// The environment variable naming the `netlab` script explicitly.
    package static let scriptEnvironmentVariable = "DRAGONFLY_NETLAB"

    /// The lab's name: the per-run prefix of its namespaces, `df<pid>n<counter>`.
    package let name: String
    /// The hosts in address order (h1 gets `.1`, …).
    package let hostNames: [String]
    /// Host name → its IPv4 address inside the lab.
    package let addresses: [String: String]
    /// The `scripts/netlab` being used.
    package let scriptPath: String

    /// The address of `host`, e.g. `10.99.0.1`.
    package func ip(of host: String) -> String {
        guard let address = addresses[host] else {
            preconditionFailure("no host '\(host)' in lab \(name); hosts: \(hostNames)")
        }
        return address
    }

    /// The command prefix that runs something inside `host`: `[netlab, "exec", lab, host]`.
    package func execPrefix(_ host: String) -> [String] {
        precondition(addresses[host] != nil, "no host '\(host)' in lab \(name); hosts: \(hostNames)")
        return [scriptPath, "exec", name, host]
    }

    /// Runs `command` (an executable name looked up in `PATH`, then its arguments) inside `host` to
    /// completion. A non-zero exit is not an error here; look at the result's status.
    ///
    /// - Throws: ``TestSupportError/Code/timedOut`` if it runs longer than `timeLimit` (it is killed).
    package func run(on host: String, _ command: [String], timeLimit: Duration = .seconds(60)) async throws
        -> NetlabCommandResult
    {
        precondition(!command.isEmpty, "run(on:) needs a command")
        let output = try await runCommand(
            scriptPath, Array(execPrefix(host).dropFirst()) + command, timeLimit: timeLimit)
        return NetlabCommandResult(status: output.status, stdout: output.standardOutput, stderr: output.standardError)
    }

    /// GETs `url` with curl from inside `host`; see ``curlGet(_:prefix:timeLimit:)``.
    package func curl(from host: String, _ url: String, timeLimit: Duration = .seconds(20)) async throws
        -> CurlResponse
    {
        try await curlGet(url, prefix: execPrefix(host), timeLimit: timeLimit)
    }

    /// Changes the shaping of `host`'s link (`netlab shape`): `down` on the switch port, `up` on its `eth0`;
    /// `"off"` removes it.
    package func shape(_ host: String, down: String, up: String? = nil) async throws {
        let output = try await runCommand(
            scriptPath, ["shape", name, host, down] + (up.map { [$0] } ?? []), timeLimit: .seconds(30))
        guard output.status.isSuccess else {
            throw TestSupportError(
                code: .commandFailed, message: "netlab shape \(name) \(host) \(down) failed: \(output.standardError)")
        }
    }

    /// The tbf rate of every host's link as `netlab list` reports it: `down` on the switch port (what the
    /// host receives), `up` on its `eth0` (what it sends), e.g. `"200Mbit"`, or `"off"`.
    package func shaping() async throws -> [String: (down: String, up: String)] {
        let output = try await runCommand(scriptPath, ["list", name], timeLimit: .seconds(30))
        guard output.status.isSuccess else {
            throw TestSupportError(code: .commandFailed, message: "netlab list \(name) failed: \(output.standardError)")
        }
        var rates: [String: (down: String, up: String)] = [:]
        for line in output.standardOutput.split(separator: "\n") {
            let fields = line.split(separator: " ").map(String.init)
            if fields.count == 4 { rates[fields[0]] = (fields[2], fields[3]) }
        }
        return rates
    }

    /// Starts the built `dragonfly` inside `host` (as ``withDragonfly(_:environment:readyFile:executablePath:standardInput:workingDirectory:isolation:_:)``
    /// does on the host: stdout/stderr captured, `--ready-file` appended, SIGKILLed and reaped at the end of
    /// the scope). Its listeners should bind the host's address (``ip(of:)``), e.g. `"\(lab.ip(of: "h1")):0"`;
    /// the ready file, data dirs and sockets are ordinary paths (namespaces share the file system).
    package func withDragonfly<Value>(
        on host: String,
        _ arguments: [String],
        environment: [String: String] = [:],
        readyFile: Bool = true,
        executablePath: String? = nil,
        isolation: isolated (any Actor)? = #isolation,
        _ body: (DragonflyProcess) async throws -> Value
    ) async throws -> Value {
        let executable = try executablePath ?? DragonflyExecutable.locate()
        return try await DragonflyTestSupport.withDragonfly(
            Array(execPrefix(host).dropFirst()) + [executable] + arguments,
            environment: environment,
            readyFile: readyFile,
            executablePath: scriptPath
        ) { process in
            try await body(process)
        }
    }

    /// Starts nginx inside `host` as an origin on `<host address>:<port>`, runs `body`, and stops it and
    /// deletes its files at the end of the scope.
    ///
    /// The ``NginxOrigin`` it gets serves its `root` at `/` with Range, ETag and sendfile and logs every
    /// request (``NginxOrigin/accessLog()``, ``NginxOrigin/totalBytesSent()``); its URLs are reachable only
    /// from hosts of this lab. (`/rl/`, `/norange/`, `/status/` of
    /// ``withNginxOrigin(limitRate:tls:serverConfiguration:isolation:_:)`` are not served here.)
    package func withNginx<Value>(
        on host: String,
        port: Int = 8080,
        isolation: isolated (any Actor)? = #isolation,
        _ body: (NginxOrigin) async throws -> Value
    ) async throws -> Value {
        let nginx = "/usr/sbin/nginx"
        guard isExecutableFile(nginx) else {
            throw TestSupportError(
                code: .binaryNotFound, message: "\(nginx) not found; install it: apt-get install -y nginx")
        }
        let directory = try TemporaryDirectory(prefix: "dragonfly-test-netlab-nginx-")
        defer { directory.remove() }
        let root = try directory.makeDirectory("www")
        try directory.makeDirectory("logs")
        try directory.makeDirectory("tmp")
        let origin = NginxOrigin(
            host: ip(of: host),
            port: port,
            root: root,
            prefix: directory.path,
            accessLogPath: directory.appending("logs/access.log"),
            errorLogPath: directory.appending("logs/error.log")
        )
        let pidFile = directory.appending("logs/nginx.pid")
        let configPath = try directory.writeFile("nginx.conf", text: netlabNginxConfiguration(origin, pidFile: pidFile))
        return try await withLaunchedProcess(
            executablePath: scriptPath,
            arguments: Array(execPrefix(host).dropFirst()) + [
                nginx, "-p", directory.path + "/", "-c", configPath, "-e", origin.errorLogPath,
            ],
            filesDirectory: directory,
            filesPrefix: "nginx",
            name: "nginx in \(name)-\(host)"
        ) { launched in
            try await poll(
                every: .milliseconds(50), timeLimit: .seconds(20), description: "nginx on \(origin.authority)"
            ) {
                if let status = try launched.child.exitStatus() {
                    throw TestSupportError(
                        code: .processExitedEarly,
                        message: "nginx in \(host) \(status) while starting; error log:\n"
                            + tail(origin.errorLog() + launched.standardErrorText())
                    )
                }
                guard readFileText(pidFile).trimmingWhitespace() == String(launched.child.pid) else { return false }
                return (try? await curl(from: host, origin.baseURL + "/", timeLimit: .seconds(2))) != nil
            }
            return try await body(origin)
        }
    }

    /// Why labs cannot be made here (not root, no `ip`, no `scripts/netlab`, `ip netns` failing), or `nil`
    /// when they can. Tests use it to skip: `.enabled("needs root and ip netns") { await Netlab.unavailableReason() == nil }`.
    package static func unavailableReason() async -> String? {
        guard geteuid() == 0 else { return "network namespaces need root (running as uid \(geteuid()))" }
        guard let ipPath = ipCommandPath else {
            return "no `ip` command (apt-get install iproute2)"
        }
        let script = locateScript()
        guard isExecutableFile(script) else {
            return "no netlab script at \(script); set \(scriptEnvironmentVariable)"
        }
        guard let output = try? await runCommand(ipPath, ["netns", "list"], timeLimit: .seconds(10)) else {
            return "`\(ipPath) netns list` could not be run"
        }
        guard output.status.isSuccess else {
            return "`\(ipPath) netns list` \(output.status): \(output.standardError.trimmingWhitespace())"
        }
        return nil
    }

    /// The namespaces of the lab called `labName` that exist now (`LAB-sw`, `LAB-h1`, …), e.g. to check that
    /// a lab was removed.
    package static func namespaces(of labName: String) async throws -> [String] {
        guard let ipPath = ipCommandPath else {
            throw TestSupportError(code: .binaryNotFound, message: "no `ip` command (apt-get install iproute2)")
        }
        let output = try await runCommand(ipPath, ["netns", "list"], timeLimit: .seconds(10))
        guard output.status.isSuccess else {
            throw TestSupportError(
                code: .commandFailed, message: "ip netns list \(output.status): \(output.standardError)")
        }
        return output.standardOutput.split(separator: "\n").compactMap { line in
            let namespace = line.split(separator: " ").first.map(String.init) ?? ""
            let host = namespace.dropFirst(labName.count + 1)
            return namespace.hasPrefix(labName + "-") && !host.contains("-") ? namespace : nil
        }
    }

    /// The `ip` executable, if installed.
    static var ipCommandPath: String? {
        ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"].first(where: isExecutableFile)
    }

    /// `$DRAGONFLY_NETLAB`, else `scripts/netlab` of the source tree this module was built from.
    package static func locateScript(filePath: String = #filePath) -> String {
        if let explicit = currentEnvironment()[scriptEnvironmentVariable], !explicit.isEmpty {
            return explicit
        }
        // <root>/Sources/DragonflyTestSupport/Netlab.swift
        let root = directoryName(of: directoryName(of: directoryName(of: filePath)))
        return root + "/scripts/netlab"
    }
}

/// Distinguishes the labs of one test process.
private let netlabCounter = Atomic<Int>(0)

/// Makes a lab with hosts `h1`…`h<hosts>` (and a host `origin` after them when `origin` is true), runs
/// `body`, and removes the lab (every namespace, link and leftover process in it) at the end of the scope,
/// also when `body` throws or the task is cancelled. See ``Netlab``.
///
/// - Parameters:
///   - rate: A tbf rate for both directions of every host's link, e.g. `"200mbit"`; `nil` for unshaped.
/// - Throws: ``TestSupportError/Code/commandFailed`` with the reason when labs cannot be made here (check
///   ``Netlab/unavailableReason()`` first to skip instead).
package func withNetlab<Value>(
    hosts: Int = 2,
    origin: Bool = false,
    rate: String? = nil,
    isolation: isolated (any Actor)? = #isolation,
    _ body: (Netlab) async throws -> Value
) async throws -> Value {
    precondition((1...200).contains(hosts), "a lab has 1-200 hosts")
    return try await withNetlab(
        hostNames: (1...hosts).map { "h\($0)" } + (origin ? ["origin"] : []),
        rate: rate,
        body
    )
}

/// Makes a lab with the given host names (lowercase letter, then up to 12 of `[a-z0-9]`), in address order;
/// otherwise as ``withNetlab(hosts:origin:rate:isolation:_:)``.
package func withNetlab<Value>(
    hostNames: [String],
    rate: String? = nil,
    isolation: isolated (any Actor)? = #isolation,
    _ body: (Netlab) async throws -> Value
) async throws -> Value {
    if let reason = await Netlab.unavailableReason() {
        throw TestSupportError(code: .commandFailed, message: "cannot make a netlab here: \(reason)")
    }
    let script = Netlab.locateScript()
    let name = "df\(getpid())n\(netlabCounter.wrappingAdd(1, ordering: .relaxed).newValue)"
    // A lab of this name can only be left over from a crashed run whose PID was reused: remove it.
    _ = try await runCommand(script, ["down", name], timeLimit: .seconds(30))
    let up = try await runCommand(
        script, ["up", name] + hostNames + (rate.map { ["--rate", $0] } ?? []), timeLimit: .seconds(60))
    guard up.status.isSuccess else {
        await removeNetlab(script: script, name: name)
        throw TestSupportError(
            code: .commandFailed,
            message: "netlab up \(name) \(hostNames.joined(separator: " ")) \(up.status): \(up.standardError)"
        )
    }
    // `up` prints "HOST ADDRESS DOWN UP" per host.
    var addresses: [String: String] = [:]
    for line in up.standardOutput.split(separator: "\n") {
        let fields = line.split(separator: " ")
        if fields.count >= 2 { addresses[String(fields[0])] = String(fields[1]) }
    }
    let lab = Netlab(name: name, hostNames: hostNames, addresses: addresses, scriptPath: script)
    guard hostNames.allSatisfy({ addresses[$0] != nil }) else {
        await removeNetlab(script: script, name: name)
        throw TestSupportError(
            code: .commandFailed, message: "netlab up \(name) did not list every host: \(up.standardOutput)")
    }
    let value: Value
    do {
        value = try await body(lab)
    } catch {
        await removeNetlab(script: script, name: name)
        throw error
    }
    await removeNetlab(script: script, name: name)
    return value
}

/// `netlab down NAME`, in a task of its own so that a cancelled caller still removes its lab.
private func removeNetlab(script: String, name: String) async {
    _ = await Task {
        try? await runCommand(script, ["down", name], timeLimit: .seconds(30))
    }.value
}

private func netlabNginxConfiguration(_ origin: NginxOrigin, pidFile: String) -> String {
    // Same log format as withNginxOrigin, so NginxOrigin.accessLog() reads it.
    """
    # Generated by DragonflyTestSupport.Netlab.withNginx.
    \(isRunningAsRoot ? "user root;" : "")
    daemon off;
    master_process on;
    worker_processes 1;
    pid \(pidFile);
    error_log \(origin.errorLogPath) warn;
    events { worker_connections 1024; }
    http {
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
        server {
            listen \(origin.host):\(origin.port);
            root \(origin.root);
            etag on;
            location / { autoindex on; }
        }
    }

    """
}
