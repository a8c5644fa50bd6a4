package import Yams

/// A role's configuration: `Codable` with a default for every key, validated before any service starts.
package protocol RoleConfiguration: Codable, Sendable, Equatable {
    /// The configuration with every key at its default.
    init()
    /// Semantic checks beyond decoding; throws a ``DragonflyError`` whose message names the key path.
    func validate() throws(DragonflyError)
}

/// Loads role configurations from YAML and renders them back.
///
/// Loading merges the file over the defaults (so a file may name any subset of keys), rejects keys the
/// configuration does not have, and maps every decoding problem to the YAML key path it came from
/// (`download.pieceTimeout: '3x' is not a duration …`). An empty value (`key:`) means the default.
package enum ConfigLoader {
    /// Decodes `yaml` over `C()`'s defaults. `source` names the file in error messages.
    package static func load<C: RoleConfiguration>(
        _ type: C.Type,
        yaml: String,
        source: String = "configuration"
    ) throws(DragonflyError) -> C {
        let userNode: Node
        do {
            userNode = try Yams.compose(yaml: yaml) ?? Node([(Node, Node)]())
        } catch {
            throw DragonflyError(code: .configuration, message: "invalid YAML in \(source): \(error)")
        }
        guard case .mapping = userNode else {
            if case .scalar(let scalar) = userNode, scalar.string.isEmpty || scalar.string == "~" {
                return C()
            }
            throw DragonflyError(
                code: .configuration, message: "invalid configuration in \(source): top level must be a mapping of keys"
            )
        }

        let defaultNode = try node(of: C())
        let merged = merge(defaultNode, userNode)
        let config: C
        do {
            config = try YAMLDecoder().decode(C.self, from: merged)
        } catch let error as DecodingError {
            throw describe(error, source: source)
        } catch {
            throw DragonflyError(code: .configuration, message: "invalid configuration in \(source): \(error)")
        }
        // Every key the user wrote must survive a round trip; anything else is unknown.
        try checkKnownKeys(user: userNode, known: try node(of: config), path: [], source: source)
        try config.validate()
        return config
    }

    /// The YAML text of a configuration; loading it back gives an equal value.
    package static func render<C: RoleConfiguration>(_ config: C) throws(DragonflyError) -> String {
        do {
            return try YAMLEncoder().encode(config)
        } catch {
            throw DragonflyError(code: .internalError, message: "cannot render configuration: \(error)")
        }
    }

    /// The key paths of every scalar leaf of a configuration, e.g. `storage.gc.interval` (sequences as `[]`).
    package static func keyPaths<C: RoleConfiguration>(of config: C) throws(DragonflyError) -> Set<String> {
        var out = Set<String>()
        collectKeyPaths(try node(of: config), path: "", into: &out)
        return out
    }

    /// The key paths of every scalar leaf of a YAML document.
    package static func keyPaths(ofYAML yaml: String) throws(DragonflyError) -> Set<String> {
        var out = Set<String>()
        do {
            if let node = try Yams.compose(yaml: yaml) { collectKeyPaths(node, path: "", into: &out) }
        } catch {
            throw DragonflyError(code: .configuration, message: "invalid YAML: \(error)")
        }
        return out
    }

    // MARK: - Internals

    private static func node<C: Encodable>(of value: C) throws(DragonflyError) -> Node {
        do {
            let text = try YAMLEncoder().encode(value)
            return try Yams.compose(yaml: text) ?? Node([(Node, Node)]())
        } catch {
            throw DragonflyError(code: .internalError, message: "cannot encode configuration: \(error)")
        }
    }

    private static func isNull(_ node: Node) -> Bool {
        if case .scalar(let scalar) = node,
            scalar.tag == Tag(.null) || (scalar.string.isEmpty && scalar.style == .plain)
        {
            return true
        }
        return node.null != nil
    }

    /// Mappings merge key by key; anything else in `overlay` replaces `base`. Null values keep the default.
    private static func merge(_ base: Node, _ overlay: Node) -> Node {
        guard case .mapping(let baseMapping) = base, case .mapping(let overlayMapping) = overlay else {
            return isNull(overlay) ? base : overlay
        }
        var pairs: [(Node, Node)] = baseMapping.map { ($0.key, $0.value) }
        for (key, value) in overlayMapping {
            if let index = pairs.firstIndex(where: { $0.0 == key }) {
                pairs[index].1 = merge(pairs[index].1, value)
            } else if !isNull(value) {
                pairs.append((key, value))
            }
        }
        return Node(pairs)
    }

    private static func checkKnownKeys(user: Node, known: Node, path: [String], source: String) throws(DragonflyError) {
        switch (user, known) {
        case (.mapping(let userMapping), .mapping(let knownMapping)):
            for (key, value) in userMapping {
                let name = key.string ?? "\(key)"
                guard let knownValue = knownMapping[key] else {
                    if isNull(value) && knownMapping.isEmpty { continue }
                    throw DragonflyError(
                        code: .configuration,
                        message: "invalid configuration in \(source): unknown key '\(join(path + [name]))'"
                    )
                }
                try checkKnownKeys(user: value, known: knownValue, path: path + [name], source: source)
            }
        case (.sequence(let userSequence), .sequence(let knownSequence)):
            for (index, (userElement, knownElement)) in zip(userSequence, knownSequence).enumerated() {
                var elementPath = path
                elementPath[elementPath.count - 1] += "[\(index)]"
                try checkKnownKeys(user: userElement, known: knownElement, path: elementPath, source: source)
            }
        default:
            return
        }
    }

    private static func join(_ path: [String]) -> String { path.joined(separator: ".") }

    private static func path(of codingPath: [any CodingKey]) -> String {
        var out = ""
        for key in codingPath {
            if let index = key.intValue {
                out += "[\(index)]"
            } else {
                out += out.isEmpty ? key.stringValue : ".\(key.stringValue)"
            }
        }
        return out.isEmpty ? "(top level)" : out
    }

    private static func describe(_ error: DecodingError, source: String) -> DragonflyError {
        let keyPath: String
        let problem: String
        switch error {
        case .typeMismatch(let type, let context):
            keyPath = path(of: context.codingPath)
            problem = "expected \(typeName(type))"
        case .valueNotFound(let type, let context):
            keyPath = path(of: context.codingPath)
            problem = "missing value, expected \(typeName(type))"
        case .keyNotFound(let key, let context):
            keyPath = path(of: context.codingPath + [key])
            problem = "missing required key"
        case .dataCorrupted(let context):
            keyPath = path(of: context.codingPath)
            problem = context.debugDescription
        @unknown default:
            keyPath = "(unknown)"
            problem = "\(error)"
        }
        return DragonflyError(
            code: .configuration, message: "invalid configuration in \(source) at '\(keyPath)': \(problem)")
    }

    private static func typeName(_ type: Any.Type) -> String {
        switch type {
        case is Bool.Type: "a boolean (true or false)"
        case is Int.Type, is Int64.Type, is Int32.Type, is UInt.Type: "an integer"
        case is Double.Type: "a number"
        case is String.Type: "a string"
        default: "\(type)"
        }
    }

    private static func collectKeyPaths(_ node: Node, path: String, into out: inout Set<String>) {
        switch node {
        case .mapping(let mapping):
            if mapping.isEmpty { out.insert(path) }
            for (key, value) in mapping {
                let name = key.string ?? "\(key)"
                collectKeyPaths(value, path: path.isEmpty ? name : "\(path).\(name)", into: &out)
            }
        case .sequence(let sequence):
            out.insert(path + "[]")
            for element in sequence { collectKeyPaths(element, path: path + "[]", into: &out) }
        default:
            out.insert(path)
        }
    }
}

/// Builds ``DragonflyError`` configuration errors during `validate()`.
package struct ConfigValidator {
    package init() {}

    /// Throws a configuration error naming `keyPath` unless `condition` holds.
    package func require(_ condition: Bool, _ keyPath: String, _ problem: @autoclosure () -> String)
        throws(DragonflyError)
    {
        if !condition { throw DragonflyError.configuration(keyPath: keyPath, problem()) }
    }
}
