import DragonflyTestSupport
import Testing

/// The Prometheus text parser behind ``P2PCluster/metrics(of:)``.
@Suite struct ClusterMetricsTests {
    static let page = """
        # HELP dragonfly_daemon_build_info Build information; always 1.
        # TYPE dragonfly_daemon_build_info gauge
        dragonfly_daemon_build_info{version="0.1.0",role="daemon"} 1.0

        dragonfly_daemon_download_bytes_total{source="peer"} 4194304
        dragonfly_daemon_download_bytes_total{source="origin"} 1.2e3
        dragonfly_daemon_download_bytes_total{ source = "local" , } 0 1700000000000
        dragonfly_daemon_upload_bytes_total 123
        process_weird{path="a\\"b\\\\c\\nd"} +Inf
        up:ratio NaN

        """

    @Test func parsesNamesLabelsValuesAndSkipsComments() throws {
        let metrics = try PrometheusMetrics(parsing: Self.page)
        #expect(metrics.samples.count == 7)
        #expect(
            metrics.samples.first
                == PrometheusSample(
                    name: "dragonfly_daemon_build_info", labels: ["version": "0.1.0", "role": "daemon"], value: 1))
        #expect(metrics.value("dragonfly_daemon_download_bytes_total", labels: ["source": "peer"]) == 4_194_304)
        #expect(metrics.value("dragonfly_daemon_download_bytes_total", labels: ["source": "origin"]) == 1200)
        #expect(metrics.value("dragonfly_daemon_download_bytes_total", labels: ["source": "local"]) == 0)
        let allSources: Double = 4_194_304 + 1200
        #expect(metrics.value("dragonfly_daemon_download_bytes_total") == allSources)
        #expect(metrics.value("dragonfly_daemon_upload_bytes_total") == 123)
        #expect(metrics.samples(named: "process_weird").first?.labels["path"] == "a\"b\\c\nd")
        #expect(metrics.value("process_weird") == .infinity)
        #expect(metrics.value("up:ratio")?.isNaN == true)
        #expect(metrics.value("dragonfly_daemon_download_bytes_total", labels: ["source": "nowhere"]) == nil)
        #expect(metrics.value("missing") == nil)
        #expect(metrics.contains("dragonfly_daemon_build_info"))
        #expect(!metrics.contains("dragonfly_cdn_build_info"))
    }

    @Test(arguments: [
        "no_value",
        "name{source=\"peer\"}",
        "name{source=peer} 1",
        "name{source=\"peer\" 1",
        "name{source=\"a\",source=\"b\"} 1",
        "name 1 2 3",
        "name one",
        "9name 1",
        "name{source=\"bad \\q escape\"} 1",
    ])
    func rejectsLinesThatAreNotSamples(line: String) {
        let error = #expect(throws: TestSupportError.self) {
            try PrometheusMetrics(parsing: "ok 1\n" + line + "\n")
        }
        #expect(error?.code == .commandFailed)
        #expect(error?.message.contains("line 2") == true)
    }
}
