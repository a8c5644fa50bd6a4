#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// An exclusive `flock` on `<data dir>/lock` held for the life of a process (DESIGN §2).
///
/// The file holds the owner's PID so a second process can name it: `data dir /x is locked by process 123`.
/// The lock is released by ``release()`` or when the process exits (the kernel drops `flock`s with the fd).
package final class DataDirectoryLock: Sendable {
    /// The locked directory.
    package let directory: String
    private let fd: Int32

    /// Creates `directory` if needed (mode 0700: a role's data is its own) and takes the lock, or throws
    /// `failedPrecondition` naming the holder.
    package init(directory: String) throws(DragonflyError) {
        self.directory = directory
        try Self.makeDirectories(directory, mode: 0o700)
        let path = directory + "/lock"
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            throw AtomicFile.posixError("cannot open lock file \(path)")
        }
        if flock(fd, LOCK_EX | LOCK_NB) != 0 {
            let holder = Self.readPID(fd: fd)
            close(fd)
            let who = holder.map { "process \($0)" } ?? "another process"
            throw DragonflyError(code: .failedPrecondition, message: "data dir \(directory) is locked by \(who)")
        }
        let text = Array("\(getpid())\n".utf8)
        _ = ftruncate(fd, 0)
        _ = text.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
        self.fd = fd
    }

    /// Releases the lock now (otherwise at exit).
    package func release() {
        flock(fd, LOCK_UN)
    }

    deinit {
        close(fd)
    }

    private static func readPID(fd: Int32) -> Int? {
        var buffer = [UInt8](repeating: 0, count: 32)
        let n = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, 0) }
        guard n > 0 else { return nil }
        let text = String(decoding: buffer[0..<n], as: UTF8.self).trimmingSpaces().split(separator: "\n").first
        return text.flatMap { Int($0) }
    }

    /// `mkdir -p`: missing directories are created with `mode` (0755 unless said otherwise; stores pass 0700).
    package static func makeDirectories(_ path: String, mode: UInt32 = 0o755) throws(DragonflyError) {
        var current = path.hasPrefix("/") ? "" : "."
        for component in path.split(separator: "/") {
            current += "/" + component
            if mkdir(current, mode_t(mode)) != 0 && errno != EEXIST {
                throw AtomicFile.posixError("cannot create directory \(current)")
            }
        }
    }
}
