import DragonflyCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Where a task's files live: `<data>/tasks/<id[0..3]>/<id>/{data,meta}` (DESIGN §7).
struct TaskPaths: Sendable {
    /// The data directory, without a trailing slash.
    let root: String

    init(root: String) {
        var root = root
        while root.count > 1 && root.hasSuffix("/") { root.removeLast() }
        self.root = root.isEmpty ? "." : root
    }

    /// Mode of every directory the store creates: only the role's user may list or enter them.
    static let directoryMode: mode_t = 0o700
    /// Mode of every data and metadata file: only the role's user may read them (private tasks live here).
    static let fileMode: mode_t = 0o600

    var tasksDirectory: String { root + "/tasks" }

    func shardDirectory(_ id: TaskID) -> String { tasksDirectory + "/" + id.shard }

    func taskDirectory(_ id: TaskID) -> String { shardDirectory(id) + "/" + id.rawValue }

    func dataFile(_ id: TaskID) -> String { taskDirectory(id) + "/data" }

    func metadataFile(_ id: TaskID) -> String { taskDirectory(id) + "/meta" }

    /// Whether `name` is a temporary file left by an interrupted metadata write (`AtomicFile`'s naming).
    static func isTemporaryMetadata(_ name: String) -> Bool {
        name.hasPrefix(".meta.") && name.hasSuffix(".tmp")
    }
}
