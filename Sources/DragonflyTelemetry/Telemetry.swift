import DragonflyCore
package import Logging
import Metrics
package import Prometheus

/// The process-wide telemetry of one role: its Prometheus registry and the build-info gauge.
///
/// Only the CLI calls ``bootstrap(logLevel:)`` and ``bootstrapMetrics()``; libraries and tests use the
/// registry they are handed.
package struct Telemetry: Sendable {
    /// The role name used in metric names: `manager`, `scheduler`, `daemon`, `cdn`.
    package let role: String
    /// Where every metric of this role is registered.
    package let registry: PrometheusCollectorRegistry

    /// Creates a registry for `role` and sets `dragonfly_<role>_build_info{version=…} 1`.
    package init(role: String, registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry()) {
        self.role = role
        self.registry = registry
        registry.makeGauge(
            descriptor: MetricNameDescriptor(
                namespace: "dragonfly",
                subsystem: role,
                metricName: "build",
                unitName: "info",
                helpText: "Build information of the running dragonfly \(role); always 1."
            ),
            labels: [("version", DragonflyVersion.current), ("role", role)]
        ).set(Double(1))
    }

    /// The metric name for `suffix` under this role, e.g. `dragonfly_daemon_download_bytes_total`.
    package func metricName(_ suffix: String) -> String { "dragonfly_\(role)_\(suffix)" }

    /// The Prometheus text exposition of every metric.
    package func exposition() -> [UInt8] { registry.emitToBuffer() }

    /// Routes swift-metrics (`Counter`, `Timer`, …) created anywhere in the process into this registry.
    /// Call once per process.
    package func bootstrapMetrics() {
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
    }

    /// Installs the logfmt stderr handler at `logLevel`. Call once per process.
    package static func bootstrap(logLevel: Logger.Level) {
        LoggingSystem.bootstrap { label in LogfmtLogHandler(label: label, level: logLevel) }
    }
}
