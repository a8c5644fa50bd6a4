import DragonflyCore
import DragonflyTestSupport
import Testing

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// ``withP2PCluster(schedulers:seeds:daemons:daemonConfigYAML:seedConfigYAML:schedulerConfigYAML:schedulerArguments:seedArguments:daemonArguments:environment:executablePath:readyTimeLimit:isolation:_:)``
/// with the real `dragonfly` roles: start, health, metrics, a crash of one node, `get` through the helper,
/// and a teardown that leaves no process and no file.
@Suite(.serialized) struct ClusterTests {
    /// Whether a process with this PID exists (a zombie counts).
    static func isAlive(_ pid: Int32) -> Bool {
        kill(pid, 0) == 0 || errno == EPERM
    }

    /// PIDs of processes whose command line mentions `text` (e.g. the cluster directory).
    static func processes(mentioning text: String) -> [Int32] {
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return [] }
        return entries.compactMap { entry in
            guard let pid = Int32(entry), pid != getpid(),
                let data = FileManager.default.contents(atPath: "/proc/\(entry)/cmdline")
            else { return nil }
            let commandLine = String(decoding: data.map { $0 == 0 ? UInt8(ascii: " ") : $0 }, as: UTF8.self)
            return commandLine.contains(text) ? pid : nil
        }
    }

    @Test(.timeLimit(.minutes(3)))
    func clusterStartsEveryNodeIsHealthyAndTeardownLeavesNothing() async throws {
        let (pids, paths) = try await withP2PCluster(schedulers: 1, seeds: 1, daemons: 2) { cluster in
            #expect(cluster.schedulers.map(\.name) == ["scheduler1"])
            #expect(cluster.seeds.map(\.name) == ["cdn1"])
            #expect(cluster.daemons.map(\.name) == ["daemon1", "daemon2"])
            #expect(cluster.nodes.count == 4)
            #expect(cluster.schedulerAddresses == [cluster.schedulers[0].ready.listeners["grpc"]])
            #expect(cluster.node(named: "daemon2")?.pid == cluster.daemons[1].pid)

            for node in cluster.nodes {
                #expect(node.ready.role == node.role.rawValue, "\(node)")
                #expect(node.ready.pid == Int(node.pid), "\(node)")
                #expect(try node.process.exitStatus() == nil, "\(node) exited: \(node.process.stderrText())")
                let expectedListeners: Set<String> =
                    node.role == .scheduler ? ["grpc", "metrics"] : ["peer", "proxy", "metrics", "health", "piece"]
                #expect(Set(node.ready.listeners.keys) == expectedListeners, "\(node)")
                for address in node.ready.listeners.values {
                    #expect(address.hasPrefix("127.0.0.1:") && !address.hasSuffix(":0"), "\(node): \(address)")
                }
                #expect(await cluster.isHealthy(node), "\(node): /healthy did not answer 200")
                let metrics = try await cluster.metrics(of: node)
                #expect(metrics.value(node.metricPrefix + "build_info") == 1, "\(node): \(metrics.samples)")
                // The byte counters read 0 (or are absent) before any download.
                if node.role != .scheduler {
                    for source in ClusterByteSource.allCases {
                        #expect(try await cluster.downloadBytes(of: node, source: source) == 0, "\(node) \(source)")
                    }
                    #expect(try await cluster.uploadBytes(of: node) == 0, "\(node)")
                    #expect(node.socketPath.map { node.ready.socket?.hasSuffix($0) ?? false } == true, "\(node)")
                    #expect(node.dataDirectory?.hasPrefix(cluster.directory.path) == true)
                } else {
                    #expect(node.socketPath == nil && node.dataDirectory == nil)
                }
            }
            // Every node's command line names its ready file's directory, so the scan below finds each one.
            let paths = [cluster.directory.path] + cluster.nodes.map(\.process.directory.path)
            #expect(Set(paths.flatMap(Self.processes(mentioning:))).isSuperset(of: cluster.nodes.map(\.pid)))
            return (cluster.nodes.map(\.pid), paths)
        }
        for pid in pids {
            #expect(!Self.isAlive(pid), "pid \(pid) still runs after the cluster scope")
        }
        for path in paths {
            #expect(Self.processes(mentioning: path).isEmpty, "a process still names \(path)")
            #expect(!FileManager.default.fileExists(atPath: path), "\(path) is left")
        }
    }

    @Test(.timeLimit(.minutes(3)))
    func aKilledNodeLeavesTheRestRunning() async throws {
        try await withP2PCluster(schedulers: 1, seeds: 1, daemons: 2) { cluster in
            let victim = cluster.daemons[0]
            try await cluster.kill(victim)
            #expect(try victim.process.exitStatus() == .signaled(SIGKILL))
            #expect(!(await cluster.isHealthy(victim)))
            for node in cluster.nodes where node.name != victim.name {
                #expect(try node.process.exitStatus() == nil, "\(node) exited: \(node.process.stderrText())")
                #expect(await cluster.isHealthy(node), "\(node) is unhealthy after \(victim) was killed")
            }
            // A graceful stop of another daemon is a normal exit (DESIGN §12).
            let stopped = cluster.daemons[1]
            try stopped.process.signal(.terminate)
            #expect(try await stopped.process.waitForExit(timeLimit: .seconds(10)) == .exited(0))
            #expect(await cluster.isHealthy(cluster.schedulers[0]))
            #expect(await cluster.isHealthy(cluster.seeds[0]))
        }
    }

    @Test(.timeLimit(.minutes(2)))
    func aNodeThatCannotStartFailsTheClusterWithItsStderrAndLeavesNothing() async throws {
        let error = await #expect(throws: TestSupportError.self) {
            try await withP2PCluster(seeds: 0, daemons: 2, daemonConfigYAML: "noSuchKey: 1\n") { _ in
                Issue.record("the body ran although the daemons' config is invalid")
            }
        }
        #expect(error?.code == .processExitedEarly)
        #expect(error?.message.hasPrefix("daemon1: ") == true, "\(String(describing: error))")
        #expect(error?.message.contains("noSuchKey") == true, "\(String(describing: error))")
        // The message quotes the command line, which names the cluster directory: it and its processes are gone.
        let token = try #require(
            (error?.message ?? "").split(separator: " ").first { $0.contains("/dragonfly-test-cluster-") })
        let components = token.split(separator: "/", omittingEmptySubsequences: false)
        let end = try #require(components.firstIndex { $0.hasPrefix("dragonfly-test-cluster-") })
        let directory = components[...end].joined(separator: "/")
        #expect(directory.hasPrefix("/") && directory.count > "/dragonfly-test-cluster-".count, "\(directory)")
        #expect(Self.processes(mentioning: directory).isEmpty)
        #expect(!FileManager.default.fileExists(atPath: directory))
    }

    @Test(.timeLimit(.minutes(5)))
    func getOnEveryDaemonAtOnceWritesTheFile() async throws {
        var generator = SystemRandomNumberGenerator()
        var words = [UInt64](repeating: 0, count: 9 << 17)  // 9 MiB: three 4 MiB pieces, the last one short
        for index in words.indices { words[index] = generator.next() }
        let blob = words.withUnsafeBytes { Array($0) }
        try await withNginxOrigin { origin in
            try origin.writeFile("blob.bin", contents: blob)
            try await withP2PCluster(schedulers: 1, seeds: 1, daemons: 2) { cluster in
                let results = try await cluster.getConcurrently(url: origin.url(for: "blob.bin"), on: cluster.daemons)
                #expect(results.map(\.node.name) == ["daemon1", "daemon2"])
                for (node, output, result) in results {
                    #expect(result.status == .exited(0), "\(node): \(result.stderr)\n\(cluster.logs())")
                    #expect(FileManager.default.contents(atPath: output).map(Array.init) == blob, "\(node)")
                    #expect(output.hasPrefix(cluster.directory.path + "/outputs/"))
                    // The daemon still answers after serving (or being bypassed by) the get.
                    #expect(try await cluster.metrics(of: node).contains("dragonfly_daemon_build_info"))
                }
            }
        }
    }
}
