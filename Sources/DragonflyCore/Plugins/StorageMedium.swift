package import NIOCore

/// Where a storage medium keeps its bytes and how much it may hold.
package struct StorageMediumContext: Sendable {
    /// The role's data directory (disk media put task files under it).
    package var dataDirectory: String
    /// Byte budget; 0 means the size of the disk holding the data directory (disk) or no cache (memory).
    package var capacity: Int64
    package init(dataDirectory: String, capacity: Int64) {
        self.dataDirectory = dataDirectory
        self.capacity = capacity
    }
}

/// A place task bytes live (DESIGN §7): `disk` (sparse file per task) or `memory` (bounded, for small hot
/// tasks). Registered by name in the ``PluginRegistry``; piece verification and metadata sit above it.
package protocol StorageMedium: Sendable {
    /// Registry name, e.g. `disk`.
    var name: String { get }
    /// Writes `bytes` at `offset` of the task's data.
    func write(taskID: TaskID, offset: Int64, bytes: ByteBuffer) async throws
    /// Reads `length` bytes at `offset` of the task's data.
    func read(taskID: TaskID, offset: Int64, length: Int) async throws -> ByteBuffer
    /// Makes written bytes durable (before metadata that lists them is published).
    func sync(taskID: TaskID) async throws
    /// Removes the task's data.
    func remove(taskID: TaskID) async throws
    /// Bytes this medium holds for all tasks.
    func usedBytes() async throws -> Int64
}

/// Makes a storage medium for a role's data directory.
package typealias StorageMediumFactory = @Sendable (StorageMediumContext) throws -> any StorageMedium
