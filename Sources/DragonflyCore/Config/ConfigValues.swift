/// A duration written as `500ms`, `30s`, `5m`, `2h` or combinations such as `1h30m`; a bare number is seconds.
///
/// Encodes to its canonical text so `--print-config` output loads back to the same value.
package struct ConfigDuration: Hashable, Sendable, Codable, CustomStringConvertible, Comparable {
    /// The length in milliseconds.
    package var milliseconds: Int64

    package init(milliseconds: Int64) { self.milliseconds = milliseconds }
    package static func seconds(_ s: Int64) -> ConfigDuration { ConfigDuration(milliseconds: s * 1000) }
    package static func minutes(_ m: Int64) -> ConfigDuration { .seconds(m * 60) }
    package static func hours(_ h: Int64) -> ConfigDuration { .seconds(h * 3600) }
    package static let zero = ConfigDuration(milliseconds: 0)

    /// The value as a Swift `Duration`.
    package var duration: Duration { .milliseconds(milliseconds) }

    /// Parses `500ms`, `30s`, `5m`, `2h`, `1h30m`, or a bare number of seconds (`10`, `1.5`).
    package init?(parsing text: String) {
        let s = text.trimmingSpaces()
        guard !s.isEmpty else { return nil }
        if let seconds = Double(s), seconds >= 0, seconds.isFinite {
            self.milliseconds = Int64((seconds * 1000).rounded())
            return
        }
        var total: Int64 = 0
        var index = s.startIndex
        var sawComponent = false
        while index < s.endIndex {
            let numberStart = index
            while index < s.endIndex, s[index].isASCII, s[index].isNumber { index = s.index(after: index) }
            guard numberStart < index, let value = Int64(s[numberStart..<index]) else { return nil }
            let unitStart = index
            while index < s.endIndex, s[index].isLetter { index = s.index(after: index) }
            let factor: Int64
            switch s[unitStart..<index] {
            case "ms": factor = 1
            case "s": factor = 1000
            case "m": factor = 60_000
            case "h": factor = 3_600_000
            case "d": factor = 86_400_000
            default: return nil
            }
            let (product, overflow) = value.multipliedReportingOverflow(by: factor)
            guard !overflow else { return nil }
            let (sum, overflow2) = total.addingReportingOverflow(product)
            guard !overflow2 else { return nil }
            total = sum
            sawComponent = true
        }
        guard sawComponent else { return nil }
        self.milliseconds = total
    }

    /// Canonical text: the largest units first, e.g. `1h30m`, `500ms`, `0s`.
    package var description: String {
        if milliseconds == 0 { return "0s" }
        var rest = milliseconds
        var out = ""
        for (unit, size) in [("h", Int64(3_600_000)), ("m", 60_000), ("s", 1000), ("ms", 1)] where rest >= size {
            out += "\(rest / size)\(unit)"
            rest %= size
        }
        return out
    }

    package init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if let number = try? container.decode(Double.self), number >= 0, number.isFinite {
            self.milliseconds = Int64((number * 1000).rounded())
            return
        }
        let text = try container.decode(String.self)
        guard let parsed = ConfigDuration(parsing: text) else {
            throw DecodingError.dataCorruptedError(
                in: container,
                debugDescription: "'\(text)' is not a duration (examples: 500ms, 30s, 5m, 2h, 1h30m)"
            )
        }
        self = parsed
    }

    package func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }

    package static func < (lhs: ConfigDuration, rhs: ConfigDuration) -> Bool { lhs.milliseconds < rhs.milliseconds }
}

/// A size or rate in bytes, written with optional 1024-based suffixes `K`, `M`, `G`, `T` (`4M`, `512K`, `1G`).
package struct ByteSize: Hashable, Sendable, Codable, CustomStringConvertible, Comparable {
    /// The number of bytes.
    package var bytes: Int64

    package init(bytes: Int64) { self.bytes = bytes }
    package static func kibibytes(_ k: Int64) -> ByteSize { ByteSize(bytes: k << 10) }
    package static func mebibytes(_ m: Int64) -> ByteSize { ByteSize(bytes: m << 20) }
    package static func gibibytes(_ g: Int64) -> ByteSize { ByteSize(bytes: g << 30) }
    package static let zero = ByteSize(bytes: 0)

    /// Parses `123`, `4K`, `4M`, `1G`, `2T` (also `4Ki`, `4MiB`, `4MB`, all 1024-based; case-insensitive).
    package init?(parsing text: String) {
        var s = text.trimmingSpaces().uppercased()
        for suffix in ["IB", "B"] where s.hasSuffix(suffix) && s.count > suffix.count {
            s.removeLast(suffix.count)
            break
        }
        if s.hasSuffix("I") { s.removeLast() }
        var shift: Int64 = 0
        if let last = s.last, let index = "KMGT".firstIndex(of: last) {
            shift = Int64("KMGT".distance(from: "KMGT".startIndex, to: index) + 1) * 10
            s.removeLast()
        }
        guard !s.isEmpty else { return nil }
        if let whole = Int64(s), whole >= 0 {
            guard whole <= (Int64.max >> shift) else { return nil }
            self.bytes = whole << shift
        } else if shift > 0, let fraction = Double(s), fraction >= 0, fraction.isFinite {
            let value = fraction * Double(Int64(1) << shift)
            guard value < 9.2e18 else { return nil }
            self.bytes = Int64(value.rounded())
        } else {
            return nil
        }
    }

    /// Canonical text: the largest exact 1024-based unit (`4M`, `1536K`, `100`).
    package var description: String {
        guard bytes != 0 else { return "0" }
        for (unit, shift) in [("T", Int64(40)), ("G", 30), ("M", 20), ("K", 10)]
        where bytes % (Int64(1) << shift) == 0 {
            return "\(bytes >> shift)\(unit)"
        }
        return String(bytes)
    }

    package init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if let number = try? container.decode(Int64.self), number >= 0 {
            self.bytes = number
            return
        }
        let text = try container.decode(String.self)
        guard let parsed = ByteSize(parsing: text) else {
            throw DecodingError.dataCorruptedError(
                in: container,
                debugDescription: "'\(text)' is not a size in bytes (examples: 1048576, 512K, 4M, 1G)"
            )
        }
        self = parsed
    }

    package func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }

    package static func < (lhs: ByteSize, rhs: ByteSize) -> Bool { lhs.bytes < rhs.bytes }
}

/// A listen address `IP:port` (`0.0.0.0:4000`, `127.0.0.1:0`, `[::1]:8080`); port 0 binds any free port.
package struct ListenAddress: Hashable, Sendable, Codable, CustomStringConvertible {
    package var host: String
    package var port: Int

    package init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// Parses `host:port` or `[v6]:port`; the port must be 0–65535.
    package init?(parsing text: String) {
        let s = text.trimmingSpaces()
        let hostPart: Substring
        let portPart: Substring
        if s.hasPrefix("[") {
            guard let close = s.firstIndex(of: "]"), s.index(after: close) < s.endIndex,
                s[s.index(after: close)] == ":"
            else { return nil }
            hostPart = s[s.index(after: s.startIndex)..<close]
            portPart = s[s.index(close, offsetBy: 2)...]
        } else {
            guard let colon = s.lastIndex(of: ":") else { return nil }
            hostPart = s[..<colon]
            portPart = s[s.index(after: colon)...]
            guard !hostPart.contains(":") else { return nil }
        }
        guard !hostPart.isEmpty, let port = Int(portPart), (0...65535).contains(port) else { return nil }
        self.host = String(hostPart)
        self.port = port
    }

    package var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

    package init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        let text = try container.decode(String.self)
        guard let parsed = ListenAddress(parsing: text) else {
            throw DecodingError.dataCorruptedError(
                in: container,
                debugDescription: "'\(text)' is not an address of the form IP:port (port 0-65535)"
            )
        }
        self = parsed
    }

    package func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }
}

/// A log level name as accepted by `--log-level` and `log.level`.
package enum LogLevelName: String, Hashable, Sendable, Codable, CaseIterable {
    case trace, debug, info, notice, warning, error, critical
}

extension String {
    /// The string without leading and trailing spaces and tabs.
    package func trimmingSpaces() -> String {
        var view = Substring(self)
        while let first = view.first, first == " " || first == "\t" { view.removeFirst() }
        while let last = view.last, last == " " || last == "\t" { view.removeLast() }
        return String(view)
    }
}
