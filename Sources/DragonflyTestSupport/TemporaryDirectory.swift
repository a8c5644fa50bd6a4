#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// A fresh directory under `$TMPDIR` (or `/tmp`) named `dragonfly-test-…`, for one test's files.
///
/// The directory is created with `mkdtemp` and then given mode 0755, so that servers whose workers run as
/// another user (`nobody`, `postgres`) can reach files inside it. ``remove()`` deletes it recursively;
/// ``withTemporaryDirectory(prefix:isolation:_:)`` does that at the end of its scope.
package struct TemporaryDirectory: Sendable, Hashable, CustomStringConvertible {
    /// The absolute path of the directory.
    package let path: String

    /// Creates a new, empty directory.
    ///
    /// - Parameter prefix: The start of the directory's name; six random characters follow it.
    package init(prefix: String = "dragonfly-test-") throws {
        let environment = currentEnvironment()
        var parent = environment["TMPDIR"].flatMap { $0.isEmpty ? nil : $0 } ?? "/tmp"
        while parent.count > 1, parent.hasSuffix("/") {
            parent.removeLast()
        }
        var template = Array("\(parent)/\(prefix)XXXXXX".utf8CString)
        let created = template.withUnsafeMutableBufferPointer { buffer -> Bool in
            guard let base = buffer.baseAddress else { return false }
            return mkdtemp(base) != nil
        }
        guard created else {
            throw systemCallFailure("mkdtemp", "could not create a temporary directory in \(parent)")
        }
        let path = String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
        guard chmod(path, 0o755) == 0 else {
            let failure = systemCallFailure("chmod", "could not make \(path) accessible to other users")
            _ = try? FileManager.default.removeItem(atPath: path)
            throw failure
        }
        self.path = path
    }

    /// The path of `relativePath` inside this directory (nothing is created).
    package func appending(_ relativePath: String) -> String {
        relativePath.hasPrefix("/") ? path + relativePath : path + "/" + relativePath
    }

    /// Creates a subdirectory (and its parents) with mode 0755 and returns its path.
    @discardableResult
    package func makeDirectory(_ relativePath: String) throws -> String {
        let target = appending(relativePath)
        do {
            try FileManager.default.createDirectory(
                atPath: target,
                withIntermediateDirectories: true,
                attributes: [.posixPermissions: 0o755]
            )
        } catch {
            throw TestSupportError(code: .systemCallFailed, message: "could not create \(target)", cause: error)
        }
        return target
    }

    /// Writes a file inside this directory, creating parent directories, and returns its path.
    ///
    /// - Parameter permissions: The file's mode: 0644 by default, 0o755 for a script.
    @discardableResult
    package func writeFile(
        _ relativePath: String,
        contents: some Collection<UInt8>,
        permissions: Int = 0o644
    ) throws -> String {
        let target = appending(relativePath)
        let parent = directoryName(of: target)
        if parent != path {
            try makeDirectory(String(parent.dropFirst(path.count)))
        }
        try DragonflyTestSupport.writeFile(target, bytes: contents, permissions: permissions)
        return target
    }

    /// Writes a UTF-8 text file inside this directory and returns its path.
    ///
    /// - Parameter permissions: The file's mode: 0644 by default, 0o755 for a script.
    @discardableResult
    package func writeFile(_ relativePath: String, text: String, permissions: Int = 0o644) throws -> String {
        try writeFile(relativePath, contents: Array(text.utf8), permissions: permissions)
    }

    /// Gives the directory itself (not its contents) to a local user, e.g. `postgres`.
    package func changeOwner(toUser user: String) throws {
        try DragonflyTestSupport.changeOwner(of: path, toUser: user)
    }

    /// Deletes the directory and everything in it. Errors (e.g. already gone) are ignored.
    package func remove() {
        _ = try? FileManager.default.removeItem(atPath: path)
    }

    package var description: String { path }
}

/// Runs `body` with a fresh ``TemporaryDirectory`` and deletes it recursively afterwards, also when `body`
/// throws.
package func withTemporaryDirectory<Value>(
    prefix: String = "dragonfly-test-",
    isolation: isolated (any Actor)? = #isolation,
    _ body: (TemporaryDirectory) async throws -> Value
) async throws -> Value {
    let directory = try TemporaryDirectory(prefix: prefix)
    defer { directory.remove() }
    return try await body(directory)
}
