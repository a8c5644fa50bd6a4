import Crypto
package import DragonflyCore
package import DragonflyRPC
package import GRPCCore
import Synchronization

/// What the scheduler knows about the caller of the RPC being served: whether it presented the cluster secret.
///
/// Set by ``SchedulerCallerInterceptor`` for the whole call, the streaming body included, because the simple
/// service protocol hands handlers no request metadata.
package enum SchedulerCaller {
    /// Whether the current call carries the configured cluster secret (always `false` without one).
    @TaskLocal package static var hasClusterSecret = false
}

/// Records, for each call, whether it carries the cluster secret (``SchedulerCaller/hasClusterSecret``), and
/// refuses the scheduler methods that need it (``SchedulerService/protectedMethods``) when a secret is
/// configured and the call lacks it.
package struct SchedulerCallerInterceptor: ServerInterceptor {
    private let secret: ClusterSecret?
    private let guardInterceptor: ClusterSecretInterceptor

    /// Creates the interceptor for the configured `secret` (`nil`: lab mode, nothing is refused).
    package init(secret: ClusterSecret?, protectedMethods: Set<String>) {
        self.secret = secret
        self.guardInterceptor = ClusterSecretInterceptor(secret: secret, protectedMethods: protectedMethods)
    }

    package func intercept<Input: Sendable, Output: Sendable>(
        request: StreamingServerRequest<Input>,
        context: ServerContext,
        next: @Sendable (StreamingServerRequest<Input>, ServerContext) async throws -> StreamingServerResponse<Output>
    ) async throws -> StreamingServerResponse<Output> {
        let presented = secret?.matches(request.metadata) ?? false
        var response = try await SchedulerCaller.$hasClusterSecret.withValue(presented) {
            try await guardInterceptor.intercept(request: request, context: context, next: next)
        }
        // A streaming handler runs in the response's producer, after this function returned: carry the flag
        // into it too.
        if case .success(var contents) = response.accepted {
            let producer = contents.producer
            contents.producer = { writer in
                try await SchedulerCaller.$hasClusterSecret.withValue(presented) { try await producer(writer) }
            }
            response.accepted = .success(contents)
        }
        return response
    }
}

/// The per-task transfer grant (the stopgap of "Security, part 1" until part 2's signed grants): the hex of
/// `HMAC-SHA256(key, "dragonfly-transfer-grant-v1\n" + taskID)`.
///
/// The key is `HMAC-SHA256(clusterSecret, "transfer-grant")` when a cluster secret is configured, so every
/// scheduler of the cluster hands out the same grant, else 32 random bytes for this process.
package struct TransferGrantKey: Sendable {
    private let key: SymmetricKey

    /// The key for `secret`, or a random one without a secret.
    package init(secret: ClusterSecret?) {
        if let secret {
            let derived = HMAC<SHA256>.authenticationCode(
                for: Array("transfer-grant".utf8), using: SymmetricKey(data: secret.keyMaterial))
            key = SymmetricKey(data: Array(derived))
        } else {
            key = SymmetricKey(size: .bits256)
        }
    }

    /// The grant of `taskID` (64 lowercase hex characters).
    package func grant(forTask taskID: String) -> String {
        let code = HMAC<SHA256>.authenticationCode(
            for: Array("dragonfly-transfer-grant-v1\n\(taskID)".utf8), using: key)
        return code.map { byte in
            let hex = String(byte, radix: 16)
            return byte < 16 ? "0" + hex : hex
        }.joined()
    }

    /// Whether `presented` is the grant of `taskID` (constant time).
    package func accepts(_ presented: String, forTask taskID: String) -> Bool {
        guard !presented.isEmpty, presented.utf8.count <= 256 else { return false }
        return ClusterSecret.constantTimeEqual(Array(presented.utf8), Array(grant(forTask: taskID).utf8))
    }
}

/// The seed hosts the cluster vouches for (DESIGN §11 until certificates): the `seedPeers` addresses of the
/// configuration and the seed peers the manager lists, each `IP:port` of a host's Peer gRPC service.
///
/// A host announcing type `super` is treated as a seed only when the cluster says so: with a cluster secret, when
/// the announcement carries the secret; without one, when its Peer address is on this list and the
/// announcement comes from the host's own IP. Every other host is normal, whatever it announces.
package final class SeedRoster: Sendable {
    private let configured: Set<String>
    private let learnt = Mutex<Set<String>>([])
    /// Addresses learnt from the manager kept at most.
    package static let maxLearnt = 10_000

    /// Creates the roster from `seedPeers` (`host:port` strings; IP literals are compared as written).
    package init(configured: [String]) {
        self.configured = Set(configured.map(Self.normalised))
    }

    /// Replaces the seed peers learnt from the manager.
    package func replaceLearnt(_ addresses: [String]) {
        let set = Set(addresses.prefix(Self.maxLearnt).map(Self.normalised))
        learnt.withLock { $0 = set }
    }

    /// Whether `address` (`IP:port`) is on the list.
    package func contains(_ address: String) -> Bool {
        let key = Self.normalised(address)
        return configured.contains(key) || learnt.withLock { $0.contains(key) }
    }

    /// Whether the roster names any seed peer.
    package var isEmpty: Bool { configured.isEmpty && learnt.withLock { $0.isEmpty } }

    private static func normalised(_ address: String) -> String {
        String(address.lowercased().filter { $0 != "[" && $0 != "]" })
    }

    /// `host:port` of `ip` and `port`, as the roster stores it.
    package static func address(ip: String, port: Int) -> String {
        normalised("\(ip):\(port)")
    }
}

/// The URL schemes the scheduler schedules (DESIGN §11, "Security, part 1" finding 1): network sources only.
/// A download asked over the network never reads a local path, so `file://` (and anything unknown) is refused.
package enum ScheduledSchemes {
    /// Schemes a registration, seed trigger or preheat may name.
    package static var allowed: Set<String> { NetworkSchemes.all }

    /// Whether `url` names a network source the scheduler may schedule.
    package static func isAllowed(_ url: String) -> Bool {
        guard let scheme = NetworkSchemes.scheme(of: url) else { return false }
        return allowed.contains(scheme)
    }

    /// The refusal for a URL that is not a network source.
    package static func refusal(for url: String) -> DragonflyError {
        DragonflyError(
            code: .invalidArgument,
            message: "the scheduler schedules only network sources (\(allowed.sorted().joined(separator: ", "))); "
                + "'\(Redaction.url(url.prefix(512)))' is not one")
    }
}

/// The IP of a gRPC peer string: `127.0.0.1` from `ipv4:127.0.0.1:8002`, `::1` from `ipv6:[::1]:8002`; an
/// IPv4-mapped IPv6 address gives its IPv4 form. `nil` for a Unix socket or anything else.
package func callerIP(ofPeer peer: String) -> String? {
    if peer.hasPrefix("ipv4:") {
        let rest = peer.dropFirst(5)
        guard let colon = rest.lastIndex(of: ":") else { return String(rest) }
        return String(rest[..<colon])
    }
    if peer.hasPrefix("ipv6:") {
        var rest = peer.dropFirst(5)
        if rest.hasPrefix("["), let close = rest.firstIndex(of: "]") {
            rest = rest[rest.index(after: rest.startIndex)..<close]
        }
        return canonicalIP(String(rest))
    }
    return nil
}

/// `ip` lowercased, without brackets, and an IPv4-mapped IPv6 address (`::ffff:1.2.3.4`) as its IPv4 form.
package func canonicalIP(_ ip: String) -> String {
    var value = String(ip.lowercased().filter { $0 != "[" && $0 != "]" })
    if value.hasPrefix("::ffff:"), value.contains(".") { value = String(value.dropFirst(7)) }
    return value
}
