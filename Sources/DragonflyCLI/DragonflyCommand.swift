package import ArgumentParser
package import DragonflyCore

/// `dragonfly`: one executable, the role picked by the subcommand.
package struct DragonflyCommand: AsyncParsableCommand {
    package static let configuration = CommandConfiguration(
        commandName: "dragonfly",
        abstract: "P2P file distribution: manager, scheduler, seed peer (cdn), daemon and client in one binary.",
        version: DragonflyVersion.current,
        subcommands: [
            ManagerCommand.self, SchedulerCommand.self, CDNCommand.self, DaemonCommand.self,
            GetCommand.self, StatCommand.self, VersionCommand.self,
        ]
    )

    package init() {}
}

/// Options every role takes (DESIGN §15).
package struct RoleOptions: ParsableArguments {
    @Option(name: .long, help: "YAML configuration file; flags override it.")
    package var config: String?

    @Option(name: .long, help: "Log level: trace, debug, info, notice, warning, error, critical.")
    package var logLevel: String?

    @Flag(name: .long, help: "Print the effective configuration as YAML and exit.")
    package var printConfig = false

    @Option(name: .long, help: "Write this JSON file atomically once every listener is bound and the role is ready.")
    package var readyFile: String?

    package init() {}

    package func validate() throws {
        if let logLevel, LogLevelName(rawValue: logLevel) == nil {
            throw ValidationError(
                "--log-level '\(logLevel)' is not one of \(LogLevelName.allCases.map(\.rawValue).joined(separator: ", "))"
            )
        }
    }

    /// Loads `--config` over the defaults (or the defaults alone).
    package func loadConfiguration<C: RoleConfiguration>(_ type: C.Type) throws(DragonflyError) -> C {
        guard let path = config else { return C() }
        let text: String
        do {
            text = try readTextFile(path)
        } catch {
            throw DragonflyError(
                code: .configuration, message: "cannot read configuration file \(path): \(error.message)")
        }
        return try ConfigLoader.load(C.self, yaml: text, source: path)
    }
}

/// `ListenAddress` as a flag value: `IP:port`.
extension ListenAddress: ExpressibleByArgument {
    package init?(argument: String) { self.init(parsing: argument) }
}

/// `ConfigDuration` as a flag value: `500ms`, `30s`, `5m`, `2h`.
extension ConfigDuration: ExpressibleByArgument {
    package init?(argument: String) { self.init(parsing: argument) }
}

/// `ByteSize` as a flag value: `4M`, `512K`.
extension ByteSize: ExpressibleByArgument {
    package init?(argument: String) { self.init(parsing: argument) }
}
