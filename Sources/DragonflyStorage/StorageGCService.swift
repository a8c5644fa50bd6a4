package import Logging
import ServiceLifecycle

/// The storage maintenance loop (DESIGN §7): every `interval` (1 minute by default) it persists changed
/// metadata and runs ``PieceStore/collectGarbage(now:)``; on graceful shutdown it stops waiting and persists
/// everything once more.
package struct StorageGCService: Service {
    private let store: PieceStore
    private let interval: Duration
    private let logger: Logger

    package init(store: PieceStore, interval: Duration = .seconds(60), logger: Logger) {
        self.store = store
        self.interval = interval
        self.logger = logger
    }

    package func run() async throws {
        for await _ in IntervalTicks(interval: interval).cancelOnGracefulShutdown() {
            do {
                try await store.flushAll()
                let report = try await store.collectGarbage()
                logger.debug(
                    "storage garbage collection",
                    metadata: [
                        "df.gc.expired": "\(report.expired.count)", "df.gc.evicted": "\(report.evicted.count)",
                        "df.gc.freedBytes": "\(report.freedBytes)", "df.gc.usedBytes": "\(report.usedBytes)",
                    ])
            } catch is CancellationError {
                break
            } catch {
                logger.warning("storage garbage collection failed", metadata: ["df.error": "\(error)"])
            }
        }
        guard !Task.isCancelled else { return }
        try await store.flushAll()
    }
}

/// Yields once per interval until the task is cancelled.
struct IntervalTicks: AsyncSequence, Sendable {
    typealias Element = Void
    let interval: Duration

    struct AsyncIterator: AsyncIteratorProtocol {
        let interval: Duration

        mutating func next() async -> Void? {
            do {
                try await Task.sleep(for: interval)
                return ()
            } catch {
                return nil
            }
        }
    }

    func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(interval: interval)
    }
}
