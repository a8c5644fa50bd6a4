import Foundation
import Testing

/// DESIGN §3: role modules never depend on each other; they speak through DragonflyProto.
@Suite struct PackageStructureTests {
    static let roles: Set<String> = ["DragonflyScheduler", "DragonflyDaemon", "DragonflyManager"]
    static let foundation: Set<String> = [
        "DragonflyCore", "DragonflyProto", "DragonflyRPC", "DragonflyStorage", "DragonflySource", "DragonflyTelemetry",
    ]

    /// Target name → its dependencies on other targets of this package, from `swift package dump-package`.
    static func targetDependencies() throws -> [String: Set<String>] {
        let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        // A scratch path of its own: `swift test` holds the lock of .build while this runs.
        let scratch = NSTemporaryDirectory() + "dragonfly-dump-package-\(ProcessInfo.processInfo.processIdentifier)"
        process.arguments = [
            "swift", "package", "--package-path", repo.path, "--scratch-path", scratch, "dump-package",
        ]
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = FileHandle.nullDevice
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        #expect(process.terminationStatus == 0)
        let json = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        let targets = try #require(json["targets"] as? [[String: Any]])
        var out: [String: Set<String>] = [:]
        for target in targets {
            let name = try #require(target["name"] as? String)
            var deps = Set<String>()
            for dependency in target["dependencies"] as? [[String: Any]] ?? [] {
                for key in ["byName", "target"] {
                    if let entry = dependency[key] as? [Any], let first = entry.first as? String { deps.insert(first) }
                }
            }
            out[name] = deps
        }
        return out
    }

    @Test func roleTargetsNeverDependOnEachOther() throws {
        let dependencies = try Self.targetDependencies()
        #expect(Self.roles.isSubset(of: Set(dependencies.keys)))
        for role in Self.roles {
            let deps = try #require(dependencies[role])
            #expect(deps.isDisjoint(with: Self.roles), "\(role) depends on \(deps.intersection(Self.roles))")
        }
        // Foundation modules depend on no role, and Core depends on no other module of ours.
        for module in Self.foundation {
            let deps = try #require(dependencies[module])
            #expect(deps.isDisjoint(with: Self.roles.union(["DragonflyCLI", "DragonflyClient"])), "\(module): \(deps)")
        }
        let core = try #require(dependencies["DragonflyCore"])
        #expect(core.isDisjoint(with: Self.foundation.union(Self.roles)))
    }
}
