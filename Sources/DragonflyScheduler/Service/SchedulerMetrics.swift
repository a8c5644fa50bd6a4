package import DragonflyTelemetry
package import Prometheus

/// The Scheduler service's metrics (`dragonfly_scheduler_…`); labels have low cardinality (no task, peer or
/// host IDs).
package struct SchedulerMetrics: Sendable {
    /// Hosts known now, by type (`normal`, `super`).
    package let hosts: [String: Gauge]
    /// `AnnounceHost` calls accepted.
    package let hostAnnouncements: Counter
    /// `AnnouncePeer` streams open now.
    package let announcePeerStreams: Gauge
    /// Registrations by how they were answered (`empty`, `tiny`, `small`, `normal`, `back_to_source`, `wait`).
    package let registrations: [String: Counter]
    /// `NeedBackToSource` answers sent (registrations and reschedules).
    package let backToSourceDecisions: Counter
    /// `NormalTask` and `SmallTask` answers sent (registrations, reschedules, waiting peers served).
    package let parentAnswers: Counter
    /// Pieces reported finished, by source (`peer`, `origin`).
    package let piecesReported: [String: Counter]
    /// `PieceFailed` reports.
    package let pieceFailures: Counter
    /// Peers that ended failed, by reason (`reported`, `origin`, `scheduler`, `slow_consumer`).
    package let peerFailures: [String: Counter]
    /// Peers that left (stream ended without a final report, `LeavePeer`, GC).
    package let peersLeft: Counter
    /// Seed-peer triggers, by result (`sent`, `failed`).
    package let seedTriggers: [String: Counter]
    /// `PieceDigests` messages pushed.
    package let digestPushes: Counter
    /// Hosts that announced themselves as seed peers without the cluster vouching for them (kept as normal).
    package let unvouchedSeeds: Counter

    package init(telemetry: Telemetry) {
        let registry = telemetry.registry
        let subsystem = telemetry.role
        func descriptor(_ name: String, _ unit: String?, _ help: String) -> MetricNameDescriptor {
            MetricNameDescriptor(
                namespace: "dragonfly", subsystem: subsystem, metricName: name, unitName: unit, helpText: help)
        }
        func counters(_ name: String, _ help: String, label: String, _ values: [String]) -> [String: Counter] {
            var result: [String: Counter] = [:]
            for value in values {
                result[value] = registry.makeCounter(
                    descriptor: descriptor(name, "total", help), labels: [(label, value)])
            }
            return result
        }
        var hosts: [String: Gauge] = [:]
        for type in ["normal", "super"] {
            hosts[type] = registry.makeGauge(
                descriptor: descriptor("hosts", nil, "Hosts the scheduler knows, by type."), labels: [("type", type)])
        }
        self.hosts = hosts
        hostAnnouncements = registry.makeCounter(
            descriptor: descriptor("host_announcements", "total", "AnnounceHost calls accepted."))
        announcePeerStreams = registry.makeGauge(
            descriptor: descriptor("announce_peer_streams", nil, "AnnouncePeer streams open now."))
        registrations = counters(
            "peer_registrations", "Peer registrations by how they were answered.", label: "decision",
            ["empty", "tiny", "small", "normal", "back_to_source", "wait"])
        backToSourceDecisions = registry.makeCounter(
            descriptor: descriptor("back_to_source_decisions", "total", "NeedBackToSource answers sent."))
        parentAnswers = registry.makeCounter(
            descriptor: descriptor("parent_answers", "total", "NormalTask and SmallTask answers sent."))
        piecesReported = counters(
            "pieces_reported", "Pieces peers reported finished, by source.", label: "source", ["peer", "origin"])
        pieceFailures = registry.makeCounter(
            descriptor: descriptor("piece_failures", "total", "PieceFailed reports from peers."))
        peerFailures = counters(
            "peer_failures", "Peers that ended failed, by reason.", label: "reason",
            ["reported", "origin", "scheduler", "slow_consumer"])
        peersLeft = registry.makeCounter(descriptor: descriptor("peers_left", "total", "Peers that left their task."))
        seedTriggers = counters(
            "seed_triggers", "Seed-peer download triggers, by result.", label: "result", ["sent", "failed"])
        digestPushes = registry.makeCounter(
            descriptor: descriptor("piece_digest_pushes", "total", "PieceDigests messages pushed to peers."))
        unvouchedSeeds = registry.makeCounter(
            descriptor: descriptor(
                "unvouched_seed_announcements", "total",
                "Hosts announcing themselves as seed peers without the cluster vouching for them (kept as normal)."))
    }
}
