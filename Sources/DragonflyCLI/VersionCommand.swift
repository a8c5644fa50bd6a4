import ArgumentParser
import DragonflyCore

/// `dragonfly version`: the version and every registered plugin.
struct VersionCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "version",
        abstract: "Print the version and the registered plugins."
    )

    func run() async throws {
        try await withPluginRegistry { registry in
            func list(_ names: [String]) -> String { names.isEmpty ? "(none)" : names.joined(separator: ", ") }
            print("dragonfly \(DragonflyVersion.current)")
            print("source clients: \(list(registry.sourceSchemes))")
            print("storage media: \(list(registry.mediumNames))")
            print("scheduling strategies: \(list(registry.strategyNames))")
        }
    }
}
