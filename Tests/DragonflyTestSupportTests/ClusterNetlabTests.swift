import DragonflyCore
import DragonflyTestSupport
import Testing

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// ``withNetlab(hosts:origin:rate:isolation:_:)`` with real namespaces: hosts reach each other only inside
/// the lab, servers run in a host, and nothing is left afterwards. Needs root and `ip netns` (CI runs as
/// root); skipped otherwise.
@Suite(
    .serialized,
    .enabled("needs root and `ip netns` (network namespaces); see Netlab.unavailableReason()") {
        await Netlab.unavailableReason() == nil
    }
)
struct NetlabTests {
    @Test(.timeLimit(.minutes(2)))
    func twoShapedHostsReachEachOtherAndTheLabIsRemoved() async throws {
        let labName = try await withNetlab(hosts: 2, rate: "200mbit") { lab in
            #expect(lab.hostNames == ["h1", "h2"])
            let (ip1, ip2) = (lab.ip(of: "h1"), lab.ip(of: "h2"))
            #expect(ip1 != ip2)
            #expect(ip1.split(separator: ".").dropLast() == ip2.split(separator: ".").dropLast())
            #expect(
                try await Netlab.namespaces(of: lab.name).sorted() == [
                    "\(lab.name)-h1", "\(lab.name)-h2", "\(lab.name)-sw",
                ])

            // tbf on both ends of h1's link: its eth0 (upload) here, the switch port (download) in netlab list.
            let qdisc = try await lab.run(on: "h1", ["tc", "qdisc", "show", "dev", "eth0"])
            #expect(qdisc.status.isSuccess)
            #expect(qdisc.stdout.contains("tbf") && qdisc.stdout.contains("200Mbit"), "\(qdisc.stdout)")
            let shaping = try await lab.shaping()
            #expect(shaping["h2"]?.down == "200Mbit" && shaping["h2"]?.up == "200Mbit", "\(shaping)")
            try await lab.shape("h2", down: "50mbit", up: "off")
            let reshaped = try await lab.shaping()
            #expect(reshaped["h2"]?.down == "50Mbit" && reshaped["h2"]?.up == "off", "\(reshaped)")
            let address = try await lab.run(on: "h2", ["ip", "-4", "-o", "addr", "show", "dev", "eth0"])
            #expect(address.stdout.contains(" \(ip2)/24 "), "\(address.stdout)")

            // A dragonfly scheduler in h2, bound to h2's address, answers /healthy to h1.
            try await lab.withDragonfly(
                on: "h2", ["scheduler", "--listen", "\(ip2):0", "--metrics-listen", "\(ip2):0"]
            ) { scheduler in
                let ready = try await scheduler.awaitReady()
                let metrics = try #require(ready.listeners["metrics"])
                #expect(metrics.hasPrefix(ip2 + ":"))
                let health = try await lab.curl(from: "h1", "http://\(metrics)/healthy")
                #expect(health.status == 200)
                let page = try await lab.curl(from: "h1", "http://\(metrics)/metrics")
                #expect(try PrometheusMetrics(parsing: page.body).value("dragonfly_scheduler_build_info") == 1)
            }
            return lab.name
        }
        #expect(try await Netlab.namespaces(of: labName).isEmpty)
    }

    @Test(.timeLimit(.minutes(2)))
    func nginxInTheOriginHostServesAnotherHost() async throws {
        try await withNetlab(hosts: 1, origin: true) { lab in
            #expect(lab.hostNames == ["h1", "origin"])
            try await lab.withNginx(on: "origin") { origin in
                #expect(origin.host == lab.ip(of: "origin"))
                let text = String(repeating: "dragonfly netlab origin\n", count: 1000)
                try origin.writeFile("hello.txt", contents: Array(text.utf8))
                let response = try await lab.curl(from: "h1", origin.url(for: "hello.txt"))
                #expect(response.status == 200)
                #expect(response.body == text)
                // The log also holds the readiness probes (GET /); the file's own entry has every byte.
                try await poll(timeLimit: .seconds(10), description: "nginx to log the GET") {
                    try origin.accessLog().contains { $0.uri == "/hello.txt" && $0.bytesSent == text.utf8.count }
                }
                #expect(try origin.accessLog().allSatisfy { $0.status == 200 })
            }
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func aFailingBodyStillRemovesTheLab() async throws {
        struct Expected: Error {}
        var name = ""
        await #expect(throws: Expected.self) {
            try await withNetlab(hosts: 1) { lab in
                name = lab.name
                throw Expected()
            }
        }
        #expect(!name.isEmpty)
        #expect(try await Netlab.namespaces(of: name).isEmpty)
    }
}

/// ``withP2PCluster(in:schedulers:seeds:daemons:daemonConfigYAML:seedConfigYAML:schedulerConfigYAML:schedulerArguments:seedArguments:daemonArguments:environment:executablePath:readyTimeLimit:isolation:_:)``:
/// a cluster spread over lab hosts, with the origin in a host of its own.
@Suite(
    .serialized,
    .enabled("needs root and `ip netns` (network namespaces); see Netlab.unavailableReason()") {
        await Netlab.unavailableReason() == nil
    }
)
struct NetlabClusterTests {
    @Test(.timeLimit(.minutes(3)))
    func clusterInLabHostsBindsTheirAddressesAndGetsFromTheLabOrigin() async throws {
        try await withNetlab(hosts: 3, origin: true, rate: "1gbit") { lab in
            try await lab.withNginx(on: "origin") { origin in
                let text = String(repeating: "a file on the lab origin\n", count: 40_000)  // ~1 MiB
                try origin.writeFile("file.txt", contents: Array(text.utf8))
                try await withP2PCluster(in: lab, schedulers: ["h1"], seeds: ["h1"], daemons: ["h2", "h3"]) { cluster in
                    #expect(cluster.lab?.name == lab.name)
                    #expect(cluster.nodes.map(\.host) == ["h1", "h1", "h2", "h3"])
                    for node in cluster.nodes {
                        let hostIP = try #require(node.host.map(lab.ip(of:)))
                        for address in node.ready.listeners.values {
                            #expect(address.hasPrefix(hostIP + ":"), "\(node): \(address)")
                        }
                        #expect(await cluster.isHealthy(node), "\(node)")
                        #expect(try await cluster.metrics(of: node).value(node.metricPrefix + "build_info") == 1)
                    }
                    let results = try await cluster.getConcurrently(
                        url: origin.url(for: "file.txt"), on: cluster.daemons, timeLimit: .seconds(120))
                    for (node, output, result) in results {
                        #expect(result.status == .exited(0), "\(node): \(result.stderr)\n\(cluster.logs())")
                        #expect(FileManager.default.contents(atPath: output).map(Array.init) == Array(text.utf8))
                    }
                }
            }
        }
    }
}
