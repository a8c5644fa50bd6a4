import DragonflyCore
import Testing

@testable import DragonflyManager

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// The searcher's ranking, without a store.
@Suite struct SchedulerSearcherTests {
    static func cluster(
        _ id: Int, cidrs: [String] = [], hostnames: [String] = [], idc: String = "", location: String = "",
        isDefault: Bool = false
    ) -> ClusterRecord {
        ClusterRecord(
            id: id, kind: .scheduler, name: "c\(id)", bio: "", config: .emptyObject, clientConfig: .emptyObject,
            scopes: ClusterScopes(idc: idc, location: location, cidrs: cidrs, hostnames: hostnames),
            isDefault: isDefault, createdAt: Date(timeIntervalSince1970: 0), updatedAt: Date(timeIntervalSince1970: 0))
    }

    let host = SearchedHost(hostname: "node-7.gpu.example", ip: "10.1.2.3", idc: "idc-b", location: "cn|sh|pd")

    @Test func cidrContainingTheHostRanksFirst() {
        let clusters = [
            Self.cluster(1, isDefault: true),
            Self.cluster(2, hostnames: ["gpu"], idc: "idc-b", location: "cn|sh|pd"),
            Self.cluster(3, cidrs: ["10.1.0.0/16"]),
        ]
        #expect(SchedulerSearcher().rank(clusters, for: host).map(\.id) == [3, 2, 1])
    }

    @Test func longerPrefixWinsAmongMatchingCIDRs() {
        let clusters = [
            Self.cluster(1, cidrs: ["10.0.0.0/8"]), Self.cluster(2, cidrs: ["10.1.2.0/24", "192.168.0.0/16"]),
            Self.cluster(3, cidrs: ["0.0.0.0/0"]),
        ]
        #expect(SchedulerSearcher().rank(clusters, for: host).map(\.id) == [2, 1, 3])
    }

    @Test func criteriaDecideInOrder() {
        let searcher = SchedulerSearcher()
        // Hostname regex beats IDC, IDC beats location, location beats the default flag.
        #expect(
            searcher.rank([Self.cluster(1, idc: "idc-b"), Self.cluster(2, hostnames: ["^node-[0-9]+\\."])], for: host)
                .map(\.id) == [2, 1])
        #expect(
            searcher.rank([Self.cluster(1, location: "cn|sh|pd"), Self.cluster(2, idc: "idc-a|IDC-B")], for: host)
                .map(\.id) == [2, 1])
        #expect(
            searcher.rank([Self.cluster(1, isDefault: true), Self.cluster(2, location: "cn|sh")], for: host)
                .map(\.id) == [2, 1])
        // A deeper shared location prefix wins; a diverging first component shares nothing.
        #expect(
            searcher.rank(
                [
                    Self.cluster(1, location: "cn|sh"), Self.cluster(2, location: "cn|sh|pd"),
                    Self.cluster(3, location: "us|sh"),
                ],
                for: host
            ).map(\.id) == [2, 1, 3])
        // Nothing matches: the default first, then by ID.
        #expect(
            searcher.rank([Self.cluster(5), Self.cluster(4), Self.cluster(9, isDefault: true)], for: host).map(\.id)
                == [9, 4, 5])
    }

    @Test func malformedScopesMatchNothing() {
        let clusters = [
            Self.cluster(1, cidrs: ["10.1.0.0/99", "not-an-ip", "10.1.2.3/", ""], hostnames: ["([", ""]),
            Self.cluster(2, isDefault: true),
        ]
        let score = SchedulerSearcher().score(scopes: clusters[0].scopes, isDefault: false, for: host)
        #expect(score.cidrPrefixLength == nil && !score.hostnameMatches)
        #expect(SchedulerSearcher().rank(clusters, for: host).map(\.id) == [2, 1])
        // A host that sends no IP or a malformed one matches no CIDR.
        let anonymous = SearchedHost(hostname: "", ip: "garbage")
        #expect(
            SchedulerSearcher().rank(
                [Self.cluster(1, cidrs: ["0.0.0.0/0"]), Self.cluster(2, isDefault: true)], for: anonymous
            ).map(\.id) == [2, 1])
    }

    @Test func ipv6AndMappedAddresses() throws {
        let block = try #require(CIDRBlock(parsing: "fd00:1::/32"))
        #expect(block.contains(try #require(IPAddressBytes(parsing: "fd00:1:abcd::5"))))
        #expect(!block.contains(try #require(IPAddressBytes(parsing: "fd00:2::5"))))
        #expect(!block.contains(try #require(IPAddressBytes(parsing: "10.1.2.3"))))
        let v4 = try #require(CIDRBlock(parsing: "10.1.2.0/23"))
        #expect(v4.contains(try #require(IPAddressBytes(parsing: "::ffff:10.1.3.200"))))
        #expect(!v4.contains(try #require(IPAddressBytes(parsing: "10.1.4.1"))))
        #expect(try #require(CIDRBlock(parsing: "10.1.2.3")).prefixLength == 32)
        #expect(CIDRBlock(parsing: "10.1.2.3/33") == nil)
        #expect(CIDRBlock(parsing: "10.1.2.3/-1") == nil)
    }
}
