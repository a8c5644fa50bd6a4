import DragonflyClient
import DragonflyCore
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// `get`'s progress: a bar redrawn in place on a terminal (bytes, rate, ETA, share from peers and the origin),
/// cut to the terminal's width as it is at each redraw (so a resized window is followed), nothing until the
/// summary line otherwise.
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
            return Self.bar(
                progress, peerBytes: peerBytes, elapsed: now - started, width: Self.terminalWidth())
        }
        // Carriage return and erase-line: the new bar never shows remains of a longer one.
        if let line { writeToStandardError("\r\u{1B}[2K" + line) }
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
        return
            "dragonfly: \(Redaction.url(url)) -> \(output ?? "standard output"): \(Self.bytes(summary.outputBytes)) in "
            + "\(Self.seconds(seconds)) at \(Self.bytes(Int64(rate)))/s\(share), task \(summary.taskID.rawValue.prefix(12))"
    }

    /// The columns of the terminal on standard error (80 when it cannot be asked).
    static func terminalWidth() -> Int {
        var size = winsize()
        if ioctl(2, UInt(TIOCGWINSZ), &size) == 0, size.ws_col > 0 { return Int(size.ws_col) }
        return 80
    }

    /// The bar for `progress`, at most `width - 1` characters (the last column stays free, so the terminal never
    /// wraps): the least important parts go first when the width is short.
    static func bar(_ progress: GetProgress, peerBytes: Int64 = 0, elapsed: Duration, width: Int = 80) -> String {
        let limit = max(width - 1, 1)
        let seconds = max(Double(elapsed.milliseconds) / 1000, 0.001)
        let fresh = progress.completedBytes - progress.cachedBytes
        let rate = Double(max(fresh, 0)) / seconds
        let fetched = peerBytes + progress.originBytes
        var share = ""
        if fetched > 0 {
            let peers = Int((Double(peerBytes) / Double(fetched) * 100).rounded())
            share = "peers \(peers)% origin \(100 - peers)%"
        }
        // Each part with its rank: when the width is short, the lowest rank goes first (the percentage last).
        var parts: [(text: String, rank: Int)]
        var fraction: Double?
        if let total = progress.totalBytes, total > 0 {
            let done = min(max(Double(progress.completedBytes) / Double(total), 0), 1)
            fraction = done
            let remaining = Double(total - progress.completedBytes)
            let eta = rate > 0 ? Self.seconds(remaining / rate) : "--"
            parts = [
                ("\(Int(done * 100))%", 5), ("\(bytes(progress.completedBytes)) / \(bytes(total))", 4),
                ("\(bytes(Int64(rate)))/s", 1), ("ETA \(eta)", 2), (share, 3),
            ]
        } else {
            parts = [(bytes(progress.completedBytes), 5), ("\(bytes(Int64(rate)))/s", 1), (share, 3)]
        }
        parts.removeAll { $0.text.isEmpty }
        var text = parts.map(\.text).joined(separator: "  ")
        while text.count > limit, parts.count > 1,
            let lowest = parts.indices.min(by: { parts[$0].rank < parts[$1].rank })
        {
            parts.remove(at: lowest)
            text = parts.map(\.text).joined(separator: "  ")
        }
        if let fraction, let first = parts.first?.text {
            // The bar takes what room is left, up to 30 columns, and is left out below 10.
            let barWidth = min(30, limit - text.count - 3)
            if barWidth >= 10 {
                let filled = Int(fraction * Double(barWidth))
                let bar =
                    String(repeating: "=", count: filled) + (filled < barWidth ? ">" : "")
                    + String(repeating: " ", count: max(barWidth - filled - 1, 0))
                text = ([first + " [" + bar + "]"] + parts.dropFirst().map(\.text)).joined(separator: "  ")
            }
        }
        return String(text.prefix(limit))
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
