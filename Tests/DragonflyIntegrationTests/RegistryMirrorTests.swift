import Crypto
import DragonflyCore
import DragonflyTestSupport
import Foundation
import Testing

/// The daemon as a registry mirror (DESIGN §8) in front of a real docker-registry: skopeo pulls through a
/// `registries.conf` mirror pointing at the daemon's proxy, and requests shaped as containerd sends them.
@Suite(
    .serialized,
    .enabled("needs docker-registry, skopeo and umoci (scripts/install-deps)") {
        dockerRegistryUnavailableReason() == nil
    }
)
struct RegistryMirrorTests {
    /// The SHA-256 of a file as `sha256:<hex>`, nil when unreadable.
    static func digest(ofFile path: String) -> String? {
        guard let digest = P2PTests.sha256(ofFile: path) else { return nil }
        return "sha256:" + digest.map { String(format: "%02x", $0) }.joined()
    }

    /// A `registries.conf` whose registry `primary` (nothing listens there) is mirrored by `mirror`.
    static func registriesConf(primary: String, mirror: String) -> String {
        """
        [[registry]]
        prefix = "\(primary)"
        location = "\(primary)"
        insecure = true
        [[registry.mirror]]
        location = "\(mirror)"
        insecure = true
        """
    }

    @Test(.timeLimit(.minutes(5)))
    func skopeoPullsThroughTwoDaemonsAndTheRegistryServesEachBlobOnce() async throws {
        let layer = try P2PTests.randomBytes(16 << 20)
        try await withDockerRegistry { registry in
            let blobs = try await registry.pushImage(repository: "test/p2p", tag: "v1", layerFile: layer)
            #expect(blobs.count >= 2, "a manifest names a config and a layer")
            let yaml = ProxyTests.daemonYAML(mirror: registry.baseURL)
            try await withP2PCluster(schedulers: 1, seeds: 0, daemons: 2, daemonConfigYAML: yaml) { cluster in
                let primary = "127.0.0.1:\(try freeLoopbackPort())"
                for daemon in cluster.daemons {
                    let proxy = try ProxyTests.proxy(of: daemon)
                    let conf = try cluster.directory.writeFile(
                        "\(daemon.name)-registries.conf", text: Self.registriesConf(primary: primary, mirror: proxy))
                    let output = cluster.directory.appending("\(daemon.name)-image")
                    let copy = try await runOCITool(
                        skopeoPath,
                        [
                            "--registries-conf", conf, "copy", "--src-tls-verify=false",
                            "docker://\(primary)/test/p2p:v1", "dir:\(output)",
                        ])
                    #expect(
                        copy.succeeded, "\(daemon): skopeo \(copy.status): \(copy.standardError)\n\(cluster.logs())")
                    // dir: names each blob by its digest's hex: byte-identical means the digest of the file.
                    let pulled = blobs.filter {
                        FileManager.default.fileExists(atPath: output + "/" + $0.dropFirst("sha256:".count))
                    }
                    #expect(pulled.count >= 2, "\(daemon): pulled \(pulled) of \(blobs)")
                    for blob in pulled {
                        #expect(
                            Self.digest(ofFile: output + "/" + blob.dropFirst("sha256:".count)) == blob,
                            "\(daemon): \(blob) differs")
                    }
                    #expect(try await ProxyTests.proxyRequests(cluster, daemon, route: "p2p") >= 2)
                }
                // Every blob left the registry once (the second daemon got it from the first).
                let requests = registry.requests()
                var checked = 0
                let firstOutput = cluster.directory.appending("\(cluster.daemons[0].name)-image")
                for blob in blobs {
                    let file = firstOutput + "/" + blob.dropFirst("sha256:".count)
                    guard let size = (try? FileManager.default.attributesOfItem(atPath: file))?[.size] as? Int else {
                        continue
                    }
                    let gets = requests.filter {
                        $0.method == "GET" && $0.uri.hasPrefix("/v2/test/p2p/blobs/\(blob)") && $0.status < 300
                    }
                    let written = gets.reduce(0) { $0 + $1.bytesWritten }
                    #expect(written >= size, "\(blob): the registry wrote only \(written) of \(size) bytes")
                    checked += 1
                    #expect(
                        written <= size + size / 50 + 1024, "\(blob): the registry wrote \(written) of \(size) bytes")
                }
                #expect(checked >= 2, "checked \(checked) blobs in the registry log")
                #expect(try await cluster.downloadBytes(of: cluster.daemons[1], source: .origin) == 0)
            }
        }
    }

    @Test(.timeLimit(.minutes(4)))
    func containerdShapedRequestsMapToOneTaskAndMetadataPassesThrough() async throws {
        let layer = try P2PTests.randomBytes(6 << 20)
        try await withDockerRegistry { registry in
            try await registry.pushImage(repository: "test/ns", tag: "v1", layerFile: layer)
            // The default upstream is elsewhere: only ns or X-Dragonfly-Registry can reach the registry.
            let elsewhere = "http://127.0.0.1:\(try freeLoopbackPort())"
            let yaml = ProxyTests.daemonYAML(
                mirror: "\(elsewhere)\n    insecureRegistries: ['\(registry.authority)']\n"
                    + "    allowedRegistries: ['\(registry.authority)']")
            try await withP2PCluster(schedulers: 1, seeds: 0, daemons: 1, daemonConfigYAML: yaml) { cluster in
                let proxy = "http://" + (try ProxyTests.proxy(of: cluster.daemons[0]))
                do {
                    let ns = "ns=\(registry.authority)"
                    // The ping and the manifest go direct; HEAD and Accept reach the registry.
                    let ping = try await ProxyTests.send(proxy + "/v2/?\(ns)", via: nil)
                    #expect(ping.status == 200)
                    #expect(ping.header("Docker-Distribution-Api-Version") == "registry/2.0")
                    let accept = "application/vnd.oci.image.manifest.v1+json"
                    let head = try await ProxyTests.send(
                        proxy + "/v2/test/ns/manifests/v1?\(ns)", via: nil, method: "HEAD",
                        headers: [("Accept", accept)])
                    #expect(head.status == 200)
                    #expect(head.header("Content-Type") == accept)
                    let manifestDigest = try #require(head.header("Docker-Content-Digest"))
                    let manifest = try await ProxyTests.send(
                        proxy + "/v2/test/ns/manifests/v1?\(ns)", via: nil, headers: [("Accept", accept)])
                    #expect(manifest.status == 200)
                    #expect(
                        "sha256:" + SHA256.hash(data: manifest.body).map { String(format: "%02x", $0) }.joined()
                            == manifestDigest)
                    #expect(manifest.header("X-Dragonfly-Task-ID") == nil)
                    // The layer: the largest blob the manifest names.
                    let json = try #require(
                        try JSONSerialization.jsonObject(with: Data(manifest.body)) as? [String: Any])
                    let layers = try #require(json["layers"] as? [[String: Any]])
                    let layerDigest = try #require(layers.first?["digest"] as? String)
                    let path = "/v2/test/ns/blobs/\(layerDigest)"
                    let task = TaskID.make(url: registry.baseURL + path).rawValue

                    let viaNs = try await ProxyTests.send(proxy + path + "?\(ns)", via: nil)
                    #expect(viaNs.status == 200, "\(cluster.logs())")
                    #expect(viaNs.header("X-Dragonfly-Task-ID") == task)
                    #expect(viaNs.header("Docker-Content-Digest") == layerDigest)
                    #expect(
                        "sha256:" + SHA256.hash(data: viaNs.body).map { String(format: "%02x", $0) }.joined()
                            == layerDigest)
                    let viaHeader = try await ProxyTests.send(
                        proxy + path, via: nil, headers: [("X-Dragonfly-Registry", registry.baseURL)])
                    #expect(viaHeader.status == 200)
                    #expect(viaHeader.header("X-Dragonfly-Task-ID") == task)
                    #expect(viaHeader.body == viaNs.body)
                    let ranged = try await ProxyTests.send(
                        proxy + path + "?\(ns)", via: nil, headers: [("Range", "bytes=100-4195")])
                    #expect(ranged.status == 206)
                    #expect(ranged.header("Content-Range") == "bytes 100-4195/\(viaNs.body.count)")
                    #expect(ranged.body == Array(viaNs.body[100...4195]))

                    // An unknown blob: the registry's 404 and its headers come back.
                    let unknown = "/v2/test/ns/blobs/sha256:" + String(repeating: "0", count: 64)
                    let missing = try await ProxyTests.send(proxy + unknown + "?\(ns)", via: nil)
                    #expect(missing.status == 404)
                    #expect(missing.header("Docker-Distribution-Api-Version") == "registry/2.0")
                    // A HEAD of a blob goes direct and keeps the digest header.
                    let blobHead = try await ProxyTests.send(proxy + path + "?\(ns)", via: nil, method: "HEAD")
                    #expect(blobHead.status == 200)
                    #expect(blobHead.header("Docker-Content-Digest") == layerDigest)
                }
                let gets = registry.requests().filter { $0.method == "GET" && $0.uri.contains("/blobs/sha256:") }
                    .filter { $0.status < 300 }
                let written = gets.reduce(0) { $0 + $1.bytesWritten }
                #expect(written >= 6 << 20, "the registry log shows \(written) blob bytes")
                #expect(written <= (6 << 20) + (1 << 20), "the registry wrote \(written) blob bytes for one layer")
            }
        }
    }
}
