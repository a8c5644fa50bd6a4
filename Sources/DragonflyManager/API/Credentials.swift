import Crypto
import DragonflyCore
import JWTKit
import NIOPosix
import _CryptoExtras

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Password hashes: PBKDF2-HMAC-SHA256 with a random salt (DESIGN §11), stored as
/// `pbkdf2-sha256$<rounds>$<salt base64>$<key base64>` so the rounds can grow without invalidating old hashes.
enum PasswordHash {
    /// OWASP's floor for PBKDF2-HMAC-SHA256, which swift-crypto enforces too.
    static let rounds = 210_000
    static let prefix = "pbkdf2-sha256"

    static func make(_ password: String) throws -> String {
        let salt = randomBytes(16)
        let key = try derive(password, salt: salt, rounds: rounds)
        return [prefix, String(rounds), Data(salt).base64EncodedString(), Data(key).base64EncodedString()]
            .joined(separator: "$")
    }

    /// Whether `password` matches `stored`; a malformed hash matches nothing.
    static func verify(_ password: String, against stored: String) -> Bool {
        let parts = stored.split(separator: "$", omittingEmptySubsequences: false)
        guard parts.count == 4, parts[0] == prefix, let rounds = Int(parts[1]), rounds >= Self.rounds,
            let salt = Data(base64Encoded: String(parts[2])), let expected = Data(base64Encoded: String(parts[3])),
            let key = try? derive(password, salt: [UInt8](salt), rounds: rounds)
        else { return false }
        return constantTimeEqual(key, [UInt8](expected))
    }

    /// Spends the time of one verification, so that an unknown user name is not told apart by the clock.
    static func burnOneVerification(_ password: String) {
        _ = try? derive(password, salt: [UInt8](repeating: 0, count: 16), rounds: rounds)
    }

    /// ``make(_:)`` on `NIOThreadPool.singleton`: PBKDF2 takes tens of milliseconds of CPU, which must not hold a
    /// thread of the cooperative pool.
    static func makeOffThread(_ password: String) async throws -> String {
        try await NIOThreadPool.singleton.runIfActive { try make(password) }
    }

    /// ``verify(_:against:)`` on `NIOThreadPool.singleton`; `false` when the pool is not running.
    static func verifyOffThread(_ password: String, against stored: String) async -> Bool {
        (try? await NIOThreadPool.singleton.runIfActive { verify(password, against: stored) }) ?? false
    }

    /// ``burnOneVerification(_:)`` on `NIOThreadPool.singleton`.
    static func burnOneVerificationOffThread(_ password: String) async {
        _ = try? await NIOThreadPool.singleton.runIfActive { burnOneVerification(password) }
    }

    private static func derive(_ password: String, salt: [UInt8], rounds: Int) throws -> [UInt8] {
        let key = try KDF.Insecure.PBKDF2.deriveKey(
            from: Array(password.utf8), salt: salt, using: .sha256, outputByteCount: 32, rounds: rounds)
        return key.withUnsafeBytes { Array($0) }
    }
}

/// Personal access tokens: `dfp_` and 64 hex digits of randomness; only the SHA-256 of the token is stored
/// (a token is high-entropy, so a fast hash is enough; it cannot be guessed from its hash).
enum AccessToken {
    static let prefix = "dfp_"

    static func make() -> String {
        prefix + TaskID.hex(randomBytes(32))
    }

    static func hash(_ token: String) -> String {
        TaskID.hex(SHA256.hash(data: Array(token.utf8)))
    }
}

/// The claims of a session JWT: the user's ID as subject, issue and expiry times.
struct SessionClaims: JWTPayload {
    var sub: SubjectClaim
    var exp: ExpirationClaim
    var iat: IssuedAtClaim
    var name: String

    func verify(using algorithm: some JWTAlgorithm) async throws {
        try exp.verifyNotExpired()
    }
}

/// Signs and verifies session JWTs with an HMAC-SHA256 key kept in the database, so every replica accepts
/// the sessions of the others (DESIGN §10). The key is created once, by whichever replica gets there first.
final class SessionKeys: Sendable {
    static let settingKey = "jwt.signing_key"
    private let keys: JWTKeyCollection

    init(secret: String) async {
        keys = JWTKeyCollection()
        await keys.add(hmac: HMACKey(from: secret), digestAlgorithm: .sha256)
    }

    /// The key stored in the database, created if there is none yet. With `sealing`, the key is kept sealed
    /// (``SessionKeySealing/sealedSettingKey``) and a clear key left by an older manager is sealed and removed;
    /// without, it is kept in clear under ``settingKey``.
    static func load(from store: ManagerStore, sealing: SessionKeySealing?) async throws -> SessionKeys {
        guard let sealing else {
            let secret = try await store.getOrCreateSetting(key: settingKey) { TaskID.hex(randomBytes(32)) }
            return await SessionKeys(secret: secret)
        }
        if let sealed = try await store.setting(key: SessionKeySealing.sealedSettingKey) {
            return await SessionKeys(secret: try sealing.open(sealed))
        }
        let legacy = try await store.setting(key: settingKey)
        let candidate = try sealing.seal(legacy ?? TaskID.hex(randomBytes(32)))
        let stored = try await store.getOrCreateSetting(key: SessionKeySealing.sealedSettingKey) { candidate }
        let secret = try sealing.open(stored)
        if legacy != nil { try await store.deleteSetting(key: settingKey) }
        return await SessionKeys(secret: secret)
    }

    func sign(userID: Int, name: String, lifetime: Duration, now: Date = Date()) async throws -> (String, Date) {
        let expire = now.addingTimeInterval(Double(lifetime.components.seconds))
        let claims = SessionClaims(
            sub: SubjectClaim(value: String(userID)), exp: ExpirationClaim(value: expire),
            iat: IssuedAtClaim(value: now), name: name)
        return (try await keys.sign(claims), expire)
    }

    /// The user ID of a valid, unexpired session token; `nil` for anything else.
    func verify(_ token: String) async -> Int? {
        guard let claims = try? await keys.verify(token, as: SessionClaims.self) else { return nil }
        return Int(claims.sub.value)
    }
}

func randomBytes(_ count: Int) -> [UInt8] {
    var generator = SystemRandomNumberGenerator()
    return (0..<count).map { _ in UInt8.random(in: .min ... .max, using: &generator) }
}

func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
    guard a.count == b.count else { return false }
    var difference: UInt8 = 0
    for index in a.indices { difference |= a[index] ^ b[index] }
    return difference == 0
}
