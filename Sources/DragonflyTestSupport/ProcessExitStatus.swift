#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// How a child process ended: with an exit code, or killed by a signal.
package enum ProcessExitStatus: Sendable, Hashable, CustomStringConvertible {
    /// The process called `exit` (or returned from `main`) with this code.
    case exited(Int32)
    /// The process was terminated by this signal number (e.g. `SIGKILL`, 9).
    case signaled(Int32)

    /// The exit code, or `nil` when a signal ended the process.
    package var exitCode: Int32? {
        if case .exited(let code) = self { code } else { nil }
    }

    /// The terminating signal, or `nil` when the process exited normally.
    package var signal: Int32? {
        if case .signaled(let number) = self { number } else { nil }
    }

    /// Whether the process exited with code 0.
    package var isSuccess: Bool { self == .exited(0) }

    package var description: String {
        switch self {
        case .exited(let code): "exited with code \(code)"
        case .signaled(let number): "killed by signal \(number) (\(ProcessSignal(rawValue: number)))"
        }
    }
}

/// A signal to send to a child process.
package struct ProcessSignal: Sendable, Hashable, CustomStringConvertible {
    /// The signal number.
    package var rawValue: Int32

    package init(rawValue: Int32) {
        self.rawValue = rawValue
    }

    /// `SIGTERM`: graceful stop (long-running roles exit 0, `get` exits 143).
    package static let terminate = ProcessSignal(rawValue: SIGTERM)
    /// `SIGINT`: like Ctrl-C (`get` exits 130).
    package static let interrupt = ProcessSignal(rawValue: SIGINT)
    /// `SIGKILL`: cannot be caught.
    package static let kill = ProcessSignal(rawValue: SIGKILL)
    /// `SIGHUP`.
    package static let hangUp = ProcessSignal(rawValue: SIGHUP)
    /// `SIGQUIT`.
    package static let quit = ProcessSignal(rawValue: SIGQUIT)
    /// `SIGUSR1`.
    package static let userDefined1 = ProcessSignal(rawValue: SIGUSR1)
    /// `SIGUSR2`.
    package static let userDefined2 = ProcessSignal(rawValue: SIGUSR2)
    /// `SIGSTOP`: suspends the process.
    package static let stop = ProcessSignal(rawValue: SIGSTOP)
    /// `SIGCONT`: resumes a stopped process.
    package static let `continue` = ProcessSignal(rawValue: SIGCONT)

    package var description: String {
        switch rawValue {
        case SIGTERM: "SIGTERM"
        case SIGINT: "SIGINT"
        case SIGKILL: "SIGKILL"
        case SIGHUP: "SIGHUP"
        case SIGQUIT: "SIGQUIT"
        case SIGUSR1: "SIGUSR1"
        case SIGUSR2: "SIGUSR2"
        case SIGSTOP: "SIGSTOP"
        case SIGCONT: "SIGCONT"
        case SIGPIPE: "SIGPIPE"
        case SIGSEGV: "SIGSEGV"
        case SIGABRT: "SIGABRT"
        case SIGILL: "SIGILL"
        case SIGTRAP: "SIGTRAP"
        case SIGBUS: "SIGBUS"
        default: "signal \(rawValue)"
        }
    }
}
