/// The parent → child edges between the peers of one task. It records what the ``ParentSelector`` chose: with
/// `scheduling.acyclic` (Dragonfly's DAG) the selector asks ``canAddEdge(from:to:)`` first, so the edges form a
/// DAG; without it two downloading peers may feed each other. Only a self edge is refused here.
package struct PeerDAG: Sendable, Hashable {
    private var childrenByParent: [String: Set<String>] = [:]
    private var parentsByChild: [String: Set<String>] = [:]

    package init() {}

    /// Number of edges.
    package var edgeCount: Int { childrenByParent.values.reduce(0) { $0 + $1.count } }

    /// Peers fetching from `peerID`.
    package func children(of peerID: String) -> Set<String> { childrenByParent[peerID] ?? [] }

    /// Peers `peerID` fetches from.
    package func parents(of peerID: String) -> Set<String> { parentsByChild[peerID] ?? [] }

    /// Whether no peer fetches from `peerID`.
    package func isLeaf(_ peerID: String) -> Bool { childrenByParent[peerID]?.isEmpty ?? true }

    /// Whether the edge `parent → child` can be added without closing a cycle (a self edge is a cycle).
    package func canAddEdge(from parent: String, to child: String) -> Bool {
        parent != child && !isReachable(parent, from: child)
    }

    /// Adds `parent → child`; returns `false` and changes nothing for a self edge.
    @discardableResult
    package mutating func addEdge(from parent: String, to child: String) -> Bool {
        guard parent != child else { return false }
        childrenByParent[parent, default: []].insert(child)
        parentsByChild[child, default: []].insert(parent)
        return true
    }

    /// Removes `parent → child` when present.
    package mutating func removeEdge(from parent: String, to child: String) {
        childrenByParent[parent]?.remove(child)
        if childrenByParent[parent]?.isEmpty == true { childrenByParent[parent] = nil }
        parentsByChild[child]?.remove(parent)
        if parentsByChild[child]?.isEmpty == true { parentsByChild[child] = nil }
    }

    /// Removes every edge into `child`; returns the former parents.
    @discardableResult
    package mutating func removeParents(of child: String) -> Set<String> {
        let parents = parents(of: child)
        for parent in parents { removeEdge(from: parent, to: child) }
        return parents
    }

    /// Removes every edge out of `parent`; returns the former children.
    @discardableResult
    package mutating func removeChildren(of parent: String) -> Set<String> {
        let children = children(of: parent)
        for child in children { removeEdge(from: parent, to: child) }
        return children
    }

    /// Removes a peer and all its edges; returns its former children (they need new parents).
    @discardableResult
    package mutating func removePeer(_ peerID: String) -> Set<String> {
        removeParents(of: peerID)
        return removeChildren(of: peerID)
    }

    /// Whether `target` can be reached from `start` along parent → child edges.
    package func isReachable(_ target: String, from start: String) -> Bool {
        if start == target { return true }
        var visited: Set<String> = [start]
        var frontier = [start]
        while let node = frontier.popLast() {
            for child in childrenByParent[node] ?? [] where visited.insert(child).inserted {
                if child == target { return true }
                frontier.append(child)
            }
        }
        return false
    }
}
