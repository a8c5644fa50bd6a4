package import ServiceLifecycle

/// What a role module hands the CLI: its services, its listeners and what "ready" means for it.
///
/// Role modules build this in `make<Role>Services(config:logger:…)`; only the CLI composes the
/// `ServiceGroup`, waits for readiness and writes the ready file. Tests call the same factories.
package struct RoleServices: Sendable {
    /// `manager`, `scheduler`, `daemon` or `cdn`.
    package var role: String
    /// The long-running services, each with its termination behaviour.
    package var services: [ServiceGroupConfiguration.ServiceConfiguration]
    /// Every listener, named as in the ready file.
    package var listeners: [ListenerAddress]
    /// The local API socket (daemon and cdn).
    package var socket: String?
    /// Completes once the role is ready beyond its listeners (migrations ran, stored tasks reloaded, …).
    package var readiness: @Sendable () async throws -> Void
    /// Objects that must live as long as the services (the data-dir lock).
    package var retained: [any Sendable]

    package init(
        role: String,
        services: [ServiceGroupConfiguration.ServiceConfiguration],
        listeners: [ListenerAddress],
        socket: String? = nil,
        readiness: @escaping @Sendable () async throws -> Void = {},
        retained: [any Sendable] = []
    ) {
        self.role = role
        self.services = services
        self.listeners = listeners
        self.socket = socket
        self.readiness = readiness
        self.retained = retained
    }
}
