/// A regular expression from configuration, compiled once and shared across tasks.
///
/// `@unchecked Sendable`: `Regex<AnyRegexOutput>` is an immutable value that is only matched after
/// compilation, never mutated.
package struct CompiledRegex: @unchecked Sendable {
    /// The pattern as written.
    package let pattern: String
    private let regex: Regex<AnyRegexOutput>

    /// Compiles `pattern`; throws Swift's regex syntax error.
    package init(_ pattern: String) throws {
        self.pattern = pattern
        self.regex = try Regex(pattern)
    }

    /// Whether the pattern matches somewhere in `text`.
    package func matches(in text: String) -> Bool { text.contains(regex) }

    /// Whether the pattern matches the whole of `text`.
    package func matchesWhole(_ text: String) -> Bool { (try? regex.wholeMatch(in: text)) != nil }
}

extension CompiledRegex {
    /// Compiles every pattern; a bad one throws a configuration error naming `keyPath(index)`.
    package static func compile(_ patterns: [String], keyPath: (Int) -> String) throws(DragonflyError)
        -> [CompiledRegex]
    {
        var compiled: [CompiledRegex] = []
        for (index, pattern) in patterns.enumerated() {
            do {
                compiled.append(try CompiledRegex(pattern))
            } catch {
                throw .configuration(keyPath: keyPath(index), "'\(pattern)' is not a regular expression")
            }
        }
        return compiled
    }
}
