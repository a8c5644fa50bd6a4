#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// The JSON a role writes to `--ready-file` once every listener is bound and it is ready (DESIGN §15).
package struct ReadyFile: Codable, Sendable, Equatable {
    package var role: String
    package var pid: Int
    /// Listener name → `IP:port` as bound.
    package var listeners: [String: String]
    /// The local API socket path (daemon and cdn).
    package var socket: String?

    package init(role: String, pid: Int, listeners: [String: String], socket: String? = nil) {
        self.role = role
        self.pid = pid
        self.listeners = listeners
        self.socket = socket
    }

    /// Writes the file atomically: a temporary sibling, then `rename`, so a reader never sees half of it.
    package func write(to path: String) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let data = try encoder.encode(self)
        try AtomicFile.write(Array(data), to: path)
    }

    /// Reads and parses a ready file.
    package static func read(from path: String) throws -> ReadyFile {
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        return try JSONDecoder().decode(ReadyFile.self, from: data)
    }
}
