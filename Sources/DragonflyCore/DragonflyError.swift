/// The error every dragonfly module throws for a failure a caller can act on.
///
/// Modelled on `RPCError` and `FileSystemError`: a stable ``Code``, a message that says what went wrong and
/// how to fix it, and the underlying cause. Edges map it: gRPC via the code, HTTP via ``Code/httpStatus``,
/// the CLI via ``Code/exitCode``.
package struct DragonflyError: Error, Sendable, CustomStringConvertible {
    /// What kind of failure this is; stable across releases.
    package struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Wrapped: Hashable, Sendable {
            case invalidArgument, notFound, alreadyExists, permissionDenied, unauthenticated
            case failedPrecondition, resourceExhausted, dataLoss, unavailable, deadlineExceeded
            case cancelled, unimplemented, internalError, originError, configuration, usage
        }
        private let wrapped: Wrapped
        private init(_ wrapped: Wrapped) { self.wrapped = wrapped }

        /// A request or value was malformed.
        package static let invalidArgument = Code(.invalidArgument)
        /// A task, piece, peer or record does not exist.
        package static let notFound = Code(.notFound)
        /// A record with the same identity exists.
        package static let alreadyExists = Code(.alreadyExists)
        /// The caller is known but may not do this.
        package static let permissionDenied = Code(.permissionDenied)
        /// The caller is not authenticated.
        package static let unauthenticated = Code(.unauthenticated)
        /// The system is not in a state that allows this (e.g. a data dir locked by another process).
        package static let failedPrecondition = Code(.failedPrecondition)
        /// A limit was hit (upload slots, queue bounds, quotas).
        package static let resourceExhausted = Code(.resourceExhausted)
        /// Bytes failed verification or stored data is corrupt.
        package static let dataLoss = Code(.dataLoss)
        /// A peer, scheduler or origin cannot be reached right now; retrying may help.
        package static let unavailable = Code(.unavailable)
        /// A deadline passed.
        package static let deadlineExceeded = Code(.deadlineExceeded)
        /// The work was cancelled.
        package static let cancelled = Code(.cancelled)
        /// The operation or scheme is not supported.
        package static let unimplemented = Code(.unimplemented)
        /// A bug or an unexpected system failure.
        package static let internalError = Code(.internalError)
        /// The origin answered with an error status; the message carries it.
        package static let originError = Code(.originError)
        /// A configuration file or value is invalid; the message names the key path.
        package static let configuration = Code(.configuration)
        /// A command-line usage error; the message names the flag.
        package static let usage = Code(.usage)

        package var description: String { String(describing: wrapped) }

        /// The process exit code for this failure (DESIGN §15): 2 for usage and configuration errors, else 1.
        package var exitCode: Int32 {
            switch wrapped {
            case .configuration, .usage, .invalidArgument: 2
            default: 1
            }
        }
    }

    package var code: Code
    package var message: String
    package var cause: (any Error)?

    package init(code: Code, message: String, cause: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.cause = cause
    }

    package var description: String {
        if let cause { "\(message) (\(cause))" } else { message }
    }
}

extension DragonflyError {
    /// A configuration error naming the YAML key path, e.g. `storage.gc.ttl`.
    package static func configuration(keyPath: String, _ problem: String) -> DragonflyError {
        DragonflyError(code: .configuration, message: "invalid configuration at '\(keyPath)': \(problem)")
    }
}
