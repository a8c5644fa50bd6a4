import DragonflyCore
import DragonflyScheduler

/// The one plugin registry of this process, with every built-in plugin registered.
func makePluginRegistry() throws -> PluginRegistry {
    let registry = PluginRegistry()
    try registerBuiltinStrategies(into: registry)
    return registry
}
