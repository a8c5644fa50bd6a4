/// A host (daemon or seed peer) as the scheduler knows it from `AnnounceHost` and its own observations.
package struct PeerHost: Sendable, Hashable {
    /// Normal daemons download and serve; seed hosts (`dragonfly cdn`, host type `super`) also read the origin
    /// on the scheduler's request.
    package enum Kind: Sendable, Hashable {
        case normal
        case seed
    }

    /// `<ip>-<hostname>-<peer port>` (`-seed` appended for seed hosts), DESIGN §4.
    package var id: String
    package var kind: Kind
    package var ip: String
    package var hostname: String
    /// Port of the Peer gRPC service (`SyncPieces`).
    package var peerPort: Int
    /// Port of the piece data plane.
    package var pieceDataPort: Int
    package var idc: String
    /// `a|b|c`, most general first.
    package var location: String
    /// Concurrent piece uploads the host accepts.
    package var uploadSlots: Int
    /// Piece uploads in progress at the last announcement.
    package var uploadSlotsUsed: Int
    /// Link transmit capacity in bytes/s; 0 when unknown.
    package var maxTxBandwidth: Int64
    /// Unused transmit capacity in bytes/s; 0 when unknown.
    package var idleTxBandwidth: Int64
    /// Link receive capacity in bytes/s; 0 when unknown.
    package var maxRxBandwidth: Int64
    /// Unused receive capacity in bytes/s; 0 when unknown.
    package var idleRxBandwidth: Int64
    /// Pieces served successfully: the announced count plus what children reported since.
    package var uploadSuccessCount: Int
    /// Piece uploads that failed: the announced count plus what children reported since.
    package var uploadFailureCount: Int
    /// The host downloads but never serves pieces to others.
    package var isSharingDisabled: Bool
    /// When the scheduler last heard from the host.
    package var lastAnnounce: ContinuousClock.Instant

    package init(
        id: String,
        kind: Kind = .normal,
        ip: String,
        hostname: String,
        peerPort: Int = 4000,
        pieceDataPort: Int = 4005,
        idc: String = "",
        location: String = "",
        uploadSlots: Int = 0,
        uploadSlotsUsed: Int = 0,
        maxTxBandwidth: Int64 = 0,
        idleTxBandwidth: Int64 = 0,
        maxRxBandwidth: Int64 = 0,
        idleRxBandwidth: Int64 = 0,
        uploadSuccessCount: Int = 0,
        uploadFailureCount: Int = 0,
        isSharingDisabled: Bool = false,
        lastAnnounce: ContinuousClock.Instant
    ) {
        self.id = id
        self.kind = kind
        self.ip = ip
        self.hostname = hostname
        self.peerPort = peerPort
        self.pieceDataPort = pieceDataPort
        self.idc = idc
        self.location = location
        self.uploadSlots = uploadSlots
        self.uploadSlotsUsed = uploadSlotsUsed
        self.maxTxBandwidth = maxTxBandwidth
        self.idleTxBandwidth = idleTxBandwidth
        self.maxRxBandwidth = maxRxBandwidth
        self.idleRxBandwidth = idleRxBandwidth
        self.uploadSuccessCount = uploadSuccessCount
        self.uploadFailureCount = uploadFailureCount
        self.isSharingDisabled = isSharingDisabled
        self.lastAnnounce = lastAnnounce
    }

    /// Seed hosts read the origin on request and serve first.
    package var isSeed: Bool { kind == .seed }

    /// Upload slots not in use; never negative.
    package var freeUploadSlots: Int { max(uploadSlots - uploadSlotsUsed, 0) }

    /// `<ip>:<peer port>`, the address of the host's Peer gRPC service.
    package var peerAddress: String { Self.address(ip, peerPort) }

    /// `<ip>:<piece data port>`, the address of the host's piece data plane.
    package var pieceDataAddress: String { Self.address(ip, pieceDataPort) }

    private static func address(_ ip: String, _ port: Int) -> String {
        ip.contains(":") ? "[\(ip)]:\(port)" : "\(ip):\(port)"
    }
}
