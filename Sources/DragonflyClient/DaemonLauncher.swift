package import DragonflyCore
package import Logging

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The daemon's unix socket: where it is by default and whether something answers on it.
package enum DaemonSocket {
    /// The socket of `dragonfly daemon` when neither flag nor config names one (DESIGN §2).
    package static var defaultPath: String { RolePaths.defaultSocket(role: "daemon") }

    /// Whether a process accepts connections on the unix socket at `path` (a stale socket file refuses them).
    package static func isAnswering(path: String) -> Bool {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard !bytes.isEmpty, bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { return false }
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

/// How `get` (or an SDK user) starts a non-resident daemon when none answers (DESIGN §15 "Auto-started
/// daemon").
///
/// The daemon gets `--socket`, `--data-dir` (when given), `--config` (when given), `--idle-exit`, and port 0
/// for every TCP listener its configuration does not name: on 127.0.0.1 for the proxy, metrics and health, and
/// for peer and piece too unless a scheduler or manager is configured (then on the configured host, for P2P).
///
/// ```swift
/// var launch = DaemonLaunchConfiguration(
///     executablePath: try DaemonLauncher.currentExecutablePath(), socketPath: DaemonSocket.defaultPath)
/// launch.idleExit = .seconds(300)
/// let outcome = try await DaemonLauncher.ensureRunning(launch, logger: logger)
/// let client = DaemonClient(socketPath: launch.socketPath)
/// ```
package struct DaemonLaunchConfiguration: Sendable, Hashable {
    /// The `dragonfly` executable.
    package var executablePath: String
    /// The socket to probe and to pass as `--socket`.
    package var socketPath: String
    /// `--data-dir`; nil leaves it to the daemon's configuration (or the default).
    package var dataDirectory: String?
    /// `--config` of the daemon; nil runs it on defaults.
    package var configPath: String?
    /// `--idle-exit`: the daemon exits after this long without work; zero means never.
    package var idleExit: Duration
    /// More arguments for the daemon, e.g. `["--log-level", "debug"]`.
    package var extraArguments: [String]

    package init(
        executablePath: String,
        socketPath: String,
        dataDirectory: String? = nil,
        configPath: String? = nil,
        idleExit: Duration = .seconds(300),
        extraArguments: [String] = []
    ) {
        self.executablePath = executablePath
        self.socketPath = socketPath
        self.dataDirectory = dataDirectory
        self.configPath = configPath
        self.idleExit = idleExit
        self.extraArguments = extraArguments
    }

    /// The TCP listeners of a daemon: flag and configuration key.
    static let listeners = [
        ("--peer-listen", "peer", \DaemonConfig.ListenConfig.peer),
        ("--proxy-listen", "proxy", \DaemonConfig.ListenConfig.proxy),
        ("--metrics-listen", "metrics", \DaemonConfig.ListenConfig.metrics),
        ("--health-listen", "health", \DaemonConfig.ListenConfig.health),
        ("--piece-listen", "piece", \DaemonConfig.ListenConfig.piece),
    ]

    /// The daemon's configuration file, parsed and validated (defaults when there is none), with the key
    /// paths the file names.
    ///
    /// - Throws: `DragonflyError` `.configuration` naming the file and the YAML key path.
    package func loadDaemonConfig() throws(DragonflyError) -> (config: DaemonConfig, namedKeys: Set<String>) {
        guard let configPath else { return (DaemonConfig(), []) }
        let text: String
        do {
            text = try Self.readSmallFile(configPath)
        } catch {
            throw DragonflyError(
                code: .configuration, message: "cannot read daemon configuration \(configPath): \(error.message)")
        }
        let config = try ConfigLoader.load(DaemonConfig.self, yaml: text, source: configPath)
        try config.validate()
        return (config, try ConfigLoader.keyPaths(ofYAML: text))
    }

    /// The data directory the daemon will use: `dataDirectory`, else the configuration's, else the default.
    package func effectiveDataDirectory() throws(DragonflyError) -> String {
        if let dataDirectory { return try DaemonClient.absolutePath(dataDirectory) }
        let (config, _) = try loadDaemonConfig()
        return RolePaths.resolve(config.dataDir, default: RolePaths.defaultDataDirectory(role: "daemon"))
    }

    /// The daemon's arguments (without the executable); paths are made absolute.
    ///
    /// - Throws: `DragonflyError` `.configuration` when the configuration file is unreadable or invalid.
    package func arguments() throws(DragonflyError) -> [String] {
        let (config, named) = try loadDaemonConfig()
        var arguments = ["daemon", "--socket", try DaemonClient.absolutePath(socketPath)]
        if let dataDirectory {
            arguments += ["--data-dir", try DaemonClient.absolutePath(dataDirectory)]
        }
        if let configPath {
            arguments += ["--config", try DaemonClient.absolutePath(configPath)]
        }
        let milliseconds = max(
            idleExit.components.seconds * 1000 + idleExit.components.attoseconds / 1_000_000_000_000_000, 0)
        arguments += ["--idle-exit", ConfigDuration(milliseconds: milliseconds).description]
        // Proxy, metrics and health serve this host only; peer and piece face the network only when there is a
        // swarm to serve (a scheduler or manager is configured).
        let isInSwarm = !config.scheduler.addresses.isEmpty || !config.manager.address.isEmpty
        for (flag, key, path) in Self.listeners where !named.contains("listen.\(key)") {
            let facesNetwork = (key == "peer" || key == "piece") && isInSwarm
            let host = facesNetwork ? config.listen[keyPath: path].host : "127.0.0.1"
            arguments += [flag, ListenAddress(host: host, port: 0).description]
        }
        return arguments + extraArguments
    }

    static func readSmallFile(_ path: String, limit: Int = 4 << 20) throws(DragonflyError) -> String {
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
            guard bytes.count <= limit else {
                throw DragonflyError(code: .invalidArgument, message: "\(path) is larger than \(limit) bytes")
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// Makes sure a daemon answers on a socket, starting one when none does.
///
/// Concurrent callers (several `get`s at once) serialise on an exclusive `flock` of `<socket>.lock`, and each
/// probes the socket again once it holds the lock, so exactly one daemon is started. The daemon runs detached:
/// in a session of its own, stdin from `/dev/null`, stdout and stderr appended to `daemon.log` in its data
/// directory (or `<socket>.log` when that cannot be written), so it outlives the caller and its terminal.
package enum DaemonLauncher {
    /// What ``ensureRunning(_:timeLimit:logger:)`` found or did.
    package enum Outcome: Sendable, Hashable {
        /// A daemon already answered on the socket.
        case alreadyRunning
        /// This call started the daemon with this process ID; its output goes to `logPath` (nil: discarded).
        case started(pid: Int32, logPath: String?)
    }

    /// Logs at most this big are truncated when a daemon is started.
    static let logSizeLimit: Int64 = 8 << 20

    /// Returns once a daemon answers on `configuration.socketPath`, starting one if needed.
    ///
    /// - Parameters:
    ///   - timeLimit: How long to wait for a started daemon's socket (and, separately, for another caller that
    ///     holds the start lock).
    /// - Throws: `DragonflyError` `.unavailable` naming why no daemon answers (the started daemon exited —
    ///   with the last line it wrote — or did not answer in time, or it could not be started);
    ///   `.configuration` for an invalid daemon configuration file.
    package static func ensureRunning(
        _ configuration: DaemonLaunchConfiguration,
        timeLimit: Duration = .seconds(10),
        logger: Logger
    ) async throws(DragonflyError) -> Outcome {
        let socketPath = configuration.socketPath
        if DaemonSocket.isAnswering(path: socketPath) { return .alreadyRunning }
        let arguments = try configuration.arguments()
        if let slash = socketPath.lastIndex(of: "/"), slash != socketPath.startIndex {
            do {
                try DataDirectoryLock.makeDirectories(String(socketPath[..<slash]))
            } catch {
                throw DragonflyError(
                    code: .unavailable,
                    message: "cannot start a daemon on \(socketPath): \(error.message)"
                )
            }
        }
        let lockPath = socketPath + ".lock"
        let lockFD = open(lockPath, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard lockFD >= 0 else {
            throw AtomicFile.posixError("cannot open \(lockPath) to start a daemon", code: .unavailable)
        }
        defer { close(lockFD) }  // also releases the lock
        let clock = ContinuousClock()
        let lockDeadline = clock.now.advanced(by: timeLimit + .seconds(2))
        while flock(lockFD, LOCK_EX | LOCK_NB) != 0 {
            guard errno == EWOULDBLOCK || errno == EINTR else {
                throw AtomicFile.posixError("cannot lock \(lockPath)", code: .unavailable)
            }
            guard clock.now < lockDeadline else {
                throw DragonflyError(
                    code: .unavailable,
                    message: "another process held \(lockPath) for over \(timeLimit) while starting a daemon"
                )
            }
            try await sleep(.milliseconds(20))
        }
        // Another caller may have started the daemon while this one waited for the lock.
        if DaemonSocket.isAnswering(path: socketPath) { return .alreadyRunning }

        let dataDirectory = try? configuration.effectiveDataDirectory()
        let log = openLog(dataDirectory: dataDirectory, socketPath: socketPath)
        defer { if log.fd >= 0 { close(log.fd) } }
        let pid = try spawnDetached(
            executable: configuration.executablePath, arguments: arguments, outputFD: log.fd)
        logger.info(
            "daemon started",
            metadata: [
                "df.daemon.pid": "\(pid)", "df.daemon.socket": "\(socketPath)",
                "df.daemon.log": "\(log.path ?? "/dev/null")",
            ])
        let deadline = clock.now.advanced(by: timeLimit)
        while !DaemonSocket.isAnswering(path: socketPath) {
            var status: Int32 = 0
            if waitpid(pid, &status, WNOHANG) == pid {
                let how = exitDescription(status)
                let said = log.path.flatMap { lastLine(of: $0, from: log.startOffset) }.map { ": \($0)" } ?? ""
                throw DragonflyError(
                    code: .unavailable,
                    message: "the daemon started for \(socketPath) \(how) before its socket answered\(said)"
                )
            }
            guard clock.now < deadline else {
                throw DragonflyError(
                    code: .unavailable,
                    message: "the daemon started for \(socketPath) (pid \(pid)) did not answer within \(timeLimit)"
                        + (log.path.map { "; see \($0)" } ?? "")
                )
            }
            try await sleep(.milliseconds(20))
        }
        return .started(pid: pid, logPath: log.path)
    }

    /// The running executable (`/proc/self/exe` on Linux, else `argv[0]`).
    package static func currentExecutablePath() throws(DragonflyError) -> String {
        #if os(Linux)
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        if n > 0 {
            return String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
        #endif
        guard let first = CommandLine.arguments.first, !first.isEmpty else {
            throw DragonflyError(code: .internalError, message: "cannot tell which executable is running")
        }
        return first
    }

    private static func sleep(_ duration: Duration) async throws(DragonflyError) {
        do {
            try await Task.sleep(for: duration)
        } catch {
            throw DragonflyError(code: .cancelled, message: "cancelled while waiting for the daemon", cause: error)
        }
    }

    /// Opens the daemon's log for appending (truncated past ``logSizeLimit``): `<data dir>/daemon.log`, else
    /// `<socket>.log`; fd -1 when neither can be written.
    private static func openLog(dataDirectory: String?, socketPath: String) -> (
        fd: Int32, path: String?, startOffset: Int64
    ) {
        var candidates: [String] = []
        if let dataDirectory, (try? DataDirectoryLock.makeDirectories(dataDirectory)) != nil {
            candidates.append(dataDirectory + "/daemon.log")
        }
        candidates.append(socketPath + ".log")
        for path in candidates {
            var info = stat()
            let tooBig = stat(path, &info) == 0 && Int64(info.st_size) > logSizeLimit
            let fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | (tooBig ? O_TRUNC : 0), 0o644)
            if fd >= 0 {
                return (fd, path, Int64(lseek(fd, 0, SEEK_END)))
            }
        }
        return (-1, nil, 0)
    }

    /// The last non-empty line written to `path` after `offset` (at most the last 4 KiB), trimmed to 300
    /// characters.
    private static func lastLine(of path: String, from offset: Int64) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        let end = Int64(lseek(fd, 0, SEEK_END))
        let start = max(offset, end - 4096)
        guard end > start else { return nil }
        var bytes = [UInt8](repeating: 0, count: Int(end - start))
        let n = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, off_t(start)) }
        guard n > 0 else { return nil }
        let text = String(decoding: bytes[0..<n], as: UTF8.self)
        guard let line = text.split(whereSeparator: \.isNewline).last(where: { !$0.allSatisfy(\.isWhitespace) })
        else { return nil }
        return String(line.prefix(300))
    }

    private static func exitDescription(_ status: Int32) -> String {
        let signal = status & 0x7f
        if signal == 0 { return "exited with status \((status >> 8) & 0xff)" }
        return "was killed by signal \(signal)"
    }

    /// Starts `executable` in a new session with stdin from `/dev/null` and stdout/stderr to `outputFD` (or
    /// `/dev/null`), default signal dispositions and an empty signal mask; returns its PID.
    private static func spawnDetached(executable: String, arguments: [String], outputFD: Int32) throws(DragonflyError)
        -> Int32
    {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        if outputFD >= 0 {
            posix_spawn_file_actions_adddup2(&actions, outputFD, 1)
            posix_spawn_file_actions_adddup2(&actions, outputFD, 2)
        } else {
            posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
            posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        }
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for signal in [SIGINT, SIGTERM, SIGHUP, SIGPIPE, SIGQUIT, SIGCHLD] { sigaddset(&defaults, signal) }
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        var mask = sigset_t()
        sigemptyset(&mask)
        posix_spawnattr_setsigmask(&attributes, &mask)
        #if os(Linux)
        let setsid: Int32 = 0x80  // POSIX_SPAWN_SETSID (glibc 2.26+), a macro Swift does not import
        let flags = setsid | Int32(POSIX_SPAWN_SETSIGDEF) | Int32(POSIX_SPAWN_SETSIGMASK)
        #else
        let flags = Int32(POSIX_SPAWN_SETSIGDEF) | Int32(POSIX_SPAWN_SETSIGMASK)
        #endif
        posix_spawnattr_setflags(&attributes, Int16(flags))

        let argv: [UnsafeMutablePointer<CChar>?] = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, executable, &actions, &attributes, argv, environ)
        guard result == 0 else {
            throw DragonflyError(
                code: .unavailable,
                message: "cannot start \(executable) daemon: \(String(cString: strerror(result)))"
            )
        }
        return pid
    }
}
