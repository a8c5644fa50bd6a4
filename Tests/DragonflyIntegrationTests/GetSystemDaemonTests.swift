import DragonflyCore
import DragonflyTestSupport
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Issue "Trust at the edges", point 8: a non-root `get` used to start a second, per-user daemon (and read the
/// origin again) although the system daemon's socket was open to it. Now it uses the system socket when it can
/// connect, and that daemon never writes for it: `get` writes its output as the calling user.
///
/// Runs only as root (it needs the system socket path and `setpriv`), and only when no daemon of the machine
/// already owns `/var/run/dragonfly/dfdaemon.sock`.
@Suite(.serialized, .timeLimit(.minutes(3)))
struct GetSystemDaemonTests {
    static let systemSocket = "/var/run/dragonfly/dfdaemon.sock"
    static let setpriv = "/usr/bin/setpriv"

    @Test func aNonRootGetUsesTheSystemDaemonItMayReach() async throws {
        Self.removeIfStale(Self.systemSocket)
        guard getuid() == 0, FileManager.default.isExecutableFile(atPath: Self.setpriv),
            !FileManager.default.fileExists(atPath: Self.systemSocket)
        else { return }
        defer { Self.removeIfStale(Self.systemSocket) }
        let size = 6 << 20
        let content = GetNoDaemonTests.bytes(size, seed: 0x0D_0008)
        try await withNginxOrigin { origin in
            try origin.writeFile("shared.bin", contents: content)
            let url = origin.url(for: "shared.bin")
            try await withTemporaryDirectory { dir in
                // The system daemon: its socket group is nobody's group, as `socketGroup` allows.
                let config = try dir.writeFile("daemon.yaml", text: "socketGroup: nogroup\n")
                let arguments =
                    RoleArguments.daemon(directory: dir.appending("system"), manager: nil)
                    .replacingSocket(with: Self.systemSocket) + ["--config", config]
                try await withDragonfly(arguments) { daemon in
                    let ready = try await daemon.awaitReady(timeLimit: .seconds(60))
                    let metrics = try #require(ready.listeners["metrics"])
                    let user = try dir.makeDirectory("nobody")
                    #expect(chmod(user, 0o777) == 0)
                    let output = user + "/shared.bin"
                    let executable = try DragonflyExecutable.locate()
                    // No --socket, --data-dir or --daemon-config: the defaults a user's script would have.
                    let get = try await runTool(
                        Self.setpriv,
                        [
                            "--reuid=nobody", "--regid=nogroup", "--clear-groups", executable, "get", url, "-O",
                            output, "--no-progress",
                        ],
                        environment: ["HOME": user, "PATH": "/usr/bin:/bin"], timeLimit: .seconds(90))
                    #expect(get.succeeded, "\(get.standardError)")
                    #expect(FileManager.default.contents(atPath: output).map(Array.init) == content)
                    // The system daemon did the download …
                    #expect(try await metricTotal("dragonfly_daemon_download_bytes_total", at: metrics) >= Double(size))
                    // … no per-user daemon was started for nobody …
                    #expect(!FileManager.default.fileExists(atPath: user + "/.dragonfly/daemon"))
                    // … and the output belongs to the caller, not to the daemon's user.
                    var info = stat()
                    #expect(stat(output, &info) == 0)
                    #expect(info.st_uid != 0, "the output was written as the caller")
                }
            }
        }
    }
}

extension GetSystemDaemonTests {
    /// Removes a socket file at `path` that nothing listens on (a daemon that was killed leaves its socket).
    static func removeIfStale(_ path: String) {
        var info = stat()
        guard lstat(path, &info) == 0, info.st_mode & S_IFMT == S_IFSOCK else { return }
        let descriptor = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard descriptor >= 0 else { return }
        defer { close(descriptor) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { return }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in bytes.enumerated() { raw[index] = byte }
        }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        if connected != 0 && errno == ECONNREFUSED { unlink(path) }
    }
}

extension [String] {
    /// The arguments with the value of `--socket` replaced.
    fileprivate func replacingSocket(with path: String) -> [String] {
        var copy = self
        if let index = copy.firstIndex(of: "--socket"), index + 1 < copy.count { copy[index + 1] = path }
        return copy
    }
}
