import DragonflyCore
import Testing

@testable import DragonflyManager

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

extension ManagerStoreTests {
    @Test("users: create, look up, update, delete; duplicate names conflict", arguments: TestBackend.allCases)
    func userCRUD(backend: TestBackend) async throws {
        try await withStore(backend) { store, _ in
            let root = try await store.createUser(
                NewUser(name: "root", passwordHash: "hash-1", email: "root@example.com", role: .root))
            #expect(root.role == .root && root.state == .enabled && root.email == "root@example.com")
            let guest = try await store.createUser(NewUser(name: "guest", passwordHash: "hash-2"))
            #expect(guest.id > root.id && guest.email == nil && guest.role == .guest)

            let duplicate = await #expect(throws: DragonflyError.self) {
                try await store.createUser(NewUser(name: "root", passwordHash: "x"))
            }
            #expect(duplicate?.code == .alreadyExists)

            #expect(try await store.user(named: "guest") == guest)
            #expect(try await store.user(named: "nobody") == nil)
            #expect(try await store.users().map(\.name) == ["root", "guest"])

            let updated = try await store.updateUser(
                id: guest.id, UserUpdate(passwordHash: "hash-3", role: .root, state: .disabled))
            #expect(updated.passwordHash == "hash-3" && updated.role == .root && updated.state == .disabled)
            #expect(updated.name == "guest")

            let rename = await #expect(throws: DragonflyError.self) {
                try await store.updateUser(id: guest.id, UserUpdate(name: "root"))
            }
            #expect(rename?.code == .alreadyExists)
            let missing = await #expect(throws: DragonflyError.self) {
                try await store.updateUser(id: 999, UserUpdate(email: "x"))
            }
            #expect(missing?.code == .notFound)

            try await store.deleteUser(id: guest.id)
            let gone = await #expect(throws: DragonflyError.self) { try await store.user(id: guest.id) }
            #expect(gone?.code == .notFound)
            let again = await #expect(throws: DragonflyError.self) { try await store.deleteUser(id: guest.id) }
            #expect(again?.code == .notFound)
        }
    }

    @Test(
        "personal access tokens: create, look up by hash, revoke; deleted with their user",
        arguments: TestBackend.allCases)
    func tokens(backend: TestBackend) async throws {
        try await withStore(backend) { store, _ in
            let user = try await store.createUser(NewUser(name: "harbor", passwordHash: "h"))
            let expiry = fixedInstant.addingTimeInterval(86_400)
            let token = try await store.createToken(
                name: "harbor", tokenHash: "sha256:abc", scopes: ["job", "cluster"], expiredAt: expiry,
                userID: user.id, now: fixedInstant)
            #expect(token.scopes == ["job", "cluster"] && token.state == .active && token.expiredAt == expiry)
            #expect(try await store.token(hash: "sha256:abc") == token)
            #expect(try await store.token(hash: "sha256:other") == nil)
            #expect(try await store.tokens(userID: user.id) == [token])
            #expect(try await store.tokens(userID: user.id + 1) == [])

            let revoked = try await store.revokeToken(id: token.id)
            #expect(revoked.state == .inactive)
            #expect(try await store.token(id: token.id).state == .inactive)

            let orphan = await #expect(throws: DragonflyError.self) {
                try await store.createToken(name: "x", tokenHash: "h2", scopes: [], expiredAt: expiry, userID: 999)
            }
            #expect(orphan?.code == .notFound)
            let unknown = await #expect(throws: DragonflyError.self) { try await store.revokeToken(id: 999) }
            #expect(unknown?.code == .notFound)

            // Foreign keys are enforced on both engines: the user's tokens go with the user.
            try await store.deleteUser(id: user.id)
            #expect(try await store.tokens() == [])
        }
    }

    @Test(
        "clusters: CRUD, name conflicts, unknown IDs, moving and protecting the default",
        arguments: TestBackend.allCases)
    func clusterCRUD(backend: TestBackend) async throws {
        try await withStore(backend) { store, _ in
            let original = try await store.defaultCluster(.scheduler)
            let scopes = ClusterScopes(
                idc: "idc-1", location: "cn|hz", cidrs: ["10.0.0.0/8"], hostnames: ["^node-[0-9]+$"])
            let config: JSONValue = .object([
                "candidate_parent_limit": .number(4), "filter_parent_limit": .number(40), "enabled": .bool(true),
                "tags": .array([.string("a"), .null]),
            ])
            let created = try await store.createCluster(
                .scheduler,
                NewCluster(
                    name: "hz", config: config, clientConfig: .object(["load_limit": .number(50)]),
                    scopes: scopes))
            #expect(created.scopes == scopes && created.config == config && !created.isDefault)
            #expect(try await store.cluster(.scheduler, id: created.id) == created)

            let duplicate = await #expect(throws: DragonflyError.self) {
                try await store.createCluster(.scheduler, NewCluster(name: "hz"))
            }
            #expect(duplicate?.code == .alreadyExists)
            // Names are unique per kind only.
            let seedCluster = try await store.createCluster(.seedPeer, NewCluster(name: "hz"))
            #expect(seedCluster.kind == .seedPeer)

            let unknown = await #expect(throws: DragonflyError.self) { try await store.cluster(.scheduler, id: 999) }
            #expect(unknown?.code == .notFound)
            let unknownUpdate = await #expect(throws: DragonflyError.self) {
                try await store.updateCluster(.scheduler, id: 999, ClusterUpdate(bio: "x"))
            }
            #expect(unknownUpdate?.code == .notFound)
            let rename = await #expect(throws: DragonflyError.self) {
                try await store.updateCluster(.scheduler, id: created.id, ClusterUpdate(name: original.name))
            }
            #expect(rename?.code == .alreadyExists)

            let protected = await #expect(throws: DragonflyError.self) {
                try await store.deleteCluster(.scheduler, id: original.id)
            }
            #expect(protected?.code == .failedPrecondition)

            let promoted = try await store.updateCluster(
                .scheduler, id: created.id, ClusterUpdate(bio: "primary", isDefault: true))
            #expect(promoted.isDefault && promoted.bio == "primary" && promoted.config == config)
            #expect(try await store.defaultCluster(.scheduler).id == created.id)
            #expect(try await store.cluster(.scheduler, id: original.id).isDefault == false)
            #expect(try await store.defaultCluster(.seedPeer).id != seedCluster.id)

            try await store.deleteCluster(.scheduler, id: original.id)
            #expect(try await store.clusters(.scheduler).map(\.id) == [created.id])
            let deleted = await #expect(throws: DragonflyError.self) {
                try await store.deleteCluster(.scheduler, id: original.id)
            }
            #expect(deleted?.code == .notFound)
        }
    }

    @Test("applications and the audit log", arguments: TestBackend.allCases)
    func applicationsAndAudit(backend: TestBackend) async throws {
        try await withStore(backend) { store, _ in
            let priority: JSONValue = .object(["value": .number(3), "urls": .array([])])
            let app = try await store.createApplication(name: "ai", url: "https://ai.example", priority: priority)
            #expect(try await store.application(id: app.id).priority == priority)
            let duplicate = await #expect(throws: DragonflyError.self) {
                try await store.createApplication(name: "ai")
            }
            #expect(duplicate?.code == .alreadyExists)
            let raised = try await store.updateApplicationPriority(id: app.id, priority: .object(["value": .number(6)]))
            #expect(raised.priority == .object(["value": .number(6)]))
            #expect(try await store.applications().count == 1)
            try await store.deleteApplication(id: app.id)
            #expect(try await store.applications().isEmpty)

            try await store.appendAudit(actor: "root", action: "cluster.create", target: "cluster/2", now: fixedInstant)
            let last = try await store.appendAudit(
                actor: "ci", action: "job.create", target: "job/1", detail: "preheat")
            let entries = try await store.auditLogs()
            #expect(entries.map(\.action) == ["job.create", "cluster.create"])
            #expect(entries.first == last)
            #expect(entries.last?.createdAt == fixedInstant)
            #expect(try await store.auditLogs(actor: "root").count == 1)
            #expect(try await store.auditLogs(limit: 1, offset: 1).map(\.actor) == ["root"])
        }
    }
}
