import DragonflyCore

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// The body of `POST /api/v1/jobs` and `POST /oapi/v1/jobs` (Harbor's contract, DESIGN §10). Unknown fields
/// (Harbor sends `concurrent_count`, for one) are ignored.
struct JobRequest: Decodable {
    var type: String
    var args: JSONValue?
    /// `null` or `[]`: every cluster with an active scheduler.
    var schedulerClusterIDs: [Int]?

    enum CodingKeys: String, CodingKey {
        case type, args
        case schedulerClusterIDs = "scheduler_cluster_ids"
    }
}

/// The arguments of a preheat job, checked and normalised before the job is stored.
struct PreheatArgs: Codable {
    static let defaultTimeoutNanoseconds: Int64 = 30 * 60 * 1_000_000_000
    static let scopes = ["single_seed_peer", "all_seed_peers", "all_peers"]
    static let maxURLs = 1_000

    /// `image` (a manifest URL) or `file`.
    var type: String
    var url: String?
    var urls: [String]?
    var headers: [String: String]?
    var scope: String?
    var tag: String?
    var filteredQueryParams: String?
    /// Nanoseconds (Go's `time.Duration`); 0 means the default, 30 minutes.
    var timeout: Int64?
    var ips: [String]?
    var count: Int?
    var percentage: Int?
    var platform: String?
    var username: String?
    var password: String?

    enum CodingKeys: String, CodingKey {
        case type, url, urls, headers, scope, tag, timeout, ips, count, percentage, platform, username, password
        case filteredQueryParams = "filtered_query_params"
    }

    /// The arguments of a stored job (normalised when it was created).
    init(stored args: JSONValue) throws {
        self = try JSONDecoder().decode(PreheatArgs.self, from: try JSONEncoder().encode(args))
    }

    /// The URLs of a stored job's arguments; none when they do not read as preheat arguments.
    static func urls(of args: JSONValue) -> [String] {
        (try? PreheatArgs(stored: args))?.allURLs ?? []
    }

    /// Every URL of the job: `url` then `urls`, without repeats.
    var allURLs: [String] {
        var seen = Set<String>()
        return ([url].compactMap { $0 } + (urls ?? [])).filter { !$0.isEmpty && seen.insert($0).inserted }
    }

    /// Parses and checks `args`; returns them with `scope` and `timeout` made explicit (`single_peer` becomes
    /// `single_seed_peer`), every other field as the client sent it.
    static func normalise(_ args: JSONValue?) throws(APIError) -> (PreheatArgs, JSONValue) {
        guard case .object(var fields)? = args else { throw .badRequest("args must be an object") }
        var parsed: PreheatArgs
        do {
            let data = try JSONEncoder().encode(JSONValue.object(fields))
            parsed = try JSONDecoder().decode(PreheatArgs.self, from: data)
        } catch let error as DecodingError {
            throw .badRequest("args: " + APIJSON.describe(error))
        } catch {
            throw .badRequest("args: \(error)")
        }
        guard parsed.type == "image" || parsed.type == "file" else {
            throw .badRequest("args.type must be \"image\" or \"file\", not \"\(parsed.type)\"")
        }
        let urls = parsed.allURLs
        guard !urls.isEmpty else { throw .badRequest("args needs url or urls") }
        guard urls.count <= maxURLs else { throw .badRequest("args has more than \(maxURLs) URLs") }
        if parsed.type == "image" && urls.count != 1 {
            throw .badRequest("an image preheat takes one manifest URL")
        }
        for url in urls {
            guard let components = URLComponents(string: url), let scheme = components.scheme?.lowercased(),
                scheme == "http" || scheme == "https", let host = components.host, !host.isEmpty
            else { throw .badRequest("args: \"\(url)\" is not an http or https URL") }
        }
        var scope = parsed.scope ?? ""
        if scope.isEmpty { scope = "single_seed_peer" }
        if scope == "single_peer" { scope = "single_seed_peer" }
        guard scopes.contains(scope) else {
            throw .badRequest("args.scope must be one of \(scopes.joined(separator: ", ")), not \"\(scope)\"")
        }
        parsed.scope = scope
        let timeout = parsed.timeout ?? 0
        guard timeout >= 0 else { throw .badRequest("args.timeout must not be negative") }
        parsed.timeout = timeout == 0 ? defaultTimeoutNanoseconds : timeout
        if let count = parsed.count, count < 1 { throw .badRequest("args.count must be at least 1") }
        if let percentage = parsed.percentage, !(1...100).contains(percentage) {
            throw .badRequest("args.percentage must be 1-100")
        }
        fields["scope"] = .string(scope)
        fields["timeout"] = .number(Double(parsed.timeout ?? defaultTimeoutNanoseconds))
        return (parsed, .object(fields))
    }
}
