#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Whole-file writes that readers see either entirely or not at all.
package enum AtomicFile {
    /// Writes `bytes` to a temporary file beside `path`, fsyncs it, and renames it over `path`.
    package static func write(_ bytes: some Collection<UInt8>, to path: String, mode: UInt32 = 0o644)
        throws(DragonflyError)
    {
        let slash = path.lastIndex(of: "/")
        let directory = slash.map { String(path[..<$0]) } ?? "."
        let leaf = slash.map { String(path[path.index(after: $0)...]) } ?? path
        let temporary = (directory.isEmpty ? "" : directory) + "/.\(leaf).\(getpid()).tmp"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode_t(mode))
        guard fd >= 0 else { throw posixError("cannot create \(temporary)") }
        let contiguous = Array(bytes)
        var failure: DragonflyError?
        contiguous.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count, let base = raw.baseAddress {
                let n = Glibc.write(fd, base + offset, raw.count - offset)
                if n < 0 {
                    if errno == EINTR { continue }
                    failure = posixError("cannot write \(temporary)")
                    return
                }
                offset += n
            }
        }
        if failure == nil, fsync(fd) != 0 { failure = posixError("cannot sync \(temporary)") }
        close(fd)
        if failure == nil, rename(temporary, path) != 0 {
            failure = posixError("cannot rename \(temporary) to \(path)")
        }
        if let failure {
            unlink(temporary)
            throw failure
        }
    }

    /// A ``DragonflyError`` carrying `errno`'s text.
    package static func posixError(_ what: String, code: DragonflyError.Code = .internalError) -> DragonflyError {
        let number = errno
        return DragonflyError(code: code, message: "\(what): \(String(cString: strerror(number)))")
    }
}
