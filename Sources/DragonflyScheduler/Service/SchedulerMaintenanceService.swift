import DragonflyCore
package import ServiceLifecycle

/// The Scheduler service's background work, run in the role's `ServiceGroup`: pushes pending piece digests
/// every ``SchedulerService/Options/digestInterval`` (≤ 100 ms), runs GC every `gc.interval`, refreshes the
/// host gauges every second, and runs the seed triggers. Stops promptly on graceful shutdown.
package struct SchedulerMaintenanceService: Service {
    let scheduler: SchedulerService

    package func run() async throws {
        let scheduler = scheduler
        _ = await cancelOnGracefulShutdown {
            await withDiscardingTaskGroup { group in
                group.addTask {
                    await scheduler.seedTrigger.run { request, error in
                        scheduler.seedTriggerFailed(request, error: error)
                    }
                }
                group.addTask {
                    await Self.loop(scheduler)
                }
            }
        }
    }

    private static func loop(_ scheduler: SchedulerService) async {
        let clock = ContinuousClock()
        let tick = min(scheduler.options.digestInterval, .milliseconds(100))
        let gcInterval = scheduler.config.gc.interval.duration
        var nextGC = clock.now.advanced(by: gcInterval)
        var nextGauges = clock.now
        while !Task.isCancelled {
            do {
                try await Task.sleep(for: tick, clock: clock)
            } catch {
                return
            }
            scheduler.pushPendingDigests()
            let now = clock.now
            if now >= nextGC {
                scheduler.collectGarbage()
                nextGC = now.advanced(by: gcInterval)
            }
            if now >= nextGauges {
                scheduler.updateGauges()
                nextGauges = now.advanced(by: .seconds(1))
            }
        }
    }
}
