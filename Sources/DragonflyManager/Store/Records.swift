package import DragonflyCore

#if canImport(FoundationEssentials)
package import FoundationEssentials
#else
package import Foundation
#endif

// MARK: Users and tokens

/// A manager user's role (DESIGN §10): `root` administers everything, `guest` reads and runs jobs.
package enum UserRole: String, Sendable, Hashable, Codable, CaseIterable {
    case root
    case guest
}

/// Whether a user may sign in.
package enum UserState: String, Sendable, Hashable, Codable, CaseIterable {
    case enabled
    case disabled
}

/// A stored user. The password is kept only as a hash computed by the caller.
package struct UserRecord: Sendable, Hashable {
    package var id: Int
    package var name: String
    package var passwordHash: String
    package var email: String?
    package var role: UserRole
    package var state: UserState
    package var createdAt: Date
    package var updatedAt: Date
}

/// The fields of a new user.
package struct NewUser: Sendable, Hashable {
    package var name: String
    package var passwordHash: String
    package var email: String?
    package var role: UserRole

    package init(name: String, passwordHash: String, email: String? = nil, role: UserRole = .guest) {
        self.name = name
        self.passwordHash = passwordHash
        self.email = email
        self.role = role
    }
}

/// A partial update of a user; `nil` fields stay as they are.
package struct UserUpdate: Sendable, Hashable {
    package var name: String?
    package var passwordHash: String?
    package var email: String?
    package var role: UserRole?
    package var state: UserState?

    package init(
        name: String? = nil,
        passwordHash: String? = nil,
        email: String? = nil,
        role: UserRole? = nil,
        state: UserState? = nil
    ) {
        self.name = name
        self.passwordHash = passwordHash
        self.email = email
        self.role = role
        self.state = state
    }
}

/// Whether a personal access token is usable (it is also unusable after `expiredAt`).
package enum TokenState: String, Sendable, Hashable, Codable, CaseIterable {
    case active
    case inactive
}

/// A stored personal access token; the clear token is never stored, only its hash.
package struct PersonalAccessTokenRecord: Sendable, Hashable {
    package var id: Int
    package var name: String
    package var tokenHash: String
    package var scopes: [String]
    package var state: TokenState
    package var expiredAt: Date
    package var userID: Int
    package var createdAt: Date
    package var updatedAt: Date
}

// MARK: Clusters and their members

/// Which family of clusters (and members) a call is about.
package enum ClusterKind: String, Sendable, Hashable, CaseIterable, CustomStringConvertible {
    /// Scheduler clusters and their schedulers.
    case scheduler
    /// Seed-peer clusters and their seed peers.
    case seedPeer

    package var description: String { self == .scheduler ? "scheduler cluster" : "seed-peer cluster" }
}

/// Which hosts a scheduler cluster serves: by IDC, location, CIDRs and hostname regular expressions.
package struct ClusterScopes: Sendable, Hashable, Codable {
    package var idc: String
    package var location: String
    package var cidrs: [String]
    package var hostnames: [String]

    package init(idc: String = "", location: String = "", cidrs: [String] = [], hostnames: [String] = []) {
        self.idc = idc
        self.location = location
        self.cidrs = cidrs
        self.hostnames = hostnames
    }
}

/// A stored scheduler or seed-peer cluster.
package struct ClusterRecord: Sendable, Hashable {
    package var id: Int
    package var kind: ClusterKind
    package var name: String
    package var bio: String
    package var config: JSONValue
    package var clientConfig: JSONValue
    package var scopes: ClusterScopes
    package var isDefault: Bool
    package var createdAt: Date
    package var updatedAt: Date
}

/// The fields of a new cluster.
package struct NewCluster: Sendable, Hashable {
    package var name: String
    package var bio: String
    package var config: JSONValue
    package var clientConfig: JSONValue
    package var scopes: ClusterScopes
    /// Making a cluster the default clears the flag on the previous default of its kind.
    package var isDefault: Bool

    package init(
        name: String,
        bio: String = "",
        config: JSONValue = .emptyObject,
        clientConfig: JSONValue = .emptyObject,
        scopes: ClusterScopes = ClusterScopes(),
        isDefault: Bool = false
    ) {
        self.name = name
        self.bio = bio
        self.config = config
        self.clientConfig = clientConfig
        self.scopes = scopes
        self.isDefault = isDefault
    }
}

/// A partial update of a cluster; `nil` fields stay as they are.
package struct ClusterUpdate: Sendable, Hashable {
    package var name: String?
    package var bio: String?
    package var config: JSONValue?
    package var clientConfig: JSONValue?
    package var scopes: ClusterScopes?
    /// `true` makes this the default of its kind; `false` is ignored (there is always one default).
    package var isDefault: Bool?

    package init(
        name: String? = nil,
        bio: String? = nil,
        config: JSONValue? = nil,
        clientConfig: JSONValue? = nil,
        scopes: ClusterScopes? = nil,
        isDefault: Bool? = nil
    ) {
        self.name = name
        self.bio = bio
        self.config = config
        self.clientConfig = clientConfig
        self.scopes = scopes
        self.isDefault = isDefault
    }
}

/// Whether a scheduler or seed peer has kept alive recently.
package enum MemberState: String, Sendable, Hashable, Codable, CaseIterable {
    case active
    case inactive
}

/// What a scheduler or seed peer reports when it registers.
package struct MemberRegistration: Sendable, Hashable {
    package var hostname: String
    package var ip: String
    package var port: Int
    package var idc: String
    package var location: String
    /// `nil` joins the default cluster of the kind.
    package var clusterID: Int?
    /// Seed peers only: `super`, `strong` or `weak`.
    package var seedPeerType: String?
    /// Seed peers only: the piece-upload port.
    package var downloadPort: Int?

    package init(
        hostname: String,
        ip: String,
        port: Int,
        idc: String = "",
        location: String = "",
        clusterID: Int? = nil,
        seedPeerType: String? = nil,
        downloadPort: Int? = nil
    ) {
        self.hostname = hostname
        self.ip = ip
        self.port = port
        self.idc = idc
        self.location = location
        self.clusterID = clusterID
        self.seedPeerType = seedPeerType
        self.downloadPort = downloadPort
    }
}

/// A stored scheduler (``ClusterKind/scheduler``) or seed peer (``ClusterKind/seedPeer``).
package struct MemberRecord: Sendable, Hashable {
    package var id: Int
    package var kind: ClusterKind
    package var hostname: String
    package var ip: String
    package var port: Int
    package var idc: String
    package var location: String
    package var state: MemberState
    package var lastKeepAliveAt: Date
    package var clusterID: Int
    /// Seed peers only.
    package var seedPeerType: String?
    /// Seed peers only.
    package var downloadPort: Int?
    package var createdAt: Date
    package var updatedAt: Date
}

/// A daemon host as last reported by a scheduler (`GET /api/v1/hosts`).
package struct HostRecord: Sendable, Hashable {
    package var id: Int
    /// The daemon's host ID (DESIGN §4), unique.
    package var hostID: String
    package var hostname: String
    package var ip: String
    package var port: Int
    package var downloadPort: Int
    /// `normal`, or a seed-peer type.
    package var type: String
    package var idc: String
    package var location: String
    package var schedulerClusterID: Int?
    package var createdAt: Date
    package var updatedAt: Date
}

/// What a scheduler reports about a host; upserted by ``HostRecord/hostID``.
package struct HostReport: Sendable, Hashable {
    package var hostID: String
    package var hostname: String
    package var ip: String
    package var port: Int
    package var downloadPort: Int
    package var type: String
    package var idc: String
    package var location: String
    package var schedulerClusterID: Int?

    package init(
        hostID: String,
        hostname: String,
        ip: String,
        port: Int,
        downloadPort: Int,
        type: String = "normal",
        idc: String = "",
        location: String = "",
        schedulerClusterID: Int? = nil
    ) {
        self.hostID = hostID
        self.hostname = hostname
        self.ip = ip
        self.port = port
        self.downloadPort = downloadPort
        self.type = type
        self.idc = idc
        self.location = location
        self.schedulerClusterID = schedulerClusterID
    }
}

// MARK: Applications, jobs, audit

/// An application with its download priority rules.
package struct ApplicationRecord: Sendable, Hashable {
    package var id: Int
    package var name: String
    package var url: String
    package var bio: String
    package var priority: JSONValue
    package var userID: Int?
    package var createdAt: Date
    package var updatedAt: Date
}

/// A job's (or one target cluster's) state: PENDING → RUNNING → SUCCESS | FAILURE.
package enum JobState: String, Sendable, Hashable, Codable, CaseIterable {
    case pending = "PENDING"
    case running = "RUNNING"
    case success = "SUCCESS"
    case failure = "FAILURE"

    /// SUCCESS or FAILURE.
    package var isTerminal: Bool { self == .success || self == .failure }
}

/// A job: one row, plus one ``JobClusterRecord`` per target scheduler cluster.
package struct JobRecord: Sendable, Hashable {
    /// An integer, as Harbor expects.
    package var id: Int
    /// `preheat`, `push`, `sync`, `replicate`, `get_task`, `delete_task`, …
    package var type: String
    package var state: JobState
    package var args: JSONValue
    package var result: JSONValue?
    package var userID: Int?
    package var createdAt: Date
    package var updatedAt: Date
    /// The per-cluster rows, ordered by cluster ID.
    package var clusters: [JobClusterRecord]
}

/// One target cluster of a job; a manager replica claims it and records its result.
package struct JobClusterRecord: Sendable, Hashable {
    package var id: Int
    package var jobID: Int
    package var schedulerClusterID: Int
    package var state: JobState
    package var result: JSONValue?
    /// The replica that claimed this row, `nil` while pending.
    package var claimedBy: String?
    package var claimedAt: Date?
    package var createdAt: Date
    package var updatedAt: Date
}

/// One audit-log entry.
package struct AuditRecord: Sendable, Hashable {
    package var id: Int
    /// Who did it (a user name, `token:<id>`, `system`).
    package var actor: String
    /// What was done (`cluster.create`, `user.delete`, …).
    package var action: String
    /// What it was done to (`cluster/3`).
    package var target: String
    package var detail: String
    package var createdAt: Date
}
