package import DragonflyTelemetry
package import Prometheus

/// The byte counters of DESIGN §12 (`dragonfly_daemon_…`, or `dragonfly_cdn_…` in seed mode), which every test
/// and benchmark reads to tell peer bytes from origin bytes.
package struct DaemonMetrics: Sendable {
    /// Verified piece bytes fetched from other peers.
    package let downloadPeerBytes: Counter
    /// Piece bytes read from the origin.
    package let downloadOriginBytes: Counter
    /// Bytes served to a caller from the local cache without fetching (a task already held).
    package let downloadLocalBytes: Counter
    /// Piece bytes sent to other peers by the piece server.
    package let uploadBytes: Counter
    /// Proxy requests served from a task (P2P).
    package let proxyP2P: Counter
    /// Proxy requests forwarded to their origin as they are.
    package let proxyDirect: Counter
    /// Body bytes the proxy sent to clients from tasks (P2P responses).
    package let proxyP2PBytes: Counter
    /// Body bytes the proxy relayed from origins (direct responses).
    package let proxyDirectBytes: Counter
    /// `CONNECT` tunnels opened.
    package let proxyTunnel: Counter
    /// `CONNECT`s intercepted (TLS ended by the proxy; the requests inside are counted by route too).
    package let proxyIntercepted: Counter
    /// Proxy requests refused (over the concurrency limit, malformed, unsupported).
    package let proxyRejected: Counter

    package init(telemetry: Telemetry) {
        func counter(_ name: String, _ help: String, source: String?) -> Counter {
            let descriptor = MetricNameDescriptor(
                namespace: "dragonfly", subsystem: telemetry.role, metricName: name, unitName: "bytes_total",
                helpText: help)
            return telemetry.registry.makeCounter(descriptor: descriptor, labels: source.map { [("source", $0)] } ?? [])
        }
        let help = "Bytes of pieces this host downloaded, by where they came from."
        downloadPeerBytes = counter("download", help, source: "peer")
        downloadOriginBytes = counter("download", help, source: "origin")
        downloadLocalBytes = counter("download", help, source: "local")
        uploadBytes = counter("upload", "Bytes of pieces this host served to other peers.", source: nil)
        func proxyCounter(_ route: String) -> Counter {
            let descriptor = MetricNameDescriptor(
                namespace: "dragonfly", subsystem: telemetry.role, metricName: "proxy_requests", unitName: "total",
                helpText: "Proxy requests by how they were served (p2p, direct, tunnel, intercepted, rejected).")
            return telemetry.registry.makeCounter(descriptor: descriptor, labels: [("route", route)])
        }
        proxyP2P = proxyCounter("p2p")
        proxyDirect = proxyCounter("direct")
        proxyRejected = proxyCounter("rejected")
        proxyTunnel = proxyCounter("tunnel")
        proxyIntercepted = proxyCounter("intercepted")
        let bytesHelp = "Body bytes the proxy sent to clients, by how the response was served (p2p, direct)."
        proxyP2PBytes = telemetry.registry.makeCounter(
            descriptor: MetricNameDescriptor(
                namespace: "dragonfly", subsystem: telemetry.role, metricName: "proxy_response",
                unitName: "bytes_total",
                helpText: bytesHelp),
            labels: [("route", "p2p")])
        proxyDirectBytes = telemetry.registry.makeCounter(
            descriptor: MetricNameDescriptor(
                namespace: "dragonfly", subsystem: telemetry.role, metricName: "proxy_response",
                unitName: "bytes_total",
                helpText: bytesHelp),
            labels: [("route", "direct")])
    }
}
