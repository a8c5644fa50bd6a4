package import DragonflyCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// One `dragonfly` role process of a ``P2PCluster``: its process, ready file, directories and listeners.
package struct ClusterNode: Sendable, CustomStringConvertible {
    /// The role a node plays.
    package enum Role: String, Sendable, Hashable {
        case scheduler
        case cdn
        case daemon
    }

    /// A short unique name: `scheduler1`, `cdn1`, `daemon1`, `daemon2`, …
    package let name: String
    /// The role.
    package let role: Role
    /// The running process: signal it (`.kill` for a crash, `.terminate` for a graceful stop), wait for its
    /// exit, read its stderr.
    package let process: DragonflyProcess
    /// The ready file the process wrote (listener addresses as bound).
    package let ready: ReadyFile
    /// The node's own directory inside the cluster directory (its data dir and socket live here).
    package let directory: String
    /// `--data-dir` of a cdn or daemon; `nil` for a scheduler.
    package let dataDirectory: String?
    /// `--socket` of a cdn or daemon (the local API); `nil` for a scheduler.
    package let socketPath: String?
    /// The ``Netlab`` host the node runs in (its listeners bind that host's address), or `nil` for a node
    /// on this machine's loopback.
    package let host: String?

    /// The process ID.
    package var pid: Int32 { process.pid }

    /// The `IP:port` of a listener as the ready file reports it (`grpc`, `metrics` for a scheduler; `peer`,
    /// `proxy`, `metrics`, `health`, `piece` for a cdn or daemon), or `nil` if it has none of that name.
    package func address(of listener: String) -> String? {
        ready.listeners[listener]
    }

    /// The listener serving `/metrics` and `/healthy` (every role calls it `metrics`).
    package var metricsAddress: String { ready.listeners["metrics"] ?? "" }

    /// The scheduler's gRPC address, or the cdn's/daemon's peer gRPC address.
    package var grpcAddress: String { ready.listeners[role == .scheduler ? "grpc" : "peer"] ?? "" }

    /// The prefix of this role's metric names: `dragonfly_scheduler_`, `dragonfly_cdn_` or `dragonfly_daemon_`.
    package var metricPrefix: String { "dragonfly_\(role.rawValue)_" }

    package var description: String { "\(name) (pid \(pid))" }
}

/// Where a cdn's or daemon's downloaded bytes came from, as labelled in
/// `dragonfly_<role>_download_bytes_total{source=…}` (DESIGN §12).
package enum ClusterByteSource: String, Sendable, Hashable, CaseIterable {
    /// Pieces from other peers.
    case peer
    /// Pieces read from the origin (back-to-source).
    case origin
    /// Pieces already in the local cache.
    case local
}

/// A running set of real `dragonfly` processes on 127.0.0.1, started by
/// ``withP2PCluster(schedulers:seeds:daemons:daemonConfigYAML:seedConfigYAML:schedulerConfigYAML:schedulerArguments:seedArguments:daemonArguments:environment:executablePath:readyTimeLimit:isolation:_:)``,
/// or in the hosts of a ``Netlab``, started by
/// ``withP2PCluster(in:schedulers:seeds:daemons:daemonConfigYAML:seedConfigYAML:schedulerConfigYAML:schedulerArguments:seedArguments:daemonArguments:environment:executablePath:readyTimeLimit:isolation:_:)``.
///
/// Valid only inside that scope. Every node is a child process of the test; the helpers read metrics and
/// health over HTTP with curl and run `dragonfly get` against a node's socket.
package struct P2PCluster: Sendable {
    /// The schedulers, in start order.
    package let schedulers: [ClusterNode]
    /// The seed peers (`dragonfly cdn`).
    package let seeds: [ClusterNode]
    /// The daemons.
    package let daemons: [ClusterNode]
    /// The cluster's scratch directory (node directories, outputs); deleted at the end of the scope.
    package let directory: TemporaryDirectory
    /// The `dragonfly` executable every node runs.
    package let executablePath: String
    /// Environment variables added for every node and every `get`.
    package let environment: [String: String]
    /// The lab the nodes run in, or `nil` for a cluster on loopback.
    package let lab: Netlab?

    /// What runs a command where `node` runs: `[]` on loopback, `[netlab, "exec", lab, host]` in a lab.
    package func commandPrefix(for node: ClusterNode) -> [String] {
        guard let lab, let host = node.host else { return [] }
        return lab.execPrefix(host)
    }

    /// Every node: schedulers, then seeds, then daemons.
    package var nodes: [ClusterNode] { schedulers + seeds + daemons }

    /// The schedulers' gRPC addresses as passed to `--scheduler` (comma-separated there).
    package var schedulerAddresses: [String] { schedulers.map(\.grpcAddress) }

    /// The node called `name` (e.g. `daemon2`), or `nil`.
    package func node(named name: String) -> ClusterNode? {
        nodes.first { $0.name == name }
    }

    /// A path for an output file inside the cluster directory, e.g. for ``get(url:on:output:extraArguments:timeLimit:)``.
    package func outputPath(_ name: String) -> String {
        directory.appending("outputs/\(name)")
    }

    /// Fetches and parses the node's `/metrics` page.
    ///
    /// - Throws: ``TestSupportError/Code/commandFailed`` when the listener does not answer 200 or the page
    ///   does not parse.
    package func metrics(of node: ClusterNode) async throws -> PrometheusMetrics {
        let response = try await curlGet("http://\(node.metricsAddress)/metrics", prefix: commandPrefix(for: node))
        guard response.status == 200 else {
            throw TestSupportError(
                code: .commandFailed,
                message: "GET /metrics of \(node) answered \(response.status): \(tail(response.body, maxBytes: 500))"
            )
        }
        return try PrometheusMetrics(parsing: response.body)
    }

    /// Bytes the cdn or daemon downloaded from `source` so far, from
    /// `dragonfly_<role>_download_bytes_total{source=…}`; 0 while the counter has no such sample.
    package func downloadBytes(of node: ClusterNode, source: ClusterByteSource) async throws -> Int {
        let value = try await metrics(of: node).value(
            node.metricPrefix + "download_bytes_total", labels: ["source": source.rawValue])
        return Int(value ?? 0)
    }

    /// Bytes the cdn or daemon uploaded to other peers so far (`dragonfly_<role>_upload_bytes_total`); 0
    /// while the counter has no sample.
    package func uploadBytes(of node: ClusterNode) async throws -> Int {
        Int(try await metrics(of: node).value(node.metricPrefix + "upload_bytes_total") ?? 0)
    }

    /// Whether `GET /healthy` on the node's metrics listener answers 200 right now.
    package func isHealthy(_ node: ClusterNode) async -> Bool {
        let response = try? await curlGet(
            "http://\(node.metricsAddress)/healthy", prefix: commandPrefix(for: node), timeLimit: .seconds(5))
        return response?.status == 200
    }

    /// Runs `dragonfly get URL -O output --socket <node's socket> --no-progress --data-dir <node dir>/get`
    /// plus `extraArguments` to completion, where the node runs (inside its lab host in a lab cluster).
    ///
    /// `--data-dir` gives the `get` process a cache of its own (for a fall-back to the origin), so it never
    /// uses the machine-wide default; an extra `--data-dir` in `extraArguments` wins. A non-zero exit is
    /// not an error here: look at the result's status and stderr. The output's parent directory is created.
    ///
    /// - Parameters:
    ///   - node: A cdn or daemon.
    ///   - output: Where the file goes; ``outputPath(_:)`` gives one in the cluster directory.
    /// - Throws: ``TestSupportError/Code/timedOut`` if `get` runs longer than `timeLimit` (it is killed).
    package func get(
        url: String,
        on node: ClusterNode,
        output: String,
        extraArguments: [String] = [],
        timeLimit: Duration = .seconds(300)
    ) async throws -> DragonflyRunResult {
        guard let socketPath = node.socketPath else {
            preconditionFailure("get(url:on:) needs a cdn or daemon, not \(node)")
        }
        let parent = directoryName(of: output)
        if !fileExists(parent), parent.hasPrefix(directory.path + "/") {
            try directory.makeDirectory(String(parent.dropFirst(directory.path.count + 1)))
        }
        let arguments =
            [
                "get", url, "-O", output, "--socket", socketPath, "--no-progress",
                "--data-dir", node.directory + "/get",
            ] + extraArguments
        let prefix = commandPrefix(for: node)
        return try await runDragonfly(
            prefix.isEmpty ? arguments : Array(prefix.dropFirst()) + [executablePath] + arguments,
            environment: environment,
            timeLimit: timeLimit,
            executablePath: prefix.first ?? executablePath
        )
    }

    /// Runs ``get(url:on:output:extraArguments:timeLimit:)`` on every node of `nodes` at once, each into
    /// `outputPath("<node name>")`, and returns the results in the order of `nodes`.
    package func getConcurrently(
        url: String,
        on nodes: [ClusterNode],
        extraArguments: [String] = [],
        timeLimit: Duration = .seconds(300)
    ) async throws -> [(node: ClusterNode, output: String, result: DragonflyRunResult)] {
        try await withThrowingTaskGroup(of: (Int, DragonflyRunResult).self) { group in
            for (index, node) in nodes.enumerated() {
                group.addTask {
                    let result = try await get(
                        url: url,
                        on: node,
                        output: outputPath(node.name),
                        extraArguments: extraArguments,
                        timeLimit: timeLimit
                    )
                    return (index, result)
                }
            }
            var results = [DragonflyRunResult?](repeating: nil, count: nodes.count)
            for try await (index, result) in group {
                results[index] = result
            }
            return nodes.enumerated().compactMap { index, node in
                results[index].map { (node, outputPath(node.name), $0) }
            }
        }
    }

    /// SIGKILLs a node (a crash: no graceful stop) and waits until it is gone.
    package func kill(_ node: ClusterNode) async throws {
        try node.process.signal(.kill)
        _ = try await node.process.waitForExit(timeLimit: .seconds(10))
    }

    /// The last `maxBytes` of every node's stderr, for a failing test's message.
    package func logs(maxBytes: Int = 3000) -> String {
        nodes.map { "--- \($0.name) stderr:\n" + tail($0.process.stderrText(), maxBytes: maxBytes) }
            .joined(separator: "\n")
    }
}

/// Starts a P2P cluster of real `dragonfly` processes on 127.0.0.1, runs `body` with it, and kills every
/// process and deletes every file at the end of the scope, also when `body` or a start throws.
///
/// Start order: the schedulers (`dragonfly scheduler --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0`),
/// whose ready files give their addresses; then the seeds (`dragonfly cdn`) and the daemons together, each
/// with `--scheduler` naming every scheduler, its own `--data-dir` and `--socket` in its node directory, and
/// every listener on `127.0.0.1:0`. Returns once every ready file is there (a role that exits first fails
/// the start with its stderr). At the end the nodes are SIGKILLed in reverse start order (daemons first)
/// and reaped.
///
/// - Parameters:
///   - schedulers: How many schedulers (at least 1).
///   - seeds: How many seed peers.
///   - daemons: How many daemons.
///   - daemonConfigYAML: A config file for every daemon (`--config`); flags above still override it.
///   - seedConfigYAML: A config file for every seed peer.
///   - schedulerConfigYAML: A config file for every scheduler.
///   - schedulerArguments: Extra arguments for every scheduler (e.g. `["--log-level", "debug"]`).
///   - seedArguments: Extra arguments for every seed peer.
///   - daemonArguments: Extra arguments for every daemon.
///   - environment: Variables added for every node and every `get`.
///   - executablePath: The `dragonfly` to run; ``DragonflyExecutable/locate(environment:testExecutablePath:)`` by default.
///   - readyTimeLimit: How long each role may take to write its ready file.
package func withP2PCluster<Value>(
    schedulers: Int = 1,
    seeds: Int = 1,
    daemons: Int = 4,
    daemonConfigYAML: String? = nil,
    seedConfigYAML: String? = nil,
    schedulerConfigYAML: String? = nil,
    schedulerArguments: [String] = [],
    seedArguments: [String] = [],
    daemonArguments: [String] = [],
    environment: [String: String] = [:],
    executablePath: String? = nil,
    readyTimeLimit: Duration = .seconds(60),
    isolation: isolated (any Actor)? = #isolation,
    _ body: (P2PCluster) async throws -> Value
) async throws -> Value {
    precondition(schedulers >= 1 && seeds >= 0 && daemons >= 0, "a cluster needs a scheduler")
    return try await withPlacedP2PCluster(
        lab: nil,
        schedulerHosts: [String?](repeating: nil, count: schedulers),
        seedHosts: [String?](repeating: nil, count: seeds),
        daemonHosts: [String?](repeating: nil, count: daemons),
        configurations: ClusterConfigurations(
            daemonYAML: daemonConfigYAML,
            seedYAML: seedConfigYAML,
            schedulerYAML: schedulerConfigYAML,
            schedulerArguments: schedulerArguments,
            seedArguments: seedArguments,
            daemonArguments: daemonArguments
        ),
        environment: environment,
        executablePath: executablePath,
        readyTimeLimit: readyTimeLimit,
        body
    )
}

/// Starts a P2P cluster inside a ``Netlab``: each node runs in the lab host named for it (through
/// `scripts/netlab exec`) with every listener on that host's address, port 0; otherwise as
/// ``withP2PCluster(schedulers:seeds:daemons:daemonConfigYAML:seedConfigYAML:schedulerConfigYAML:schedulerArguments:seedArguments:daemonArguments:environment:executablePath:readyTimeLimit:isolation:_:)``.
/// A host may hold several nodes. ``P2PCluster/metrics(of:)``, ``P2PCluster/isHealthy(_:)`` and
/// ``P2PCluster/get(url:on:output:extraArguments:timeLimit:)`` run inside the node's host, so an origin in
/// the lab (``Netlab/withNginx(on:port:isolation:_:)``) is reachable from every `get`.
///
/// - Parameters:
///   - schedulers: The host of each scheduler, e.g. `["h1"]`.
///   - seeds: The host of each seed peer.
///   - daemons: The host of each daemon, e.g. `["h2", "h3", "h4"]`.
package func withP2PCluster<Value>(
    in lab: Netlab,
    schedulers: [String],
    seeds: [String],
    daemons: [String],
    daemonConfigYAML: String? = nil,
    seedConfigYAML: String? = nil,
    schedulerConfigYAML: String? = nil,
    schedulerArguments: [String] = [],
    seedArguments: [String] = [],
    daemonArguments: [String] = [],
    environment: [String: String] = [:],
    executablePath: String? = nil,
    readyTimeLimit: Duration = .seconds(60),
    isolation: isolated (any Actor)? = #isolation,
    _ body: (P2PCluster) async throws -> Value
) async throws -> Value {
    precondition(!schedulers.isEmpty, "a cluster needs a scheduler")
    for host in schedulers + seeds + daemons {
        precondition(lab.addresses[host] != nil, "no host '\(host)' in lab \(lab.name); hosts: \(lab.hostNames)")
    }
    return try await withPlacedP2PCluster(
        lab: lab,
        schedulerHosts: schedulers,
        seedHosts: seeds,
        daemonHosts: daemons,
        configurations: ClusterConfigurations(
            daemonYAML: daemonConfigYAML,
            seedYAML: seedConfigYAML,
            schedulerYAML: schedulerConfigYAML,
            schedulerArguments: schedulerArguments,
            seedArguments: seedArguments,
            daemonArguments: daemonArguments
        ),
        environment: environment,
        executablePath: executablePath,
        readyTimeLimit: readyTimeLimit,
        body
    )
}

/// `yaml` with the registry mirror's default upstream on a closed loopback port unless the test names one: no
/// test traffic ever reaches the public default (`https://index.docker.io`), whatever a test sends the proxy.
package func loopbackMirror(_ yaml: String?) -> String {
    let upstream = "  registryMirror:\n    url: http://127.0.0.1:9\n"
    guard let yaml, !yaml.isEmpty else { return "proxy:\n" + upstream }
    if yaml.contains("registryMirror:") { return yaml }
    var lines = yaml.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
    if let proxy = lines.firstIndex(where: { $0.trimmingSpaces() == "proxy:" }) {
        lines.insert(String(upstream.dropLast()), at: proxy + 1)
        return lines.joined(separator: "\n")
    }
    return yaml + (yaml.hasSuffix("\n") ? "" : "\n") + "proxy:\n" + upstream
}

/// The per-role configuration of a cluster.
private struct ClusterConfigurations {
    var daemonYAML: String?
    var seedYAML: String?
    var schedulerYAML: String?
    var schedulerArguments: [String]
    var seedArguments: [String]
    var daemonArguments: [String]
}

/// The cluster start shared by the loopback and the lab variants: a host of `nil` means loopback.
private func withPlacedP2PCluster<Value>(
    lab: Netlab?,
    schedulerHosts: [String?],
    seedHosts: [String?],
    daemonHosts: [String?],
    configurations: ClusterConfigurations,
    environment: [String: String],
    executablePath: String?,
    readyTimeLimit: Duration,
    isolation: isolated (any Actor)? = #isolation,
    _ body: (P2PCluster) async throws -> Value
) async throws -> Value {
    precondition(schedulerHosts.count + seedHosts.count + daemonHosts.count <= 64, "at most 64 nodes per cluster")
    let executable = try executablePath ?? DragonflyExecutable.locate()
    let directory = try TemporaryDirectory(prefix: "dragonfly-test-cluster-")
    defer { directory.remove() }

    func configArguments(_ yaml: String?, _ file: String) throws -> [String] {
        guard let yaml else { return [] }
        return ["--config", try directory.writeFile(file, text: yaml)]
    }
    // The scheduler trusts a seed peer only when the cluster vouches for it (DESIGN §11): unless the test set
    // `security` itself, schedulers and seeds share a cluster secret, as a production cluster does.
    var schedulerYAML = configurations.schedulerYAML
    var seedYAML = configurations.seedYAML
    if !seedHosts.isEmpty, !(schedulerYAML ?? "").contains("security:"), !(seedYAML ?? "").contains("security:") {
        let secret = "security:\n  clusterSecret: \"test-cluster-\(UInt64.random(in: 0...UInt64.max))\"\n"
        schedulerYAML = (schedulerYAML.map { $0 + "\n" } ?? "") + secret
        seedYAML = (seedYAML.map { $0 + "\n" } ?? "") + secret
    }
    let schedulerConfig = try configArguments(schedulerYAML, "scheduler.yaml")
    let seedConfig = try configArguments(loopbackMirror(seedYAML), "cdn.yaml")
    let daemonConfig = try configArguments(loopbackMirror(configurations.daemonYAML), "daemon.yaml")
    func bindAddress(_ host: String?) -> String {
        guard let lab, let host else { return "127.0.0.1:0" }
        return lab.ip(of: host) + ":0"
    }

    let schedulerLaunches = try schedulerHosts.enumerated().map { index, host in
        let name = "scheduler\(index + 1)"
        return ClusterLaunch(
            name: name,
            role: .scheduler,
            host: host,
            directory: try directory.makeDirectory(name),
            arguments: ["scheduler"] + schedulerConfig + [
                "--listen", bindAddress(host), "--metrics-listen", bindAddress(host),
            ] + configurations.schedulerArguments
        )
    }
    return try await withClusterProcesses(
        schedulerLaunches[...],
        lab: lab,
        executablePath: executable,
        environment: environment,
        readyTimeLimit: readyTimeLimit
    ) { schedulerNodes in
        let schedulerList = schedulerNodes.map(\.grpcAddress).joined(separator: ",")
        func peerLaunch(role: ClusterNode.Role, index: Int, host: String?, config: [String], extra: [String]) throws
            -> ClusterLaunch
        {
            let name = "\(role.rawValue)\(index + 1)"
            let nodeDirectory = try directory.makeDirectory(name)
            let address = bindAddress(host)
            return ClusterLaunch(
                name: name,
                role: role,
                host: host,
                directory: nodeDirectory,
                arguments: [role.rawValue] + config + [
                    "--data-dir", nodeDirectory + "/data",
                    "--socket", nodeDirectory + "/local.sock",
                    "--peer-listen", address,
                    "--proxy-listen", address,
                    "--metrics-listen", address,
                    "--health-listen", address,
                    "--piece-listen", address,
                    "--scheduler", schedulerList,
                ] + extra
            )
        }
        let seedLaunches = try seedHosts.enumerated().map { index, host in
            try peerLaunch(
                role: .cdn, index: index, host: host, config: seedConfig, extra: configurations.seedArguments)
        }
        let daemonLaunches = try daemonHosts.enumerated().map { index, host in
            try peerLaunch(
                role: .daemon, index: index, host: host, config: daemonConfig, extra: configurations.daemonArguments)
        }
        return try await withClusterProcesses(
            (seedLaunches + daemonLaunches)[...],
            lab: lab,
            executablePath: executable,
            environment: environment,
            readyTimeLimit: readyTimeLimit
        ) { peerNodes in
            try await body(
                P2PCluster(
                    schedulers: schedulerNodes,
                    seeds: Array(peerNodes.prefix(seedHosts.count)),
                    daemons: Array(peerNodes.dropFirst(seedHosts.count)),
                    directory: directory,
                    executablePath: executable,
                    environment: environment,
                    lab: lab
                )
            )
        }
    }
}

/// What to start for one node.
private struct ClusterLaunch {
    var name: String
    var role: ClusterNode.Role
    var host: String?
    var directory: String
    var arguments: [String]
}

/// Starts every launch (each inside the previous one's ``withDragonfly(_:environment:readyFile:executablePath:standardInput:workingDirectory:isolation:_:)``
/// scope, so all of them are stopped at the end), waits for all their ready files, and runs `body` with the
/// nodes in launch order.
private func withClusterProcesses<Value>(
    _ launches: ArraySlice<ClusterLaunch>,
    lab: Netlab?,
    executablePath: String,
    environment: [String: String],
    readyTimeLimit: Duration,
    started: [(ClusterLaunch, DragonflyProcess)] = [],
    isolation: isolated (any Actor)? = #isolation,
    _ body: ([ClusterNode]) async throws -> Value
) async throws -> Value {
    guard let launch = launches.first else {
        // Every process runs; now wait for them (they start in parallel, so these waits overlap).
        var nodes: [ClusterNode] = []
        for (launch, process) in started {
            let ready: ReadyFile
            do {
                ready = try await process.awaitReady(timeLimit: readyTimeLimit)
            } catch let error as TestSupportError {
                throw TestSupportError(
                    code: error.code, message: "\(launch.name): \(error.message)", cause: error.cause)
            }
            let isPeer = launch.role != .scheduler
            nodes.append(
                ClusterNode(
                    name: launch.name,
                    role: launch.role,
                    process: process,
                    ready: ready,
                    directory: launch.directory,
                    dataDirectory: isPeer ? launch.directory + "/data" : nil,
                    socketPath: isPeer ? launch.directory + "/local.sock" : nil,
                    host: launch.host
                )
            )
        }
        return try await body(nodes)
    }
    let prefix = launch.host.flatMap { host in lab?.execPrefix(host) } ?? []
    return try await withDragonfly(
        prefix.isEmpty ? launch.arguments : Array(prefix.dropFirst()) + [executablePath] + launch.arguments,
        environment: environment,
        executablePath: prefix.first ?? executablePath
    ) { process in
        try await withClusterProcesses(
            launches.dropFirst(),
            lab: lab,
            executablePath: executablePath,
            environment: environment,
            readyTimeLimit: readyTimeLimit,
            started: started + [(launch, process)],
            body
        )
    }
}
