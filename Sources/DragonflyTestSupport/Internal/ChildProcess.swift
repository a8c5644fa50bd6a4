import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

// Why posix_spawn and not swift-subprocess: the launchers keep a child alive across a test's scope and need
// to (a) look at its exit status while the scope is still running without reaping it, (b) signal it, and
// (c) kill its whole process group (nginx workers, a shell script's `sleep`) and reap it at the end, also
// when the scope throws or is cancelled. Subprocess's `run(…body:)` only reaps after `body` returns and
// offers no non-reaping status check, and its API names executables and redirections with `FilePath` and
// `FileDescriptor` from SystemPackage, which this target does not depend on. The wrapper below is small:
// the child gets its own process group, default signal dispositions, an empty signal mask, stdin/stdout/
// stderr opened on files, and no other inherited descriptors.

/// A child process started with `posix_spawn` and owned by one scope; see the note above for why.
///
/// The child is never reaped before ``terminateAndReap()``: while it is a zombie its PID stays reserved, so
/// ``send(_:)`` and the process-group kill can never hit an unrelated process that reused the PID.
final class ChildProcess: Sendable {
    /// The child's process ID, which is also its process-group ID.
    let pid: pid_t
    /// Set once the child has been reaped; afterwards no signal is sent to its PID.
    private let reapedStatus = Mutex<ProcessExitStatus?>(nil)

    private init(pid: pid_t) {
        self.pid = pid
    }

    /// Starts `executablePath` with `arguments` (without `argv[0]`, which is the path).
    ///
    /// - Parameters:
    ///   - environment: The complete environment of the child.
    ///   - workingDirectory: The child's working directory, or `nil` for ours.
    ///   - standardInputPath: A file the child reads as stdin (`/dev/null` for none).
    ///   - standardOutputPath: A file created (or truncated) for the child's stdout.
    ///   - standardErrorPath: A file created (or truncated) for the child's stderr.
    static func spawn(
        executablePath: String,
        arguments: [String],
        environment: [String: String],
        workingDirectory: String? = nil,
        standardInputPath: String = "/dev/null",
        standardOutputPath: String,
        standardErrorPath: String
    ) throws -> ChildProcess {
        var fileActions = posix_spawn_file_actions_t()
        guard posix_spawn_file_actions_init(&fileActions) == 0 else {
            throw systemCallFailure("posix_spawn_file_actions_init", "could not prepare to start \(executablePath)")
        }
        defer { posix_spawn_file_actions_destroy(&fileActions) }

        var attributes = posix_spawnattr_t()
        guard posix_spawnattr_init(&attributes) == 0 else {
            throw systemCallFailure("posix_spawnattr_init", "could not prepare to start \(executablePath)")
        }
        defer { posix_spawnattr_destroy(&attributes) }

        // Own process group (so the scope can kill the child's children too), every signal at its default
        // disposition and none blocked, whatever the test runner ignores or blocks.
        var allSignals = sigset_t()
        sigfillset(&allSignals)
        var noSignals = sigset_t()
        sigemptyset(&noSignals)
        let flags = POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK
        try check(posix_spawnattr_setflags(&attributes, Int16(flags)), "posix_spawnattr_setflags")
        try check(posix_spawnattr_setpgroup(&attributes, 0), "posix_spawnattr_setpgroup")
        try check(posix_spawnattr_setsigdefault(&attributes, &allSignals), "posix_spawnattr_setsigdefault")
        try check(posix_spawnattr_setsigmask(&attributes, &noSignals), "posix_spawnattr_setsigmask")

        let outputFlags = O_WRONLY | O_CREAT | O_TRUNC
        try check(
            posix_spawn_file_actions_addopen(&fileActions, 0, standardInputPath, O_RDONLY, 0),
            "posix_spawn_file_actions_addopen(stdin)"
        )
        try check(
            posix_spawn_file_actions_addopen(&fileActions, 1, standardOutputPath, outputFlags, 0o644),
            "posix_spawn_file_actions_addopen(stdout)"
        )
        try check(
            posix_spawn_file_actions_addopen(&fileActions, 2, standardErrorPath, outputFlags, 0o644),
            "posix_spawn_file_actions_addopen(stderr)"
        )
        // Descriptors that some library opened without O_CLOEXEC (pipes, sockets) must not leak into the
        // child: a leaked pipe write end would keep another reader from ever seeing EOF.
        if let addCloseFrom = GNUSpawnExtensions.addCloseFrom {
            try check(addCloseFrom(&fileActions, 3), "posix_spawn_file_actions_addclosefrom_np")
        }
        if let workingDirectory {
            guard let addChangeDirectory = GNUSpawnExtensions.addChangeDirectory else {
                throw TestSupportError(
                    code: .systemCallFailed,
                    message:
                        "this C library cannot set a child's working directory (no posix_spawn_file_actions_addchdir_np)"
                )
            }
            try check(addChangeDirectory(&fileActions, workingDirectory), "posix_spawn_file_actions_addchdir_np")
        }

        let argumentVector = [executablePath] + arguments
        let environmentVector = environment.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
        var pid = pid_t()
        let rc = try withCStringArray(argumentVector) { argv in
            try withCStringArray(environmentVector) { envp in
                posix_spawn(&pid, executablePath, &fileActions, &attributes, argv, envp)
            }
        }
        guard rc == 0 else {
            throw systemCallFailure("posix_spawn", errno: rc, "could not start \(executablePath)")
        }
        return ChildProcess(pid: pid)
    }

    /// The exit status if the child has ended, else `nil`. Does not reap it.
    func exitStatus() throws -> ProcessExitStatus? {
        try reapedStatus.withLock { reaped in
            if let reaped { return reaped }
            return try Self.waitForChange(of: pid, flags: WEXITED | WNOHANG | WNOWAIT)
        }
    }

    /// Sends `signal` to the child alone. Does nothing once the child has been reaped.
    func send(_ signal: ProcessSignal) throws {
        try reapedStatus.withLock { reaped in
            guard reaped == nil else { return }
            guard kill(pid, signal.rawValue) == 0 else {
                // ESRCH cannot happen for an unreaped child (a zombie still accepts signals).
                throw systemCallFailure("kill", "could not send \(signal) to process \(pid)")
            }
        }
    }

    /// SIGKILLs the child's whole process group and reaps the child. Safe to call more than once, and from
    /// a cancelled task: the wait runs in a task of its own, which the caller's cancellation does not reach.
    ///
    /// - Returns: How the child ended, or `nil` if it could not be reaped within 10 seconds (a process stuck
    ///   in uninterruptible sleep); it is then left as a zombie.
    @discardableResult
    func terminateAndReap() async -> ProcessExitStatus? {
        // The group kill happens while the child is still unreaped, so the group ID cannot be reused yet.
        let alreadyReaped: ProcessExitStatus? = reapedStatus.withLock { reaped in
            if let reaped { return reaped }
            _ = kill(-pid, SIGKILL)
            _ = kill(pid, SIGKILL)
            return nil
        }
        if let alreadyReaped {
            return alreadyReaped
        }
        return await Task { await self.reapAfterKill() }.value
    }

    private func reapAfterKill() async -> ProcessExitStatus? {
        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: .seconds(10))
        while true {
            let status: ProcessExitStatus? = reapedStatus.withLock { reaped in
                if let reaped { return reaped }
                guard let status = try? Self.waitForChange(of: pid, flags: WEXITED | WNOHANG) else { return nil }
                reaped = status
                return status
            }
            if let status { return status }
            if clock.now >= deadline { return nil }
            // SIGKILL was sent: the child is normally gone within a millisecond.
            try? await clock.sleep(for: .milliseconds(2))
        }
    }

    /// `waitid` for this one child; `nil` when it is still running (WNOHANG).
    private static func waitForChange(of pid: pid_t, flags: Int32) throws -> ProcessExitStatus? {
        while true {
            var info = siginfo_t()
            if waitid(P_PID, id_t(pid), &info, flags) == 0 {
                #if canImport(Glibc)
                let reportedPID = info._sifields._sigchld.si_pid
                let status = info._sifields._sigchld.si_status
                #else
                let reportedPID = info.si_pid
                let status = info.si_status
                #endif
                if reportedPID == 0 { return nil }
                return info.si_code == Int32(CLD_EXITED) ? .exited(status) : .signaled(status)
            }
            guard errno == EINTR else {
                throw systemCallFailure("waitid", "could not check whether process \(pid) has exited")
            }
        }
    }

    private static func check(_ rc: Int32, _ call: String) throws {
        guard rc == 0 else {
            throw systemCallFailure(call, errno: rc, "could not prepare to start a process")
        }
    }
}

/// Calls `body` with a NULL-terminated array of C strings, as `argv`/`envp` expect.
private func withCStringArray<Value>(
    _ strings: [String],
    _ body: (UnsafePointer<UnsafeMutablePointer<CChar>?>) throws -> Value
) throws -> Value {
    var pointers: [UnsafeMutablePointer<CChar>?] = []
    pointers.reserveCapacity(strings.count + 1)
    defer {
        for pointer in pointers {
            free(pointer)
        }
    }
    for string in strings {
        guard let copy = strdup(string) else {
            throw systemCallFailure("strdup", "out of memory while preparing arguments")
        }
        pointers.append(copy)
    }
    pointers.append(nil)
    return try pointers.withUnsafeBufferPointer { buffer in
        guard let base = buffer.baseAddress else {
            throw TestSupportError(code: .systemCallFailed, message: "empty argument vector")
        }
        return try body(base)
    }
}

/// glibc's `posix_spawn_file_actions_addclosefrom_np` (2.34+) and `…_addchdir_np` (2.29+). Swift's Glibc
/// module does not declare them (they need `_GNU_SOURCE`), so they are looked up at run time.
private enum GNUSpawnExtensions {
    typealias AddCloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32
    typealias AddChangeDirectory =
        @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, UnsafePointer<CChar>) -> Int32

    static let addCloseFrom: AddCloseFrom? = lookUp("posix_spawn_file_actions_addclosefrom_np")
    static let addChangeDirectory: AddChangeDirectory? = lookUp("posix_spawn_file_actions_addchdir_np")

    private static func lookUp<Function>(_ name: String) -> Function? {
        guard let handle = dlopen(nil, RTLD_NOW), let symbol = dlsym(handle, name) else { return nil }
        return unsafeBitCast(symbol, to: Function.self)
    }
}
