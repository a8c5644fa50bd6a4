package import DragonflyCore
import DragonflyRPC
import Synchronization

/// The transfer grants a daemon learnt from its schedulers, per task (DESIGN §11; the stopgap of "Security,
/// part 1" until signed grants).
///
/// A scheduler hands every peer it schedules for a task the task's grant (with its parents, or with the order
/// to read the origin). A child presents it to its parents (`SyncPieces.transfer_grant`, the piece request's
/// `X-Dragonfly-Transfer-Grant` header, `StatTask.transfer_grant`); a parent serves a **private** task (one
/// first read with credentials, `TaskPrivacy`) only to a caller presenting a grant it holds itself for that
/// task. Public tasks need no grant. A daemon that holds no grant for a private task (it restarted, or never
/// registered it) serves it to nobody: it fails closed.
///
/// Bounded: at most ``maximumTasks`` tasks (least recently used forgotten first) and
/// ``maximumGrantsPerTask`` grants per task (schedulers of one cluster agree on one; a failover without a
/// cluster secret adds another).
package final class TransferGrants: Sendable {
    /// Tasks remembered.
    package static let maximumTasks = 8192
    /// Grants remembered per task (the newest are kept).
    package static let maximumGrantsPerTask = 4
    /// The longest grant accepted (hex of an HMAC-SHA256 is 64; part 2's signed grants are longer).
    package static let maximumGrantLength = 4096
    /// The piece request header carrying the grant.
    package static let headerName = "X-Dragonfly-Transfer-Grant"

    private let grants = Mutex(LRUCache<TaskID, [String]>(capacity: TransferGrants.maximumTasks))

    package init() {}

    /// Remembers `grant` for `taskID` (an empty or oversized grant is ignored).
    package func record(_ grant: String, for taskID: TaskID) {
        guard !grant.isEmpty, grant.utf8.count <= Self.maximumGrantLength else { return }
        grants.withLock { cache in
            var list = cache.value(forKey: taskID) ?? []
            guard !list.contains(grant) else { return }
            list.append(grant)
            if list.count > Self.maximumGrantsPerTask { list.removeFirst(list.count - Self.maximumGrantsPerTask) }
            cache.setValue(list, forKey: taskID)
        }
    }

    /// The newest grant held for `taskID`, to present to parents; empty when none.
    package func current(for taskID: TaskID) -> String {
        grants.withLock { $0.value(forKey: taskID)?.last } ?? ""
    }

    /// Whether `presented` is a grant held for `taskID` (compared in constant time per grant).
    package func accepts(_ presented: String, for taskID: TaskID) -> Bool {
        guard !presented.isEmpty, presented.utf8.count <= Self.maximumGrantLength else { return false }
        let held = grants.withLock { $0.value(forKey: taskID) } ?? []
        var matched = false
        let bytes = Array(presented.utf8)
        for grant in held where ClusterSecret.constantTimeEqual(Array(grant.utf8), bytes) { matched = true }
        return matched
    }

    /// Whether a caller presenting `presented` may be told about or served `taskID`, whose stored response
    /// headers are `headers`: always for a public task, only with a held grant for a private one.
    package func mayServe(_ taskID: TaskID, headers: [String: String], presented: String) -> Bool {
        !TaskPrivacy.isPrivate(headers) || accepts(presented, for: taskID)
    }
}
