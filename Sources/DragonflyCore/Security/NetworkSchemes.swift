/// The URL schemes of sources reached over the network (DESIGN §9, §11). A download that arrives from the network
/// (a scheduler's registration, seed trigger or preheat; a peer's `DownloadTask`) may name only these, so nothing
/// that arrives from the network makes a process read a local path.
package enum NetworkSchemes {
    /// `http`, `https` and the network source plugins.
    package static let all: Set<String> = ["http", "https", "s3", "hdfs", "oci", "hf", "modelscope"]

    /// The lowercased scheme of `url` (`scheme://…`), or `nil` when it has none or an implausible one.
    package static func scheme(of url: String) -> String? {
        guard let range = url.firstRange(of: "://") else { return nil }
        let scheme = url[..<range.lowerBound]
        guard !scheme.isEmpty, scheme.utf8.count <= 32,
            scheme.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "+" || $0 == "-" || $0 == ".") })
        else { return nil }
        return scheme.lowercased()
    }
}
