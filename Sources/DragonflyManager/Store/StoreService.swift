package import DragonflyCore
package import Logging
import ServiceLifecycle
import Synchronization

/// Opens the manager's database at start, runs the migrations (which create the default clusters once), keeps
/// the database open while the manager runs and shuts it down on graceful shutdown.
///
/// ``ready()`` completes once the migrations ran, which is part of what "ready" means for the manager
/// (DESIGN §15); it throws when the database cannot be opened or migrated.
package final class StoreService: Service, Sendable {
    private enum State {
        case starting([CheckedContinuation<ManagerStore, any Error>])
        case ready(ManagerStore)
        case failed(any Error)
    }

    private let config: ManagerConfig
    private let dataDirectory: String
    private let logger: Logger
    private let state = Mutex(State.starting([]))

    package init(config: ManagerConfig, dataDirectory: String, logger: Logger) {
        self.config = config
        self.dataDirectory = dataDirectory
        self.logger = logger
    }

    package func run() async throws {
        let database: ManagerDatabase
        do {
            database = try await ManagerDatabase.open(config: config, dataDirectory: dataDirectory, logger: logger)
            do {
                let applied = try await database.migrate()
                logger.debug("database migrated", metadata: ["df.migrations.applied": "\(applied)"])
            } catch {
                await database.shutdown()
                throw error
            }
        } catch {
            resolve(.failure(error))
            throw error
        }
        resolve(.success(ManagerStore(database: database)))
        try? await gracefulShutdown()
        await database.shutdown()
    }

    /// The store, once the migrations ran.
    package func ready() async throws -> ManagerStore {
        try await withCheckedThrowingContinuation { continuation in
            let immediate: Result<ManagerStore, any Error>? = state.withLock { state in
                switch state {
                case .starting(var waiters):
                    waiters.append(continuation)
                    state = .starting(waiters)
                    return nil
                case .ready(let store): return .success(store)
                case .failed(let error): return .failure(error)
                }
            }
            if let immediate { continuation.resume(with: immediate) }
        }
    }

    private func resolve(_ result: Result<ManagerStore, any Error>) {
        let waiters: [CheckedContinuation<ManagerStore, any Error>] = state.withLock { state in
            guard case .starting(let waiters) = state else { return [] }
            switch result {
            case .success(let store): state = .ready(store)
            case .failure(let error): state = .failed(error)
            }
            return waiters
        }
        for waiter in waiters { waiter.resume(with: result) }
    }
}
