import Crypto

/// Consistent hashing of task IDs over scheduler addresses (DESIGN §6 step 3): every peer of a task meets at
/// the same scheduler, and when a scheduler is removed only its tasks move (to the next point on the ring).
package struct SchedulerRing: Sendable, Hashable {
    /// Points per scheduler; more points spread tasks more evenly.
    package static let virtualNodes = 64
    private var points: [(hash: UInt64, address: String)] = []
    /// The addresses on the ring, sorted and de-duplicated.
    package let addresses: [String]

    package init(addresses: [String]) {
        self.addresses = Array(Set(addresses)).sorted()
        var points: [(UInt64, String)] = []
        points.reserveCapacity(self.addresses.count * Self.virtualNodes)
        for address in self.addresses {
            for node in 0..<Self.virtualNodes {
                points.append((Self.hash("\(address)#\(node)"), address))
            }
        }
        self.points = points.sorted { $0.0 == $1.0 ? $0.1 < $1.1 : $0.0 < $1.0 }.map { (hash: $0.0, address: $0.1) }
    }

    package static func == (lhs: SchedulerRing, rhs: SchedulerRing) -> Bool { lhs.addresses == rhs.addresses }
    package func hash(into hasher: inout Hasher) { hasher.combine(addresses) }

    /// Every scheduler in the order a peer of `key` tries them: the owner of the key first, then the following
    /// distinct schedulers clockwise (the failover order when the owner is down).
    package func candidates(for key: String) -> [String] {
        guard !points.isEmpty else { return [] }
        let target = Self.hash(key)
        var low = 0
        var high = points.count
        while low < high {
            let middle = (low + high) / 2
            if points[middle].hash < target { low = middle + 1 } else { high = middle }
        }
        var order: [String] = []
        var seen = Set<String>()
        var index = low
        while order.count < addresses.count {
            let address = points[index % points.count].address
            if seen.insert(address).inserted { order.append(address) }
            index += 1
        }
        return order
    }

    private static func hash(_ text: String) -> UInt64 {
        let digest = SHA256.hash(data: Array(text.utf8))
        return digest.withUnsafeBytes { raw in
            raw.prefix(8).reduce(UInt64(0)) { ($0 << 8) | UInt64($1) }
        }
    }
}
