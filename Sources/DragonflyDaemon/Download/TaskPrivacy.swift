/// Whether a task's bytes may be served without asking the origin.
///
/// A task first read from the origin with credentials (`Authorization` or `Cookie`) is private: the reader
/// records ``header`` among the task's response headers, which the scheduler hands to every peer of the task
/// with the layout. The proxy serves a private task only after the origin accepted the client's own request
/// headers (a `HEAD`), so a cached private blob never reaches a client the origin would refuse.
enum TaskPrivacy {
    /// The task header marking a private task (value `1`).
    static let header = "x-dragonfly-private"

    /// Request header names that make a fetch private.
    static let credentialHeaders: Set<String> = ["authorization", "cookie"]

    /// Whether a fetch with request `headers` carries credentials.
    static func carriesCredentials(_ headers: [String: String]) -> Bool {
        headers.keys.contains { credentialHeaders.contains($0.lowercased()) }
    }

    /// Whether task headers mark the task private.
    static func isPrivate(_ taskHeaders: [String: String]) -> Bool {
        taskHeaders[header] != nil
    }
}
