import DragonflyCore
import DragonflyTelemetry
import Glibc
import Hummingbird

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

// The handlers that write: each authenticates, then reads and checks the body, then writes and audits.

extension ManagerAPI {
    struct SignIn: Decodable {
        var name: String
        var password: String
    }

    struct SessionToken: Encodable {
        var token: String
        var expire: Date
    }

    /// Signs a user in. Failures are throttled per user name and per client address (``SignInThrottle``):
    /// a throttled attempt gets 429 with `Retry-After` and its password is not checked. PBKDF2 runs on
    /// `NIOThreadPool`, off the cooperative pool.
    func signIn(_ request: Request, context: ListenerRequestContext) async throws -> Response {
        let body = try await APIJSON.decodeBody(SignIn.self, from: request)
        let keys = SignInThrottle.keys(user: body.name, address: context.remoteAddress?.ipAddress ?? "unknown")
        if let wait = signIns.wait(keys) {
            throw APIError.tooManyRequests(
                "too many failed sign-ins for this user or address; retry later", retryAfter: wait)
        }
        let store = try await store()
        guard let user = try await store.user(named: body.name) else {
            await PasswordHash.burnOneVerificationOffThread(body.password)
            signIns.recordFailure(keys)
            throw APIError.unauthorized("wrong user name or password")
        }
        guard await PasswordHash.verifyOffThread(body.password, against: user.passwordHash) else {
            signIns.recordFailure(keys)
            throw APIError.unauthorized("wrong user name or password")
        }
        signIns.recordSuccess(keys[0])
        guard user.state == .enabled else { throw APIError.unauthorized("user \(user.name) is disabled") }
        let (token, expire) = try await sessionKeys().sign(userID: user.id, name: user.name, lifetime: sessionLifetime)
        return APIJSON.response(SessionToken(token: token, expire: expire))
    }

    struct UserBody: Decodable {
        var name: String?
        var password: String?
        var email: String?
        var role: String?
        var state: String?
    }

    func createUser(_ request: Request) async throws -> Response {
        let caller = try await session(request, root: true)
        let body = try await APIJSON.decodeBody(UserBody.self, from: request)
        guard let name = body.name else { throw APIError.badRequest("missing field name") }
        try Self.checkName(name, field: "name")
        guard let password = body.password else { throw APIError.badRequest("missing field password") }
        try Self.checkPassword(password)
        let role = try Self.role(body.role ?? "guest")
        let user = try await store().createUser(
            NewUser(
                name: name, passwordHash: try await PasswordHash.makeOffThread(password), email: body.email, role: role)
        )
        try await audit(caller, "user.create", "user/\(user.id)", "name=\(name) role=\(role.rawValue)")
        return APIJSON.response(UserView(user), status: .created)
    }

    func updateUser(_ request: Request, id: Int) async throws -> Response {
        let caller = try await session(request, root: true)
        let body = try await APIJSON.decodeBody(UserBody.self, from: request)
        if let name = body.name { try Self.checkName(name, field: "name") }
        if let password = body.password { try Self.checkPassword(password) }
        var update = UserUpdate(name: body.name, email: body.email, role: try body.role.map(Self.role))
        if let password = body.password { update.passwordHash = try await PasswordHash.makeOffThread(password) }
        if let state = body.state {
            guard let value = UserState(rawValue: state) else {
                throw APIError.badRequest("state must be \"enabled\" or \"disabled\", not \"\(state)\"")
            }
            update.state = value
        }
        if id == caller.user.id && (update.role == .guest || update.state == .disabled) {
            throw APIError(status: .conflict, message: "a root user cannot demote or disable itself")
        }
        let user = try await store().updateUser(id: id, update)
        let changed = [
            body.name.map { _ in "name" }, body.password.map { _ in "password" }, body.email.map { _ in "email" },
            body.role.map { "role=\($0)" }, body.state.map { "state=\($0)" },
        ].compactMap { $0 }
        try await audit(caller, "user.update", "user/\(id)", changed.joined(separator: " "))
        return APIJSON.response(UserView(user))
    }

    func deleteUser(_ request: Request, id: Int) async throws -> Response {
        let caller = try await session(request, root: true)
        guard id != caller.user.id else {
            throw APIError(status: .conflict, message: "a user cannot delete itself")
        }
        try await store().deleteUser(id: id)
        try await audit(caller, "user.delete", "user/\(id)")
        return Response(status: .noContent)
    }

    struct TokenBody: Decodable {
        var name: String
        var scopes: [String]
        var expiredAt: Date

        enum CodingKeys: String, CodingKey {
            case name, scopes
            case expiredAt = "expired_at"
        }
    }

    static let tokenScopes = ["job", "cluster"]

    func createToken(_ request: Request) async throws -> Response {
        let caller = try await session(request, root: true)
        let body = try await APIJSON.decodeBody(TokenBody.self, from: request)
        try Self.checkName(body.name, field: "name")
        guard !body.scopes.isEmpty, body.scopes.allSatisfy(Self.tokenScopes.contains) else {
            throw APIError.badRequest(
                "scopes must be a non-empty list of \(Self.tokenScopes.map { "\"\($0)\"" }.joined(separator: ", "))")
        }
        guard body.expiredAt > Date() else { throw APIError.badRequest("expired_at must be in the future") }
        let clear = AccessToken.make()
        let token = try await store().createToken(
            name: body.name, tokenHash: AccessToken.hash(clear), scopes: Array(Set(body.scopes)).sorted(),
            expiredAt: body.expiredAt, userID: caller.user.id)
        try await audit(caller, "token.create", "token/\(token.id)", "scopes=\(token.scopes.joined(separator: ","))")
        return APIJSON.response(TokenView(token, clear: clear), status: .created)
    }

    struct ClusterBody: Decodable {
        var name: String?
        var bio: String?
        var scopes: ScopesView?
        var config: JSONValue?
        var clientConfig: JSONValue?
        var isDefault: Bool?

        enum CodingKeys: String, CodingKey {
            case name, bio, scopes, config
            case clientConfig = "client_config"
            case isDefault = "is_default"
        }

        func checkedScopes() throws -> ClusterScopes? {
            guard let scopes else { return nil }
            for cidr in scopes.cidrs ?? [] where !ManagerAPI.isCIDR(cidr) {
                throw APIError.badRequest("scopes.cidrs: \"\(cidr)\" is not a CIDR like 10.0.0.0/8")
            }
            for pattern in scopes.hostnames ?? [] {
                do {
                    _ = try Regex(pattern)
                } catch {
                    throw APIError.badRequest("scopes.hostnames: \"\(pattern)\" is not a regular expression")
                }
            }
            return ClusterScopes(
                idc: scopes.idc ?? "", location: scopes.location ?? "", cidrs: scopes.cidrs ?? [],
                hostnames: scopes.hostnames ?? [])
        }

        func checkObjects() throws {
            for (field, value) in [("config", config), ("client_config", clientConfig)] {
                if let value, case .object = value { continue }
                if value != nil { throw APIError.badRequest("\(field) must be an object") }
            }
        }
    }

    func createCluster(_ request: Request) async throws -> Response {
        let caller = try await session(request, root: true)
        let body = try await APIJSON.decodeBody(ClusterBody.self, from: request)
        guard let name = body.name else { throw APIError.badRequest("missing field name") }
        try Self.checkName(name, field: "name")
        try body.checkObjects()
        let cluster = try await store().createCluster(
            .scheduler,
            NewCluster(
                name: name, bio: body.bio ?? "", config: body.config ?? .emptyObject,
                clientConfig: body.clientConfig ?? .emptyObject, scopes: try body.checkedScopes() ?? ClusterScopes(),
                isDefault: body.isDefault ?? false))
        try await audit(caller, "cluster.create", "cluster/\(cluster.id)", "name=\(name)")
        return APIJSON.response(ClusterView(cluster), status: .created)
    }

    func updateCluster(_ request: Request, id: Int) async throws -> Response {
        let caller = try await session(request, root: true)
        let body = try await APIJSON.decodeBody(ClusterBody.self, from: request)
        if let name = body.name { try Self.checkName(name, field: "name") }
        try body.checkObjects()
        let cluster = try await store().updateCluster(
            .scheduler, id: id,
            ClusterUpdate(
                name: body.name, bio: body.bio, config: body.config, clientConfig: body.clientConfig,
                scopes: try body.checkedScopes(), isDefault: body.isDefault))
        try await audit(caller, "cluster.update", "cluster/\(id)")
        return APIJSON.response(ClusterView(cluster))
    }

    /// Creates a job: checks its arguments, picks its clusters (none given: every cluster with an active
    /// scheduler) and stores it PENDING with one row per cluster. With no cluster to run in it ends FAILURE at
    /// once, saying why.
    func createJob(_ request: Request, caller: Caller, openAPI: Bool) async throws -> Response {
        let body = try await APIJSON.decodeBody(JobRequest.self, from: request)
        guard body.type == "preheat" else {
            throw APIError.badRequest("job type \"\(body.type)\" is not supported; this manager runs \"preheat\"")
        }
        let (_, args) = try PreheatArgs.normalise(body.args)
        let store = try await store()
        var clusterIDs = body.schedulerClusterIDs ?? []
        if clusterIDs.isEmpty {
            clusterIDs = Array(Set(try await store.members(.scheduler, state: .active).map(\.clusterID))).sorted()
        }
        var job = try await store.createJob(
            type: body.type, args: args, userID: caller.user.id, schedulerClusterIDs: clusterIDs)
        if job.clusters.isEmpty {
            job = try await store.updateJob(
                id: job.id, state: .failure,
                result: .object(["error": .string("no scheduler cluster has an active scheduler")]))
        }
        try await audit(
            caller, "job.create", "job/\(job.id)",
            "type=\(job.type) clusters=\(job.clusters.map { String($0.schedulerClusterID) }.joined(separator: ","))")
        return APIJSON.response(JobView(job, openAPI: openAPI), status: openAPI ? .ok : .created)
    }

    // MARK: Checks

    static func checkName(_ name: String, field: String) throws {
        guard (1...255).contains(name.count), !name.contains(where: { $0.isNewline || $0 == "\0" }),
            name.first?.isWhitespace == false, name.last?.isWhitespace == false
        else { throw APIError.badRequest("\(field) must be 1-255 characters without line breaks or edge spaces") }
    }

    static func checkPassword(_ password: String) throws {
        guard (8...1024).contains(password.count) else {
            throw APIError.badRequest("password must be 8-1024 characters")
        }
    }

    static func role(_ text: String) throws -> UserRole {
        guard let role = UserRole(rawValue: text) else {
            throw APIError.badRequest("role must be \"root\" or \"guest\", not \"\(text)\"")
        }
        return role
    }

    /// Whether `text` is an IPv4 or IPv6 CIDR (`address/prefix`).
    static func isCIDR(_ text: String) -> Bool {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let prefix = Int(parts[1]) else { return false }
        let address = String(parts[0])
        var buffer = [UInt8](repeating: 0, count: 16)
        if address.contains(":") {
            return (0...128).contains(prefix) && inet_pton(AF_INET6, address, &buffer) == 1
        }
        return (0...32).contains(prefix) && inet_pton(AF_INET, address, &buffer) == 1
    }
}
