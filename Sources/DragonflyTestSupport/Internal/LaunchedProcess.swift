#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A child process together with the files that hold its standard streams.
struct LaunchedProcess: Sendable {
    /// The running (or ended, not yet reaped) child.
    let child: ChildProcess
    /// The file the child's stdout goes to.
    let standardOutputPath: String
    /// The file the child's stderr goes to.
    let standardErrorPath: String
    /// A short name for messages, e.g. `nginx` or the executable path.
    let name: String

    /// Everything the child wrote to stdout so far.
    func standardOutputText() -> String { readFileText(standardOutputPath) }

    /// Everything the child wrote to stderr so far.
    func standardErrorText() -> String { readFileText(standardErrorPath) }

    /// Waits for the child to end and returns how it ended, without reaping it.
    func waitForExit(timeLimit: Duration) async throws -> ProcessExitStatus {
        var status: ProcessExitStatus?
        try await poll(
            every: .milliseconds(10), timeLimit: timeLimit, description: "\(name) (pid \(child.pid)) to exit"
        ) {
            status = try child.exitStatus()
            return status != nil
        }
        guard let status else {
            preconditionFailure("poll returned without the condition holding")
        }
        return status
    }
}

/// Starts a process with its stdin, stdout and stderr on files in `filesDirectory`, runs `body`, and
/// SIGKILLs the process group and reaps the child afterwards, also when `body` throws or the task is
/// cancelled.
///
/// - Parameters:
///   - environment: Variables added to (or replacing) this process's environment for the child.
///   - standardInput: Bytes the child reads from stdin; `nil` gives it an empty stdin.
///   - filesPrefix: The start of the stream files' names: `<prefix>.stdin`, `.stdout`, `.stderr`.
func withLaunchedProcess<Value>(
    executablePath: String,
    arguments: [String],
    environment: [String: String] = [:],
    standardInput: [UInt8]? = nil,
    workingDirectory: String? = nil,
    filesDirectory: TemporaryDirectory,
    filesPrefix: String,
    name: String,
    isolation: isolated (any Actor)? = #isolation,
    _ body: (LaunchedProcess) async throws -> Value
) async throws -> Value {
    let inputPath = try filesDirectory.writeFile("\(filesPrefix).stdin", contents: standardInput ?? [])
    let fullEnvironment = currentEnvironment().merging(environment) { _, override in override }
    var spawnAttempts = 0
    let child: ChildProcess
    while true {
        do {
            child = try ChildProcess.spawn(
                executablePath: executablePath,
                arguments: arguments,
                environment: fullEnvironment,
                workingDirectory: workingDirectory,
                standardInputPath: inputPath,
                standardOutputPath: filesDirectory.appending("\(filesPrefix).stdout"),
                standardErrorPath: filesDirectory.appending("\(filesPrefix).stderr")
            )
            break
        } catch let error as TestSupportError
            where (error.cause as? SystemCallError)?.errno == ETXTBSY && spawnAttempts < 20
        {
            // A script written a moment ago is still open for writing in a child that another thread is
            // spawning (it inherited the descriptor until its exec); that lasts microseconds.
            spawnAttempts += 1
            try await Task.sleep(for: .milliseconds(5))
        }
    }
    let launched = LaunchedProcess(
        child: child,
        standardOutputPath: filesDirectory.appending("\(filesPrefix).stdout"),
        standardErrorPath: filesDirectory.appending("\(filesPrefix).stderr"),
        name: name
    )
    let value: Value
    do {
        value = try await body(launched)
    } catch {
        await child.terminateAndReap()
        throw error
    }
    await child.terminateAndReap()
    return value
}

/// The result of a short command run to completion.
struct CommandOutput: Sendable {
    /// How the command ended.
    var status: ProcessExitStatus
    /// Its whole stdout.
    var standardOutput: String
    /// Its whole stderr.
    var standardError: String
}

/// Runs a short command (`initdb`, `pg_ctl`, `psql`, `nginx -t`) to completion and collects its output.
///
/// - Throws: ``TestSupportError/Code/timedOut`` (with the stderr so far) if it runs longer than `timeLimit`;
///   the command is then killed. A non-zero exit is not an error here; callers look at `status`.
func runCommand(
    _ executablePath: String,
    _ arguments: [String],
    environment: [String: String] = [:],
    standardInput: [UInt8]? = nil,
    workingDirectory: String? = nil,
    timeLimit: Duration = .seconds(60)
) async throws -> CommandOutput {
    guard isExecutableFile(executablePath) else {
        throw TestSupportError(code: .binaryNotFound, message: "no executable at \(executablePath)")
    }
    let directory = try TemporaryDirectory(prefix: "dragonfly-test-cmd-")
    defer { directory.remove() }
    let name = executablePath.split(separator: "/").last.map(String.init) ?? executablePath
    return try await withLaunchedProcess(
        executablePath: executablePath,
        arguments: arguments,
        environment: environment,
        standardInput: standardInput,
        workingDirectory: workingDirectory,
        filesDirectory: directory,
        filesPrefix: "command",
        name: name
    ) { launched in
        let status: ProcessExitStatus
        do {
            status = try await launched.waitForExit(timeLimit: timeLimit)
        } catch let error as TestSupportError where error.code == .timedOut {
            throw TestSupportError(
                code: .timedOut,
                message: "\(executablePath) \(arguments.joined(separator: " ")) did not finish within \(timeLimit); "
                    + "stderr: \(tail(launched.standardErrorText()))"
            )
        }
        return CommandOutput(
            status: status,
            standardOutput: launched.standardOutputText(),
            standardError: launched.standardErrorText()
        )
    }
}
