/// One sample of a Prometheus text exposition: `name{label="value",…} value [timestamp]`.
package struct PrometheusSample: Sendable, Hashable, CustomStringConvertible {
    /// The metric name, e.g. `dragonfly_daemon_download_bytes_total`.
    package var name: String
    /// The labels, e.g. `["source": "peer"]`; empty when the sample has none.
    package var labels: [String: String]
    /// The value (`+Inf`, `-Inf` and `NaN` included).
    package var value: Double

    package init(name: String, labels: [String: String] = [:], value: Double) {
        self.name = name
        self.labels = labels
        self.value = value
    }

    package var description: String {
        let labelText = labels.sorted { $0.key < $1.key }.map { "\($0.key)=\"\($0.value)\"" }.joined(separator: ",")
        return labels.isEmpty ? "\(name) \(value)" : "\(name){\(labelText)} \(value)"
    }
}

/// The samples of one `/metrics` page, parsed by ``init(parsing:)``, with look-ups by name and labels.
package struct PrometheusMetrics: Sendable, Hashable {
    /// Every sample in page order (comments and `# HELP`/`# TYPE` lines are skipped).
    package var samples: [PrometheusSample]

    package init(samples: [PrometheusSample]) {
        self.samples = samples
    }

    /// Parses the Prometheus text format (version 0.0.4): one sample per line, `name{labels} value` with an
    /// optional timestamp; blank lines and lines starting with `#` are skipped. Label values may contain the
    /// escapes `\\`, `\"` and `\n`.
    ///
    /// - Throws: ``TestSupportError/Code/commandFailed`` naming the first line that is not a sample.
    package init(parsing text: String) throws {
        var samples: [PrometheusSample] = []
        for (index, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let trimmed = String(line).trimmingWhitespace()
            if trimmed.isEmpty || trimmed.hasPrefix("#") { continue }
            var parser = PrometheusLineParser(trimmed)
            guard let sample = parser.parse() else {
                throw TestSupportError(
                    code: .commandFailed,
                    message: "line \(index + 1) of the metrics page is not a Prometheus sample: \(trimmed.prefix(200))"
                )
            }
            samples.append(sample)
        }
        self.samples = samples
    }

    /// The samples named `name` whose labels include every pair in `labels` (other labels may be present).
    package func samples(named name: String, labels: [String: String] = [:]) -> [PrometheusSample] {
        samples.filter { sample in
            sample.name == name && labels.allSatisfy { sample.labels[$0.key] == $0.value }
        }
    }

    /// The value of the one sample named `name` that matches `labels`, or the sum when several match (e.g.
    /// a counter split by a label the caller does not name); `nil` when none matches.
    package func value(_ name: String, labels: [String: String] = [:]) -> Double? {
        let matching = samples(named: name, labels: labels)
        guard !matching.isEmpty else { return nil }
        return matching.reduce(0) { $0 + $1.value }
    }

    /// Whether any sample is named `name`.
    package func contains(_ name: String) -> Bool {
        samples.contains { $0.name == name }
    }
}

/// A cursor over one sample line.
private struct PrometheusLineParser {
    private let characters: [Character]
    private var position = 0

    init(_ line: String) {
        characters = Array(line)
    }

    mutating func parse() -> PrometheusSample? {
        guard let name = parseName(allowColon: true) else { return nil }
        var labels: [String: String] = [:]
        if peek() == "{" {
            position += 1
            guard let parsed = parseLabels() else { return nil }
            labels = parsed
        }
        guard skipSpaces() > 0, let value = parseNumber() else { return nil }
        // An optional timestamp (milliseconds) follows; nothing else may.
        if skipSpaces() > 0, position < characters.count {
            guard parseNumber() != nil else { return nil }
            skipSpaces()
        }
        guard position == characters.count else { return nil }
        return PrometheusSample(name: name, labels: labels, value: value)
    }

    private func peek() -> Character? {
        position < characters.count ? characters[position] : nil
    }

    @discardableResult
    private mutating func skipSpaces() -> Int {
        let start = position
        while let character = peek(), character == " " || character == "\t" {
            position += 1
        }
        return position - start
    }

    /// `[a-zA-Z_:][a-zA-Z0-9_:]*` for metric names, without `:` for label names.
    private mutating func parseName(allowColon: Bool) -> String? {
        let start = position
        while let character = peek(), character.isASCII,
            character.isLetter || character == "_" || (allowColon && character == ":")
                || (position > start && character.isNumber)
        {
            position += 1
        }
        return position > start ? String(characters[start..<position]) : nil
    }

    /// After `{`: `name="value"` pairs separated by commas (a trailing comma is allowed), then `}`.
    private mutating func parseLabels() -> [String: String]? {
        var labels: [String: String] = [:]
        while true {
            skipSpaces()
            if peek() == "}" {
                position += 1
                return labels
            }
            guard let name = parseName(allowColon: false) else { return nil }
            skipSpaces()
            guard peek() == "=" else { return nil }
            position += 1
            skipSpaces()
            guard peek() == "\"" else { return nil }
            position += 1
            var value = ""
            while true {
                guard let character = peek() else { return nil }
                position += 1
                if character == "\"" { break }
                if character == "\\" {
                    guard let escaped = peek() else { return nil }
                    position += 1
                    switch escaped {
                    case "\\": value.append("\\")
                    case "\"": value.append("\"")
                    case "n": value.append("\n")
                    default: return nil
                    }
                } else {
                    value.append(character)
                }
            }
            guard labels.updateValue(value, forKey: name) == nil else { return nil }
            skipSpaces()
            if peek() == "," {
                position += 1
            } else if peek() != "}" {
                return nil
            }
        }
    }

    /// A Go-style float: decimal or exponent notation, `+Inf`, `-Inf`, `NaN`.
    private mutating func parseNumber() -> Double? {
        let start = position
        while let character = peek(), character != " ", character != "\t" {
            position += 1
        }
        let text = String(characters[start..<position])
        switch text {
        case "+Inf", "Inf": return .infinity
        case "-Inf": return -.infinity
        case "NaN": return .nan
        default:
            guard !text.isEmpty, text.allSatisfy({ $0.isASCII && ($0.isNumber || "+-.eE".contains($0)) }) else {
                return nil
            }
            return Double(text)
        }
    }
}
