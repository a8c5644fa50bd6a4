/// The most recent piece costs of a peer, used by the bad-parent rule of DESIGN §6.
///
/// A peer is a bad parent when its last piece took more than ``slowFactor`` times the mean of the earlier
/// ones, or — once ``normalDistributionSamples`` earlier samples exist — more than their mean plus three
/// standard deviations. Only the last ``capacity`` costs are kept.
package struct PieceCostWindow: Sendable, Hashable {
    /// Costs kept per peer.
    package static let capacity = 128
    /// Multiple of the mean that marks the last cost as an outlier while samples are few.
    package static let slowFactor = 20.0
    /// Earlier samples needed before the mean + 3σ rule applies.
    package static let normalDistributionSamples = 30

    /// Costs in seconds, oldest first.
    package private(set) var seconds: [Double] = []

    package init() {}

    package init(_ costs: [Duration]) {
        for cost in costs { record(cost) }
    }

    /// Appends a cost, dropping the oldest beyond ``capacity``.
    package mutating func record(_ cost: Duration) {
        let (whole, attoseconds) = cost.components
        let value = max(Double(whole) + Double(attoseconds) / 1e18, 0)
        if seconds.count == Self.capacity { seconds.removeFirst() }
        seconds.append(value)
    }

    /// Whether the last cost is an outlier against the earlier ones.
    package var isLastCostOutlier: Bool {
        guard let last = seconds.last, seconds.count >= 2 else { return false }
        let earlier = seconds.dropLast()
        let mean = earlier.reduce(0, +) / Double(earlier.count)
        if earlier.count < Self.normalDistributionSamples {
            return last > mean * Self.slowFactor
        }
        let variance = earlier.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Double(earlier.count)
        return last > mean + 3 * variance.squareRoot()
    }
}
