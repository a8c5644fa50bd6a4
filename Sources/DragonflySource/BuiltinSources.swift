package import DragonflyCore
package import Logging

/// The built-in source clients registered by ``registerBuiltinSources(into:config:logger:)``, kept so their
/// owner can shut them down.
package struct BuiltinSources: Sendable {
    /// The `http`/`https` client.
    package let http: HTTPSourceClient
    /// The `file` client.
    package let file: FileSourceClient

    /// Shuts down the clients that hold connections (call once, when the registry's users are done).
    package func shutdown() async throws {
        try await http.shutdown()
    }
}

/// Registers the built-in source clients: `http`/`https` and `file` (DESIGN §9).
///
/// Adding a scheme is one client file plus one line here. The returned clients must be shut down with
/// ``BuiltinSources/shutdown()`` when the process stops: the HTTP client owns a connection pool.
///
/// - Throws: ``DragonflyError/Code/configuration`` for a bad `tls.*` setting, or
///   ``DragonflyError/Code/alreadyExists`` when one of the schemes is already registered (checked before the
///   HTTP client is made, so a failed registration leaves no connection pool behind).
package func registerBuiltinSources(
    into registry: PluginRegistry,
    config: HTTPSourceConfig = HTTPSourceConfig(),
    logger: Logger = Logger(label: "dragonfly.source")
) throws -> BuiltinSources {
    let file = FileSourceClient()
    let taken = Set(registry.sourceSchemes).intersection(["http", "https"] + file.schemes)
    if let scheme = taken.sorted().first {
        throw DragonflyError(
            code: .alreadyExists, message: "a source client for scheme '\(scheme)' is already registered")
    }
    try registry.register(source: file)
    let http = try HTTPSourceClient(configuration: config, logger: logger)
    try registry.register(source: http)
    return BuiltinSources(http: http, file: file)
}
