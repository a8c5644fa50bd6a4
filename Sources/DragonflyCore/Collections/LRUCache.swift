/// A small least-recently-used map with a fixed capacity (not thread-safe: keep it inside a `Mutex`).
///
/// Eviction scans for the oldest entry, which is O(capacity) but happens once per insertion past the
/// capacity; the caches it backs hold about a thousand entries and sit in front of network requests.
package struct LRUCache<Key: Hashable, Value> {
    private struct Entry {
        var value: Value
        var lastUse: UInt64
    }

    package let capacity: Int
    private var entries: [Key: Entry] = [:]
    private var clock: UInt64 = 0

    package init(capacity: Int) {
        self.capacity = max(capacity, 0)
    }

    package var count: Int { entries.count }

    /// The value for `key`, marking it as recently used.
    package mutating func value(forKey key: Key) -> Value? {
        guard var entry = entries[key] else { return nil }
        clock &+= 1
        entry.lastUse = clock
        entries[key] = entry
        return entry.value
    }

    /// Stores `value` for `key`, evicting the least recently used entry when full.
    package mutating func setValue(_ value: Value, forKey key: Key) {
        guard capacity > 0 else { return }
        clock &+= 1
        if entries[key] == nil, entries.count >= capacity,
            let oldest = entries.min(by: { $0.value.lastUse < $1.value.lastUse })?.key
        {
            entries[oldest] = nil
        }
        entries[key] = Entry(value: value, lastUse: clock)
    }

    /// Forgets `key`.
    package mutating func removeValue(forKey key: Key) {
        entries[key] = nil
    }
}
