import DragonflyCore
import DragonflyDaemon
import DragonflyProto
import Logging
import Testing

/// The daemon's side of scheduler discovery without a manager: which schedulers of an answer it keeps, and how
/// the pool takes a new list.
@Suite struct ManagerDiscoveryUnitTests {
    static let logger = Logger(label: "df.test.discovery") { _ in SwiftLogNoOpLogHandler() }

    static func info(_ id: UInt64, cluster: UInt64, ip: String, port: UInt32 = 8002) -> Dragonfly_V1_SchedulerInfo {
        var info = Dragonfly_V1_SchedulerInfo()
        info.id = id
        info.schedulerClusterID = cluster
        info.ip = ip
        info.port = port
        info.hostname = "s\(id)"
        info.state = .active
        return info
    }

    @Test func onlyTheBestRankedClusterIsUsed() {
        let answer = [
            Self.info(1, cluster: 3, ip: "10.0.0.1"), Self.info(2, cluster: 3, ip: "fd00::2", port: 9000),
            Self.info(3, cluster: 1, ip: "10.0.0.3"), Self.info(4, cluster: 3, ip: "10.0.0.4", port: 0),
        ]
        let chosen = ManagerDiscovery.bestCluster(of: answer)
        #expect(chosen.map(\.address) == ["10.0.0.1:8002", "[fd00::2]:9000"])
        #expect(chosen.allSatisfy { $0.clusterID == 3 })
        #expect(ManagerDiscovery.bestCluster(of: []).isEmpty)
    }

    @Test func thePoolTakesANewListAndSkipsMalformedAddresses() throws {
        let pool = try SchedulerPool(
            addresses: ["127.0.0.1:1"], identity: Published<HostIdentity>(), config: DaemonConfig(),
            uploadSlotsUsed: { 0 }, logger: Self.logger)
        #expect(pool.ring.addresses == ["127.0.0.1:1"])
        #expect(pool.update(addresses: ["127.0.0.1:2", "not an address", "127.0.0.1:3"]))
        #expect(pool.ring.addresses == ["127.0.0.1:2", "127.0.0.1:3"])
        #expect(!pool.update(addresses: ["127.0.0.1:3", "127.0.0.1:2"]), "the same set is no change")
        let taskID = try #require(TaskID(String(repeating: "a", count: 64)))
        #expect(Set(pool.candidates(for: taskID).map(\.address)) == ["127.0.0.1:2", "127.0.0.1:3"])
        let many = (1...100).map { "127.0.0.1:\(1000 + $0)" }
        #expect(pool.update(addresses: many))
        #expect(pool.ring.addresses.count == SchedulerPool.maxSchedulers)
    }
}
