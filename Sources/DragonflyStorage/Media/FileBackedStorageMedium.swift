package import DragonflyCore

/// A ``StorageMedium`` that keeps each task's bytes in one file, so the store can hand out a descriptor
/// (for `sendfile`), copy with `copy_file_range`, hard-link exports and persist metadata beside it.
///
/// The ``PieceStore`` persists metadata only for media conforming to this protocol: the bytes of any other
/// medium (such as ``MemoryMedium``) do not survive a restart, so neither may a list of them.
package protocol FileBackedStorageMedium: StorageMedium {
    /// The task's data file (it may not exist yet).
    func dataFilePath(taskID: TaskID) -> String

    /// Runs `body` with an open read-write descriptor of the task's data file, kept open until `body`
    /// returns. Throws `notFound` when the file does not exist. `body` must not close the descriptor.
    func withDataFile<Result>(taskID: TaskID, _ body: (CInt) async throws -> Result) async throws -> Result
}
