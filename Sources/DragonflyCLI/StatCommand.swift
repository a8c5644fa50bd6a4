import ArgumentParser
import DragonflyCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// `dragonfly stat URL`: prints the task ID, then what the local daemon knows of the task. Never starts a daemon.
struct StatCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stat",
        abstract: "Print a URL's task ID and what the local daemon knows of it."
    )

    @Argument(help: "The URL.") var url: String
    @Option(help: "Task tag.") var tag: String = ""
    @Option(help: "Task application.") var application: String = ""
    @Option(help: "Query parameters left out of the task ID, '&'-separated (replaces the default list).") var filter:
        String?
    @Option(help: "Fixed piece length (4M-64M, a power of two); changes the task ID.") var pieceLength: ByteSize?
    @Option(help: "Local daemon socket.") var socket: String?

    func validate() throws {
        if let pieceLength, !PieceMath.isValidFixedPieceLength(pieceLength.bytes) {
            throw ValidationError("--piece-length must be a power of two between 4M and 64M")
        }
    }

    func run() async throws {
        let id = TaskID.make(
            url: url,
            tag: tag,
            application: application,
            pieceLength: pieceLength?.bytes,
            filteredQueryParams: filter.map(URLFilter.parseList)
        )
        print("task \(id)")
        let path = socket ?? RolePaths.defaultSocket(role: "daemon")
        if UnixSocketProbe.canConnect(path: path) {
            print("daemon: running at \(path)")
        } else {
            print("daemon: not running")
        }
    }
}

/// Checks whether something accepts connections on a unix socket.
enum UnixSocketProbe {
    static func canConnect(path: String) -> Bool {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { return false }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in bytes.enumerated() { raw[index] = byte }
        }
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        return result == 0
    }
}
