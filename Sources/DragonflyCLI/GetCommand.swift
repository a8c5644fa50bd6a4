import ArgumentParser
import DragonflyClient
import DragonflyCore
import DragonflyTelemetry
import Logging

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// `dragonfly get URL -O PATH` (DESIGN §15).
struct GetCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "get",
        abstract: "Download a URL through the local daemon (P2P), falling back to the origin."
    )

    @Argument(help: "The URL to download.") var url: String
    @Option(name: [.customShort("O"), .long], help: "Output path; '-' writes to standard output.") var output: String
    @Option(help: "Whole-file digest to verify before the output appears: sha256:HEX, sha512:HEX or md5:HEX.")
    var digest: String?
    @Option(name: [.customShort("H"), .customLong("header")], help: "Request header 'Name: value'; repeatable.")
    var headers: [String] = []
    @Option(help: "File of request headers, one 'Name: value' per line (keeps secrets out of argv).")
    var headerFile: String?
    @Option(help: "Query parameters left out of the task ID, '&'-separated (replaces the default list).")
    var filter: String?
    @Option(help: "Task tag.") var tag: String = ""
    @Option(help: "Task application.") var application: String = ""
    @Option(help: "Priority 0-6.") var priority: Int = 0
    @Option(help: "Give up after this long (e.g. 30s, 5m, 2h); 0 means never.") var timeout: ConfigDuration = .hours(2)
    @Option(help: "Only bytes START-END (inclusive) or START- (to the end).") var range: String?
    @Option(help: "Download rate limit in bytes/s (e.g. 10M).") var ratelimit: ByteSize?
    @Flag(help: "Never read the origin.") var disableBackSource = false
    @Flag(help: "Download straight from the origin without a daemon.") var noDaemon = false
    @Option(
        help:
            "Data directory: the auto-started daemon's, or the cache of --no-daemon (default: the daemon's, or a private cache)."
    ) var dataDir: String?
    @Option(
        help: ArgumentHelp(
            "Local daemon socket (default: the daemon config's socket, else \(DaemonSocket.defaultPath))."))
    var socket: String?
    @Option(help: "Configuration file of a daemon this command starts (default: $DRAGONFLY_DAEMON_CONFIG).")
    var daemonConfig: String?
    @Option(help: "A daemon this command starts exits after this long without work (e.g. 30s, 5m).")
    var daemonIdleExit: ConfigDuration = .minutes(5)
    @Flag(help: "No progress bar, only the summary line.") var noProgress = false
    @Option(help: "Fixed piece length (4M-64M, a power of two); changes the task ID.") var pieceLength: ByteSize?
    @Option(help: "Connections to the origin for --no-daemon.") var originConnections: Int = 4
    @Option(help: "Log level of the logfmt lines on stderr (default: warning).") var logLevel: String?

    func validate() throws {
        try URLArgument.validate(url)
        if let digest {
            do { _ = try FileDigest(parsing: digest) } catch { throw ValidationError("--digest: \(error.message)") }
        }
        for header in headers where HeaderLine.parse(header) == nil {
            throw ValidationError("-H '\(Redaction.headerLine(header))' must be 'Name: value'")
        }
        if let range, ByteRangeArgument.parse(range) == nil {
            throw ValidationError("--range '\(range)' must be START-END (inclusive) or START-")
        }
        if let pieceLength, !PieceMath.isValidFixedPieceLength(pieceLength.bytes) {
            throw ValidationError("--piece-length must be a power of two between 4M and 64M")
        }
        if !(0...6).contains(priority) { throw ValidationError("--priority must be 0-6") }
        if let logLevel, LogLevelName(rawValue: logLevel) == nil {
            throw ValidationError(
                "--log-level '\(logLevel)' is not one of \(LogLevelName.allCases.map(\.rawValue).joined(separator: ", "))"
            )
        }
        if !(1...64).contains(originConnections) { throw ValidationError("--origin-connections must be 1-64") }
        if let ratelimit, ratelimit.bytes <= 0 { throw ValidationError("--ratelimit must be positive") }
        if daemonIdleExit.milliseconds <= 0 { throw ValidationError("--daemon-idle-exit must be positive") }
    }

    func run() async throws {
        Telemetry.bootstrap(logLevel: logLevel.flatMap { Logger.Level(rawValue: $0) } ?? .warning)
        var fields: [HeaderField] = []
        if let headerFile {
            for line in try readTextFile(headerFile).split(whereSeparator: \.isNewline) {
                let text = String(line).trimmingSpaces()
                if text.isEmpty || text.hasPrefix("#") { continue }
                guard let field = HeaderLine.parse(text) else {
                    throw DragonflyError(
                        code: .usage,
                        message: "--header-file \(headerFile): '\(Redaction.headerLine(text))' is not 'Name: value'"
                    )
                }
                fields.append(field)
            }
        }
        fields += headers.compactMap(HeaderLine.parse)
        let outputPath = try OutputPath.resolve(output)
        let request = GetRequest(
            url: url,
            output: outputPath,
            digest: try digest.map { try FileDigest(parsing: $0) },
            headers: fields,
            tag: tag,
            application: application,
            filteredQueryParams: filter.map(URLFilter.parseList),
            range: range.flatMap(ByteRangeArgument.parse),
            timeout: timeout.milliseconds == 0 ? nil : timeout.duration,
            rateLimit: ratelimit?.bytes,
            pieceLength: pieceLength?.bytes,
            originConnections: originConnections,
            disableBackToSource: disableBackSource
        )
        let showProgress = !noProgress && isatty(2) == 1
        let environmentConfig = getenv("DRAGONFLY_DAEMON_CONFIG").map { String(cString: $0) }
        let settings = GetRunner.Settings(
            useDaemon: !noDaemon,
            dataDirectory: dataDir,
            socket: socket,
            daemonConfig: daemonConfig ?? environmentConfig.flatMap { $0.isEmpty ? nil : $0 },
            daemonIdleExit: daemonIdleExit.duration,
            priority: priority,
            showProgress: showProgress
        )
        let status = await GetRunner.run(request, settings: settings)
        throw ProcessExit(code: status)
    }
}

/// The URL argument of `get` and `stat`.
enum URLArgument {
    /// Refuses text that is not `scheme://…`, suggesting `http://` when the scheme is missing.
    static func validate(_ url: String) throws(ValidationError) {
        guard let separator = url.firstRange(of: "://") else {
            let shown = Redaction.url(url)
            throw ValidationError("'\(shown)' is not a URL (no scheme); did you mean http://\(shown)?")
        }
        let scheme = url[..<separator.lowerBound]
        guard let first = scheme.first, first.isLetter,
            scheme.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "+" || $0 == "-" || $0 == ".") })
        else {
            throw ValidationError("'\(Redaction.url(url))' is not a URL: '\(scheme)' is not a scheme")
        }
        guard url[separator.upperBound...].contains(where: { $0 != "/" }) || scheme.lowercased() == "file" else {
            throw ValidationError("'\(Redaction.url(url))' names no host")
        }
    }
}

/// `Name: value` header arguments.
enum HeaderLine {
    static func parse(_ text: String) -> HeaderField? {
        guard let colon = text.firstIndex(of: ":") else { return nil }
        let name = String(text[..<colon]).trimmingSpaces()
        let value = String(text[text.index(after: colon)...]).trimmingSpaces()
        guard !name.isEmpty, name.utf8.allSatisfy({ $0 > 32 && $0 < 127 && $0 != 58 }) else { return nil }
        guard value.utf8.allSatisfy({ $0 != 10 && $0 != 13 }) else { return nil }
        return HeaderField(name: name, value: value)
    }
}

/// `--range START-END` (inclusive) or `START-`.
enum ByteRangeArgument {
    static func parse(_ text: String) -> ByteRange? {
        let parts = text.split(separator: "-", maxSplits: 1, omittingEmptySubsequences: false)
        guard parts.count == 2, let start = Int64(parts[0]), start >= 0 else { return nil }
        if parts[1].isEmpty { return ByteRange(start: start, length: nil) }
        guard let end = Int64(parts[1]), end >= start else { return nil }
        return ByteRange(start: start, length: end - start + 1)
    }
}

/// Resolves `-O` against the caller's working directory and applies the input rules of DESIGN §15.
enum OutputPath {
    static func resolve(_ path: String) throws(DragonflyError) -> String? {
        if path == "-" { return nil }
        guard !path.isEmpty else { throw DragonflyError(code: .usage, message: "-O needs a path or '-'") }
        var absolute = path
        if !path.hasPrefix("/") {
            var buffer = [CChar](repeating: 0, count: 4096)
            guard getcwd(&buffer, buffer.count) != nil else {
                throw AtomicFile.posixError("cannot read the working directory")
            }
            let cwd = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            absolute = cwd + "/" + path
        }
        var info = stat()
        if stat(absolute, &info) == 0, (info.st_mode & S_IFMT) == S_IFDIR {
            throw DragonflyError(code: .usage, message: "-O \(path) is a directory; name the output file")
        }
        if path.hasSuffix("/") {
            throw DragonflyError(code: .usage, message: "-O \(path) names a directory; name the output file")
        }
        let directory = String(absolute[..<(absolute.lastIndex(of: "/") ?? absolute.startIndex)])
        var dirInfo = stat()
        if !directory.isEmpty, stat(directory, &dirInfo) != 0 || (dirInfo.st_mode & S_IFMT) != S_IFDIR {
            throw DragonflyError(code: .notFound, message: "output directory \(directory) does not exist")
        }
        return absolute
    }
}
