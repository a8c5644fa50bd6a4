import Synchronization

/// Failed sign-ins counted per user name and per client address (DESIGN §11): after `allowed` failures of one
/// key within `window`, that key waits before its next attempt — 10 s after the `allowed`-th failure, doubling
/// with each further failure, never longer than `window`. A waiting key is answered 429 without the password
/// being checked, so guessing costs the guesser time and the manager no PBKDF2 work.
///
/// The map holds at most ``maxEntries`` keys: when it is full, expired entries go first, then the one whose
/// window started longest ago.
final class SignInThrottle: Sendable {
    /// Keys (user names and addresses) remembered at once.
    static let maxEntries = 10_000
    /// The first wait, after the `allowed`-th failure.
    static let firstWait: Duration = .seconds(10)

    private struct Entry {
        var failures: Int
        var windowStart: ContinuousClock.Instant
        var blockedUntil: ContinuousClock.Instant?
    }

    private let allowed: Int
    private let window: Duration
    private let clock = ContinuousClock()
    private let entries = Mutex<[String: Entry]>([:])

    init(allowed: Int, window: Duration) {
        self.allowed = max(1, allowed)
        self.window = window
    }

    /// Keys remembered now.
    var count: Int { entries.withLock { $0.count } }

    /// The keys of one attempt: the user name and the client address, kept apart by a prefix.
    static func keys(user: String, address: String) -> [String] {
        ["user:" + user.prefix(255), "addr:" + address]
    }

    /// How long the caller must still wait before trying `keys`; `nil` when it may try now.
    func wait(_ keys: [String]) -> Duration? {
        let now = clock.now
        return entries.withLock { entries in
            keys.compactMap { key -> Duration? in
                guard let until = entries[key]?.blockedUntil, until > now else { return nil }
                return now.duration(to: until)
            }.max()
        }
    }

    /// Counts a failed attempt against every key.
    func recordFailure(_ keys: [String]) {
        let now = clock.now
        entries.withLock { entries in
            for key in keys {
                var entry = entries[key] ?? Entry(failures: 0, windowStart: now, blockedUntil: nil)
                if entries[key] == nil { Self.makeRoom(in: &entries, now: now, window: window) }
                if entry.windowStart.duration(to: now) > window, entry.blockedUntil.map({ $0 <= now }) ?? true {
                    entry = Entry(failures: 0, windowStart: now, blockedUntil: nil)
                }
                entry.failures += 1
                if entry.failures >= allowed {
                    let doublings = min(entry.failures - allowed, 20)
                    let wait = min(Self.firstWait * (1 << doublings), window)
                    entry.blockedUntil = now.advanced(by: wait)
                }
                entries[key] = entry
            }
        }
    }

    /// Forgets the failures of `key` (a user that signed in); the address keeps its count.
    func recordSuccess(_ key: String) {
        _ = entries.withLock { $0.removeValue(forKey: key) }
    }

    private static func makeRoom(in entries: inout [String: Entry], now: ContinuousClock.Instant, window: Duration) {
        guard entries.count >= maxEntries else { return }
        entries = entries.filter { _, entry in
            entry.windowStart.duration(to: now) <= window || (entry.blockedUntil.map { $0 > now } ?? false)
        }
        guard entries.count >= maxEntries,
            let oldest = entries.min(by: { $0.value.windowStart < $1.value.windowStart })?.key
        else { return }
        entries.removeValue(forKey: oldest)
    }
}
