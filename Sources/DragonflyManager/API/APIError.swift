import DragonflyCore
import Hummingbird
import Logging
import NIOCore

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// An error of the REST and open APIs, answered as `{"message": "…"}` with its status (DESIGN §10).
struct APIError: Error, Sendable {
    var status: HTTPResponse.Status
    var message: String
    /// Whole seconds for a `Retry-After` header, when the caller should wait.
    var retryAfterSeconds: Int? = nil

    static func badRequest(_ message: String) -> APIError { APIError(status: .badRequest, message: message) }
    static func unauthorized(_ message: String) -> APIError { APIError(status: .unauthorized, message: message) }
    static func forbidden(_ message: String) -> APIError { APIError(status: .forbidden, message: message) }
    static func notFound(_ message: String) -> APIError { APIError(status: .notFound, message: message) }
    static func tooManyRequests(_ message: String, retryAfter: Duration) -> APIError {
        let seconds = retryAfter.components.seconds + (retryAfter.components.attoseconds > 0 ? 1 : 0)
        return APIError(status: .tooManyRequests, message: message, retryAfterSeconds: Int(max(1, seconds)))
    }

    /// The status and message for any error a handler threw: store errors keep their meaning (unknown ID 404,
    /// duplicate name 409, invalid value 400), anything unexpected is a 500 whose cause is logged, not sent.
    static func converting(_ error: any Error, logger: Logger) -> APIError {
        switch error {
        case let error as APIError:
            return error
        case let error as DragonflyError:
            switch error.code {
            case .invalidArgument, .configuration, .usage: return .badRequest(error.message)
            case .notFound: return .notFound(error.message)
            case .alreadyExists: return APIError(status: .conflict, message: error.message)
            case .permissionDenied: return .forbidden(error.message)
            case .unauthenticated: return .unauthorized(error.message)
            case .failedPrecondition: return APIError(status: .conflict, message: error.message)
            case .unavailable, .deadlineExceeded, .resourceExhausted:
                return APIError(status: .serviceUnavailable, message: error.message)
            default:
                logger.error("request failed", metadata: ["df.error": "\(error)"])
                return APIError(status: .internalServerError, message: "internal error")
            }
        case let error as HTTPError:
            return APIError(status: error.status, message: error.body ?? error.status.reasonPhrase)
        default:
            logger.error("request failed", metadata: ["df.error": "\(error)"])
            return APIError(status: .internalServerError, message: "internal error")
        }
    }

    var response: Response {
        struct Body: Encodable { var message: String }
        var response = APIJSON.response(Body(message: message), status: status)
        if let retryAfterSeconds { response.headers[.retryAfter] = String(retryAfterSeconds) }
        return response
    }
}

/// Renders every error of the routes after it as `{"message": "…"}`.
struct APIErrorMiddleware<Context: RequestContext>: RouterMiddleware {
    let logger: Logger

    func handle(
        _ request: Request,
        context: Context,
        next: (Request, Context) async throws -> Response
    ) async throws -> Response {
        do {
            return try await next(request, context)
        } catch {
            return APIError.converting(error, logger: logger).response
        }
    }
}

/// JSON as the APIs speak it: RFC 3339 timestamps; snake_case keys come from each type's `CodingKeys` (a key
/// strategy would also rewrite the keys of free-form objects such as cluster configs).
enum APIJSON {
    /// The largest request body the APIs read.
    static let maxBodyBytes = 1 << 20

    static func encoder() -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .iso8601
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return encoder
    }

    static func decoder() -> JSONDecoder {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return decoder
    }

    static func response(_ value: some Encodable, status: HTTPResponse.Status = .ok) -> Response {
        let data: Data
        do {
            data = try encoder().encode(value)
        } catch {
            return Response(
                status: .internalServerError, headers: [.contentType: "application/json"],
                body: ResponseBody(byteBuffer: ByteBuffer(string: #"{"message":"cannot encode the response"}"#)))
        }
        return Response(
            status: status, headers: [.contentType: "application/json; charset=utf-8"],
            body: ResponseBody(byteBuffer: ByteBuffer(bytes: data)))
    }

    /// Reads the body (at most ``maxBodyBytes``) and decodes it, naming what is wrong when it does not decode.
    /// Call only after authentication (DESIGN §10: authentication is checked before the body is parsed).
    static func decodeBody<Value: Decodable>(_ type: Value.Type, from request: Request) async throws -> Value {
        var request = request
        let buffer: ByteBuffer
        do {
            buffer = try await request.collectBody(upTo: maxBodyBytes)
        } catch {
            throw APIError(status: .contentTooLarge, message: "the request body is larger than \(maxBodyBytes) bytes")
        }
        guard buffer.readableBytes > 0 else { throw APIError.badRequest("the request needs a JSON body") }
        do {
            return try decoder().decode(Value.self, from: Data(buffer.readableBytesView))
        } catch let error as DecodingError {
            throw APIError.badRequest(describe(error))
        } catch {
            throw APIError.badRequest("malformed JSON: \(error)")
        }
    }

    /// A one-line description of a decoding error naming the field, in snake_case as the client wrote it.
    static func describe(_ error: DecodingError) -> String {
        func path(_ keys: [any CodingKey]) -> String {
            let parts = keys.map { key in key.intValue.map { "[\($0)]" } ?? snakeCase(key.stringValue) }
            return parts.reduce("") { result, part in
                part.hasPrefix("[") || result.isEmpty ? result + part : result + "." + part
            }
        }
        switch error {
        case .dataCorrupted(let context) where context.codingPath.isEmpty:
            return "malformed JSON: \(context.debugDescription)"
        case .dataCorrupted(let context):
            return "invalid value for \(path(context.codingPath)): \(context.debugDescription)"
        case .keyNotFound(let key, let context):
            return "missing field \(path(context.codingPath + [key]))"
        case .typeMismatch(let type, let context):
            let field = path(context.codingPath)
            return "\(field.isEmpty ? "the body" : field) must be \(jsonName(of: type))"
        case .valueNotFound(let type, let context):
            return "\(path(context.codingPath)) must be \(jsonName(of: type)), not null"
        @unknown default:
            return "malformed JSON"
        }
    }

    private static func jsonName(of type: Any.Type) -> String {
        switch type {
        case is String.Type: return "a string"
        case is Int.Type, is Int64.Type, is Double.Type: return "a number"
        case is Bool.Type: return "true or false"
        case is Date.Type: return "an RFC 3339 timestamp"
        default:
            let name = "\(type)"
            if name.hasPrefix("Array") { return "an array" }
            return "an object"
        }
    }

    static func snakeCase(_ key: String) -> String {
        var result = ""
        for character in key {
            if character.isUppercase {
                result += "_" + character.lowercased()
            } else {
                result.append(character)
            }
        }
        return result
    }
}
