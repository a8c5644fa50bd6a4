import ArgumentParser
import DragonflyCore
import DragonflyDaemon
import DragonflyManager
import DragonflyScheduler
import DragonflySource
import DragonflyTelemetry
import Logging

/// The parts every long-running role shares: flag overrides, validation, `--print-config`, bootstrap, run.
enum RoleLauncher {
    /// Applies `--log-level`, validates, prints the configuration when asked (returning false), else bootstraps
    /// logging and metrics for `role` and returns the telemetry and logger to run with.
    static func prepare<C: RoleConfiguration>(
        role: String,
        config: inout C,
        logLevel: WritableKeyPath<C, LogLevelName>,
        options: RoleOptions
    ) throws -> (Telemetry, Logger)? {
        if let text = options.logLevel, let level = LogLevelName(rawValue: text) {
            config[keyPath: logLevel] = level
        }
        try config.validate()
        if options.printConfig {
            print(try ConfigLoader.render(config), terminator: "")
            return nil
        }
        Telemetry.bootstrap(logLevel: Logger.Level(rawValue: config[keyPath: logLevel].rawValue) ?? .info)
        let telemetry = Telemetry(role: role)
        telemetry.bootstrapMetrics()
        return (telemetry, Logger(label: "dragonfly.\(role)"))
    }
}

/// `dragonfly manager`.
struct ManagerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "manager",
        abstract: "Run the manager: clusters, dynamic config, users and tokens, jobs, open API and console."
    )

    @OptionGroup var options: RoleOptions
    @Option(help: "REST API and console listener (IP:port).") var listen: ListenAddress?
    @Option(help: "gRPC Manager service listener (IP:port).") var grpcListen: ListenAddress?
    @Option(help: "Database URL: empty for SQLite in the data dir, postgres://… for replicas.") var database: String?
    @Option(help: "Data directory.") var dataDir: String?

    func run() async throws {
        var config = try options.loadConfiguration(ManagerConfig.self)
        if let listen { config.listen = listen }
        if let grpcListen { config.grpcListen = grpcListen }
        if let database { config.database = database }
        if let dataDir { config.dataDir = dataDir }
        config.dataDir = RolePaths.resolve(config.dataDir, default: RolePaths.defaultDataDirectory(role: "manager"))
        guard
            let (telemetry, logger) = try RoleLauncher.prepare(
                role: "manager", config: &config, logLevel: \.log.level, options: options)
        else { return }
        let services = try makeManagerServices(config: config, telemetry: telemetry, logger: logger)
        try await RoleRunner.run(services, readyFile: options.readyFile, logger: logger)
    }
}

/// `dragonfly scheduler`.
struct SchedulerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "scheduler",
        abstract: "Run a scheduler: hosts, tasks and peers; parent selection; back-to-source rationing."
    )

    @OptionGroup var options: RoleOptions
    @Option(help: "gRPC Scheduler service listener (IP:port).") var listen: ListenAddress?
    @Option(help: "/metrics and /healthy listener (IP:port).") var metricsListen: ListenAddress?
    @Option(help: "Manager gRPC address (host:port).") var manager: String?
    @Option(help: "Seed peer address (host:port); repeatable.") var seedPeer: [String] = []

    func run() async throws {
        var config = try options.loadConfiguration(SchedulerConfig.self)
        if let listen { config.listen = listen }
        if let metricsListen { config.metricsListen = metricsListen }
        if let manager { config.manager.address = manager }
        if !seedPeer.isEmpty { config.seedPeers = seedPeer }
        guard
            let (telemetry, logger) = try RoleLauncher.prepare(
                role: "scheduler", config: &config, logLevel: \.log.level, options: options)
        else { return }
        try await withPluginRegistry { registry in
            let services = try makeSchedulerServices(
                config: config, registry: registry, telemetry: telemetry, logger: logger)
            try await RoleRunner.run(services, readyFile: options.readyFile, logger: logger)
        }
    }
}

/// Flags shared by `dragonfly daemon` and `dragonfly cdn`.
struct DaemonOptions: ParsableArguments {
    @Option(help: "Data directory (cache, lock).") var dataDir: String?
    @Option(help: "Local API unix socket path.") var socket: String?
    @Option(help: "Peer gRPC listener (IP:port).") var peerListen: ListenAddress?
    @Option(help: "HTTP(S) proxy and registry mirror listener (IP:port).") var proxyListen: ListenAddress?
    @Option(help: "/metrics and /healthy listener (IP:port).") var metricsListen: ListenAddress?
    @Option(help: "/healthy listener (IP:port).") var healthListen: ListenAddress?
    @Option(help: "Piece data listener (IP:port).") var pieceListen: ListenAddress?
    @Option(help: "Scheduler addresses, comma-separated (host:port,host:port).") var scheduler: String?
    @Option(help: "Manager gRPC address (host:port).") var manager: String?
    @Option(help: "Data-centre tag.") var idc: String?
    @Option(help: "Location a|b|c.") var location: String?
    @Option(help: "IP announced to others.") var advertiseIP: String?
    @Option(help: "Host name announced to others.") var hostname: String?
    @Option(help: "Exit after this long without work (e.g. 5m); 0 means never.") var idleExit: ConfigDuration?

    /// Overrides `config` with the given flags and resolves default paths for `role`.
    func apply(to config: inout DaemonConfig, role: String) {
        if let dataDir { config.dataDir = dataDir }
        if let socket { config.socket = socket }
        if let peerListen { config.listen.peer = peerListen }
        if let proxyListen { config.listen.proxy = proxyListen }
        if let metricsListen { config.listen.metrics = metricsListen }
        if let healthListen { config.listen.health = healthListen }
        if let pieceListen { config.listen.piece = pieceListen }
        if let scheduler {
            config.scheduler.addresses = scheduler.split(separator: ",").map { String($0).trimmingSpaces() }.filter {
                !$0.isEmpty
            }
        }
        if let manager { config.manager.address = manager }
        if let idc { config.host.idc = idc }
        if let location { config.host.location = location }
        if let advertiseIP { config.host.advertiseIP = advertiseIP }
        if let hostname { config.host.hostname = hostname }
        if let idleExit { config.idleExit = idleExit }
        config.dataDir = RolePaths.resolve(config.dataDir, default: RolePaths.defaultDataDirectory(role: role))
        config.socket = RolePaths.resolve(config.socket, default: RolePaths.defaultSocket(role: role))
    }

    /// Runs a daemon in `mode` with these flags over `options`' configuration.
    func runDaemon(mode: DaemonMode, options: RoleOptions) async throws {
        var config = try options.loadConfiguration(DaemonConfig.self)
        apply(to: &config, role: mode.rawValue)
        guard
            let (telemetry, logger) = try RoleLauncher.prepare(
                role: mode.rawValue, config: &config, logLevel: \.log.level, options: options)
        else { return }
        let http = HTTPSourceConfig(caCertificates: config.tls.caCerts, insecureHosts: config.tls.insecureHosts)
        try await withPluginRegistry(http: http) { registry in
            let services = try makeDaemonServices(
                config: config, mode: mode, registry: registry, telemetry: telemetry, logger: logger)
            try await RoleRunner.run(services, readyFile: options.readyFile, logger: logger)
        }
    }
}

/// `dragonfly daemon`.
struct DaemonCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "daemon",
        abstract: "Run the peer daemon: downloads and serves pieces, proxy and registry mirror, local API."
    )
    @OptionGroup var options: RoleOptions
    @OptionGroup var daemon: DaemonOptions

    func run() async throws { try await daemon.runDaemon(mode: .normal, options: options) }
}

/// `dragonfly cdn`.
struct CDNCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cdn",
        abstract: "Run a seed peer: the daemon in seed mode, reading the origin once and serving pieces as they verify."
    )
    @OptionGroup var options: RoleOptions
    @OptionGroup var daemon: DaemonOptions

    func run() async throws { try await daemon.runDaemon(mode: .seed, options: options) }
}
