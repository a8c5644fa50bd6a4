package import DragonflyCore

/// The default parent-scoring strategy of DESIGN §6:
/// `0.35·freeUpload + 0.2·pieceProgress + 0.15·uploadSuccess + 0.1·hostType + 0.1·idcAffinity + 0.1·locationAffinity`.
package struct DefaultStrategy: SchedulingStrategy {
    package let name = "default"

    package init() {}

    package func score(_ candidate: ParentCandidate, for child: ChildContext) -> Double {
        0.35 * Self.freeUpload(candidate)
            + 0.2 * Self.pieceProgress(candidate)
            + 0.15 * Self.uploadSuccess(candidate)
            + 0.1 * (candidate.isSeed ? 1 : 0.5)
            + 0.1 * Self.idcAffinity(candidate.idc, child.idc)
            + 0.1 * Self.locationAffinity(candidate.location, child.location)
    }

    /// Idle share of the announced transmit bandwidth when known, else the share of free upload slots.
    static func freeUpload(_ c: ParentCandidate) -> Double {
        if c.maxTxBandwidth > 0 && c.idleTxBandwidth >= 0 && c.idleTxBandwidth <= c.maxTxBandwidth
            && c.idleTxBandwidth > 0
        {
            return Double(c.idleTxBandwidth) / Double(c.maxTxBandwidth)
        }
        guard c.uploadSlots > 0 else { return 0 }
        return Double(min(max(c.freeUploadSlots, 0), c.uploadSlots)) / Double(c.uploadSlots)
    }

    /// Share of the task's pieces the candidate holds.
    static func pieceProgress(_ c: ParentCandidate) -> Double {
        guard c.totalPieces > 0 else { return c.isSeed ? 1 : 0 }
        return Double(min(max(c.finishedPieces, 0), c.totalPieces)) / Double(c.totalPieces)
    }

    /// Share of successful uploads; a host that has not uploaded yet gets the benefit of the doubt.
    static func uploadSuccess(_ c: ParentCandidate) -> Double {
        let total = c.uploadSuccesses + c.uploadFailures
        guard total > 0 else { return 1 }
        return Double(c.uploadSuccesses) / Double(total)
    }

    static func idcAffinity(_ a: String, _ b: String) -> Double {
        !a.isEmpty && a == b ? 1 : 0
    }

    /// Share of leading `|`-separated location elements the two hosts have in common.
    static func locationAffinity(_ a: String, _ b: String) -> Double {
        guard !a.isEmpty, !b.isEmpty else { return 0 }
        let left = a.split(separator: "|")
        let right = b.split(separator: "|")
        let longest = max(left.count, right.count)
        guard longest > 0 else { return 0 }
        let common = zip(left, right).prefix { $0 == $1 }.count
        return Double(common) / Double(longest)
    }
}

/// Registers the scheduler's built-in strategies.
package func registerBuiltinStrategies(into registry: PluginRegistry) throws(DragonflyError) {
    try registry.register(strategy: DefaultStrategy())
}
