import DragonflyCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Thin, blocking wrappers over the system calls the store uses. Every function here blocks: call them on
/// the `NIOThreadPool`, never on the async executor.
enum POSIX {
    /// A ``DragonflyError`` for the current `errno`, with a code that says what a caller can do about it.
    static func error(_ what: String, errno number: Int32 = errno) -> DragonflyError {
        let code: DragonflyError.Code
        switch number {
        case ENOENT: code = .notFound
        case ENOSPC, EDQUOT, EMFILE, ENFILE: code = .resourceExhausted
        case EACCES, EPERM, EROFS: code = .permissionDenied
        case EIO: code = .dataLoss
        default: code = .internalError
        }
        return DragonflyError(code: code, message: "\(what): \(String(cString: strerror(number)))")
    }

    /// `open(2)`, retrying on `EINTR`; returns -1 with `errno` set on failure.
    static func open(_ path: String, _ flags: CInt, _ mode: mode_t = 0o644) -> CInt {
        while true {
            #if canImport(Darwin)
            let fd = Darwin.open(path, flags, mode)
            #else
            let fd = Glibc.open(path, flags, mode)
            #endif
            if fd < 0 && errno == EINTR { continue }
            return fd
        }
    }

    /// `close(2)`; errors are ignored (nothing useful can be done about them).
    static func close(_ fd: CInt) {
        #if canImport(Darwin)
        _ = Darwin.close(fd)
        #else
        _ = Glibc.close(fd)
        #endif
    }

    /// Writes all of `bytes` at `offset` with `pwrite(2)`.
    static func writeAll(_ fd: CInt, _ bytes: UnsafeRawBufferPointer, at offset: Int64, path: String)
        throws(DragonflyError)
    {
        guard let base = bytes.baseAddress else { return }
        var done = 0
        while done < bytes.count {
            let n = pwrite(fd, base + done, bytes.count - done, off_t(offset + Int64(done)))
            if n < 0 {
                if errno == EINTR { continue }
                throw error("cannot write \(path)")
            }
            done += n
        }
    }

    /// Reads into `buffer` at `offset` with `pread(2)` until it is full or the file ends; returns the bytes read.
    static func readFully(_ fd: CInt, into buffer: UnsafeMutableRawBufferPointer, at offset: Int64, path: String)
        throws(DragonflyError) -> Int
    {
        guard let base = buffer.baseAddress else { return 0 }
        var done = 0
        while done < buffer.count {
            let n = pread(fd, base + done, buffer.count - done, off_t(offset + Int64(done)))
            if n < 0 {
                if errno == EINTR { continue }
                throw error("cannot read \(path)")
            }
            if n == 0 { break }
            done += n
        }
        return done
    }

    /// `fdatasync(2)` (`fsync` where it does not exist).
    static func syncData(_ fd: CInt, path: String) throws(DragonflyError) {
        #if os(Linux)
        let result = fdatasync(fd)
        #else
        let result = fsync(fd)
        #endif
        if result != 0 { throw error("cannot sync \(path)") }
    }

    /// `fsync(2)` of a directory, so a rename or link in it is durable; failures are ignored.
    static func syncDirectory(_ path: String) {
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { return }
        _ = fsync(fd)
        close(fd)
    }

    /// `stat(2)`, or nil with `errno` set.
    static func status(_ path: String) -> stat? {
        var info = stat()
        return stat(path, &info) == 0 ? info : nil
    }

    /// Removes the permission bits of `path` that `mode` does not have (never adds any); a symlink is left
    /// alone (never followed). Best effort: a failure leaves the mode as it was.
    static func restrictMode(_ path: String, to mode: mode_t) {
        var info = stat()
        guard lstat(path, &info) == 0, (info.st_mode & S_IFMT) != S_IFLNK else { return }
        let current = info.st_mode & 0o7777
        if current & ~mode != 0 { _ = chmod(path, current & mode) }
    }

    /// Whether `info` describes a directory.
    static func isDirectory(_ info: stat) -> Bool {
        (info.st_mode & S_IFMT) == S_IFDIR
    }

    /// The names in a directory except `.` and `..`; empty when it does not exist.
    static func listDirectory(_ path: String) throws(DragonflyError) -> [String] {
        guard let directory = opendir(path) else {
            if errno == ENOENT { return [] }
            throw error("cannot list \(path)")
        }
        defer { closedir(directory) }
        var names: [String] = []
        while let entry = readdir(directory) {
            let name = withUnsafePointer(to: entry.pointee.d_name) { pointer in
                pointer.withMemoryRebound(to: CChar.self, capacity: MemoryLayout.size(ofValue: pointer.pointee)) {
                    String(cString: $0)
                }
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    /// Deletes `path` and, for a directory, everything in it. Best effort: errors are ignored.
    static func removeTree(_ path: String) {
        var info = stat()
        guard lstat(path, &info) == 0 else { return }
        if isDirectory(info) {
            for name in (try? listDirectory(path)) ?? [] {
                removeTree(path + "/" + name)
            }
            rmdir(path)
        } else {
            unlink(path)
        }
    }

    /// Copies `length` bytes at `sourceOffset` of `source` to `destinationOffset` of `destination`: with
    /// `copy_file_range(2)` (in-kernel, no user-space buffer), falling back to `pread`/`pwrite` through a
    /// 1 MiB buffer when the kernel or file system refuses (`EXDEV`, `ENOSYS`, `EINVAL`, `EOPNOTSUPP`).
    static func copyRange(
        from source: CInt,
        at sourceOffset: Int64,
        to destination: CInt,
        at destinationOffset: Int64,
        length: Int64,
        path: String
    ) throws(DragonflyError) {
        var sourcePosition = sourceOffset
        var destinationPosition = destinationOffset
        var remaining = length
        if let copyFileRange = copyFileRangeFunction {
            while remaining > 0 {
                let n = copyFileRange(
                    source, &sourcePosition, destination, &destinationPosition, Int(min(remaining, 1 << 30)), 0)
                if n < 0 {
                    let number = errno
                    if number == EINTR { continue }
                    if [EXDEV, ENOSYS, EINVAL, EOPNOTSUPP, EPERM].contains(number) { break }
                    throw error("cannot copy \(path)", errno: number)
                }
                if n == 0 {
                    throw DragonflyError(code: .dataLoss, message: "\(path) ends before its content length")
                }
                remaining -= Int64(n)
            }
            // After a refusal both positions still describe what was copied; the fallback continues there.
        }
        guard remaining > 0 else { return }
        let chunk = 1 << 20
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 16)
        defer { buffer.deallocate() }
        while remaining > 0 {
            let want = Int(min(Int64(chunk), remaining))
            let slice = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<want])
            let got = try readFully(source, into: slice, at: sourcePosition, path: path)
            guard got == want else {
                throw DragonflyError(code: .dataLoss, message: "\(path) ends before its content length")
            }
            try writeAll(destination, UnsafeRawBufferPointer(slice), at: destinationPosition, path: "the output file")
            sourcePosition += Int64(got)
            destinationPosition += Int64(got)
            remaining -= Int64(got)
        }
    }

    /// `O_TMPFILE` (`__O_TMPFILE | O_DIRECTORY`): Glibc's module map does not export it.
    #if os(Linux)
    static let temporaryFileFlag: CInt = 0o20000000 | O_DIRECTORY
    #endif

    /// `copy_file_range(2)`, looked up at run time because Glibc's module map does not export it.
    private typealias CopyFileRange =
        @convention(c) (
            CInt, UnsafeMutablePointer<Int64>?, CInt, UnsafeMutablePointer<Int64>?, Int, CUnsignedInt
        ) -> Int

    private static let copyFileRangeFunction: CopyFileRange? = {
        #if os(Linux)
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "copy_file_range") else { return nil }
        return unsafeBitCast(symbol, to: CopyFileRange.self)
        #else
        return nil
        #endif
    }()
}
