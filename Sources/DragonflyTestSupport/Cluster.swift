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
/// ``withP2PCluster(schedulers:seeds:daemons:daemonConfigYAML:seedConfigYAML:schedulerConfigYAML:schedulerArguments:seedArguments:daemonArguments:environment:executablePath:readyTimeLimit:isolation:_:)``.
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
        let response = try await curlGet("http://\(node.metricsAddress)/metrics")
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
        (try? await curlGet("http://\(node.metricsAddress)/healthy", timeLimit: .seconds(5)))?.status == 200
    }

    /// Runs `dragonfly get URL -O output --socket <node's socket> --no-progress --data-dir <node dir>/get`
    /// plus `extraArguments` to completion.
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
        return try await runDragonfly(
            arguments,
            environment: environment,
            timeLimit: timeLimit,
            executablePath: executablePath
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
    precondition(schedulers + seeds + daemons <= 64, "at most 64 nodes per cluster")
    let executable = try executablePath ?? DragonflyExecutable.locate()
    let directory = try TemporaryDirectory(prefix: "dragonfly-test-cluster-")
    defer { directory.remove() }

    func configArguments(_ yaml: String?, _ file: String) throws -> [String] {
        guard let yaml else { return [] }
        return ["--config", try directory.writeFile(file, text: yaml)]
    }
    let schedulerConfig = try configArguments(schedulerConfigYAML, "scheduler.yaml")
    let seedConfig = try configArguments(seedConfigYAML, "cdn.yaml")
    let daemonConfig = try configArguments(daemonConfigYAML, "daemon.yaml")

    let schedulerLaunches = try (1...schedulers).map { index in
        let name = "scheduler\(index)"
        try directory.makeDirectory(name)
        return ClusterLaunch(
            name: name,
            role: .scheduler,
            directory: directory.appending(name),
            arguments: ["scheduler"] + schedulerConfig + [
                "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
            ] + schedulerArguments
        )
    }
    return try await withClusterProcesses(
        schedulerLaunches[...],
        executablePath: executable,
        environment: environment,
        readyTimeLimit: readyTimeLimit
    ) { schedulerNodes in
        let schedulerList = schedulerNodes.map(\.grpcAddress).joined(separator: ",")
        func peerLaunch(role: ClusterNode.Role, index: Int, config: [String], extra: [String]) throws -> ClusterLaunch {
            let name = "\(role.rawValue)\(index)"
            let nodeDirectory = try directory.makeDirectory(name)
            return ClusterLaunch(
                name: name,
                role: role,
                directory: nodeDirectory,
                arguments: [role.rawValue] + config + [
                    "--data-dir", nodeDirectory + "/data",
                    "--socket", nodeDirectory + "/local.sock",
                    "--peer-listen", "127.0.0.1:0",
                    "--proxy-listen", "127.0.0.1:0",
                    "--metrics-listen", "127.0.0.1:0",
                    "--health-listen", "127.0.0.1:0",
                    "--piece-listen", "127.0.0.1:0",
                    "--scheduler", schedulerList,
                ] + extra
            )
        }
        let seedLaunches = try (0..<seeds).map {
            try peerLaunch(role: .cdn, index: $0 + 1, config: seedConfig, extra: seedArguments)
        }
        let daemonLaunches = try (0..<daemons).map {
            try peerLaunch(role: .daemon, index: $0 + 1, config: daemonConfig, extra: daemonArguments)
        }
        return try await withClusterProcesses(
            (seedLaunches + daemonLaunches)[...],
            executablePath: executable,
            environment: environment,
            readyTimeLimit: readyTimeLimit
        ) { peerNodes in
            try await body(
                P2PCluster(
                    schedulers: schedulerNodes,
                    seeds: Array(peerNodes.prefix(seeds)),
                    daemons: Array(peerNodes.dropFirst(seeds)),
                    directory: directory,
                    executablePath: executable,
                    environment: environment
                )
            )
        }
    }
}

/// What to start for one node.
private struct ClusterLaunch {
    var name: String
    var role: ClusterNode.Role
    var directory: String
    var arguments: [String]
}

/// Starts every launch (each inside the previous one's ``withDragonfly(_:environment:readyFile:executablePath:standardInput:workingDirectory:isolation:_:)``
/// scope, so all of them are stopped at the end), waits for all their ready files, and runs `body` with the
/// nodes in launch order.
private func withClusterProcesses<Value>(
    _ launches: ArraySlice<ClusterLaunch>,
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
                    socketPath: isPeer ? launch.directory + "/local.sock" : nil
                )
            )
        }
        return try await body(nodes)
    }
    return try await withDragonfly(
        launch.arguments,
        environment: environment,
        executablePath: executablePath
    ) { process in
        try await withClusterProcesses(
            launches.dropFirst(),
            executablePath: executablePath,
            environment: environment,
            readyTimeLimit: readyTimeLimit,
            started: started + [(launch, process)],
            body
        )
    }
}
