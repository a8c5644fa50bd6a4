import Crypto
import DragonflyTestSupport
import Foundation
import Testing

/// Real package managers through the daemon's HTTP proxy (DESIGN §8, RECIPES §6): Maven and dnf, each run
/// once through each of two daemons against a real nginx repository. The artifacts (`.jar`, `.rpm`) match
/// the default proxy rules and go P2P: the second daemon gets them from the first, so the origin sends each
/// about once. Assertions are on what the client installed, the daemons' route counters and nginx's log.
@Suite(.serialized)
struct PackageManagerProxyTests {
    /// The SHA-256 of a file, nil when unreadable.
    static func digest(ofFile path: String) -> SHA256.Digest? {
        P2PTests.sha256(ofFile: path)
    }

    /// The lowercase hex of `bytes`.
    static func hex(_ bytes: some Sequence<UInt8>) -> String {
        bytes.map { String(format: "%02x", $0) }.joined()
    }

    /// Waits until nginx has logged `minimum` body bytes for `uri` (it writes an entry once the response is
    /// finished, which can be a moment after the client has the last byte) and returns what it logged.
    static func originBytes(_ origin: NginxOrigin, uri: String, atLeast minimum: Int) async throws -> Int {
        func sent() throws -> Int {
            try origin.accessLog().filter { $0.uri == uri && $0.status < 300 }.reduce(0) { $0 + $1.bytesSent }
        }
        try? await poll(every: .milliseconds(50), timeLimit: .seconds(10), description: "\(uri) in nginx's log") {
            try sent() >= minimum
        }
        return try sent()
    }

    // MARK: Maven

    /// JVM options for the short Java runs here (javac, jar, mvn): the C1 compiler alone and the serial
    /// collector take about 40 % less CPU for a run of a few seconds, which matters on 2 shared cores.
    static let shortRunJVMOptions = ["-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC"]

    /// nginx serves the test's Maven repository under `/maven/` and, for whatever it does not hold, Debian's
    /// `/usr/share/maven-repo` (RECIPES §6): here the plexus-utils that Maven wants for a build extension.
    static let mavenLocations = """
        location /maven/ { try_files $uri @debianmaven; }
                location @debianmaven { root /usr/share/maven-repo; rewrite ^/maven/(.*)$ /$1 break; }
        """

    /// Publishes `com.example:hello:1.0` under `/maven/`: a jar with a compiled class and `payload` as a
    /// resource, its POM (depending on Debian's plexus-utils 3.4.2, so Maven does not ask for the 1.1 it adds
    /// to extensions without one) and `.sha1` files. Returns the jar's bytes.
    static func publishMavenArtifact(payload: [UInt8], to origin: NginxOrigin, scratch: TemporaryDirectory)
        async throws -> [UInt8]
    {
        let source = try scratch.writeFile(
            "hello-src/com/example/Hello.java",
            text: """
                package com.example;

                /** The class of the test artifact com.example:hello:1.0. */
                public final class Hello {
                    public static String greet() { return "hello through dragonfly"; }
                }

                """)
        let classes = try scratch.makeDirectory("hello-classes")
        let javac = try await runTool(
            PackageTools.javac, shortRunJVMOptions.map { "-J" + $0 } + ["-d", classes, source])
        try #require(javac.succeeded, "javac \(javac.status): \(javac.standardError)")
        _ = try scratch.writeFile("hello-classes/com/example/payload.bin", contents: payload)
        let jarPath = scratch.appending("hello-1.0.jar")
        let jar = try await runTool(
            PackageTools.jar, shortRunJVMOptions.map { "-J" + $0 } + ["cf", jarPath, "-C", classes, "."])
        try #require(jar.succeeded, "jar \(jar.status): \(jar.standardError)")
        let jarBytes = try #require(FileManager.default.contents(atPath: jarPath)).map { $0 }
        let pom = Array(
            """
            <?xml version="1.0" encoding="UTF-8"?>
            <project xmlns="http://maven.apache.org/POM/4.0.0">
              <modelVersion>4.0.0</modelVersion>
              <groupId>com.example</groupId>
              <artifactId>hello</artifactId>
              <version>1.0</version>
              <packaging>jar</packaging>
              <dependencies>
                <dependency>
                  <groupId>org.codehaus.plexus</groupId>
                  <artifactId>plexus-utils</artifactId>
                  <version>3.4.2</version>
                </dependency>
              </dependencies>
            </project>

            """.utf8)
        let directory = "maven/com/example/hello/1.0/"
        for (name, bytes) in [("hello-1.0.jar", jarBytes), ("hello-1.0.pom", pom)] {
            try origin.writeFile(directory + name, contents: bytes)
            try origin.writeFile(directory + name + ".sha1", contents: Array(hex(Insecure.SHA1.hash(data: bytes)).utf8))
        }
        return jarBytes
    }

    /// A `settings.xml` that sends every request through `proxy` (`IP:port`) to the mirror `repository`, with
    /// its own local repository.
    static func mavenSettings(localRepository: String, proxy: String, repository: String) throws -> String {
        let (host, port) = try hostAndPort(proxy)
        return """
            <settings xmlns="http://maven.apache.org/SETTINGS/1.0.0">
              <localRepository>\(localRepository)</localRepository>
              <proxies>
                <proxy>
                  <id>dragonfly</id><active>true</active><protocol>http</protocol>
                  <host>\(host)</host><port>\(port)</port><nonProxyHosts>none.invalid</nonProxyHosts>
                </proxy>
              </proxies>
              <mirrors>
                <mirror><id>test</id><mirrorOf>*</mirrorOf><url>\(repository)</url></mirror>
              </mirrors>
            </settings>

            """
    }

    /// A project whose build extension is `com.example:hello:1.0`: `mvn validate` resolves the artifact and
    /// loads it, with no plugin.
    static let consumerPOM = """
        <?xml version="1.0" encoding="UTF-8"?>
        <project xmlns="http://maven.apache.org/POM/4.0.0">
          <modelVersion>4.0.0</modelVersion>
          <groupId>com.example</groupId>
          <artifactId>consumer</artifactId>
          <version>1.0</version>
          <packaging>pom</packaging>
          <build>
            <extensions>
              <extension><groupId>com.example</groupId><artifactId>hello</artifactId><version>1.0</version></extension>
            </extensions>
          </build>
        </project>

        """

    /// `IP:port` split.
    static func hostAndPort(_ address: String) throws -> (String, Int) {
        let colon = try #require(address.lastIndex(of: ":"))
        return (String(address[..<colon]), try #require(Int(address[address.index(after: colon)...])))
    }

    @Test(
        .timeLimit(.minutes(4)),
        .enabled("needs mvn and a JDK (scripts/install-deps)") {
            PackageTools.unavailableReason(PackageTools.maven) == nil
        }
    )
    func mavenResolvesAnArtifactThroughTwoDaemonsAndTheOriginSendsTheJarOnce() async throws {
        let payload = try P2PTests.randomBytes(4 << 20)
        try await withNginxOrigin(serverConfiguration: Self.mavenLocations) { origin in
            let scratch = try TemporaryDirectory(prefix: "dragonfly-test-maven-")
            defer { scratch.remove() }
            let jar = try await Self.publishMavenArtifact(payload: payload, to: origin, scratch: scratch)
            let jarDigest = SHA256.hash(data: jar)
            try await withP2PCluster(
                schedulers: 1, seeds: 0, daemons: 2, daemonConfigYAML: ProxyTests.daemonYAML()
            ) { cluster in
                for daemon in cluster.daemons {
                    let proxy = try ProxyTests.proxy(of: daemon)
                    let local = cluster.directory.appending("\(daemon.name)-m2")
                    let settings = try cluster.directory.writeFile(
                        "\(daemon.name)-settings.xml",
                        text: try Self.mavenSettings(
                            localRepository: local, proxy: proxy, repository: origin.url(for: "maven")))
                    let project = try cluster.directory.writeFile(
                        "\(daemon.name)-project/pom.xml", text: Self.consumerPOM)
                    let build = try await runTool(
                        PackageTools.mvn, ["-B", "-s", settings, "-f", project, "validate"],
                        environment: ["MAVEN_OPTS": Self.shortRunJVMOptions.joined(separator: " ")],
                        timeLimit: .seconds(180))
                    #expect(
                        build.succeeded && build.standardOutput.contains("BUILD SUCCESS"),
                        "\(daemon): mvn \(build.status)\n\(build.standardOutput.suffix(3000))\n\(cluster.logs())")
                    let resolved = local + "/com/example/hello/1.0/hello-1.0.jar"
                    #expect(Self.digest(ofFile: resolved) == jarDigest, "\(daemon): the resolved jar differs")
                    #expect(try await ProxyTests.proxyRequests(cluster, daemon, route: "p2p") > 0)
                    // The POM went direct (not an artifact suffix).
                    #expect(try await ProxyTests.proxyRequests(cluster, daemon, route: "direct") > 0)
                }
                // The jar left nginx about once: the second daemon got it from the first.
                let uri = "/maven/com/example/hello/1.0/hello-1.0.jar"
                let sent = try await Self.originBytes(origin, uri: uri, atLeast: jar.count)
                #expect(sent >= jar.count, "nginx logged \(sent) bytes of the \(jar.count)-byte jar")
                #expect(
                    Double(sent) <= 1.02 * Double(jar.count), "nginx sent \(sent) bytes of the \(jar.count)-byte jar")
                #expect(try await cluster.downloadBytes(of: cluster.daemons[1], source: .origin) == 0)
                #expect(try await cluster.downloadBytes(of: cluster.daemons[1], source: .peer) >= jar.count)
            }
        }
    }

    // MARK: dnf

    /// Builds `p2phello-1.0-1.noarch.rpm` (installs `payload` as `/usr/share/p2phello/blob.bin`) with rpmbuild,
    /// puts it under `/yum/` and makes the repository metadata with createrepo_c. Returns the rpm's bytes.
    static func publishRPM(payload: [UInt8], to origin: NginxOrigin, scratch: TemporaryDirectory) async throws
        -> [UInt8]
    {
        let top = try scratch.makeDirectory("rpmbuild")
        _ = try scratch.writeFile("rpmbuild/SOURCES/blob.bin", contents: payload)
        let spec = try scratch.writeFile(
            "rpmbuild/SPECS/p2phello.spec",
            text: """
                Name: p2phello
                Version: 1.0
                Release: 1
                Summary: dragonfly proxy test package
                License: MIT
                BuildArch: noarch
                Source0: blob.bin

                %description
                Random bytes, installed through dragonfly's proxy.

                %install
                mkdir -p %{buildroot}/usr/share/p2phello
                install -m 0644 %{SOURCE0} %{buildroot}/usr/share/p2phello/blob.bin

                %files
                /usr/share/p2phello

                """)
        // gzip level 1: the payload is random, compressing it harder only costs time.
        let build = try await runTool(
            PackageTools.rpmbuild,
            ["--define", "_topdir \(top)", "--define", "_binary_payload w1.gzdio", "-bb", spec])
        try #require(build.succeeded, "rpmbuild \(build.status): \(build.standardError.suffix(2000))")
        let rpmPath = top + "/RPMS/noarch/p2phello-1.0-1.noarch.rpm"
        let rpm = try #require(FileManager.default.contents(atPath: rpmPath)).map { $0 }
        try origin.writeFile("yum/p2phello-1.0-1.noarch.rpm", contents: rpm)
        let createrepo = try await runTool(PackageTools.createrepo, [origin.root + "/yum"])
        try #require(createrepo.succeeded, "createrepo_c \(createrepo.status): \(createrepo.standardError)")
        return rpm
    }

    @Test(
        .timeLimit(.minutes(4)),
        .enabled("needs dnf, rpmbuild and createrepo_c (scripts/install-deps)") {
            PackageTools.unavailableReason(PackageTools.yum) == nil
        }
    )
    func dnfInstallsAnRPMThroughTwoDaemonsAndTheOriginSendsItOnce() async throws {
        let payload = try P2PTests.randomBytes(6 << 20)
        let payloadDigest = SHA256.hash(data: payload)
        try await withNginxOrigin { origin in
            let scratch = try TemporaryDirectory(prefix: "dragonfly-test-yum-")
            defer { scratch.remove() }
            let rpm = try await Self.publishRPM(payload: payload, to: origin, scratch: scratch)
            try await withP2PCluster(
                schedulers: 1, seeds: 0, daemons: 2, daemonConfigYAML: ProxyTests.daemonYAML()
            ) { cluster in
                for daemon in cluster.daemons {
                    let proxy = try ProxyTests.proxy(of: daemon)
                    let base = "\(daemon.name)-yum"
                    let repos = try cluster.directory.makeDirectory("\(base)/repos.d")
                    let root = try cluster.directory.makeDirectory("\(base)/root")
                    _ = try cluster.directory.writeFile(
                        "\(base)/repos.d/p2p.repo",
                        text: """
                            [p2p]
                            name=dragonfly proxy test repository
                            baseurl=\(origin.url(for: "yum/"))
                            proxy=http://\(proxy)
                            enabled=1
                            gpgcheck=0

                            """)
                    let conf = try cluster.directory.writeFile(
                        "\(base)/dnf.conf",
                        text: """
                            [main]
                            gpgcheck=0
                            plugins=0
                            reposdir=\(repos)
                            install_weak_deps=0
                            keepcache=0

                            """)
                    let dnf = ["-c", conf, "--installroot=\(root)", "--releasever=1", "-y"]
                    for step in [["makecache"], ["install", "p2phello"]] {
                        let run = try await runTool(PackageTools.dnf, dnf + step, timeLimit: .seconds(120))
                        let output = run.standardOutput + run.standardError
                        #expect(
                            run.succeeded,
                            "\(daemon): dnf \(step.joined(separator: " ")) \(run.status)\n\(output)\n\(cluster.logs())")
                    }
                    #expect(
                        Self.digest(ofFile: root + "/usr/share/p2phello/blob.bin") == payloadDigest,
                        "\(daemon): the installed file differs")
                    #expect(try await ProxyTests.proxyRequests(cluster, daemon, route: "p2p") >= 1)
                    // The metadata went direct.
                    #expect(try await ProxyTests.proxyRequests(cluster, daemon, route: "direct") >= 3)
                }
                let sent = try await Self.originBytes(origin, uri: "/yum/p2phello-1.0-1.noarch.rpm", atLeast: rpm.count)
                #expect(sent >= rpm.count, "nginx logged \(sent) bytes of the \(rpm.count)-byte rpm")
                #expect(
                    Double(sent) <= 1.02 * Double(rpm.count), "nginx sent \(sent) bytes of the \(rpm.count)-byte rpm")
                #expect(try await cluster.downloadBytes(of: cluster.daemons[1], source: .origin) == 0)
                #expect(try await cluster.downloadBytes(of: cluster.daemons[1], source: .peer) >= rpm.count)
            }
        }
    }
}
