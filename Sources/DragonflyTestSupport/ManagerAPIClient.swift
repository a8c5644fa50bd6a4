import AsyncHTTPClient
package import DragonflyCore
import NIOCore
package import NIOHTTP1

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// A JSON answer of the manager's HTTP listener.
package struct ManagerAPIAnswer: Sendable {
    package var status: Int
    package var text: String

    package init(status: Int = 0, text: String = "") {
        self.status = status
        self.text = text
    }

    /// The body as a JSON value (`.null` when it is not JSON).
    package var json: JSONDocument { JSONDocument(text) }
}

/// A parsed JSON document with the lookups tests need; a missing member or a bad document reads as `null`.
package struct JSONDocument: Sendable {
    private let value: JSONValue

    package init(_ text: String) {
        value = (try? JSONDecoder().decode(JSONValue.self, from: Data(text.utf8))) ?? .null
    }

    private init(value: JSONValue) { self.value = value }

    package subscript(key: String) -> JSONDocument { JSONDocument(value: value[key] ?? .null) }

    package subscript(index: Int) -> JSONDocument {
        guard let items = value.arrayValue, items.indices.contains(index) else { return JSONDocument(value: .null) }
        return JSONDocument(value: items[index])
    }

    package var string: String? { value.stringValue }

    package var int: Int? {
        if case .number(let number) = value, number == number.rounded() { return Int(number) }
        return nil
    }

    package var array: [JSONDocument]? { value.arrayValue?.map { JSONDocument(value: $0) } }

    package var isNull: Bool { value == .null }
}

/// Talks to a manager's HTTP listener (`/api/v1`, `/oapi/v1`); shut it down with ``shutdown()``.
package struct ManagerAPIClient: Sendable {
    package let base: String
    private let client = HTTPClient(eventLoopGroupProvider: .singleton)

    /// A client of the manager whose ready file is `ready` (its `http` listener).
    package init(_ ready: ReadyFile) throws {
        guard let address = ready.address(of: "http") else {
            throw TestSupportError(code: .invalidReadyFile, message: "the manager's ready file has no http listener")
        }
        base = "http://\(address.host):\(address.port)"
    }

    package func shutdown() {
        try? client.syncShutdown()
    }

    package func call(_ method: HTTPMethod, _ path: String, token: String? = nil, json: String? = nil) async throws
        -> ManagerAPIAnswer
    {
        var request = HTTPClientRequest(url: base + path)
        request.method = method
        if let token { request.headers.add(name: "Authorization", value: "Bearer \(token)") }
        if let json {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(string: json))
        }
        let response = try await client.execute(request, timeout: .seconds(30))
        let body = try await response.body.collect(upTo: 4 << 20)
        return ManagerAPIAnswer(status: Int(response.status.code), text: String(buffer: body))
    }

    /// Signs in and returns the session token.
    package func signIn(_ name: String, _ password: String) async throws -> String {
        let answer = try await call(
            .POST, "/api/v1/users/signin", json: #"{"name":"\#(name)","password":"\#(password)"}"#)
        guard answer.status == 200, let token = answer.json["token"].string else {
            throw TestSupportError(code: .commandFailed, message: "sign-in: \(answer.status) \(answer.text)")
        }
        return token
    }

    /// Creates a personal access token with `scopes`, valid for `seconds`, and returns it.
    package func createToken(_ session: String, scopes: [String], expiresIn seconds: Double) async throws -> String {
        let scopesJSON = scopes.map { "\"\($0)\"" }.joined(separator: ",")
        let expiry = Date().addingTimeInterval(seconds).formatted(.iso8601)
        let answer = try await call(
            .POST, "/api/v1/personal-access-tokens", token: session,
            json: #"{"name":"t\#(UInt32.random(in: 0 ... .max))","scopes":[\#(scopesJSON)],"expired_at":"\#(expiry)"}"#)
        guard answer.status == 201, let token = answer.json["token"].string else {
            throw TestSupportError(code: .commandFailed, message: "token: \(answer.status) \(answer.text)")
        }
        return token
    }
}
