/// What a strategy knows about a parent candidate when it scores it for a child.
package struct ParentCandidate: Sendable {
    package var hostID: String
    /// Seed (super) hosts read the origin and rank higher when otherwise equal.
    package var isSeed: Bool
    package var uploadSlots: Int
    package var freeUploadSlots: Int
    /// Announced idle transmit bandwidth in bytes/s; 0 when unknown.
    package var idleTxBandwidth: Int64
    /// Announced maximum transmit bandwidth in bytes/s; 0 when unknown.
    package var maxTxBandwidth: Int64
    package var finishedPieces: Int
    package var totalPieces: Int
    package var uploadSuccesses: Int
    package var uploadFailures: Int
    package var idc: String
    package var location: String

    package init(
        hostID: String,
        isSeed: Bool = false,
        uploadSlots: Int = 0,
        freeUploadSlots: Int = 0,
        idleTxBandwidth: Int64 = 0,
        maxTxBandwidth: Int64 = 0,
        finishedPieces: Int = 0,
        totalPieces: Int = 0,
        uploadSuccesses: Int = 0,
        uploadFailures: Int = 0,
        idc: String = "",
        location: String = ""
    ) {
        self.hostID = hostID
        self.isSeed = isSeed
        self.uploadSlots = uploadSlots
        self.freeUploadSlots = freeUploadSlots
        self.idleTxBandwidth = idleTxBandwidth
        self.maxTxBandwidth = maxTxBandwidth
        self.finishedPieces = finishedPieces
        self.totalPieces = totalPieces
        self.uploadSuccesses = uploadSuccesses
        self.uploadFailures = uploadFailures
        self.idc = idc
        self.location = location
    }
}

/// The child asking for parents.
package struct ChildContext: Sendable {
    package var hostID: String
    package var idc: String
    package var location: String
    package init(hostID: String, idc: String = "", location: String = "") {
        self.hostID = hostID
        self.idc = idc
        self.location = location
    }
}

/// A parent-selection strategy (DESIGN §6), registered by name in the ``PluginRegistry``.
package protocol SchedulingStrategy: Sendable {
    /// Registry name, e.g. `default`.
    var name: String { get }
    /// A score in 0...1; higher is a better parent for `child`.
    func score(_ candidate: ParentCandidate, for child: ChildContext) -> Double
    /// Learns from a finished piece transfer (bandwidth-aware strategies); the default ignores it.
    func recordTransfer(parentHostID: String, childHostID: String, bytes: Int64, duration: Duration)
}

extension SchedulingStrategy {
    package func recordTransfer(parentHostID: String, childHostID: String, bytes: Int64, duration: Duration) {}
}
