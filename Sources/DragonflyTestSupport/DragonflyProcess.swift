package import DragonflyCore

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Test helpers on the ready file a role writes (``DragonflyCore/ReadyFile``, DESIGN §15).
extension ReadyFile {
    /// Decodes a ready file's bytes.
    package init(json: some Collection<UInt8>) throws {
        self = try JSONDecoder().decode(ReadyFile.self, from: Data(json))
    }

    /// The host and port of a listener, e.g. `("127.0.0.1", 41234)` for `peer`; `nil` if it is missing or
    /// not `IP:port` (IPv6 as `[::1]:port`).
    package func address(of listener: String) -> (host: String, port: Int)? {
        guard let value = listeners[listener], let colon = value.lastIndex(of: ":"),
            let port = Int(value[value.index(after: colon)...]), (0...65_535).contains(port)
        else { return nil }
        var host = value[..<colon]
        if host.hasPrefix("["), host.hasSuffix("]") {
            host = host.dropFirst().dropLast()
        }
        return (String(host), port)
    }

    /// The port of a listener, e.g. `41234` for `peer`; `nil` if it is missing or malformed.
    package func port(of listener: String) -> Int? {
        address(of: listener)?.port
    }
}

/// Where the built `dragonfly` executable is.
package enum DragonflyExecutable {
    /// The environment variable that names the executable explicitly.
    package static let environmentVariable = "DRAGONFLY_BIN"

    /// Finds the `dragonfly` executable: `$DRAGONFLY_BIN` if set, else `dragonfly` in the directory of the
    /// running test executable (`swift test` runs `.build/<config>/<package>PackageTests.xctest`, which sits
    /// next to `.build/<config>/dragonfly`).
    ///
    /// - Parameters:
    ///   - environment: The environment to read `DRAGONFLY_BIN` from; this process's by default.
    ///   - testExecutablePath: The running executable; read from `/proc/self/exe` by default.
    /// - Throws: ``TestSupportError/Code/binaryNotFound`` saying to run `swift build` first.
    package static func locate(
        environment: [String: String]? = nil,
        testExecutablePath: String? = nil
    ) throws -> String {
        let environment = environment ?? currentEnvironment()
        if let explicit = environment[environmentVariable], !explicit.isEmpty {
            guard isExecutableFile(explicit) else {
                throw TestSupportError(
                    code: .binaryNotFound,
                    message: "\(environmentVariable)=\(explicit) does not name an executable file; "
                        + "run `swift build` first, or point \(environmentVariable) at the built dragonfly"
                )
            }
            return explicit
        }
        let testExecutable = try testExecutablePath ?? currentExecutablePath()
        let candidate = directoryName(of: testExecutable) + "/dragonfly"
        guard isExecutableFile(candidate) else {
            throw TestSupportError(
                code: .binaryNotFound,
                message: "no dragonfly executable at \(candidate) (next to the test executable \(testExecutable)); "
                    + "run `swift build` first, or set \(environmentVariable) to its path"
            )
        }
        return candidate
    }
}

/// A `dragonfly` process started by ``withDragonfly(_:environment:readyFile:executablePath:standardInput:workingDirectory:isolation:_:)``.
///
/// Valid only inside that scope: at its end the process (and its process group) is SIGKILLed and reaped,
/// and its files are deleted. Its stdout and stderr go to files that can be read at any time, also after it
/// exited.
package struct DragonflyProcess: Sendable {
    let launched: LaunchedProcess

    /// The process ID.
    package var pid: Int32 { launched.child.pid }
    /// The path passed as `--ready-file`, or `nil` if the scope was started with `readyFile: false`.
    package let readyFilePath: String?
    /// A scratch directory for this process (stream files, ready file), deleted at the end of the scope.
    /// Tests may put a data dir or socket here.
    package let directory: TemporaryDirectory
    /// The full argument list the process was started with (without the executable).
    package let arguments: [String]

    /// The file the process's stdout goes to.
    package var standardOutputPath: String { launched.standardOutputPath }
    /// The file the process's stderr goes to.
    package var standardErrorPath: String { launched.standardErrorPath }

    /// Everything the process wrote to stdout so far.
    package func stdoutText() -> String { launched.standardOutputText() }

    /// Everything the process wrote to stderr so far.
    package func stderrText() -> String { launched.standardErrorText() }

    /// Waits until the ready file exists and parses, and returns it.
    ///
    /// - Throws: ``TestSupportError/Code/processExitedEarly`` with the captured stderr as soon as the process
    ///   exits without becoming ready; ``TestSupportError/Code/timedOut`` (with stderr and, if the file exists
    ///   but does not parse, the parse error) when `timeLimit` passes.
    package func awaitReady(timeLimit: Duration = .seconds(30)) async throws -> ReadyFile {
        guard let readyFilePath else {
            preconditionFailure("awaitReady() needs withDragonfly(…, readyFile: true)")
        }
        var ready: ReadyFile?
        var lastParseError: (any Error)?
        do {
            try await poll(every: .milliseconds(20), timeLimit: timeLimit, description: "ready file \(readyFilePath)") {
                if let bytes = readFileBytes(readyFilePath) {
                    do {
                        ready = try ReadyFile(json: bytes)
                        return true
                    } catch {
                        lastParseError = error
                    }
                }
                if let status = try launched.child.exitStatus() {
                    throw TestSupportError(
                        code: .processExitedEarly,
                        message: "dragonfly \(arguments.joined(separator: " ")) \(status) before it wrote its "
                            + "ready file; stderr:\n\(tail(stderrText()))"
                    )
                }
                return false
            }
        } catch let error as TestSupportError where error.code == .timedOut {
            var message = "dragonfly (pid \(pid)) was not ready within \(timeLimit)"
            if let lastParseError {
                message += "; \(readyFilePath) exists but is not a valid ready file: \(lastParseError)"
            }
            message += "; stderr:\n\(tail(stderrText()))"
            throw TestSupportError(code: .timedOut, message: message)
        }
        guard let ready else {
            preconditionFailure("poll returned without the condition holding")
        }
        return ready
    }

    /// Sends a signal to the process (not to its children).
    package func signal(_ signal: ProcessSignal) throws {
        try launched.child.send(signal)
    }

    /// Sends a signal by number, e.g. `SIGTERM`, to the process (not to its children).
    package func signal(_ number: Int32) throws {
        try launched.child.send(ProcessSignal(rawValue: number))
    }

    /// How the process ended, or `nil` while it is running.
    package func exitStatus() throws -> ProcessExitStatus? {
        try launched.child.exitStatus()
    }

    /// Waits for the process to end and returns how: `.exited(code)` or `.signaled(signal)`.
    ///
    /// - Throws: ``TestSupportError/Code/timedOut`` (with stderr) if it is still running after `timeLimit`.
    package func waitForExit(timeLimit: Duration) async throws -> ProcessExitStatus {
        do {
            return try await launched.waitForExit(timeLimit: timeLimit)
        } catch let error as TestSupportError where error.code == .timedOut {
            throw TestSupportError(
                code: .timedOut,
                message: "dragonfly (pid \(pid)) did not exit within \(timeLimit); stderr:\n\(tail(stderrText()))"
            )
        }
    }
}

/// Starts the built `dragonfly` executable with `arguments`, runs `body` with it, and SIGKILLs and reaps it
/// (and everything in its process group) at the end of the scope, also when `body` throws.
///
/// The process runs in a scratch directory's files: stdin is empty (or `standardInput`), stdout and stderr
/// are captured (``DragonflyProcess/stderrText()``). With `readyFile: true`, `--ready-file <dir>/ready.json`
/// is appended to the arguments; wait for it with ``DragonflyProcess/awaitReady(timeLimit:)``.
///
/// - Parameters:
///   - arguments: The arguments after the executable, e.g. `["daemon", "--peer-listen", "127.0.0.1:0"]`.
///   - environment: Variables added to this process's environment for the child.
///   - readyFile: Whether to append `--ready-file`.
///   - executablePath: The executable to run; by default ``DragonflyExecutable/locate(environment:testExecutablePath:)``.
///   - standardInput: Bytes for the process's stdin; empty by default.
///   - workingDirectory: The process's working directory; the test's by default.
package func withDragonfly<Value>(
    _ arguments: [String],
    environment: [String: String] = [:],
    readyFile: Bool = true,
    executablePath: String? = nil,
    standardInput: [UInt8]? = nil,
    workingDirectory: String? = nil,
    isolation: isolated (any Actor)? = #isolation,
    _ body: (DragonflyProcess) async throws -> Value
) async throws -> Value {
    let executable: String
    if let executablePath {
        guard isExecutableFile(executablePath) else {
            throw TestSupportError(
                code: .binaryNotFound,
                message: "no executable at \(executablePath); run `swift build` first"
            )
        }
        executable = executablePath
    } else {
        executable = try DragonflyExecutable.locate()
    }
    let directory = try TemporaryDirectory(prefix: "dragonfly-test-process-")
    defer { directory.remove() }
    let readyFilePath = readyFile ? directory.appending("ready.json") : nil
    let fullArguments = arguments + (readyFilePath.map { ["--ready-file", $0] } ?? [])
    return try await withLaunchedProcess(
        executablePath: executable,
        arguments: fullArguments,
        environment: environment,
        standardInput: standardInput,
        workingDirectory: workingDirectory,
        filesDirectory: directory,
        filesPrefix: "dragonfly",
        name: "dragonfly"
    ) { launched in
        try await body(
            DragonflyProcess(
                launched: launched,
                readyFilePath: readyFilePath,
                directory: directory,
                arguments: fullArguments
            )
        )
    }
}

/// The outcome of ``runDragonfly(_:environment:standardInput:timeLimit:executablePath:workingDirectory:)``.
package struct DragonflyRunResult: Sendable, Hashable {
    /// How the process ended.
    package var status: ProcessExitStatus
    /// Everything it wrote to stdout.
    package var stdout: String
    /// Everything it wrote to stderr.
    package var stderr: String

    /// The exit code, or `nil` if a signal killed the process.
    package var exitCode: Int32? { status.exitCode }
}

/// Runs `dragonfly` with `arguments` to completion, for CLI tests (exit codes, `--print-config`, `version`).
///
/// No `--ready-file` is added. The process is killed and an error thrown if it runs longer than `timeLimit`.
///
/// - Parameters:
///   - standardInput: Text for the process's stdin; empty by default.
package func runDragonfly(
    _ arguments: [String],
    environment: [String: String] = [:],
    standardInput: String? = nil,
    timeLimit: Duration = .seconds(60),
    executablePath: String? = nil,
    workingDirectory: String? = nil,
    isolation: isolated (any Actor)? = #isolation
) async throws -> DragonflyRunResult {
    try await withDragonfly(
        arguments,
        environment: environment,
        readyFile: false,
        executablePath: executablePath,
        standardInput: standardInput.map { Array($0.utf8) },
        workingDirectory: workingDirectory
    ) { process in
        let status = try await process.waitForExit(timeLimit: timeLimit)
        return DragonflyRunResult(status: status, stdout: process.stdoutText(), stderr: process.stderrText())
    }
}
