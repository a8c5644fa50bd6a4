import DragonflyCore
package import DragonflyTelemetry
import Glibc
package import Hummingbird
package import Logging
import Synchronization

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// The manager's REST API (`/api/v1`, JWT sessions from sign-in, roles root and guest) and open API
/// (`/oapi/v1`, personal access tokens; Harbor's Dragonfly provider contract), DESIGN §10.
///
/// Every route authenticates before it reads the body; every mutating call is written to the audit log.
package final class ManagerAPI: Sendable {
    private let storeService: StoreService
    let sessionLifetime: Duration
    private let logger: Logger
    private let keys = Mutex<SessionKeys?>(nil)
    private let sealing: SessionKeySealing?
    let signIns: SignInThrottle

    /// - Parameters:
    ///   - config: `api.signInFailures` and `api.signInWindow` set the sign-in throttle;
    ///     `api.sessionLifetime` the sessions' lifetime.
    ///   - sealing: Seals the session signing key in the database; `nil` keeps it in clear (PostgreSQL without
    ///     a configured key).
    init(store: StoreService, config: ManagerConfig, sealing: SessionKeySealing?, logger: Logger) {
        self.storeService = store
        self.sessionLifetime = config.api.sessionLifetime.duration
        self.sealing = sealing
        self.signIns = SignInThrottle(allowed: config.api.signInFailures, window: config.api.signInWindow.duration)
        self.logger = logger
    }

    func store() async throws -> ManagerStore {
        do {
            return try await storeService.ready()
        } catch {
            throw APIError(status: .serviceUnavailable, message: "the database is not available")
        }
    }

    func sessionKeys() async throws -> SessionKeys {
        if let keys = keys.withLock({ $0 }) { return keys }
        let loaded = try await SessionKeys.load(from: try await store(), sealing: sealing)
        keys.withLock { $0 = $0 ?? loaded }
        return loaded
    }

    /// At start: creates the `root` user when there is no user at all, with the password from
    /// `DRAGONFLY_INITIAL_ROOT_PASSWORD` or a generated one printed once to stderr; loads the session key.
    package func bootstrap(environment: [String: String] = ProcessInfo.processInfo.environment) async throws {
        let store = try await store()
        _ = try await sessionKeys()
        guard try await store.users(limit: 1).isEmpty else { return }
        let given = environment["DRAGONFLY_INITIAL_ROOT_PASSWORD"] ?? ""
        let password = given.isEmpty ? AccessToken.make().dropFirst(AccessToken.prefix.count).prefix(24) : given[...]
        let hash = try await PasswordHash.makeOffThread(String(password))
        do {
            _ = try await store.createUser(NewUser(name: "root", passwordHash: hash, role: .root))
        } catch {
            guard error.code == .alreadyExists else { throw error }
            return  // another replica created it first
        }
        try await store.appendAudit(actor: "system", action: "user.create", target: "user/root")
        if given.isEmpty {
            let line = "dragonfly manager: created user root with password \(password) (shown once)\n"
            var bytes = Array(line.utf8)
            _ = bytes.withUnsafeMutableBytes { write(STDERR_FILENO, $0.baseAddress, $0.count) }
        }
        logger.info("created the root user")
    }

    /// Adds the `/api/v1` and `/oapi/v1` routes to `router`.
    package func addRoutes(to router: Router<ListenerRequestContext>) {
        let api = router.group("api/v1").add(middleware: APIErrorMiddleware(logger: logger))
        api.post("users/signin") { request, context in try await self.signIn(request, context: context) }
        api.get("users") { request, _ in
            try await self.session(request)
            let page = try Page(request)
            return APIJSON.response(
                try await self.store().users(limit: page.limit, offset: page.offset).map(UserView.init))
        }
        api.post("users") { request, _ in try await self.createUser(request) }
        api.get("users/:id") { request, context in
            try await self.session(request)
            return APIJSON.response(UserView(try await self.store().user(id: try Self.id(context))))
        }
        api.patch("users/:id") { request, context in try await self.updateUser(request, id: try Self.id(context)) }
        api.delete("users/:id") { request, context in try await self.deleteUser(request, id: try Self.id(context)) }

        api.get("personal-access-tokens") { request, _ in
            let caller = try await self.session(request)
            let tokens = try await self.store().tokens(userID: caller.user.role == .root ? nil : caller.user.id)
            return APIJSON.response(tokens.map { TokenView($0) })
        }
        api.post("personal-access-tokens") { request, _ in try await self.createToken(request) }
        api.delete("personal-access-tokens/:id") { request, context in
            let caller = try await self.session(request, root: true)
            let id = try Self.id(context)
            try await self.store().deleteToken(id: id)
            try await self.audit(caller, "token.delete", "token/\(id)")
            return Response(status: .noContent)
        }

        api.get("clusters") { request, _ in
            try await self.session(request)
            return APIJSON.response(try await self.store().clusters(.scheduler).map(ClusterView.init))
        }
        api.post("clusters") { request, _ in try await self.createCluster(request) }
        api.get("clusters/:id") { request, context in
            try await self.session(request)
            return APIJSON.response(ClusterView(try await self.store().cluster(.scheduler, id: try Self.id(context))))
        }
        api.patch("clusters/:id") { request, context in
            try await self.updateCluster(request, id: try Self.id(context))
        }
        api.delete("clusters/:id") { request, context in
            let caller = try await self.session(request, root: true)
            let id = try Self.id(context)
            try await self.store().deleteCluster(.scheduler, id: id)
            try await self.audit(caller, "cluster.delete", "cluster/\(id)")
            return Response(status: .noContent)
        }

        api.get("schedulers") { request, _ in
            try await self.session(request)
            let page = try Page(request)
            let members = try await self.store().members(.scheduler, limit: page.limit, offset: page.offset)
            return APIJSON.response(members.map(MemberView.init))
        }
        api.get("seed-peers") { request, _ in
            try await self.session(request)
            let page = try Page(request)
            let members = try await self.store().members(.seedPeer, limit: page.limit, offset: page.offset)
            return APIJSON.response(members.map(MemberView.init))
        }
        api.get("hosts") { request, _ in
            try await self.session(request)
            let page = try Page(request)
            return APIJSON.response(
                try await self.store().hosts(limit: page.limit, offset: page.offset).map(HostView.init))
        }

        api.get("jobs") { request, _ in
            try await self.session(request)
            let page = try Page(request)
            let jobs = try await self.store().jobs(limit: page.limit, offset: page.offset)
            return APIJSON.response(jobs.map { JobView($0, openAPI: false) })
        }
        api.post("jobs") { request, _ in
            let caller = try await self.session(request, root: true)
            return try await self.createJob(request, caller: caller, openAPI: false)
        }
        api.get("jobs/:id") { request, context in
            try await self.session(request)
            return APIJSON.response(JobView(try await self.store().job(id: try Self.id(context)), openAPI: false))
        }

        api.get("audit-logs") { request, _ in
            try await self.session(request, root: true)
            let page = try Page(request)
            let entries = try await self.store().auditLogs(limit: page.limit, offset: page.offset)
            return APIJSON.response(entries.map(AuditView.init))
        }

        let open = router.group("oapi/v1").add(middleware: APIErrorMiddleware(logger: logger))
        open.post("jobs") { request, _ in
            let caller = try await self.token(request, scope: "job", write: true)
            return try await self.createJob(request, caller: caller, openAPI: true)
        }
        open.get("jobs/:id") { request, context in
            try await self.token(request, scope: "job", write: false)
            return APIJSON.response(JobView(try await self.store().job(id: try Self.id(context)), openAPI: true))
        }
        open.get("jobs") { request, _ in
            try await self.token(request, scope: "job", write: false)
            let page = try Page(request)
            let jobs = try await self.store().jobs(limit: page.limit, offset: page.offset)
            return APIJSON.response(jobs.map { JobView($0, openAPI: true) })
        }
    }

    // MARK: Authentication

    /// Who made a request.
    struct Caller {
        var user: UserRecord
        /// How the audit log names them: the user name, or `token:<id>(<user>)`.
        var actor: String
    }

    /// The signed-in user of a `/api/v1` request: 401 without a valid session token, 403 when `root` is needed
    /// and the user is a guest (guests only read).
    @discardableResult
    func session(_ request: Request, root: Bool = false) async throws -> Caller {
        guard let token = Self.bearer(request) else {
            throw APIError.unauthorized("sign in first: Authorization: Bearer <token from /api/v1/users/signin>")
        }
        let keys = try await sessionKeys()
        guard let userID = await keys.verify(token) else {
            throw APIError.unauthorized("the session token is invalid or expired")
        }
        guard let user = try await Self.existingUser(userID, in: try await store()) else {
            throw APIError.unauthorized("the session's user no longer exists")
        }
        guard user.state == .enabled else { throw APIError.unauthorized("user \(user.name) is disabled") }
        if root && user.role != .root { throw APIError.forbidden("only a root user may do this; guests only read") }
        return Caller(user: user, actor: user.name)
    }

    /// The owner of the personal access token of a `/oapi/v1` request: 401 when it is missing or unknown, 403
    /// when it is expired, revoked or lacks `scope`, or (`write`) when its owner is a guest.
    @discardableResult
    func token(_ request: Request, scope: String, write: Bool) async throws -> Caller {
        guard let clear = Self.bearer(request) else {
            throw APIError.unauthorized("a personal access token is needed: Authorization: Bearer <token>")
        }
        let store = try await store()
        guard let token = try await store.token(hash: AccessToken.hash(clear)) else {
            throw APIError.unauthorized("unknown personal access token")
        }
        guard token.state == .active else { throw APIError.forbidden("personal access token \(token.name) is revoked") }
        guard token.expiredAt > Date() else {
            throw APIError.forbidden(
                "personal access token \(token.name) expired at \(token.expiredAt.formatted(.iso8601))")
        }
        guard token.scopes.contains(scope) else {
            throw APIError.forbidden("personal access token \(token.name) lacks the \"\(scope)\" scope")
        }
        guard let owner = try await Self.existingUser(token.userID, in: store) else {
            throw APIError.unauthorized("unknown personal access token")
        }
        guard owner.state == .enabled else { throw APIError.forbidden("the token's owner \(owner.name) is disabled") }
        if write && owner.role != .root {
            throw APIError.forbidden("the token's owner \(owner.name) is a guest; guests only read")
        }
        return Caller(user: owner, actor: "token:\(token.id)(\(owner.name))")
    }

    /// The user with `id`, or `nil` when there is none.
    static func existingUser(_ id: Int, in store: ManagerStore) async throws -> UserRecord? {
        do {
            return try await store.user(id: id)
        } catch {
            guard error.code == .notFound else { throw error }
            return nil
        }
    }

    static func bearer(_ request: Request) -> String? {
        guard let value = request.headers[.authorization] else { return nil }
        let parts = value.split(separator: " ", maxSplits: 1)
        guard parts.count == 2, parts[0].lowercased() == "bearer" else { return nil }
        let token = parts[1].drop(while: { $0 == " " })
        return token.isEmpty || token.contains(" ") ? nil : String(token)
    }

    static func id(_ context: ListenerRequestContext) throws -> Int {
        let text = context.parameters.get("id") ?? ""
        guard let id = Int(text), id > 0 else { throw APIError.badRequest("\"\(text)\" is not an ID") }
        return id
    }

    func audit(_ caller: Caller, _ action: String, _ target: String, _ detail: String = "") async throws {
        try await store().appendAudit(actor: caller.actor, action: action, target: target, detail: detail)
    }

    /// `page` (from 1) and `per_page` (1-1000, default 100) query parameters.
    struct Page {
        var limit: Int
        var offset: Int

        init(_ request: Request) throws {
            let query = request.uri.queryParameters
            let page = try Self.number(query.get("page"), name: "page", default: 1, range: 1...1_000_000)
            limit = try Self.number(query.get("per_page"), name: "per_page", default: 100, range: 1...1_000)
            offset = (page - 1) * limit
        }

        private static func number(_ text: String?, name: String, default value: Int, range: ClosedRange<Int>)
            throws -> Int
        {
            guard let text else { return value }
            guard let number = Int(text), range.contains(number) else {
                throw APIError.badRequest("\(name) must be a number in \(range.lowerBound)-\(range.upperBound)")
            }
            return number
        }
    }
}
