package import DragonflyCore
package import NIOPosix

/// Registers the built-in storage media in `registry`: `disk` (``DiskMedium``, the default) and `memory`
/// (``MemoryMedium``, bounded by the context's capacity).
package func registerBuiltinMedia(into registry: PluginRegistry, threadPool: NIOThreadPool = .singleton)
    throws(DragonflyError)
{
    try registry.register(medium: "disk") { context in
        DiskMedium(dataDirectory: context.dataDirectory, threadPool: threadPool)
    }
    try registry.register(medium: "memory") { context in
        MemoryMedium(capacity: context.capacity)
    }
}
