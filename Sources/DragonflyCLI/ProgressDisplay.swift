import DragonflyClient
import DragonflyCore
import Synchronization

/// `get`'s progress: a redrawn bar on a terminal (bytes, rate, ETA, share from peers), nothing until the summary
/// line otherwise.
final class ProgressDisplay: Sendable {
    private struct State {
        var progress = GetProgress()
        var peerBytes: Int64 = 0
        var lastDraw: ContinuousClock.Instant?
        var drawn = false
    }

    private let url: String
    private let isTerminal: Bool
    private let started = ContinuousClock.now
    private let state = Mutex(State())

    init(url: String, isTerminal: Bool) {
        self.url = url
        self.isTerminal = isTerminal
    }

    /// Records progress (with the bytes that came from peers, for a download through the daemon); redraws the
    /// bar at most five times a second.
    func update(_ progress: GetProgress, peerBytes: Int64 = 0) {
        let line: String? = state.withLock { state in
            state.progress = progress
            state.peerBytes = peerBytes
            guard isTerminal else { return nil }
            let now = ContinuousClock.now
            if let last = state.lastDraw, now - last < .milliseconds(200) { return nil }
            state.lastDraw = now
            state.drawn = true
            return Self.bar(progress, peerBytes: peerBytes, elapsed: now - started)
        }
        if let line { writeToStandardError("\r" + line) }
    }

    /// Clears the bar.
    func finish() {
        let drawn = state.withLock { $0.drawn }
        if drawn { writeToStandardError("\r\u{1B}[2K") }
    }

    /// The one-line summary printed when a download succeeds; `peerBytes` is nil when the origin path ran
    /// (no daemon), and the share then names only origin and cache.
    func summaryLine(_ summary: GetSummary, output: String?, peerBytes: Int64? = nil) -> String {
        let seconds = max(Double(summary.elapsed.milliseconds) / 1000, 0.001)
        let rate = Double(summary.outputBytes) / seconds
        let peers = peerBytes ?? 0
        let fetched = summary.originBytes + summary.cachedBytes + peers
        func percent(_ part: Int64) -> Int { Int((Double(part) / Double(fetched) * 100).rounded()) }
        var share = ""
        if fetched > 0 {
            share = peerBytes == nil ? " (" : " (peers \(percent(peers))%, "
            share += "origin \(percent(summary.originBytes))%, cache \(percent(summary.cachedBytes))%)"
        }
        return "dragonfly: \(url) -> \(output ?? "standard output"): \(Self.bytes(summary.outputBytes)) in "
            + "\(Self.seconds(seconds)) at \(Self.bytes(Int64(rate)))/s\(share), task \(summary.taskID.rawValue.prefix(12))"
    }

    static func bar(_ progress: GetProgress, peerBytes: Int64 = 0, elapsed: Duration) -> String {
        let seconds = max(Double(elapsed.milliseconds) / 1000, 0.001)
        let fresh = progress.completedBytes - progress.cachedBytes
        let rate = Double(max(fresh, 0)) / seconds
        let fetched = peerBytes + progress.originBytes
        let share = fetched > 0 && peerBytes > 0 ? "  peers \(Int(Double(peerBytes) / Double(fetched) * 100))%" : ""
        guard let total = progress.totalBytes, total > 0 else {
            return "\(bytes(progress.completedBytes))  \(bytes(Int64(rate)))/s\(share)"
        }
        let fraction = min(max(Double(progress.completedBytes) / Double(total), 0), 1)
        let width = 30
        let filled = Int(fraction * Double(width))
        let bar =
            String(repeating: "=", count: filled) + (filled < width ? ">" : "")
            + String(repeating: " ", count: max(width - filled - 1, 0))
        let remaining = Double(total - progress.completedBytes)
        let eta = rate > 0 ? Self.seconds(remaining / rate) : "--"
        return "\(Int(fraction * 100))% [\(bar)] \(bytes(progress.completedBytes)) / \(bytes(total))  "
            + "\(bytes(Int64(rate)))/s  ETA \(eta)\(share)"
    }

    static func bytes(_ count: Int64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var value = Double(count)
        var unit = 0
        while value >= 1024 && unit < units.count - 1 {
            value /= 1024
            unit += 1
        }
        return unit == 0 ? "\(count) B" : "\(Double(Int(value * 10)) / 10) \(units[unit])"
    }

    static func seconds(_ value: Double) -> String {
        if value < 60 { return "\(Double(Int(value * 100)) / 100)s" }
        let whole = Int(value)
        return whole >= 3600 ? "\(whole / 3600)h\(whole % 3600 / 60)m" : "\(whole / 60)m\(whole % 60)s"
    }
}
