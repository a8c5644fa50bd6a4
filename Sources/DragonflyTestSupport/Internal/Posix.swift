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

// Small synchronous helpers over POSIX and Foundation. Everything here touches small local files or makes
// non-blocking system calls; the test-support API that uses them is synchronous on purpose (`accessLog()`,
// `stderrText()`), so none of it hides a long blocking call inside async code.

/// The text for an `errno` value, e.g. "Address already in use".
func describeErrno(_ code: Int32) -> String {
    guard let text = strerror(code) else { return "errno \(code)" }
    return String(cString: text)
}

/// A ``TestSupportError`` for a failed system call, capturing `errno` at the call site.
func systemCallFailure(_ call: String, errno code: Int32 = errno, _ message: String) -> TestSupportError {
    TestSupportError(
        code: .systemCallFailed,
        message: message,
        cause: SystemCallError(call: call, errno: code)
    )
}

/// Whether the effective user is root (then nginx workers and `initdb` need special care).
var isRunningAsRoot: Bool { geteuid() == 0 }

/// Whether `path` names an existing regular file that the current user may execute.
func isExecutableFile(_ path: String) -> Bool {
    var info = stat()
    guard stat(path, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG else { return false }
    return access(path, X_OK) == 0
}

/// Whether anything exists at `path`.
func fileExists(_ path: String) -> Bool {
    var info = stat()
    return stat(path, &info) == 0
}

/// The whole contents of a small file, or `nil` if it does not exist or cannot be read.
func readFileBytes(_ path: String) -> [UInt8]? {
    guard let data = FileManager.default.contents(atPath: path) else { return nil }
    return [UInt8](data)
}

/// The contents of a small file decoded as UTF-8 (invalid sequences repaired), or `""` if it is missing.
func readFileText(_ path: String) -> String {
    guard let bytes = readFileBytes(path) else { return "" }
    return String(decoding: bytes, as: UTF8.self)
}

/// Writes `bytes` to `path`, replacing any existing file, with mode `permissions` (0644: readable by all).
func writeFile(_ path: String, bytes: some Collection<UInt8>, permissions: Int = 0o644) throws {
    do {
        try Data(bytes).write(to: URL(fileURLWithPath: path))
    } catch {
        throw TestSupportError(code: .systemCallFailed, message: "could not write \(path)", cause: error)
    }
    guard chmod(path, mode_t(permissions)) == 0 else {
        throw systemCallFailure("chmod", "could not set the mode of \(path) to \(String(permissions, radix: 8))")
    }
}

/// The last `maxBytes` bytes of `text`, with a marker when something was cut, for error messages.
func tail(_ text: String, maxBytes: Int = 4000) -> String {
    let utf8 = text.utf8
    guard utf8.count > maxBytes else { return text }
    let start = utf8.index(utf8.endIndex, offsetBy: -maxBytes)
    return "…" + String(decoding: utf8[start...], as: UTF8.self)
}

/// The user and group IDs of a local account, e.g. `postgres`.
func lookUpUser(_ name: String) throws -> (uid: uid_t, gid: gid_t) {
    // getpwnam_r with a caller buffer: getpwnam's static buffer is not thread-safe.
    var entry = passwd()
    var result: UnsafeMutablePointer<passwd>?
    var buffer = [CChar](repeating: 0, count: 16_384)
    let rc = getpwnam_r(name, &entry, &buffer, buffer.count, &result)
    guard rc == 0, result != nil else {
        throw TestSupportError(
            code: .systemCallFailed,
            message: "no local user '\(name)' (getpwnam_r returned \(rc)); create it or run as a non-root user"
        )
    }
    return (entry.pw_uid, entry.pw_gid)
}

/// Changes the owner of `path` (not recursive).
func changeOwner(of path: String, toUser name: String) throws {
    let ids = try lookUpUser(name)
    guard chown(path, ids.uid, ids.gid) == 0 else {
        throw systemCallFailure("chown", "could not give \(path) to user '\(name)'")
    }
}

/// The absolute path of the running executable (the test bundle under `swift test`).
func currentExecutablePath() throws -> String {
    var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
    let length = readlink("/proc/self/exe", &buffer, buffer.count - 1)
    guard length > 0 else {
        throw systemCallFailure("readlink", "could not read /proc/self/exe to find the test executable")
    }
    return String(decoding: buffer[0..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

/// The directory part of a path, like `dirname(1)`.
func directoryName(of path: String) -> String {
    guard let slash = path.lastIndex(of: "/") else { return "." }
    if slash == path.startIndex { return "/" }
    return String(path[..<slash])
}

/// The current process environment as a dictionary.
func currentEnvironment() -> [String: String] {
    ProcessInfo.processInfo.environment
}
