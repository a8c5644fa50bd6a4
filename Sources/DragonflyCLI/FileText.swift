import DragonflyCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Reads a small text file (configuration, header files) whole; refuses files over `limit` bytes.
func readTextFile(_ path: String, limit: Int = 4 << 20) throws(DragonflyError) -> String {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw AtomicFile.posixError("cannot open \(path)", code: .notFound) }
    defer { close(fd) }
    var bytes = [UInt8]()
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n < 0 {
            if errno == EINTR { continue }
            throw AtomicFile.posixError("cannot read \(path)")
        }
        if n == 0 { break }
        bytes.append(contentsOf: chunk[0..<n])
        if bytes.count > limit {
            throw DragonflyError(code: .invalidArgument, message: "\(path) is larger than \(limit) bytes")
        }
    }
    return String(decoding: bytes, as: UTF8.self)
}
