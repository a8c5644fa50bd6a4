import Crypto
import DragonflyCore
import Glibc

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Keeps the session signing key encrypted at rest (DESIGN §11): the database holds it sealed with AES-GCM
/// under a key-encryption key that is never stored in the database.
///
/// The key-encryption key comes from, in order: the file `api.sessionKeyEncryptionFile` (0600), the
/// environment variable `DRAGONFLY_MANAGER_ENCRYPTION_KEY`, or — with SQLite only — `session.key` in the data
/// directory, created 0600 at first start. PostgreSQL replicas must be given the same key; without one the
/// signing key stays in the database in clear, as before, and the manager warns at start.
struct SessionKeySealing: Sendable {
    static let environmentVariable = "DRAGONFLY_MANAGER_ENCRYPTION_KEY"
    static let dataDirectoryFile = "session.key"
    /// The setting that holds the sealed signing key (base64 of AES-GCM's combined form).
    static let sealedSettingKey = "jwt.signing_key.sealed"
    /// Shortest key-encryption key text accepted.
    static let minimumLength = 32

    private let key: SymmetricKey

    init(text: String) {
        key = SymmetricKey(data: SHA256.hash(data: Array(text.utf8)))
    }

    /// The key-encryption key for a manager, or `nil` when there is none (PostgreSQL without a configured key).
    /// Blocking (reads or creates a file): call at start-up.
    static func resolve(
        config: ManagerConfig,
        dataDirectory: String,
        environment: [String: String] = ProcessInfo.processInfo.environment
    ) throws(DragonflyError) -> SessionKeySealing? {
        if !config.api.sessionKeyEncryptionFile.isEmpty {
            let text = try SecretFile.read(config.api.sessionKeyEncryptionFile, key: "api.sessionKeyEncryptionFile")
            return try checked(text, source: "api.sessionKeyEncryptionFile")
        }
        if let text = environment[environmentVariable], !text.isEmpty {
            return try checked(text, source: environmentVariable)
        }
        let location = try ManagerDatabase.Location.resolve(database: config.database, dataDirectory: dataDirectory)
        guard case .sqlite = location else { return nil }
        let path =
            (dataDirectory.hasSuffix("/") ? String(dataDirectory.dropLast()) : dataDirectory) + "/"
            + dataDirectoryFile
        try createIfMissing(path)
        return try checked(SecretFile.read(path, key: "the data directory's \(dataDirectoryFile)"), source: path)
    }

    private static func checked(_ text: String, source: String) throws(DragonflyError) -> SessionKeySealing {
        guard text.count >= minimumLength else {
            throw DragonflyError(
                code: .configuration,
                message: "\(source): the session key encryption key must be at least \(minimumLength) characters")
        }
        return SessionKeySealing(text: text)
    }

    /// Writes 64 random hex digits to `path` (0600, never following a link, never replacing a file).
    private static func createIfMissing(_ path: String) throws(DragonflyError) {
        let descriptor = Glibc.open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else {
            if errno == EEXIST { return }
            throw DragonflyError(
                code: .failedPrecondition,
                message: "cannot create \(path): \(String(cString: strerror(errno))); check the data directory")
        }
        defer { close(descriptor) }
        let bytes = Array((TaskID.hex(randomBytes(32)) + "\n").utf8)
        let written = bytes.withUnsafeBytes { Glibc.write(descriptor, $0.baseAddress, $0.count) }
        guard written == bytes.count, fsync(descriptor) == 0 else {
            unlink(path)
            throw DragonflyError(code: .failedPrecondition, message: "cannot write \(path); check the disk")
        }
    }

    func seal(_ secret: String) throws(DragonflyError) -> String {
        do {
            guard let combined = try AES.GCM.seal(Array(secret.utf8), using: key).combined else {
                throw DragonflyError(code: .internalError, message: "cannot seal the session signing key")
            }
            return combined.base64EncodedString()
        } catch let error as DragonflyError {
            throw error
        } catch {
            throw DragonflyError(code: .internalError, message: "cannot seal the session signing key", cause: error)
        }
    }

    func open(_ sealed: String) throws(DragonflyError) -> String {
        guard let data = Data(base64Encoded: sealed),
            let box = try? AES.GCM.SealedBox(combined: data),
            let clear = try? AES.GCM.open(box, using: key)
        else {
            throw DragonflyError(
                code: .failedPrecondition,
                message:
                    "the session signing key in the database was sealed with another encryption key; give every "
                    + "replica the same api.sessionKeyEncryptionFile or \(Self.environmentVariable)")
        }
        return String(decoding: clear, as: UTF8.self)
    }
}
