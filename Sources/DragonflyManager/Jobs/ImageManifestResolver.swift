package import AsyncHTTPClient
package import DragonflyCore
import NIOCore
import NIOHTTP1

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Turns an image manifest URL into the URLs of its layer blobs, the way a preheat needs them (DESIGN §10):
/// the manifest GET sends `Accept` with the Docker v2 manifest and list types and the OCI manifest and index
/// types; a list or index is resolved by platform (default `linux/amd64`); a 401 with a Bearer challenge is
/// answered by fetching a token from the challenge's realm (with basic credentials when given); the given
/// headers go with every request and, with the token, with every layer download.
package struct ImageManifestResolver: Sendable {
    package struct Resolved: Sendable, Equatable {
        /// `<scheme>://<host[:port]>/v2/<repo>/blobs/<digest>`, one per layer, in manifest order.
        package var blobURLs: [String]
        /// Headers for the layer downloads: the given ones, plus `Authorization` when a token was fetched.
        package var headers: [String: String]
    }

    static let accept = [
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
    ].joined(separator: ", ")
    static let maxManifestBytes = 4 << 20
    static let maxLayers = 10_000

    private let client: HTTPClient
    private let timeout: Duration

    package init(client: HTTPClient, timeout: Duration = .seconds(30)) {
        self.client = client
        self.timeout = timeout
    }

    /// - Parameters:
    ///   - platform: `os/architecture[/variant]`; empty means `linux/amd64`.
    ///   - username, password: registry credentials exchanged for a token on a Bearer challenge (or sent as
    ///     Basic on a Basic challenge).
    package func resolve(
        manifestURL: String,
        headers: [String: String],
        platform: String = "",
        username: String? = nil,
        password: String? = nil
    ) async throws(DragonflyError) -> Resolved {
        guard let reference = ManifestReference(manifestURL) else {
            throw DragonflyError(
                code: .invalidArgument,
                message:
                    "\(manifestURL) is not a manifest URL (<scheme>://<host>/v2/<repository>/manifests/<reference>)")
        }
        var session = Session(headers: headers, username: username, password: password)
        var manifest = try await fetchManifest(reference.manifestURL(reference.reference), session: &session)
        if let entries = manifest["manifests"]?.arrayValue {
            let wanted = Platform(platform.isEmpty ? "linux/amd64" : platform)
            guard
                let entry = entries.first(where: { wanted.matches($0["platform"]) }),
                let digest = entry["digest"]?.stringValue
            else {
                throw DragonflyError(
                    code: .notFound, message: "\(manifestURL) has no manifest for platform \(wanted)")
            }
            manifest = try await fetchManifest(reference.manifestURL(digest), session: &session)
        }
        guard let layers = manifest["layers"]?.arrayValue else {
            throw DragonflyError(code: .invalidArgument, message: "\(manifestURL) is not an image manifest (no layers)")
        }
        guard layers.count <= Self.maxLayers else {
            throw DragonflyError(
                code: .invalidArgument, message: "\(manifestURL) has more than \(Self.maxLayers) layers")
        }
        var urls: [String] = []
        for layer in layers {
            guard let digest = layer["digest"]?.stringValue, digest.contains(":") else {
                throw DragonflyError(code: .invalidArgument, message: "\(manifestURL) has a layer without a digest")
            }
            let url = reference.blobURL(digest)
            if !urls.contains(url) { urls.append(url) }
        }
        var downloadHeaders = headers
        if let authorization = session.authorization { downloadHeaders["Authorization"] = authorization }
        return Resolved(blobURLs: urls, headers: downloadHeaders)
    }

    // MARK: Requests

    private struct Session {
        var headers: [String: String]
        var username: String?
        var password: String?
        /// `Bearer <token>` or `Basic …` once a challenge was answered.
        var authorization: String?
    }

    private func fetchManifest(_ url: String, session: inout Session) async throws(DragonflyError) -> JSONValue {
        var response = try await get(url, session: session, accept: Self.accept)
        if response.status == .unauthorized, session.authorization == nil,
            let challenge = response.headers.first(name: "www-authenticate")
        {
            session.authorization = try await answer(challenge, for: url, session: session)
            response = try await get(url, session: session, accept: Self.accept)
        }
        guard response.status == .ok else {
            throw DragonflyError(
                code: response.status == .notFound ? .notFound : .originError,
                message: "the registry answered \(response.status.code) for \(url)")
        }
        guard let manifest = try? JSONDecoder().decode(JSONValue.self, from: Data(response.body.readableBytesView)),
            case .object = manifest
        else { throw DragonflyError(code: .invalidArgument, message: "\(url) is not a JSON manifest") }
        return manifest
    }

    private struct Answer {
        var status: HTTPResponseStatus
        var headers: HTTPHeaders
        var body: ByteBuffer
    }

    private func get(_ url: String, session: Session, accept: String?) async throws(DragonflyError) -> Answer {
        var request = HTTPClientRequest(url: url)
        for (name, value) in session.headers
        where !(session.authorization != nil && name.lowercased() == "authorization") {
            request.headers.add(name: name, value: value)
        }
        if let authorization = session.authorization {
            request.headers.replaceOrAdd(name: "Authorization", value: authorization)
        }
        if let accept { request.headers.replaceOrAdd(name: "Accept", value: accept) }
        do {
            let response = try await client.execute(request, timeout: .seconds(timeout.components.seconds))
            let body = try await response.body.collect(upTo: Self.maxManifestBytes)
            return Answer(status: response.status, headers: response.headers, body: body)
        } catch {
            throw DragonflyError(code: .unavailable, message: "GET \(url) failed: \(error)")
        }
    }

    /// The `Authorization` value that answers a `WWW-Authenticate` challenge.
    private func answer(_ challenge: String, for url: String, session: Session) async throws(DragonflyError)
        -> String
    {
        let basic = basicCredentials(session)
        let lowered = challenge.lowercased()
        if lowered.hasPrefix("basic") {
            guard let basic else {
                throw DragonflyError(
                    code: .permissionDenied, message: "the registry wants credentials for \(url) and none were given")
            }
            return basic
        }
        guard lowered.hasPrefix("bearer") else {
            throw DragonflyError(
                code: .permissionDenied, message: "unsupported registry challenge for \(url): \(challenge)")
        }
        let parameters = Self.challengeParameters(String(challenge.dropFirst("bearer".count)))
        guard let realm = parameters["realm"], var components = URLComponents(string: realm) else {
            throw DragonflyError(code: .permissionDenied, message: "the registry's challenge for \(url) has no realm")
        }
        var query = components.queryItems ?? []
        if let service = parameters["service"] { query.append(URLQueryItem(name: "service", value: service)) }
        if let scope = parameters["scope"] { query.append(URLQueryItem(name: "scope", value: scope)) }
        components.queryItems = query.isEmpty ? nil : query
        guard let tokenURL = components.string else {
            throw DragonflyError(code: .permissionDenied, message: "the registry's token realm \(realm) is not a URL")
        }
        var tokenSession = Session(headers: [:])
        if let basic {
            tokenSession.authorization = basic
        } else if let given = session.headers.first(where: { $0.key.lowercased() == "authorization" })?.value {
            tokenSession.authorization = given
        }
        let response = try await get(tokenURL, session: tokenSession, accept: nil)
        guard response.status == .ok else {
            throw DragonflyError(
                code: .permissionDenied,
                message: "the registry's token service answered \(response.status.code) for \(url)")
        }
        guard let object = try? JSONDecoder().decode(JSONValue.self, from: Data(response.body.readableBytesView)),
            let token = object["token"]?.stringValue ?? object["access_token"]?.stringValue, !token.isEmpty
        else { throw DragonflyError(code: .permissionDenied, message: "the registry's token service gave no token") }
        return "Bearer \(token)"
    }

    private func basicCredentials(_ session: Session) -> String? {
        guard let username = session.username, !username.isEmpty else { return nil }
        return "Basic " + Data("\(username):\(session.password ?? "")".utf8).base64EncodedString()
    }

    /// `realm="…",service="…",scope="…"` as a dictionary (keys lowercased).
    static func challengeParameters(_ text: String) -> [String: String] {
        var result: [String: String] = [:]
        var rest = Substring(text)
        while !rest.isEmpty {
            rest = rest.drop(while: { $0 == " " || $0 == "," })
            guard let equals = rest.firstIndex(of: "=") else { break }
            let key = rest[..<equals].trimmingSpaces().lowercased()
            rest = rest[rest.index(after: equals)...]
            var value = ""
            if rest.first == "\"" {
                rest = rest.dropFirst()
                while let character = rest.first, character != "\"" {
                    rest = rest.dropFirst()
                    if character == "\\", let escaped = rest.first {
                        value.append(escaped)
                        rest = rest.dropFirst()
                    } else {
                        value.append(character)
                    }
                }
                rest = rest.dropFirst()
            } else {
                let end = rest.firstIndex(of: ",") ?? rest.endIndex
                value = String(rest[..<end]).trimmingSpaces()
                rest = rest[end...]
            }
            if !key.isEmpty { result[key] = value }
        }
        return result
    }
}

/// `<scheme>://<host[:port]>/v2/<repository>/manifests/<reference>`, taken apart.
struct ManifestReference {
    var base: String
    var repository: String
    var reference: String

    init?(_ url: String) {
        guard let components = URLComponents(string: url), let scheme = components.scheme?.lowercased(),
            scheme == "http" || scheme == "https", let host = components.host, !host.isEmpty
        else { return nil }
        let path = components.path
        guard path.hasPrefix("/v2/"), let marker = path.ranges(of: "/manifests/").last else {
            return nil
        }
        repository = String(path[path.index(path.startIndex, offsetBy: 4)..<marker.lowerBound])
        reference = String(path[marker.upperBound...])
        guard !repository.isEmpty, !reference.isEmpty, !reference.contains("/") else { return nil }
        let port = components.port.map { ":\($0)" } ?? ""
        let hostPart = host.contains(":") ? "[\(host)]" : host
        base = "\(scheme)://\(hostPart)\(port)"
    }

    func manifestURL(_ reference: String) -> String { "\(base)/v2/\(repository)/manifests/\(reference)" }
    func blobURL(_ digest: String) -> String { "\(base)/v2/\(repository)/blobs/\(digest)" }
}

/// `os/architecture[/variant]`.
struct Platform: CustomStringConvertible {
    var os: String
    var architecture: String
    var variant: String?

    init(_ text: String) {
        let parts = text.split(separator: "/").map(String.init)
        os = parts.first ?? "linux"
        architecture = parts.count > 1 ? parts[1] : "amd64"
        variant = parts.count > 2 ? parts[2] : nil
    }

    var description: String { [os, architecture, variant].compactMap { $0 }.joined(separator: "/") }

    func matches(_ platform: JSONValue?) -> Bool {
        guard let platform else { return false }
        guard platform["os"]?.stringValue == os, platform["architecture"]?.stringValue == architecture else {
            return false
        }
        if let variant { return platform["variant"]?.stringValue == variant }
        return true
    }
}

extension StringProtocol {
    fileprivate func trimmingSpaces() -> String {
        String(drop(while: { $0 == " " }).reversed().drop(while: { $0 == " " }).reversed())
    }
}
