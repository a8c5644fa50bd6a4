import DragonflyCore
import DragonflyScheduler

/// Shared builders for the scheduler tests: a fixed clock origin, hosts and a seeded scheduler.
enum Fixture {
    static let start = ContinuousClock.now
    static let taskID = String(repeating: "a", count: 64)
    static let url = "https://example.com/blob"

    static func at(_ seconds: Int64) -> ContinuousClock.Instant { start + .seconds(seconds) }

    static func host(
        _ id: String,
        kind: PeerHost.Kind = .normal,
        idc: String = "",
        location: String = "",
        slots: Int = 10,
        used: Int = 0,
        maxTx: Int64 = 0,
        idleTx: Int64 = 0,
        at time: ContinuousClock.Instant = start
    ) -> PeerHost {
        PeerHost(
            id: id, kind: kind, ip: "10.0.0.1", hostname: id, idc: idc,
            location: location, uploadSlots: slots, uploadSlotsUsed: used, maxTxBandwidth: maxTx,
            idleTxBandwidth: idleTx, lastAnnounce: time)
    }

    static func key(_ peerID: String, task: String = taskID) -> PeerKey { PeerKey(taskID: task, peerID: peerID) }

    static func registration(
        _ peerID: String, host: String, task: String = taskID, pieces: [UInt32] = [], contentLength: Int64? = nil,
        pieceLength: Int64? = nil, disableBackToSource: Bool = false, wantsBackToSource: Bool = false
    ) -> PeerRegistration {
        PeerRegistration(
            key: key(peerID, task: task), hostID: host, url: url, finishedPieces: pieces,
            contentLength: contentLength, pieceLength: pieceLength, isBackToSourceDisabled: disableBackToSource,
            wantsBackToSource: wantsBackToSource)
    }

    static func scheduler(
        parentLimit: Int = 8,
        sampleLimit: Int = 40,
        retryLimit: Int = 5,
        base: Int = 1,
        perExtra: Int = 100,
        limits: ResourceLimits = ResourceLimits(),
        seed: UInt64 = 42
    ) -> PeerScheduler<SeededRandomNumberGenerator> {
        PeerScheduler(
            registry: ResourceRegistry(limits: limits),
            selector: ParentSelector(
                strategy: DefaultStrategy(), candidateSampleLimit: sampleLimit, parentLimit: parentLimit),
            rationer: BackToSourceRationer(
                backToSourceBase: base, backToSourcePeersPerExtra: perExtra,
                retryLimit: retryLimit),
            random: SeededRandomNumberGenerator(seed: seed))
    }

    /// Announces `hosts` (by ID) on a fresh scheduler.
    static func scheduler(
        hosts: [PeerHost], retryLimit: Int = 5, base: Int = 1, perExtra: Int = 100, parentLimit: Int = 8
    ) throws -> PeerScheduler<SeededRandomNumberGenerator> {
        var scheduler = scheduler(parentLimit: parentLimit, retryLimit: retryLimit, base: base, perExtra: perExtra)
        for host in hosts { _ = try scheduler.announceHost(host, now: start) }
        return scheduler
    }
}

extension RegisterDecision {
    var parents: [String] {
        switch self {
        case .normalTask(let plan): plan.parents.map(\.peerID)
        case .smallTask(let plan): plan.parents.map(\.peerID)
        default: []
        }
    }
}

extension SchedulerAction {
    var recipient: PeerKey? {
        switch self {
        case .send(let key, _), .fail(let key, _), .reject(let key, _, _): key
        case .triggerSeedPeer: nil
        }
    }
}
