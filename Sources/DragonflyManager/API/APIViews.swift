import DragonflyCore

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

// What the REST and open APIs send back: snake_case keys, RFC 3339 timestamps, no secrets.

struct UserView: Encodable {
    var id: Int
    var name: String
    var email: String?
    var role: String
    var state: String
    var createdAt: Date
    var updatedAt: Date

    enum CodingKeys: String, CodingKey {
        case id, name, email, role, state
        case createdAt = "created_at"
        case updatedAt = "updated_at"
    }

    init(_ user: UserRecord) {
        id = user.id
        name = user.name
        email = user.email
        role = user.role.rawValue
        state = user.state.rawValue
        createdAt = user.createdAt
        updatedAt = user.updatedAt
    }
}

struct TokenView: Encodable {
    var id: Int
    var name: String
    var scopes: [String]
    var state: String
    var expiredAt: Date
    var userID: Int
    var createdAt: Date
    var updatedAt: Date
    /// The clear token: only in the answer to its creation.
    var token: String?

    enum CodingKeys: String, CodingKey {
        case id, name, scopes, state, token
        case expiredAt = "expired_at"
        case userID = "user_id"
        case createdAt = "created_at"
        case updatedAt = "updated_at"
    }

    init(_ token: PersonalAccessTokenRecord, clear: String? = nil, now: Date = Date()) {
        id = token.id
        name = token.name
        scopes = token.scopes
        // An expired token reads as inactive, whatever its stored state.
        state = token.state == .active && token.expiredAt > now ? "active" : "inactive"
        expiredAt = token.expiredAt
        userID = token.userID
        createdAt = token.createdAt
        updatedAt = token.updatedAt
        self.token = clear
    }
}

struct ScopesView: Codable {
    var idc: String?
    var location: String?
    var cidrs: [String]?
    var hostnames: [String]?

    init(idc: String? = nil, location: String? = nil, cidrs: [String]? = nil, hostnames: [String]? = nil) {
        self.idc = idc
        self.location = location
        self.cidrs = cidrs
        self.hostnames = hostnames
    }

    init(_ scopes: ClusterScopes) {
        self.init(idc: scopes.idc, location: scopes.location, cidrs: scopes.cidrs, hostnames: scopes.hostnames)
    }
}

struct ClusterView: Encodable {
    var id: Int
    var name: String
    var bio: String
    var scopes: ScopesView
    var config: JSONValue
    var clientConfig: JSONValue
    var isDefault: Bool
    var createdAt: Date
    var updatedAt: Date

    enum CodingKeys: String, CodingKey {
        case id, name, bio, scopes, config
        case clientConfig = "client_config"
        case isDefault = "is_default"
        case createdAt = "created_at"
        case updatedAt = "updated_at"
    }

    init(_ cluster: ClusterRecord) {
        id = cluster.id
        name = cluster.name
        bio = cluster.bio
        scopes = ScopesView(cluster.scopes)
        config = cluster.config
        clientConfig = cluster.clientConfig
        isDefault = cluster.isDefault
        createdAt = cluster.createdAt
        updatedAt = cluster.updatedAt
    }
}

struct MemberView: Encodable {
    var id: Int
    var hostname: String
    var ip: String
    var port: Int
    var idc: String
    var location: String
    var state: String
    var lastKeepAliveAt: Date
    var schedulerClusterID: Int?
    var seedPeerClusterID: Int?
    var type: String?
    var downloadPort: Int?
    var createdAt: Date
    var updatedAt: Date

    enum CodingKeys: String, CodingKey {
        case id, hostname, ip, port, idc, location, state, type
        case lastKeepAliveAt = "last_keep_alive_at"
        case schedulerClusterID = "scheduler_cluster_id"
        case seedPeerClusterID = "seed_peer_cluster_id"
        case downloadPort = "download_port"
        case createdAt = "created_at"
        case updatedAt = "updated_at"
    }

    init(_ member: MemberRecord) {
        id = member.id
        hostname = member.hostname
        ip = member.ip
        port = member.port
        idc = member.idc
        location = member.location
        state = member.state.rawValue
        lastKeepAliveAt = member.lastKeepAliveAt
        if member.kind == .scheduler {
            schedulerClusterID = member.clusterID
        } else {
            seedPeerClusterID = member.clusterID
        }
        type = member.seedPeerType
        downloadPort = member.downloadPort
        createdAt = member.createdAt
        updatedAt = member.updatedAt
    }
}

struct HostView: Encodable {
    var id: Int
    var hostID: String
    var hostname: String
    var ip: String
    var port: Int
    var downloadPort: Int
    var type: String
    var idc: String
    var location: String
    var schedulerClusterID: Int?
    var createdAt: Date
    var updatedAt: Date

    enum CodingKeys: String, CodingKey {
        case id, hostname, ip, port, type, idc, location
        case hostID = "host_id"
        case downloadPort = "download_port"
        case schedulerClusterID = "scheduler_cluster_id"
        case createdAt = "created_at"
        case updatedAt = "updated_at"
    }

    init(_ host: HostRecord) {
        id = host.id
        hostID = host.hostID
        hostname = host.hostname
        ip = host.ip
        port = host.port
        downloadPort = host.downloadPort
        type = host.type
        idc = host.idc
        location = host.location
        schedulerClusterID = host.schedulerClusterID
        createdAt = host.createdAt
        updatedAt = host.updatedAt
    }
}

struct AuditView: Encodable {
    var id: Int
    var actor: String
    var action: String
    var target: String
    var detail: String
    var createdAt: Date

    enum CodingKeys: String, CodingKey {
        case id, actor, action, target, detail
        case createdAt = "created_at"
    }

    init(_ entry: AuditRecord) {
        id = entry.id
        actor = entry.actor
        action = entry.action
        target = entry.target
        detail = entry.detail
        createdAt = entry.createdAt
    }
}

/// A job as both APIs show it. The open API (Harbor) reports RUNNING as PENDING and always shapes `result` as
/// `{job_states: [{state, results: [{scheduler_cluster_id, success_tasks, failure_tasks}]}]}`.
struct JobView: Encodable {
    var id: Int
    var type: String
    var state: String
    var args: JSONValue
    var result: JSONValue
    var userID: Int?
    var schedulerClusterIDs: [Int]
    var createdAt: Date
    var updatedAt: Date

    enum CodingKeys: String, CodingKey {
        case id, type, state, args, result
        case userID = "user_id"
        case schedulerClusterIDs = "scheduler_cluster_ids"
        case createdAt = "created_at"
        case updatedAt = "updated_at"
    }

    init(_ job: JobRecord, openAPI: Bool) {
        id = job.id
        type = job.type
        state = openAPI && job.state == .running ? JobState.pending.rawValue : job.state.rawValue
        args = JobResults.redacted(job.args)
        result = JobResults.complete(job)
        userID = job.userID
        schedulerClusterIDs = job.clusters.map(\.schedulerClusterID)
        createdAt = job.createdAt
        updatedAt = job.updatedAt
    }
}

/// The shape of job results (DESIGN §10): a cluster row's result is `{success_tasks, failure_tasks}`; the job's
/// result gathers them per cluster and never leaves a list out.
enum JobResults {
    static func complete(_ job: JobRecord) -> JSONValue {
        var results: [JSONValue] = []
        for cluster in job.clusters {
            var entry: [String: JSONValue] = [:]
            if case .object(let fields)? = cluster.result { entry = redactedResult(fields) }
            entry["scheduler_cluster_id"] = .number(Double(cluster.schedulerClusterID))
            entry["state"] = .string(cluster.state.rawValue)
            for key in ["success_tasks", "failure_tasks"] {
                if case .array? = entry[key] { continue }
                entry[key] = .array([])
            }
            results.append(.object(entry))
        }
        var jobState: [String: JSONValue] = [
            "state": .string(job.state.rawValue),
            "results": .array(results),
            "created_at": .string(job.createdAt.formatted(.iso8601)),
        ]
        var top: [String: JSONValue] = [
            "state": .string(job.state.rawValue),
            "created_at": .string(job.createdAt.formatted(.iso8601)),
        ]
        if case .object(let stored)? = job.result {
            if case .string(let error)? = stored["error"] {
                jobState["error"] = .string(Redaction.message(error))
                top["error"] = .string(Redaction.message(error))
            }
        }
        top["job_states"] = .array([.object(jobState)])
        return .object(top)
    }

    /// Arguments as shown to readers, through ``Redaction``: URLs without query values or userinfo, header values
    /// kept only for headers on the allowlist, `password` and `token` replaced.
    static func redacted(_ args: JSONValue) -> JSONValue {
        guard case .object(var fields) = args else { return args }
        for key in ["password", "token"] where fields[key] != nil {
            fields[key] = .string(Redaction.placeholder)
        }
        if case .string(let url)? = fields["url"] { fields["url"] = .string(Redaction.url(url)) }
        if case .array(let urls)? = fields["urls"] {
            fields["urls"] = .array(
                urls.map { if case .string(let url) = $0 { .string(Redaction.url(url)) } else { $0 } })
        }
        if case .object(var headers)? = fields["headers"] {
            for (name, value) in headers {
                let text: String = if case .string(let text) = value { text } else { "" }
                headers[name] = .string(Redaction.headerValue(name: name, value: text))
            }
            fields["headers"] = .object(headers)
        }
        return .object(fields)
    }

    /// A cluster's result as shown to readers: each task's URL and description through ``Redaction``.
    static func redactedResult(_ fields: [String: JSONValue]) -> [String: JSONValue] {
        var fields = fields
        for key in ["success_tasks", "failure_tasks"] {
            guard case .array(let tasks)? = fields[key] else { continue }
            fields[key] = .array(
                tasks.map { task in
                    guard case .object(var entry) = task else { return task }
                    if case .string(let url)? = entry["url"] { entry["url"] = .string(Redaction.url(url)) }
                    if case .string(let text)? = entry["description"] {
                        entry["description"] = .string(Redaction.message(text))
                    }
                    return .object(entry)
                })
        }
        if case .string(let text)? = fields["description"] { fields["description"] = .string(Redaction.message(text)) }
        return fields
    }
}
