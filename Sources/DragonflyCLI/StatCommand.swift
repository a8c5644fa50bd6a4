import ArgumentParser
import DragonflyClient
import DragonflyCore
import Logging

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
    @Option(help: ArgumentHelp("Local daemon socket (default: \(DaemonSocket.defaultPath)).")) var socket: String?

    func validate() throws {
        try URLArgument.validate(url)
        if let pieceLength, !PieceMath.isValidFixedPieceLength(pieceLength.bytes) {
            throw ValidationError("--piece-length must be a power of two between 4M and 64M")
        }
    }

    /// How long `stat` waits for the daemon (connection included).
    static let daemonDeadline: Duration = .seconds(1)

    func run() async throws {
        let id = TaskID.make(
            url: url,
            tag: tag,
            application: application,
            pieceLength: pieceLength?.bytes,
            filteredQueryParams: filter.map(URLFilter.parseList)
        )
        print("task \(id)")
        fflush(nil)
        let path = socket ?? DaemonSocket.defaultPath
        let client = DaemonClient(socketPath: path, logger: Logger(label: "dragonfly.stat"))
        for line in await Self.report(taskID: id, client: client) {
            print(line)
        }
    }

    /// The lines after `task <id>`: what the daemon at the socket (and its scheduler) knows of the task.
    static func report(taskID: TaskID, client: DaemonClient) async -> [String] {
        let stat: DaemonTaskStat
        do {
            stat = try await client.stat(taskID: taskID, askScheduler: true, timeout: daemonDeadline)
        } catch {
            switch error.code {
            case .unavailable:
                return ["daemon: not running at \(client.socketPath)"]
            case .deadlineExceeded:
                return ["daemon: no answer from \(client.socketPath) within \(ConfigDuration(milliseconds: 1000))"]
            default:
                return ["daemon: running at \(client.socketPath)", "daemon: stat failed: \(error.message)"]
            }
        }
        var lines = ["daemon: running at \(client.socketPath)"]
        if let local = stat.local {
            lines.append("local: " + describe(local, pieces: "held"))
        } else {
            lines.append("local: not cached")
        }
        if let scheduler = stat.scheduler {
            lines.append(
                "scheduler: " + describe(scheduler, pieces: "known")
                    + ", \(scheduler.peerCount) peers (\(scheduler.availablePeerCount) can serve)")
        } else if !stat.schedulerError.isEmpty {
            lines.append("scheduler: not asked: \(stat.schedulerError)")
        } else {
            lines.append("scheduler: unknown task")
        }
        return lines
    }

    private static func describe(_ info: DaemonTaskInfo, pieces: String) -> String {
        var text = info.state
        text += ", " + (info.contentLength.map { "\($0) bytes" } ?? "length unknown")
        let count = info.pieceCount.map { "/\($0)" } ?? ""
        text += ", \(info.heldPieces)\(count) pieces \(pieces)"
        if info.pieceLength > 0 { text += " of \(ByteSize(bytes: info.pieceLength))" }
        return text
    }
}
