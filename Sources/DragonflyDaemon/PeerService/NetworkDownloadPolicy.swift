import DragonflyCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Which URLs a download asked over the network (the Peer service's `DownloadTask`: a scheduler's seed trigger,
/// a preheat or push job) may name (issue "Security, part 1", finding 1).
///
/// Network schemes pass. `file://` passes only for a path that, with every symlink and `..` resolved, lies
/// under one of the configured `security.allowedFileDirectories`; the URL is rewritten to that resolved path so
/// the read cannot be redirected afterwards by the caller. Anything else is refused, so nothing that arrives from
/// the network makes the daemon read a local path it was not told to share.
struct NetworkDownloadPolicy {
    let allowedFileDirectories: [String]

    /// The URL to download, or `permissionDenied` / `invalidArgument` naming why not.
    func check(_ url: String) throws(DragonflyError) -> String {
        guard let scheme = NetworkSchemes.scheme(of: url) else {
            throw DragonflyError(code: .invalidArgument, message: "'\(Redaction.url(url))' is not a URL")
        }
        if NetworkSchemes.all.contains(scheme) { return url }
        guard scheme == "file" else {
            throw DragonflyError(
                code: .permissionDenied, message: "downloads asked over the network cannot use scheme '\(scheme)'")
        }
        var path = String(url.dropFirst(scheme.utf8.count + 3))
        if let query = path.firstIndex(where: { $0 == "?" || $0 == "#" }) { path = String(path[..<query]) }
        if path.hasPrefix("localhost/") { path.removeFirst("localhost".count) }
        let refused = DragonflyError(
            code: .permissionDenied,
            message: "file:// downloads asked over the network are limited to security.allowedFileDirectories")
        guard path.hasPrefix("/"), !allowedFileDirectories.isEmpty else { throw refused }
        let decoded = URLFilter.percentDecoded(path)
        guard let resolved = Self.realPath(decoded) else { throw refused }
        for directory in allowedFileDirectories {
            guard let root = Self.realPath(directory) else { continue }
            let prefix = root.hasSuffix("/") ? root : root + "/"
            if resolved.hasPrefix(prefix) {
                return "file://" + resolved
            }
        }
        throw refused
    }

    /// `path` with symlinks, `.` and `..` resolved; nil when it does not exist.
    static func realPath(_ path: String) -> String? {
        guard let resolved = realpath(path, nil) else { return nil }
        defer { free(resolved) }
        return String(cString: resolved)
    }
}
