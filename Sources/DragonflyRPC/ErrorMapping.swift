package import DragonflyCore
package import GRPCCore

/// Servers throw `DragonflyError` from handlers; gRPC turns it into a status with the mapped code, the message,
/// and the dragonfly code in the `df-error-code` metadata, so a dragonfly client gets the same code back
/// (``DragonflyError/init(rpcError:)``) even where gRPC has no exact equivalent (origin, configuration, usage).
extension DragonflyError: RPCErrorConvertible {
    /// Metadata key that carries the dragonfly error code across gRPC.
    package static let codeMetadataKey = "df-error-code"

    package var rpcErrorCode: RPCError.Code { code.rpcErrorCode }

    package var rpcErrorMessage: String { message }

    package var rpcErrorMetadata: Metadata {
        [Self.codeMetadataKey: .string(code.description)]
    }
}

extension DragonflyError.Code {
    /// Every code, for decoding `df-error-code` metadata.
    static let all: [DragonflyError.Code] = [
        .invalidArgument, .notFound, .alreadyExists, .permissionDenied, .unauthenticated, .failedPrecondition,
        .resourceExhausted, .dataLoss, .unavailable, .deadlineExceeded, .cancelled, .unimplemented,
        .internalError, .originError, .configuration, .usage,
    ]

    /// The code named `name` (its `description`), if there is one.
    package init?(name: String) {
        guard let code = Self.all.first(where: { $0.description == name }) else { return nil }
        self = code
    }

    /// The gRPC status code a server answers with for this code.
    package var rpcErrorCode: RPCError.Code {
        switch self {
        case .invalidArgument, .configuration, .usage: .invalidArgument
        case .notFound: .notFound
        case .alreadyExists: .alreadyExists
        case .permissionDenied: .permissionDenied
        case .unauthenticated: .unauthenticated
        case .resourceExhausted: .resourceExhausted
        case .dataLoss: .dataLoss
        case .unavailable: .unavailable
        case .deadlineExceeded: .deadlineExceeded
        case .cancelled: .cancelled
        case .unimplemented: .unimplemented
        // The origin refused the request: repeating it unchanged will not help (so not UNAVAILABLE, which
        // clients retry); the origin's status is in the message and in `df-source-error-bin`.
        case .failedPrecondition, .originError: .failedPrecondition
        default: .internalError
        }
    }

    /// The dragonfly code for a gRPC status code received without `df-error-code` metadata.
    package init(rpcErrorCode: RPCError.Code) {
        switch rpcErrorCode {
        case .cancelled: self = .cancelled
        case .invalidArgument, .outOfRange: self = .invalidArgument
        case .deadlineExceeded: self = .deadlineExceeded
        case .notFound: self = .notFound
        case .alreadyExists: self = .alreadyExists
        case .permissionDenied: self = .permissionDenied
        case .resourceExhausted: self = .resourceExhausted
        case .failedPrecondition: self = .failedPrecondition
        // ABORTED is a conflict that a later attempt may not hit.
        case .aborted, .unavailable: self = .unavailable
        case .unimplemented: self = .unimplemented
        case .dataLoss: self = .dataLoss
        case .unauthenticated: self = .unauthenticated
        default: self = .internalError
        }
    }
}

extension DragonflyError {
    /// The error a gRPC call failed with, as a `DragonflyError`: the server's dragonfly code when it sent one,
    /// else the mapped gRPC code; the message is kept and the `RPCError` becomes the cause.
    package init(rpcError: RPCError) {
        let sentCode = rpcError.metadata[stringValues: Self.codeMetadataKey].first { _ in true }
        let code = sentCode.flatMap { DragonflyError.Code(name: $0) } ?? Code(rpcErrorCode: rpcError.code)
        self.init(code: code, message: rpcError.message, cause: rpcError)
    }

    /// Any error as a `DragonflyError`: itself, a converted `RPCError`, `.cancelled` for cancellation, else
    /// `.internalError` wrapping it.
    package init(converting error: any Error) {
        switch error {
        case let error as DragonflyError: self = error
        case let error as RPCError: self.init(rpcError: error)
        case is CancellationError: self.init(code: .cancelled, message: "the operation was cancelled", cause: error)
        default: self.init(code: .internalError, message: "unexpected error: \(error)", cause: error)
        }
    }
}

/// Runs a client call and rethrows its failure as a `DragonflyError` (see ``DragonflyError/init(converting:)``).
package func convertingRPCErrors<Value>(
    isolation: isolated (any Actor)? = #isolation,
    _ body: () async throws -> Value
) async throws(DragonflyError) -> Value {
    do {
        return try await body()
    } catch {
        throw DragonflyError(converting: error)
    }
}
