import Synchronization

/// The in-process registry of plugins shared by every role of a process: source clients by URL scheme,
/// storage media and scheduling strategies by name.
///
/// One registry is built at start-up (``DragonflyCLI`` registers the built-in plugins of every module) and
/// handed to each role. Registering the same scheme or name twice is an error, so a plugin cannot silently
/// replace another.
package final class PluginRegistry: Sendable {
    private struct State {
        var sources: [String: any SourceClient] = [:]
        var media: [String: StorageMediumFactory] = [:]
        var strategies: [String: any SchedulingStrategy] = [:]
    }

    private let state = Mutex(State())

    package init() {}

    /// Registers `client` for each of its schemes.
    package func register(source client: any SourceClient) throws(DragonflyError) {
        let schemes = client.schemes.map { $0.lowercased() }
        guard !schemes.isEmpty else {
            throw DragonflyError(code: .invalidArgument, message: "a source client must name at least one scheme")
        }
        let clash: String? = state.withLock { state in
            if let taken = schemes.first(where: { state.sources[$0] != nil }) { return taken }
            for scheme in schemes { state.sources[scheme] = client }
            return nil
        }
        if let clash {
            throw DragonflyError(
                code: .alreadyExists, message: "a source client for scheme '\(clash)' is already registered")
        }
    }

    /// Registers a storage medium factory under `name`.
    package func register(medium name: String, factory: @escaping StorageMediumFactory) throws(DragonflyError) {
        let key = name.lowercased()
        let inserted = state.withLock { state in
            guard state.media[key] == nil else { return false }
            state.media[key] = factory
            return true
        }
        guard inserted else {
            throw DragonflyError(code: .alreadyExists, message: "a storage medium named '\(key)' is already registered")
        }
    }

    /// Registers a scheduling strategy under its name.
    package func register(strategy: any SchedulingStrategy) throws(DragonflyError) {
        let key = strategy.name.lowercased()
        let inserted = state.withLock { state in
            guard state.strategies[key] == nil else { return false }
            state.strategies[key] = strategy
            return true
        }
        guard inserted else {
            throw DragonflyError(
                code: .alreadyExists, message: "a scheduling strategy named '\(key)' is already registered")
        }
    }

    /// The source client for the scheme of `url` (`https://…` → `https`).
    package func sourceClient(forURL url: String) throws(DragonflyError) -> any SourceClient {
        guard let colon = url.firstIndex(of: ":"), colon != url.startIndex else {
            throw DragonflyError(code: .invalidArgument, message: "'\(url)' has no URL scheme")
        }
        return try sourceClient(forScheme: String(url[..<colon]))
    }

    /// The source client registered for `scheme`.
    package func sourceClient(forScheme scheme: String) throws(DragonflyError) -> any SourceClient {
        let key = scheme.lowercased()
        if let client = state.withLock({ $0.sources[key] }) { return client }
        let known = sourceSchemes.joined(separator: ", ")
        throw DragonflyError(
            code: .unimplemented,
            message: "unsupported URL scheme '\(key)' (supported: \(known.isEmpty ? "none" : known))")
    }

    /// Makes the storage medium registered as `name`.
    package func makeMedium(named name: String, context: StorageMediumContext) throws -> any StorageMedium {
        let key = name.lowercased()
        guard let factory = state.withLock({ $0.media[key] }) else {
            throw DragonflyError(
                code: .notFound,
                message: "no storage medium named '\(key)' (registered: \(mediumNames.joined(separator: ", ")))")
        }
        return try factory(context)
    }

    /// The scheduling strategy registered as `name`.
    package func strategy(named name: String) throws(DragonflyError) -> any SchedulingStrategy {
        let key = name.lowercased()
        guard let strategy = state.withLock({ $0.strategies[key] }) else {
            throw DragonflyError(
                code: .notFound,
                message: "no scheduling strategy named '\(key)' (registered: \(strategyNames.joined(separator: ", ")))")
        }
        return strategy
    }

    /// Registered URL schemes, sorted.
    package var sourceSchemes: [String] { state.withLock { $0.sources.keys.sorted() } }
    /// Registered storage media, sorted.
    package var mediumNames: [String] { state.withLock { $0.media.keys.sorted() } }
    /// Registered scheduling strategies, sorted.
    package var strategyNames: [String] { state.withLock { $0.strategies.keys.sorted() } }
}
