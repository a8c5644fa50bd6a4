package import GRPCCore

/// The shared join token of a cluster (`security.clusterSecret`), the stopgap until mutual TLS.
///
/// Callers send it as the gRPC metadata value `x-dragonfly-cluster-secret`; servers compare it in constant time.
/// An empty or absent secret means "lab mode": `init?(secret:)` returns `nil` and nothing is checked.
package struct ClusterSecret: Sendable {
    /// The metadata key that carries the secret on a call.
    package static let metadataKey = "x-dragonfly-cluster-secret"

    /// The refusal every server sends when a protected call lacks the secret (or presents a wrong one).
    package static let refusalMessage = "this call needs the cluster secret (security.clusterSecret)"

    private let bytes: [UInt8]

    /// Wraps a configured secret; `nil` when none is configured (`nil` or empty after trimming whitespace).
    package init?(secret: String?) {
        guard let secret else { return nil }
        let trimmed = secret.trimmingASCIIWhitespace()
        guard !trimmed.isEmpty else { return nil }
        self.bytes = Array(trimmed.utf8)
    }

    /// The secret's bytes, for deriving keys from it (for example the scheduler's transfer-grant key).
    package var keyMaterial: [UInt8] { bytes }

    /// Whether `metadata` carries exactly this secret (compared in constant time for a given length).
    package func matches(_ metadata: Metadata) -> Bool {
        var presented: [UInt8]?
        for value in metadata[Self.metadataKey] {
            // A second value is suspicious: accept the call only when exactly one value is present.
            guard presented == nil else { return false }
            switch value {
            case .string(let text): presented = Array(text.utf8)
            case .binary(let data): presented = data
            }
        }
        guard let presented else { return false }
        return Self.constantTimeEqual(presented, bytes)
    }

    /// Adds the secret to outgoing `metadata` (replacing any value already there).
    package func attach(to metadata: inout Metadata) {
        metadata.removeAllValues(forKey: Self.metadataKey)
        metadata.addString(String(decoding: bytes, as: UTF8.self), forKey: Self.metadataKey)
    }

    /// Compares two byte strings without an early exit on the first difference.
    ///
    /// The length is not hidden; the secret's length is not the secret.
    package static func constantTimeEqual(_ lhs: [UInt8], _ rhs: [UInt8]) -> Bool {
        var difference = UInt8(truncatingIfNeeded: lhs.count ^ rhs.count)
        if lhs.count != rhs.count { difference |= 1 }
        let count = Swift.min(lhs.count, rhs.count)
        for index in 0..<count {
            difference |= lhs[index] ^ rhs[index]
        }
        // Walk the rest of the longer one too, so the time depends on the lengths only.
        let longer = lhs.count > rhs.count ? lhs : rhs
        for index in count..<longer.count {
            difference |= longer[index] ^ 0xFF
        }
        return difference == 0
    }
}

/// A server interceptor that refuses, with `PERMISSION_DENIED`, calls to the protected methods that do not carry
/// the cluster secret.
///
/// With no secret configured (`secret == nil`) every call passes, as in lab mode. Method names are gRPC full
/// method names such as `dragonfly.v1.Manager/RegisterScheduler`.
package struct ClusterSecretInterceptor: ServerInterceptor {
    private let secret: ClusterSecret?
    private let protectedMethods: Set<String>

    /// Creates the interceptor.
    ///
    /// - Parameters:
    ///   - secret: The configured secret, or `nil` for lab mode (no check).
    ///   - protectedMethods: Full method names (`package.Service/Method`) that require the secret.
    package init(secret: ClusterSecret?, protectedMethods: Set<String>) {
        self.secret = secret
        self.protectedMethods = protectedMethods
    }

    package func intercept<Input: Sendable, Output: Sendable>(
        request: StreamingServerRequest<Input>,
        context: ServerContext,
        next: @Sendable (StreamingServerRequest<Input>, ServerContext) async throws -> StreamingServerResponse<Output>
    ) async throws -> StreamingServerResponse<Output> {
        if let secret, protectedMethods.contains(context.descriptor.fullyQualifiedMethod),
            !secret.matches(request.metadata)
        {
            return StreamingServerResponse(
                error: RPCError(code: .permissionDenied, message: ClusterSecret.refusalMessage)
            )
        }
        return try await next(request, context)
    }
}

/// A client interceptor that attaches the cluster secret to every call of the client it is installed on.
///
/// Install it only on clients that talk to the cluster's own servers (manager, scheduler, seed peers): the
/// secret must never reach a host outside the cluster.
package struct ClusterSecretClientInterceptor: ClientInterceptor {
    private let secret: ClusterSecret

    /// Creates the interceptor for `secret`.
    package init(secret: ClusterSecret) {
        self.secret = secret
    }

    package func intercept<Input: Sendable, Output: Sendable>(
        request: StreamingClientRequest<Input>,
        context: ClientContext,
        next: (StreamingClientRequest<Input>, ClientContext) async throws -> StreamingClientResponse<Output>
    ) async throws -> StreamingClientResponse<Output> {
        var request = request
        secret.attach(to: &request.metadata)
        return try await next(request, context)
    }
}

extension String {
    fileprivate func trimmingASCIIWhitespace() -> String {
        let isSpace: (Character) -> Bool = { $0 == " " || $0 == "\t" || $0 == "\n" || $0 == "\r" }
        guard let first = firstIndex(where: { !isSpace($0) }), let last = lastIndex(where: { !isSpace($0) }) else {
            return ""
        }
        return String(self[first...last])
    }
}
