/// Command lines for `dragonfly` roles on 127.0.0.1, for tests that start roles one by one (a manager that
/// stops and comes back, a daemon restarted on the same data dir) rather than as a ``P2PCluster``.
package enum RoleArguments {
    /// `dragonfly manager` with its data (the SQLite file) in `dataDirectory`, HTTP on any port and gRPC on
    /// `grpcPort` (0: any; a fixed port lets a restarted manager keep its address), on `database` when given.
    package static func manager(dataDirectory: String, grpcPort: Int = 0, database: String? = nil) -> [String] {
        [
            "manager", "--data-dir", dataDirectory, "--listen", "127.0.0.1:0", "--grpc-listen",
            "127.0.0.1:\(grpcPort)",
        ] + (database.map { ["--database", $0] } ?? [])
    }

    /// `dragonfly scheduler` on any ports, registered with `manager` when given, with `config` (a file) when
    /// given.
    package static func scheduler(manager: String?, config: String? = nil) -> [String] {
        ["scheduler"] + (config.map { ["--config", $0] } ?? []) + [
            "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
        ] + (manager.map { ["--manager", $0] } ?? [])
    }

    /// `dragonfly daemon` (or `cdn` with `role`) with its data dir and socket in `directory` and every listener
    /// on any port; its schedulers come from `manager` and/or the static `schedulers`.
    package static func daemon(
        role: String = "daemon",
        directory: String,
        manager: String?,
        schedulers: [String] = []
    ) -> [String] {
        var arguments = [role, "--data-dir", dataDirectory(in: directory), "--socket", socket(in: directory)]
        for listener in ["--peer-listen", "--proxy-listen", "--metrics-listen", "--health-listen", "--piece-listen"] {
            arguments += [listener, "127.0.0.1:0"]
        }
        if let manager { arguments += ["--manager", manager] }
        if !schedulers.isEmpty { arguments += ["--scheduler", schedulers.joined(separator: ",")] }
        return arguments
    }

    /// The data dir ``daemon(role:directory:manager:schedulers:)`` gives a daemon in `directory`.
    package static func dataDirectory(in directory: String) -> String { directory + "/data" }

    /// The local API socket ``daemon(role:directory:manager:schedulers:)`` gives a daemon in `directory`.
    package static func socket(in directory: String) -> String { directory + "/local.sock" }

    /// `dragonfly get URL -O output` through the daemon whose socket is in `directory`, without progress.
    package static func get(url: String, output: String, daemonDirectory directory: String) -> [String] {
        [
            "get", url, "-O", output, "--socket", socket(in: directory), "--no-progress", "--data-dir",
            directory + "/get",
        ]
    }
}

/// The sum of every sample of counter `name` (all label values) on the `/metrics` page at `metricsAddress`.
package func metricTotal(_ name: String, at metricsAddress: String) async throws -> Double {
    let response = try await curlGet("http://\(metricsAddress)/metrics")
    guard response.status == 200 else {
        throw TestSupportError(
            code: .commandFailed, message: "GET /metrics of \(metricsAddress) answered \(response.status)")
    }
    return try PrometheusMetrics(parsing: response.body).samples(named: name).reduce(0) { $0 + $1.value }
}
