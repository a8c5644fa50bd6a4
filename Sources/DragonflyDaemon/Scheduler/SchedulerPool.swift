package import DragonflyCore
package import DragonflyProto
package import DragonflyRPC
import GRPCCore
package import Logging
package import ServiceLifecycle
import SwiftProtobuf
import Synchronization

/// The daemon's side of its schedulers: one gRPC client per scheduler address, the consistent-hash ring that
/// picks a task's scheduler, and the periodic `AnnounceHost` (DESIGN §5, §6 step 3, §15 readiness).
///
/// Run it as a `Service`: it runs the clients' connections, announces the host every
/// `scheduler.announceInterval` to every scheduler, and on shutdown tells them the host leaves.
package final class SchedulerPool: Service, Sendable {
    package typealias Client = Dragonfly_V1_Scheduler.Client<RPCClientTransport>

    package let ring: SchedulerRing
    private let identity: Published<HostIdentity>
    private let announceInterval: Duration
    private let readyTimeout: Duration
    private let logger: Logger
    private let clients: [String: RPCClient]
    private let firstAcknowledged = Published<Void>()
    private let uploadSlotsUsed: @Sendable () -> Int

    /// - Parameters:
    ///   - addresses: `host:port` of every scheduler (`--scheduler`).
    ///   - uploadSlotsUsed: The piece server's busy slots, reported in each announce.
    package init(
        addresses: [String],
        identity: Published<HostIdentity>,
        config: DaemonConfig,
        uploadSlotsUsed: @escaping @Sendable () -> Int,
        logger: Logger
    ) throws(DragonflyError) {
        ring = SchedulerRing(addresses: addresses)
        self.identity = identity
        announceInterval = config.scheduler.announceInterval.duration
        readyTimeout = config.scheduler.readyTimeout.duration
        self.logger = logger
        self.uploadSlotsUsed = uploadSlotsUsed
        var clients: [String: RPCClient] = [:]
        for address in ring.addresses {
            clients[address] = try makeRPCClient(
                target: address, options: RPCClientOptions(defaultTimeout: .seconds(30)), logger: logger)
        }
        self.clients = clients
        if ring.addresses.isEmpty { firstAcknowledged.publish(()) }
    }

    /// Whether any scheduler is configured.
    package var isEmpty: Bool { ring.addresses.isEmpty }

    /// The schedulers to try for `taskID`, owner first.
    package func candidates(for taskID: TaskID) -> [(address: String, client: Client)] {
        ring.candidates(for: taskID.rawValue).compactMap { address in
            clients[address].map { (address, Client(wrapping: $0)) }
        }
    }

    /// Waits until a scheduler acknowledged the first `AnnounceHost`, at most `scheduler.readyTimeout` (then
    /// logs a warning and returns: the role becomes ready anyway and keeps retrying).
    package func waitUntilAnnounced() async {
        let acknowledged = await withTaskGroup(of: Bool.self) { group in
            group.addTask { [firstAcknowledged] in
                (try? await firstAcknowledged.value()) != nil
            }
            group.addTask { [readyTimeout] in
                try? await Task.sleep(for: readyTimeout)
                return false
            }
            let first = await group.next() ?? false
            group.cancelAll()
            return first
        }
        if !acknowledged {
            logger.warning(
                "no scheduler acknowledged AnnounceHost yet; ready anyway, still retrying",
                metadata: ["df.schedulers": "\(ring.addresses.joined(separator: ","))"])
        }
    }

    package func run() async throws {
        guard !clients.isEmpty else {
            try? await gracefulShutdown()
            return
        }
        try await withThrowingDiscardingTaskGroup { group in
            for client in clients.values {
                group.addTask { try await client.runConnections() }
            }
            group.addTask { await self.announceLoop() }
            try? await gracefulShutdown()
            await leaveAll()
            for client in clients.values { client.beginGracefulShutdown() }
        }
    }

    private func announceLoop() async {
        guard let identity = try? await identity.value() else { return }
        var acknowledged: Set<String> = []
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            await withTaskGroup(of: (String, Bool).self) { group in
                for (address, client) in clients {
                    group.addTask { [self] in
                        var request = Dragonfly_V1_AnnounceHostRequest()
                        request.host = identity.hostMessage(uploadSlotsUsed: uploadSlotsUsed(), maxTxBandwidth: 0)
                        request.interval = Google_Protobuf_Duration(rounding: announceInterval)
                        do {
                            var options = CallOptions.defaults
                            options.timeout = .seconds(5)
                            _ = try await Client(wrapping: client).announceHost(request, options: options)
                            return (address, true)
                        } catch {
                            return (address, false)
                        }
                    }
                }
                for await (address, ok) in group {
                    if ok {
                        if acknowledged.insert(address).inserted {
                            logger.debug(
                                "scheduler acknowledged AnnounceHost", metadata: ["df.scheduler": "\(address)"])
                        }
                        firstAcknowledged.publish(())
                    } else if acknowledged.remove(address) != nil || acknowledged.isEmpty {
                        logger.debug("AnnounceHost failed", metadata: ["df.scheduler": "\(address)"])
                    }
                }
            }
            // Until one scheduler answered, retry every second (DESIGN §15); then every announce interval.
            let pause = acknowledged.isEmpty ? Duration.seconds(1) : announceInterval
            try? await Task.sleep(for: pause)
        }
    }

    private func leaveAll() async {
        guard let identity = identity.current else { return }
        await withTaskGroup(of: Void.self) { group in
            for client in clients.values {
                group.addTask {
                    var request = Dragonfly_V1_LeaveHostRequest()
                    request.hostID = identity.hostID
                    var options = CallOptions.defaults
                    options.timeout = .seconds(1)
                    _ = try? await Client(wrapping: client).leaveHost(request, options: options)
                }
            }
        }
    }
}
