/// The error every test-support helper throws: a stable ``Code``, a message that says what went wrong and how
/// to fix it, and the underlying cause (for example a `SubprocessError` or an `errno` value).
package struct TestSupportError: Error, Sendable, CustomStringConvertible {
    /// What kind of failure this is.
    package struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Wrapped: Hashable, Sendable {
            case timedOut, binaryNotFound, processExitedEarly, commandFailed
            case portUnavailable, invalidReadyFile, systemCallFailed
        }
        private let wrapped: Wrapped
        private init(_ wrapped: Wrapped) { self.wrapped = wrapped }

        /// ``poll(every:timeLimit:description:until:)`` or a wait built on it ran out of time.
        package static let timedOut = Code(.timedOut)
        /// An executable (the built `dragonfly`, `nginx`, PostgreSQL's binaries) was not found.
        package static let binaryNotFound = Code(.binaryNotFound)
        /// A launched process exited before it became ready; the message carries its stderr or log.
        package static let processExitedEarly = Code(.processExitedEarly)
        /// A helper command (`initdb`, `pg_ctl`, `psql`, `nginx -t`) exited with a failure.
        package static let commandFailed = Code(.commandFailed)
        /// A server could not bind a free port after the bounded number of retries.
        package static let portUnavailable = Code(.portUnavailable)
        /// The ready file (DESIGN §15) exists but is not the expected JSON.
        package static let invalidReadyFile = Code(.invalidReadyFile)
        /// A system call (`socket`, `posix_spawn`, `mkdtemp`, …) failed; the cause carries `errno`.
        package static let systemCallFailed = Code(.systemCallFailed)

        package var description: String { String(describing: wrapped) }
    }

    /// What kind of failure this is.
    package var code: Code
    /// What went wrong and how to fix it.
    package var message: String
    /// The underlying error, if any.
    package var cause: (any Error)?

    package init(code: Code, message: String, cause: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.cause = cause
    }

    package var description: String {
        if let cause { "\(code): \(message) (cause: \(cause))" } else { "\(code): \(message)" }
    }
}

/// An `errno` value captured right after a failed system call, with the call's name.
package struct SystemCallError: Error, Sendable, CustomStringConvertible {
    /// The system call that failed, e.g. `bind`.
    package var call: String
    /// The `errno` it set.
    package var errno: Int32

    package var description: String { "\(call) failed: \(describeErrno(errno)) (errno \(errno))" }
}
