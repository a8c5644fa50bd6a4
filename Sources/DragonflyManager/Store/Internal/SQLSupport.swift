import DragonflyCore
import PostgresKit
import SQLKit
import SQLiteKit

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// How dates are stored: UTC instants (`TIMESTAMPTZ` on PostgreSQL, REAL Unix seconds on SQLite) with
/// millisecond precision, so that a value reads back equal on both backends.
enum StoredDate {
    /// `date` rounded to the nearest millisecond: what every record exposes.
    static func normalized(_ date: Date) -> Date {
        Date(timeIntervalSince1970: (date.timeIntervalSince1970 * 1000).rounded() / 1000)
    }

    /// The value to bind for `date`: its millisecond, plus 0.4 µs. PostgresNIO truncates a `Date` to whole
    /// microseconds, and a millisecond is rarely exact in binary (…20.123 is …20.12299990…), so without
    /// the bias PostgreSQL would store …20.122999. The bias is below SQLite's read-side rounding and below a
    /// microsecond, and the same for every stored instant, so comparisons between stored dates are unchanged.
    static func forBinding(_ date: Date) -> Date {
        Date(timeIntervalSince1970: normalized(date).timeIntervalSince1970 + 0.000_000_4)
    }
}

/// JSON text columns: encoded with sorted keys, decoded into typed values.
enum StoredJSON {
    static func encode(_ value: some Encodable) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try encoder.encode(value), as: UTF8.self)
    }

    static func decode<Value: Decodable>(_ type: Value.Type, from text: String, column: String) throws -> Value {
        do {
            return try JSONDecoder().decode(type, from: Data(text.utf8))
        } catch {
            throw DragonflyError(
                code: .dataLoss, message: "column \(column) holds invalid JSON for \(type)", cause: error)
        }
    }
}

extension SQLRow {
    func int(_ column: String) throws -> Int { try decode(column: column, as: Int.self) }
    func optionalInt(_ column: String) throws -> Int? { try decode(column: column, as: Int?.self) }
    func string(_ column: String) throws -> String { try decode(column: column, as: String.self) }
    func optionalString(_ column: String) throws -> String? { try decode(column: column, as: String?.self) }
    func bool(_ column: String) throws -> Bool { try decode(column: column, as: Bool.self) }
    func date(_ column: String) throws -> Date { StoredDate.normalized(try decode(column: column, as: Date.self)) }
    func optionalDate(_ column: String) throws -> Date? {
        try decode(column: column, as: Date?.self).map(StoredDate.normalized)
    }
    func json<Value: Decodable>(_ column: String, as type: Value.Type) throws -> Value {
        try StoredJSON.decode(type, from: string(column), column: column)
    }
    func optionalJSON<Value: Decodable>(_ column: String, as type: Value.Type) throws -> Value? {
        guard let text = try optionalString(column) else { return nil }
        return try StoredJSON.decode(type, from: text, column: column)
    }
    func enumeration<Value: RawRepresentable>(_ column: String, as type: Value.Type) throws -> Value
    where Value.RawValue == String {
        let raw = try string(column)
        guard let value = Value(rawValue: raw) else {
            throw DragonflyError(code: .dataLoss, message: "column \(column) holds unknown \(type) '\(raw)'")
        }
        return value
    }
}

/// Whether `error` is a unique-constraint violation from either driver.
func isUniqueViolation(_ error: any Error) -> Bool {
    if let error = error as? PSQLError {
        return error.serverInfo?[.sqlState] == PostgresError.Code.uniqueViolation.raw
    }
    if let error = error as? SQLiteError {
        switch error.reason {
        case .constraintUniqueFailed, .constraintPrimaryKeyFailed: return true
        case .constraint: return error.message.contains("UNIQUE")
        default: return false
        }
    }
    return false
}

extension DragonflyError {
    static func notFound(_ what: String, id: some CustomStringConvertible) -> DragonflyError {
        DragonflyError(code: .notFound, message: "\(what) \(id) does not exist")
    }

    static func alreadyExists(_ what: String, name: String) -> DragonflyError {
        DragonflyError(code: .alreadyExists, message: "a \(what) named '\(name)' already exists; choose another name")
    }
}
