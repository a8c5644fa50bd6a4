#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Whole-file writes that readers see either entirely or not at all.
package enum AtomicFile {
    /// Writes `bytes` to a temporary file beside `path`, fsyncs it, renames it over `path` and fsyncs the
    /// directory, so the new file survives a crash once this returns.
    ///
    /// The temporary (`.<name>.<pid>.tmp`) is created with `O_EXCL | O_NOFOLLOW` and `mode`: whatever already
    /// sits at that name (a file left by a crash, or a symlink planted by someone who can write the directory)
    /// is unlinked, never opened or followed, and the file is created afresh. Writers of one `path` in one
    /// process must not overlap (they share the temporary's name).
    package static func write(_ bytes: some Collection<UInt8>, to path: String, mode: UInt32 = 0o644)
        throws(DragonflyError)
    {
        let slash = path.lastIndex(of: "/")
        let directory = slash.map { String(path[..<$0]) } ?? "."
        let leaf = slash.map { String(path[path.index(after: $0)...]) } ?? path
        let temporary = (directory.isEmpty ? "" : directory) + "/.\(leaf).\(getpid()).tmp"
        let fd = try createExclusively(temporary, mode: mode_t(mode))
        let contiguous = Array(bytes)
        var failure: DragonflyError?
        contiguous.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count, let base = raw.baseAddress {
                #if canImport(Glibc)
                let n = Glibc.write(fd, base + offset, raw.count - offset)
                #else
                let n = Darwin.write(fd, base + offset, raw.count - offset)
                #endif
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
        // The rename is durable only once the directory entry is.
        let directoryFD = open(directory.isEmpty ? "/" : directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if directoryFD >= 0 {
            let synced = fsync(directoryFD)
            let number = errno
            close(directoryFD)
            // Some file systems cannot sync a directory (EINVAL); the rename itself succeeded.
            if synced != 0 && number != EINVAL && number != EROFS {
                errno = number
                throw posixError("cannot sync directory \(directory)")
            }
        }
    }

    /// Creates `path` for writing without following or reusing what is there: an existing entry (a stale
    /// temporary, a symlink) is unlinked and the exclusive create retried, a bounded number of times.
    private static func createExclusively(_ path: String, mode: mode_t) throws(DragonflyError) -> CInt {
        let flags = O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC
        for _ in 0..<3 {
            let fd = open(path, flags, mode)
            if fd >= 0 { return fd }
            switch errno {
            case EINTR:
                continue
            case EEXIST, ELOOP:
                // unlink(2) removes a symlink itself, never its target.
                if unlink(path) != 0 && errno != ENOENT { throw posixError("cannot remove stale \(path)") }
            default:
                throw posixError("cannot create \(path)")
            }
        }
        throw DragonflyError(
            code: .failedPrecondition, message: "cannot create \(path): something keeps re-creating it")
    }

    /// A ``DragonflyError`` carrying `errno`'s text.
    package static func posixError(_ what: String, code: DragonflyError.Code = .internalError) -> DragonflyError {
        let number = errno
        return DragonflyError(code: code, message: "\(what): \(String(cString: strerror(number)))")
    }
}
