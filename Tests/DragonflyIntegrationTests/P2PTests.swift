import Crypto
import DragonflyCore
import DragonflyTestSupport
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The P2P core of DESIGN §6 end to end: real `dragonfly scheduler`, `cdn` and `daemon` processes, a real
/// nginx origin, `dragonfly get` through each daemon's socket. Every assertion is on behaviour a user sees —
/// the output's SHA-256, the origin's access log, the roles' byte counters — never on timing.
@Suite(.serialized)
struct P2PTests {
    /// `count` bytes from the kernel's random source: every piece differs, so a piece stored at the wrong
    /// offset or served from the wrong task cannot pass verification by accident.
    static func randomBytes(_ count: Int) throws -> [UInt8] {
        let handle = try #require(FileHandle(forReadingAtPath: "/dev/urandom"))
        defer { try? handle.close() }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(count)
        while bytes.count < count {
            let chunk = try #require(try handle.read(upToCount: min(count - bytes.count, 8 << 20)))
            bytes.append(contentsOf: chunk)
        }
        return bytes
    }

    /// The SHA-256 of the file at `path`, read in 4 MiB chunks; `nil` when it cannot be opened.
    static func sha256(ofFile path: String) -> SHA256.Digest? {
        guard let handle = FileHandle(forReadingAtPath: path) else { return nil }
        defer { try? handle.close() }
        var hasher = SHA256()
        while let chunk = try? handle.read(upToCount: 4 << 20), !chunk.isEmpty {
            hasher.update(data: chunk)
        }
        return hasher.finalize()
    }

    /// The data file of `taskID` in a node's data directory (DESIGN §7).
    static func dataFile(of node: ClusterNode, taskID: TaskID) throws -> String {
        let data = try #require(node.dataDirectory)
        let id = taskID.rawValue
        return "\(data)/tasks/\(id.prefix(3))/\(id)/data"
    }

    /// Every result exited 0 and wrote exactly the source's bytes.
    static func expectCorrect(
        _ results: [(node: ClusterNode, output: String, result: DragonflyRunResult)],
        digest: SHA256.Digest,
        cluster: P2PCluster,
        sourceLocation: SourceLocation = #_sourceLocation
    ) {
        for (node, output, result) in results {
            #expect(
                result.status == .exited(0), "\(node): \(result.stderr)\n\(cluster.logs())",
                sourceLocation: sourceLocation)
            #expect(
                Self.sha256(ofFile: output) == digest, "\(node): wrong bytes in \(output)",
                sourceLocation: sourceLocation)
        }
    }

    @Test(.timeLimit(.minutes(8)))
    func fourDaemonsOnLoopbackReadTheOriginOnceAndShareWithEachOther() async throws {
        let size = 256 << 20
        let blob = try Self.randomBytes(size)
        let digest = SHA256.hash(data: blob)
        try await withNginxOrigin { origin in
            try origin.writeFile("blob.bin", contents: blob)
            // On loopback nothing but the CPU limits a link, so a seed that reads the origin no faster than it
            // serves would feed every daemon each piece the moment it arrives, and the daemons would have nothing
            // to trade. As in a real cluster, the seed's upload is the scarce resource: 64 MiB/s here.
            try await withP2PCluster(
                schedulers: 1, seeds: 1, daemons: 4, seedConfigYAML: "upload:\n  rateLimit: 64M\n",
            ) { cluster in
                let results = try await cluster.getConcurrently(
                    url: origin.url(for: "blob.bin"), on: cluster.daemons, timeLimit: .seconds(360))
                Self.expectCorrect(results, digest: digest, cluster: cluster)

                let sent = try origin.totalBytesSent()
                #expect(Double(sent) <= 1.02 * Double(size), "nginx sent \(sent) bytes for a \(size)-byte file")
                var uploadedByDaemons = 0
                for daemon in cluster.daemons {
                    let peer = try await cluster.downloadBytes(of: daemon, source: .peer)
                    let fromOrigin = try await cluster.downloadBytes(of: daemon, source: .origin)
                    #expect(peer + fromOrigin >= size, "\(daemon): \(peer) from peers + \(fromOrigin) from the origin")
                    #expect(peer > fromOrigin && peer >= size / 2, "\(daemon): only \(peer) of its bytes from peers")
                    uploadedByDaemons += try await cluster.uploadBytes(of: daemon)
                }
                // Daemons served each other, not only the seed them: the swarm is more than a star.
                #expect(uploadedByDaemons >= size / 4, "daemons uploaded only \(uploadedByDaemons) bytes to peers")
                print(
                    "P2P loopback 256 MiB ×4: nginx sent \(Double(sent) / Double(size)) × F; daemons uploaded \(Double(uploadedByDaemons) / Double(size)) × F"
                )
            }
        }
    }

    @Test(
        .enabled("needs root and `ip netns` (network namespaces)") { await Netlab.unavailableReason() == nil },
        .timeLimit(.minutes(8))
    )
    func sixHostsAt200MbitReadTheOriginOnce() async throws {
        let size = 128 << 20
        let blob = try Self.randomBytes(size)
        let digest = SHA256.hash(data: blob)
        let rate = 200e6  // bit/s, tbf on both ends of every host's link, the origin's included
        try await withNetlab(hosts: 7, origin: true, rate: "200mbit") { lab in
            try await lab.withNginx(on: "origin") { origin in
                try origin.writeFile("blob.bin", contents: blob)
                let daemonHosts = (2...7).map { "h\($0)" }
                try await withP2PCluster(in: lab, schedulers: ["h1"], seeds: ["h1"], daemons: daemonHosts) { cluster in
                    let clock = ContinuousClock()
                    let start = clock.now
                    let results = try await withThrowingTaskGroup(
                        of: (ClusterNode, String, DragonflyRunResult, Duration).self
                    ) { group in
                        for daemon in cluster.daemons {
                            group.addTask {
                                let output = cluster.outputPath(daemon.name)
                                let result = try await cluster.get(
                                    url: origin.url(for: "blob.bin"), on: daemon, output: output,
                                    timeLimit: .seconds(300))
                                return (daemon, output, result, clock.now - start)
                            }
                        }
                        var all: [(ClusterNode, String, DragonflyRunResult, Duration)] = []
                        for try await result in group { all.append(result) }
                        return all.sorted { $0.0.name < $1.0.name }
                    }
                    Self.expectCorrect(results.map { ($0.0, $0.1, $0.2) }, digest: digest, cluster: cluster)
                    let sent = try origin.totalBytesSent()
                    #expect(Double(sent) <= 1.02 * Double(size), "nginx sent \(sent) bytes for a \(size)-byte file")

                    // The bound of DESIGN §14 from the nominal rates: the seed uploads at u_s, every host
                    // downloads at d and uploads at u.
                    let bits = Double(size) * 8
                    let hosts = Double(daemonHosts.count)
                    let bound = max(bits / rate, bits / rate, hosts * bits / (rate + hosts * rate))
                    let ratios = results.map { ($0.0.name, $0.3 / .seconds(1) / bound) }
                    let report = ratios.map { "\($0.0) \(String(format: "%.2f", $0.1))" }.joined(separator: ", ")
                    print(
                        "P2P netlab 6 hosts, 200 Mbit/s, 128 MiB: bound \(String(format: "%.2f", bound)) s; completion ÷ bound: \(report)"
                    )
                }
            }
        }
    }

    @Test(.timeLimit(.minutes(4)))
    func aChildFinishesItsPiecesWhileTheSeedIsStillReadingTheOrigin() async throws {
        let size = 48 << 20  // 12 pieces of 4 MiB
        let blob = try Self.randomBytes(size)
        try await withNginxOrigin { origin in
            try origin.writeFile("slow.bin", contents: blob)
            // 1 MiB/s per origin connection: the seed's 4 range connections need about 12 s for the file.
            let url = origin.rateLimitedURL(for: "slow.bin", bytesPerSecond: 1 << 20)
            try await withP2PCluster(schedulers: 1, seeds: 1, daemons: 1) { cluster in
                let seed = cluster.seeds[0]
                let daemon = cluster.daemons[0]
                // The first MiB lies in piece 0: the child needs one piece, the seed reads all twelve.
                let ranged = try await cluster.get(
                    url: url, on: daemon, output: cluster.outputPath("first-mib"),
                    extraArguments: ["--range", "0-1048575"], timeLimit: .seconds(120))
                #expect(ranged.status == .exited(0), "\(ranged.stderr)\n\(cluster.logs())")
                #expect(
                    FileManager.default.contents(atPath: cluster.outputPath("first-mib")).map(Array.init)
                        == Array(blob[0..<(1 << 20)]))
                let seedRead = try await cluster.downloadBytes(of: seed, source: .origin)
                #expect(
                    seedRead < size, "the seed had read the whole file (\(seedRead) bytes) before the child finished")
                #expect(try await cluster.downloadBytes(of: daemon, source: .origin) == 0)
                #expect(try await cluster.downloadBytes(of: daemon, source: .peer) > 0)
                // The child could only verify those bytes with digests the scheduler pushed while the seed was
                // still going (`PieceDigests`).
                let scheduler = try await cluster.metrics(of: cluster.schedulers[0])
                #expect(
                    (scheduler.value("dragonfly_scheduler_piece_digest_pushes_total") ?? 0) > 0, "\(scheduler.samples)")

                // The whole file through the same daemon: every byte from the seed, none from the origin.
                let whole = try await cluster.get(url: url, on: daemon, output: cluster.outputPath("whole"))
                #expect(whole.status == .exited(0), "\(whole.stderr)\n\(cluster.logs())")
                #expect(Self.sha256(ofFile: cluster.outputPath("whole")) == SHA256.hash(data: blob))
                #expect(try await cluster.downloadBytes(of: daemon, source: .origin) == 0)
                #expect(try origin.totalBytesSent() <= size + size / 50)
            }
        }
    }

    @Test(.timeLimit(.minutes(4)))
    func aCorruptedParentIsRejectedAndNoLongerHandedOut() async throws {
        let size = 32 << 20  // 8 pieces of 4 MiB
        let blob = try Self.randomBytes(size)
        let digest = SHA256.hash(data: blob)
        try await withNginxOrigin { origin in
            try origin.writeFile("blob.bin", contents: blob)
            let url = origin.url(for: "blob.bin")
            try await withP2PCluster(schedulers: 1, seeds: 1, daemons: 3) { cluster in
                let (bad, second, third) = (cluster.daemons[0], cluster.daemons[1], cluster.daemons[2])
                let first = try await cluster.get(url: url, on: bad, output: cluster.outputPath("bad"))
                Self.expectCorrect([(bad, cluster.outputPath("bad"), first)], digest: digest, cluster: cluster)
                // Only the corrupted copy is left in the swarm: the seed crashes.
                try await cluster.kill(cluster.seeds[0])
                // Flip a byte in every piece of the finished task on disk, behind the daemon's back.
                let path = try Self.dataFile(of: bad, taskID: TaskID.make(url: url))
                let handle = try #require(FileHandle(forUpdatingAtPath: path), "no data file at \(path)")
                for piece in 0..<(size / (4 << 20)) {
                    let offset = UInt64(piece * (4 << 20) + 1000 * piece + 7)
                    try handle.seek(toOffset: offset)
                    let byte = try #require(try handle.read(upToCount: 1)).first ?? 0
                    try handle.seek(toOffset: offset)
                    try handle.write(contentsOf: [byte ^ 0xff])
                }
                try handle.synchronize()
                try handle.close()

                let sentBefore = try origin.totalBytesSent()
                let secondRun = try await cluster.get(url: url, on: second, output: cluster.outputPath("second"))
                Self.expectCorrect(
                    [(second, cluster.outputPath("second"), secondRun)], digest: digest, cluster: cluster)
                let scheduler = try await cluster.metrics(of: cluster.schedulers[0])
                #expect((scheduler.value("dragonfly_scheduler_piece_failures_total") ?? 0) > 0, "\(scheduler.samples)")
                // Every piece the bad parent served was rejected, so the second daemon took them from the origin.
                #expect(try origin.totalBytesSent() > sentBefore)
                let servedByBad = try await cluster.uploadBytes(of: bad)

                let thirdRun = try await cluster.get(url: url, on: third, output: cluster.outputPath("third"))
                Self.expectCorrect([(third, cluster.outputPath("third"), thirdRun)], digest: digest, cluster: cluster)
                // The scheduler no longer hands the corrupted parent out: the third daemon never asked it.
                #expect(try await cluster.uploadBytes(of: bad) == servedByBad)
                #expect(try await cluster.downloadBytes(of: third, source: .peer) == size)
            }
        }
    }

    /// A 48 MiB random file on an origin that sends 1 MiB/s per connection (the seed needs about 12 s for it), a
    /// cluster of `schedulers`, one seed and three daemons, and `get` started on every daemon; `crash` runs while
    /// they download, every download must then finish with the right bytes, and `check` runs last.
    static func withSlowTransfer(
        schedulers: Int,
        during crash: (P2PCluster) async throws -> Void,
        afterwards check: (P2PCluster) async throws -> Void = { _ in }
    ) async throws {
        let blob = try Self.randomBytes(48 << 20)
        try await withNginxOrigin { origin in
            try origin.writeFile("slow.bin", contents: blob)
            let url = origin.rateLimitedURL(for: "slow.bin", bytesPerSecond: 1 << 20)
            try await withP2PCluster(schedulers: schedulers, seeds: 1, daemons: 3) { cluster in
                async let downloads = cluster.getConcurrently(url: url, on: cluster.daemons, timeLimit: .seconds(180))
                try await crash(cluster)
                Self.expectCorrect(try await downloads, digest: SHA256.hash(data: blob), cluster: cluster)
                try await check(cluster)
            }
        }
    }

    @Test(.timeLimit(.minutes(4)))
    func killingTheSeedMidTransferStillFinishesEveryDownload() async throws {
        try await Self.withSlowTransfer(schedulers: 1) { cluster in
            let seed = cluster.seeds[0]
            try await poll(every: .milliseconds(100), timeLimit: .seconds(60), description: "seed serving") {
                try await cluster.uploadBytes(of: seed) > 0
            }
            try await cluster.kill(seed)
        }
    }

    @Test(.timeLimit(.minutes(4)))
    func killingTheTasksSchedulerMovesItToTheOtherOne() async throws {
        // The scheduler that owns the task on the hash ring is the one peers registered with.
        func registrations(_ node: ClusterNode, in cluster: P2PCluster) async throws -> Double {
            try await cluster.metrics(of: node).samples(named: "dragonfly_scheduler_peer_registrations_total")
                .reduce(0) { $0 + $1.value }
        }
        var victim: ClusterNode?
        try await Self.withSlowTransfer(schedulers: 2) { cluster in
            try await poll(every: .milliseconds(100), timeLimit: .seconds(60), description: "registrations") {
                for scheduler in cluster.schedulers where try await registrations(scheduler, in: cluster) > 0 {
                    victim = scheduler
                    return true
                }
                return false
            }
            try await poll(every: .milliseconds(100), timeLimit: .seconds(60), description: "piece transfer") {
                try await cluster.uploadBytes(of: cluster.seeds[0]) > 0
            }
            try await cluster.kill(try #require(victim))
        } afterwards: { cluster in
            let survivor = try #require(cluster.schedulers.first { $0.name != victim?.name })
            #expect(try await registrations(survivor, in: cluster) > 0, "no peer moved to \(survivor)")
        }
    }

    @Test(.timeLimit(.minutes(3)))
    func withoutAReachableSchedulerGetReadsTheOriginUnlessBackSourceIsDisabled() async throws {
        let blob = try Self.randomBytes(6 << 20)
        try await withNginxOrigin { origin in
            try origin.writeFile("a.bin", contents: blob)
            try origin.writeFile("b.bin", contents: blob)
            try await withP2PCluster(schedulers: 1, seeds: 0, daemons: 1) { cluster in
                try await cluster.kill(cluster.schedulers[0])
                let daemon = cluster.daemons[0]
                let fallback = try await cluster.get(
                    url: origin.url(for: "a.bin"), on: daemon, output: cluster.outputPath("a"))
                #expect(fallback.status == .exited(0), "\(fallback.stderr)\n\(cluster.logs())")
                #expect(FileManager.default.contents(atPath: cluster.outputPath("a")).map(Array.init) == blob)
                #expect(try await cluster.downloadBytes(of: daemon, source: .origin) == blob.count)

                let refused = try await cluster.get(
                    url: origin.url(for: "b.bin"), on: daemon, output: cluster.outputPath("b"),
                    extraArguments: ["--disable-back-source"], timeLimit: .seconds(120))
                #expect(refused.status == .exited(1), "\(refused.stderr)")
                #expect(refused.stderr.contains("scheduler"), "the message does not say why: \(refused.stderr)")
                #expect(refused.stderr.contains("back-to-source") || refused.stderr.contains("back to source"))
                #expect(!FileManager.default.fileExists(atPath: cluster.outputPath("b")))
                #expect(try origin.accessLog().allSatisfy { !$0.uri.contains("b.bin") || $0.method == "HEAD" })
            }
        }
    }
}
