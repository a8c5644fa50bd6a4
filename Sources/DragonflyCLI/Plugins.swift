import DragonflyCore
import DragonflyScheduler
import DragonflySource
import DragonflyStorage

/// Runs `body` with the one plugin registry of this process, every built-in plugin registered, and shuts the
/// source clients' connection pools down afterwards, also when `body` throws. `http` configures the
/// `http`/`https` source client (the daemon's `tls.*`).
func withPluginRegistry<Value>(
    http: HTTPSourceConfig = HTTPSourceConfig(),
    _ body: (PluginRegistry) async throws -> Value
) async throws -> Value {
    let registry = PluginRegistry()
    try registerBuiltinStrategies(into: registry)
    try registerBuiltinMedia(into: registry)
    let sources = try registerBuiltinSources(into: registry, config: http)
    do {
        let value = try await body(registry)
        try await sources.shutdown()
        return value
    } catch {
        try? await sources.shutdown()
        throw error
    }
}
