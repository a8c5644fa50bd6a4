#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Reads secrets kept in files (cluster secret, key-encryption keys): the file must belong to the reader or
/// root and be unreadable by group and others, so a secret is never taken from a file anyone could have read.
package enum SecretFile {
    /// The largest secret file read.
    package static let maximumBytes = 64 << 10

    /// The first line of `path`, without trailing spaces. Blocking: call at start-up or on a thread pool.
    ///
    /// - Parameter key: The configuration key that named the file, for the error message.
    /// - Throws: `configuration` naming `key` when the file is missing, not a regular file, readable by group or
    ///   others, larger than 64 KiB or empty.
    package static func read(_ path: String, key: String) throws(DragonflyError) -> String {
        let descriptor = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        guard descriptor >= 0 else {
            throw DragonflyError(
                code: .configuration,
                message: "\(key): cannot open \(path): \(String(cString: strerror(errno)))")
        }
        defer { close(descriptor) }
        var info = stat()
        guard fstat(descriptor, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG else {
            throw DragonflyError(code: .configuration, message: "\(key): \(path) is not a regular file")
        }
        guard info.st_mode & 0o077 == 0 else {
            throw DragonflyError(
                code: .configuration,
                message: "\(key): \(path) may be read by group or others; run chmod 600 \(path)")
        }
        guard Int(info.st_size) <= maximumBytes else {
            throw DragonflyError(code: .configuration, message: "\(key): \(path) is larger than 64 KiB")
        }
        var bytes = [UInt8](repeating: 0, count: maximumBytes)
        var count = 0
        while count < bytes.count {
            let got = bytes.withUnsafeMutableBytes { raw -> Int in
                guard let base = raw.baseAddress else { return 0 }
                return Glibc.read(descriptor, base + count, raw.count - count)
            }
            if got < 0, errno == EINTR { continue }
            guard got > 0 else { break }
            count += got
        }
        let text = String(decoding: bytes[..<count], as: UTF8.self)
        let line = text.split(separator: "\n", maxSplits: 1, omittingEmptySubsequences: true).first.map(String.init)
        let secret = line?.trimmingSpaces() ?? ""
        guard !secret.isEmpty else {
            throw DragonflyError(code: .configuration, message: "\(key): \(path) is empty")
        }
        return secret
    }
}
