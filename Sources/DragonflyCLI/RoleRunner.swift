import DragonflyCore
import DragonflyTelemetry
import Logging
import ServiceLifecycle
import UnixSignals

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Runs a role's services in one `ServiceGroup`: SIGTERM/SIGINT start a graceful shutdown that may drain for
/// at most 3 s before the rest is cancelled, so the process exits within 5 s even with streams open.
enum RoleRunner {
    static let maximumGracefulShutdown: Duration = .seconds(3)
    static let maximumCancellation: Duration = .seconds(1)

    static func run(_ role: RoleServices, readyFile: String?, logger: Logger) async throws {
        // Before any listener accepts: the connection caps assume more than the usual soft limit of 1,024.
        OpenFileLimit.raise()
        var services = role.services
        services.append(
            .init(
                service: ReadyFileService(role: role, path: readyFile, logger: logger),
                successTerminationBehavior: .ignore
            )
        )
        var configuration = ServiceGroupConfiguration(services: services, logger: logger)
        configuration.gracefulShutdownSignals = [.sigterm, .sigint]
        configuration.maximumGracefulShutdownDuration = maximumGracefulShutdown
        configuration.maximumCancellationDuration = maximumCancellation
        let group = ServiceGroup(configuration: configuration)
        try await group.run()
        withExtendedLifetime(role.retained) {}
    }
}

/// Waits until every listener is bound and the role's own readiness holds, then writes the ready file
/// (DESIGN §15) and logs the listeners. Returns right away when there is nothing to wait for.
struct ReadyFileService: Service {
    let role: RoleServices
    let path: String?
    let logger: Logger

    func run() async throws {
        var listeners: [String: String] = [:]
        for listener in role.listeners {
            listeners[listener.name] = try await listener.value()
        }
        try await role.readiness()
        var metadata: Logger.Metadata = ["df.role": "\(role.role)"]
        for (name, address) in listeners { metadata["df.listener.\(name)"] = "\(address)" }
        if let socket = role.socket { metadata["df.socket"] = "\(socket)" }
        logger.info("ready", metadata: metadata)
        if let path {
            let file = ReadyFile(role: role.role, pid: Int(getpid()), listeners: listeners, socket: role.socket)
            try file.write(to: path)
        }
    }
}
