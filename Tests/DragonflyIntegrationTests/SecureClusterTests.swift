import DragonflyCore
import DragonflyProto
import DragonflyRPC
import DragonflyTestSupport
import Foundation
import GRPCCore
import Logging
import NIOHTTP1
import Testing

/// The hardened configuration costs no function (issue "Security, part 1", acceptance): a manager, scheduler and
/// seed peer sharing a cluster secret, real daemons and a real nginx. P2P of a private (credentialed) task works
/// between daemons through the transfer grant while a stranger is refused the same pieces, and a preheat job
/// goes manager → scheduler → seed peer with the secret on every hop. A stranger can make no host read a local
/// file or fetch for it.
@Suite(.serialized, .timeLimit(.minutes(5)))
struct SecureClusterTests {
    static let secret = "cluster-secret-for-tests-0123456789"

    /// A manager and a P2P cluster whose manager, scheduler and seeds share ``secret``; daemons have none.
    func withSecureCluster(
        seeds: Int,
        daemons: Int,
        _ body: (ManagerAPIClient, String, P2PCluster) async throws -> Void
    ) async throws {
        try await PreheatJobTests().withManagedCluster(
            seeds: seeds, daemons: daemons, clusterSecret: Self.secret, body)
    }

    @Test func aPrivateTaskGoesPeerToPeerWithItsGrantAndToNobodyElse() async throws {
        let size = 12 << 20
        let blob = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 2_654_435_761 >> 9) }
        try await withNginxOrigin { origin in
            try origin.writeFile("private.bin", contents: blob)
            let url = origin.url(for: "private.bin")
            try await withSecureCluster(seeds: 0, daemons: 2) { _, _, cluster in
                let first = cluster.daemons[0]
                let second = cluster.daemons[1]
                let credentials = ["-H", "Authorization: Bearer reader-token"]
                let one = try await cluster.get(
                    url: url, on: first, output: cluster.outputPath("one"), extraArguments: credentials)
                #expect(one.exitCode == 0, "\(one.stderr)\n\(cluster.logs())")
                let two = try await cluster.get(
                    url: url, on: second, output: cluster.outputPath("two"), extraArguments: credentials)
                #expect(two.exitCode == 0, "\(two.stderr)\n\(cluster.logs())")
                #expect(FileManager.default.contents(atPath: cluster.outputPath("two")).map(Array.init) == blob)
                // The second daemon got the private task from the first: the grant opened its pieces.
                #expect(try await cluster.downloadBytes(of: second, source: .peer) == size, "\(cluster.logs())")

                // A stranger who computes the task ID from the URL is refused the same piece.
                let id = TaskID.make(url: url)
                let piece = try #require(first.address(of: "piece"))
                let stranger = try await curlRequest("http://\(piece)/pieces/\(id)/0")
                #expect(stranger.status == 403, "\(String(decoding: stranger.body, as: UTF8.self))")
                let guessed = try await curlRequest(
                    "http://\(piece)/pieces/\(id)/0", headers: [("X-Dragonfly-Transfer-Grant", "guessed")])
                #expect(guessed.status == 403)
            }
        }
    }

    /// Finding 1 against real processes: before, a stranger's `Peer.DownloadTask` of `file:///etc/shadow` was read
    /// into a cdn's cache and served on `:4005`, and any URL made the cdn fetch it (a relay). Finding 10: what the
    /// cache holds is readable by the role's user only.
    @Test func noStrangerMakesAHostReadALocalFileOrFetchForIt() async throws {
        let blob = [UInt8](repeating: 0x5A, count: 1 << 20)
        try await withNginxOrigin { origin in
            try origin.writeFile("fetch.bin", contents: blob)
            let url = origin.url(for: "fetch.bin")
            try await withSecureCluster(seeds: 1, daemons: 1) { _, _, cluster in
                let seed = cluster.seeds[0]
                let daemon = cluster.daemons[0]
                func download(_ target: ClusterNode, _ url: String, secret: String?) async throws -> RPCError.Code? {
                    var options = CallOptions.defaults
                    options.timeout = .seconds(30)
                    var metadata = Metadata()
                    if let secret { metadata.addString(secret, forKey: "x-dragonfly-cluster-secret") }
                    var request = Dragonfly_V1_DownloadTaskRequest()
                    request.download.url = url
                    do {
                        try await withRPCClient(target: target.grpcAddress, logger: Logger(label: "test")) { client in
                            try await Dragonfly_V1_Peer.Client(wrapping: client).downloadTask(
                                request, metadata: metadata, options: options
                            ) { response in for try await _ in response.messages {} }
                        }
                        return nil
                    } catch let error as RPCError {
                        return error.code
                    }
                }
                // The seed: nobody without the cluster secret may make it fetch anything …
                #expect(try await download(seed, "file:///etc/shadow", secret: nil) == .permissionDenied)
                #expect(try await download(seed, url, secret: nil) == .permissionDenied)
                // … and even the secret's holders cannot make it read a local path.
                #expect(try await download(seed, "file:///etc/shadow", secret: Self.secret) == .permissionDenied)
                // A daemon without a secret (a lab host) still never reads a local path for the network.
                #expect(try await download(daemon, "file:///etc/shadow", secret: nil) == .permissionDenied)
                #expect(try await download(daemon, "file:///etc/passwd", secret: nil) == .permissionDenied)
                #expect(try origin.accessLog().isEmpty, "no fetch reached the origin")

                // A normal download, then the cache's files: directories 0700, data and metadata 0600.
                let get = try await cluster.get(url: url, on: daemon, output: cluster.outputPath("fetch"))
                #expect(get.exitCode == 0, "\(get.stderr)")
                let tasks = daemon.directory + "/data/tasks"
                let entries = try FileManager.default.subpathsOfDirectory(atPath: tasks)
                #expect(!entries.isEmpty)
                for entry in entries {
                    let attributes = try FileManager.default.attributesOfItem(atPath: tasks + "/" + entry)
                    let mode = (attributes[.posixPermissions] as? Int ?? 0) & 0o777
                    let isDirectory = attributes[.type] as? FileAttributeType == .typeDirectory
                    #expect(mode == (isDirectory ? 0o700 : 0o600), "\(entry) has mode \(String(mode, radix: 8))")
                }
            }
        }
    }

    @Test func aPreheatJobCarriesTheSecretFromManagerToSeed() async throws {
        let size = 4 << 20
        let blob = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
        try await withNginxOrigin { origin in
            try origin.writeFile("preheat.bin", contents: blob)
            let url = origin.url(for: "preheat.bin")
            try await withSecureCluster(seeds: 1, daemons: 1) { api, session, cluster in
                let token = try await api.createToken(session, scopes: ["job"], expiresIn: 3600)
                let created = try await api.call(
                    .POST, "/oapi/v1/jobs", token: token,
                    json: #"{"type":"preheat","args":{"type":"file","url":"\#(url)","scope":"single_seed_peer"}}"#)
                #expect(created.status == 200, "\(created.text)")
                let id = try #require(created.json["id"].int)
                var job = ManagerAPIAnswer()
                try await poll(every: .milliseconds(250), timeLimit: .seconds(120), description: "job \(id) ended") {
                    job = try await api.call(.GET, "/oapi/v1/jobs/\(id)", token: token)
                    return ["SUCCESS", "FAILURE"].contains(job.json["state"].string ?? "")
                }
                #expect(job.json["state"].string == "SUCCESS", "\(job.text)\n\(cluster.logs())")
                // The daemon then gets the file from the seed, not from nginx.
                let get = try await cluster.get(url: url, on: cluster.daemons[0], output: cluster.outputPath("p"))
                #expect(get.exitCode == 0, "\(get.stderr)")
                #expect(try await cluster.downloadBytes(of: cluster.daemons[0], source: .origin) == 0)
            }
        }
    }
}
