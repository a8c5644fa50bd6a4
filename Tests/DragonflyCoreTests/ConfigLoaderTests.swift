import DragonflyCore
import Testing

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// The repository's `config/` directory, found from this file's path.
private func configFile(_ name: String) throws -> String {
    let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()
    let data = try Data(contentsOf: repo.appendingPathComponent("config").appendingPathComponent(name))
    return String(decoding: data, as: UTF8.self)
}

private func configurationError(_ body: () throws -> Void) -> DragonflyError? {
    do {
        try body()
        return nil
    } catch let error as DragonflyError {
        return error
    } catch {
        Issue.record("unexpected error \(error)")
        return nil
    }
}

@Suite struct ConfigLoaderTests {
    @Test func shippedFilesAreExactlyTheDefaults() throws {
        let daemon = try configFile("daemon.yaml")
        let cdn = try configFile("cdn.yaml")
        #expect(try ConfigLoader.load(DaemonConfig.self, yaml: daemon) == DaemonConfig())
        #expect(try ConfigLoader.load(DaemonConfig.self, yaml: cdn) == DaemonConfig())
        #expect(
            try ConfigLoader.load(SchedulerConfig.self, yaml: try configFile("scheduler.yaml")) == SchedulerConfig())
        #expect(try ConfigLoader.load(ManagerConfig.self, yaml: try configFile("manager.yaml")) == ManagerConfig())
    }

    @Test func shippedFilesListEveryKey() throws {
        #expect(
            try ConfigLoader.keyPaths(ofYAML: try configFile("daemon.yaml"))
                == ConfigLoader.keyPaths(of: DaemonConfig()))
        #expect(
            try ConfigLoader.keyPaths(ofYAML: try configFile("cdn.yaml")) == ConfigLoader.keyPaths(of: DaemonConfig()))
        #expect(
            try ConfigLoader.keyPaths(ofYAML: try configFile("scheduler.yaml"))
                == ConfigLoader.keyPaths(of: SchedulerConfig())
        )
        #expect(
            try ConfigLoader.keyPaths(ofYAML: try configFile("manager.yaml"))
                == ConfigLoader.keyPaths(of: ManagerConfig()))
    }

    @Test func renderedConfigurationLoadsBackEqual() throws {
        var config = DaemonConfig()
        config.scheduler.addresses = ["10.0.0.1:8002", "10.0.0.2:8002"]
        config.download.rateLimit = .mebibytes(100)
        config.storage.taskTTL = .minutes(90)
        config.host.location = "cn|sh|a"
        config.listen.peer = ListenAddress(host: "127.0.0.1", port: 0)
        let yaml = try ConfigLoader.render(config)
        #expect(try ConfigLoader.load(DaemonConfig.self, yaml: yaml) == config)
        #expect(try ConfigLoader.render(ConfigLoader.load(DaemonConfig.self, yaml: yaml)) == yaml)
    }

    @Test func partialFileOverridesOnlyItsKeys() throws {
        let config = try ConfigLoader.load(SchedulerConfig.self, yaml: "gc:\n  peerTTL: 5m\nseedPeers: [a:1]\n")
        var expected = SchedulerConfig()
        expected.gc.peerTTL = .minutes(5)
        expected.seedPeers = ["a:1"]
        #expect(config == expected)
    }

    @Test func emptyFileAndEmptyValuesMeanDefaults() throws {
        #expect(try ConfigLoader.load(ManagerConfig.self, yaml: "") == ManagerConfig())
        #expect(try ConfigLoader.load(ManagerConfig.self, yaml: "# only a comment\n") == ManagerConfig())
        #expect(try ConfigLoader.load(ManagerConfig.self, yaml: "keepAlive:\n  timeout:\n") == ManagerConfig())
    }

    @Test func unknownKeyIsNamedWithItsPath() {
        let error = configurationError {
            _ = try ConfigLoader.load(SchedulerConfig.self, yaml: "gc:\n  bogus: 1\n", source: "s.yaml")
        }
        #expect(error?.code == .configuration)
        #expect(error?.message.contains("gc.bogus") == true)
        #expect(error?.message.contains("s.yaml") == true)
        let topLevel = configurationError { _ = try ConfigLoader.load(ManagerConfig.self, yaml: "listne: 0.0.0.0:1\n") }
        #expect(topLevel?.message.contains("'listne'") == true)
    }

    @Test(arguments: [
        ("listen: nope\n", "listen"),
        ("gc:\n  interval: 3x\n", "gc.interval"),
        ("scheduling:\n  parentLimit: many\n", "scheduling.parentLimit"),
        ("scheduling:\n  parentLimit: 0\n", "scheduling.parentLimit"),
        ("seedPeers: [ok:1, broken]\n", "seedPeers[1]"),
        ("log:\n  level: loud\n", "log.level"),
        ("gc: 5\n", "gc"),
    ])
    func badValueIsNamedWithItsPath(yaml: String, keyPath: String) {
        let error = configurationError { _ = try ConfigLoader.load(SchedulerConfig.self, yaml: yaml) }
        #expect(error?.code == .configuration)
        #expect(
            error?.message.contains("'\(keyPath)'") == true, "\(error?.message ?? "no error") should name \(keyPath)")
        #expect(error?.code.exitCode == 2)
    }

    @Test func invalidYAMLIsAConfigurationError() {
        let error = configurationError {
            _ = try ConfigLoader.load(DaemonConfig.self, yaml: "a: [\n", source: "bad.yaml")
        }
        #expect(error?.code == .configuration)
        #expect(error?.message.hasPrefix("invalid YAML in bad.yaml") == true)
        let notMapping = configurationError { _ = try ConfigLoader.load(DaemonConfig.self, yaml: "- a\n- b\n") }
        #expect(notMapping?.message.contains("top level must be a mapping") == true)
    }

    @Test func validationNamesTheKey() {
        let error = configurationError {
            _ = try ConfigLoader.load(DaemonConfig.self, yaml: "storage:\n  highWatermark: 50\n  lowWatermark: 70\n")
        }
        #expect(error?.message.contains("storage.lowWatermark") == true)
        let location = configurationError {
            _ = try ConfigLoader.load(DaemonConfig.self, yaml: "host:\n  location: 'a||b'\n")
        }
        #expect(location?.message.contains("host.location") == true)
        let keepAlive = configurationError {
            _ = try ConfigLoader.load(ManagerConfig.self, yaml: "keepAlive:\n  timeout: 1s\n")
        }
        #expect(keepAlive?.message.contains("keepAlive.timeout") == true)
    }
}
