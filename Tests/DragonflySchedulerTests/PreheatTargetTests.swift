import DragonflyCore
import DragonflyProto
import Testing

@testable import DragonflyScheduler

/// Which hosts a preheat job's downloads go to (DESIGN §10).
struct PreheatTargetTests {
    static func host(_ id: String, ip: String, seed: Bool) -> PeerHost {
        var host = PeerHost(
            id: id, kind: seed ? .seed : .normal, ip: ip, hostname: id, peerPort: 1, pieceDataPort: 2,
            lastAnnounce: .now)
        host.uploadSlots = 4
        return host
    }

    static let seeds = (1...3).map { host("seed-\($0)", ip: "10.0.0.\($0)", seed: true) }
    static let normal = (1...10).map { host("host-\($0)", ip: "10.1.0.\($0)", seed: false) }

    static func job(
        _ scope: Dragonfly_V1_TargetScope, urls: [String],
        configure: (inout Dragonfly_V1_HostSelection) -> Void = { _ in }
    )
        -> Dragonfly_V1_PreheatJob
    {
        var job = Dragonfly_V1_PreheatJob()
        job.downloads = urls.map { url in
            var download = Dragonfly_V1_Download()
            download.url = url
            return download
        }
        job.targets.scope = scope
        configure(&job.targets)
        return job
    }

    @Test func singleSeedPeerPicksOneSeedPerURLStably() {
        let urls = (0..<30).map { "http://origin/file-\($0)" }
        let targets = PreheatExecutor.targets(
            Self.job(.singleSeedPeer, urls: urls), seeds: Self.seeds, normal: Self.normal, jobID: 1)
        #expect(targets.count == 30)
        #expect(targets.allSatisfy { $0.hosts.count == 1 && $0.hosts[0].isSeed })
        // The same URL goes to the same seed whatever the job, and the URLs spread over the seeds.
        let again = PreheatExecutor.targets(
            Self.job(.singleSeedPeer, urls: urls), seeds: Self.seeds.reversed(), normal: [], jobID: 9)
        #expect(targets.map(\.hosts[0].id) == again.map(\.hosts[0].id))
        #expect(Set(targets.map(\.hosts[0].id)).count == 3)
    }

    @Test func noSeedPeerMeansNoTarget() {
        #expect(
            PreheatExecutor.targets(
                Self.job(.singleSeedPeer, urls: ["http://o/f"]), seeds: [], normal: Self.normal, jobID: 1
            ).isEmpty)
        #expect(
            PreheatExecutor.targets(
                Self.job(.allSeedPeers, urls: ["http://o/f"]), seeds: [], normal: Self.normal, jobID: 1
            )
            .isEmpty)
    }

    @Test func allSeedPeersTargetsEverySeed() {
        let targets = PreheatExecutor.targets(
            Self.job(.allSeedPeers, urls: ["http://o/a", "http://o/b"]), seeds: Self.seeds, normal: Self.normal,
            jobID: 1)
        #expect(targets.map { $0.hosts.map(\.id) } == [Self.seeds.map(\.id), Self.seeds.map(\.id)])
    }

    @Test func allPeersChoosesByIPsThenCountThenPercentage() {
        let byIPs = PreheatExecutor.targets(
            Self.job(.allPeers, urls: ["http://o/f"]) {
                $0.ips = ["10.1.0.3", "10.1.0.7", "10.9.9.9"]
                $0.count = 1
            },
            seeds: Self.seeds, normal: Self.normal, jobID: 1)
        #expect(Set(byIPs[0].hosts.map(\.ip)) == ["10.1.0.3", "10.1.0.7"], "ips win over count")
        let byCount = PreheatExecutor.targets(
            Self.job(.allPeers, urls: ["http://o/f"]) {
                $0.count = 2
                $0.percentage = 100
            }, seeds: Self.seeds, normal: Self.normal,
            jobID: 1)
        #expect(byCount[0].hosts.count == 2, "count wins over percentage")
        #expect(byCount[0].hosts.allSatisfy { !$0.isSeed })
        let byPercentage = PreheatExecutor.targets(
            Self.job(.allPeers, urls: ["http://o/f"]) { $0.percentage = 25 }, seeds: Self.seeds, normal: Self.normal,
            jobID: 1)
        #expect(byPercentage[0].hosts.count == 3, "25 % of 10 hosts, rounded up")
        let all = PreheatExecutor.targets(
            Self.job(.allPeers, urls: ["http://o/f"]), seeds: Self.seeds, normal: Self.normal, jobID: 1)
        #expect(all[0].hosts.count == 10)
        let none = PreheatExecutor.targets(
            Self.job(.allPeers, urls: ["http://o/f"]) { $0.ips = ["192.0.2.1"] }, seeds: Self.seeds,
            normal: Self.normal,
            jobID: 1)
        #expect(none.isEmpty)
    }
}
