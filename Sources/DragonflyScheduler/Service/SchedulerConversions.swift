package import DragonflyCore
package import DragonflyProto
package import SwiftProtobuf

#if canImport(FoundationEssentials)
package import FoundationEssentials
#else
package import Foundation
#endif

/// Conversions between the `dragonfly.v1` messages and the scheduler's core types, with the input checks of
/// the Scheduler service: every failure is a `DragonflyError` with code `.invalidArgument` naming the field.
package enum SchedulerConversions {
    /// Longest host ID, peer ID, IP, hostname, IDC or location accepted.
    package static let maxIdentifierLength = 256
    /// Longest URL accepted.
    package static let maxURLLength = 8192
    /// Highest piece number accepted plus one (4 Mi pieces: 16 TiB in 4 MiB pieces); keeps a peer's piece
    /// bitmap small whatever a report claims.
    package static let maxPieceCount: UInt32 = 1 << 22
    /// Pieces a registration may list as held.
    package static let maxRegisteredPieces = Int(maxPieceCount)
    /// Origin response headers kept from a `BackToSourceStarted`: at most this many ...
    package static let maxResponseHeaders = 64
    /// ... with names of at most 256 bytes and values of at most 8 KiB, in all at most 32 KiB.
    package static let maxResponseHeaderBytes = 32 << 10

    // MARK: Requests → core

    /// The host of `AnnounceHost` or `SyncHost` start, as the scheduler tracks it.
    package static func peerHost(
        _ host: Dragonfly_V1_Host, now: ContinuousClock.Instant
    ) throws(DragonflyError) -> PeerHost {
        try checkIdentifier(host.id, field: "host.id")
        try checkIdentifier(host.ip, field: "host.ip")
        guard host.hostname.utf8.count <= maxIdentifierLength, host.idc.utf8.count <= maxIdentifierLength,
            host.location.utf8.count <= maxIdentifierLength
        else {
            throw invalid("host.hostname, host.idc and host.location must be at most \(maxIdentifierLength) bytes")
        }
        guard (1...65_535).contains(host.port) else {
            throw invalid("host.port must be the bound Peer gRPC port (1-65535), got \(host.port)")
        }
        guard host.pieceDataPort <= 65_535 else {
            throw invalid("host.piece_data_port must be at most 65535, got \(host.pieceDataPort)")
        }
        let kind: PeerHost.Kind
        switch host.type {
        case .normal: kind = .normal
        case .super: kind = .seed
        case .UNRECOGNIZED(let value): throw invalid("host.type \(value) is not a known host type")
        }
        let network = host.network
        let maxTx = clampedInt64(network.maxTxBandwidth)
        let maxRx = clampedInt64(network.maxRxBandwidth)
        return PeerHost(
            id: host.id,
            kind: kind,
            ip: host.ip,
            hostname: host.hostname,
            peerPort: Int(host.port),
            pieceDataPort: Int(host.pieceDataPort),
            idc: host.idc,
            location: host.location,
            uploadSlots: Int(host.uploadSlots),
            uploadSlotsUsed: Int(host.uploadSlotsUsed),
            maxTxBandwidth: maxTx,
            idleTxBandwidth: maxTx > 0 ? max(maxTx - clampedInt64(network.txBandwidth), 0) : 0,
            maxRxBandwidth: maxRx,
            idleRxBandwidth: maxRx > 0 ? max(maxRx - clampedInt64(network.rxBandwidth), 0) : 0,
            uploadSuccessCount: Int(clampedInt64(host.uploadCount)),
            uploadFailureCount: Int(clampedInt64(host.uploadFailedCount)),
            isSharingDisabled: host.disableShared,
            lastAnnounce: now)
    }

    /// The key named by an `AnnouncePeer` message; the task ID must be 64 lowercase hex characters.
    package static func peerKey(of request: Dragonfly_V1_AnnouncePeerRequest) throws(DragonflyError) -> PeerKey {
        let taskID = try TaskID.validated(request.taskID)
        try checkIdentifier(request.peerID, field: "peer_id")
        return PeerKey(taskID: taskID.rawValue, peerID: request.peerID)
    }

    /// The registration carried by the first `AnnouncePeer` message.
    package static func registration(
        _ request: Dragonfly_V1_AnnouncePeerRequest
    ) throws(DragonflyError) -> PeerRegistration {
        guard case .register(let register) = request.request else {
            throw invalid("the first AnnouncePeer message must be 'register'")
        }
        let key = try peerKey(of: request)
        try checkIdentifier(request.hostID, field: "host_id")
        let download = register.download
        guard !download.url.isEmpty, download.url.utf8.count <= maxURLLength else {
            throw invalid("register.download.url must be a URL of 1-\(maxURLLength) bytes")
        }
        // A download scheduled over the network never reads a local path (file://) or an unknown scheme.
        guard ScheduledSchemes.isAllowed(download.url) else { throw ScheduledSchemes.refusal(for: download.url) }
        guard register.finishedPieceNumbers.count <= maxRegisteredPieces,
            register.finishedPieceNumbers.allSatisfy({ $0 < maxPieceCount })
        else {
            throw invalid("register.finished_piece_numbers must name pieces below \(maxPieceCount)")
        }
        return PeerRegistration(
            key: key,
            hostID: request.hostID,
            url: download.url,
            finishedPieces: register.finishedPieceNumbers,
            contentLength: register.hasContentLength
                ? try length(register.contentLength, field: "register.content_length") : nil,
            pieceLength: register.hasPieceLength
                ? try length(register.pieceLength, field: "register.piece_length") : nil,
            isBackToSourceDisabled: download.disableBackToSource,
            wantsBackToSource: download.needBackToSource)
    }

    /// The report carried by a later `AnnouncePeer` message.
    package static func event(_ request: Dragonfly_V1_AnnouncePeerRequest) throws(DragonflyError) -> PeerEvent {
        switch request.request {
        case .none:
            throw invalid("an AnnouncePeer message must carry a request")
        case .register:
            throw invalid("the peer is already registered on this stream; open a new stream to register again")
        case .started:
            return .started
        case .backToSourceStarted(let started):
            return .backToSourceStarted(
                contentLength: started.hasContentLength
                    ? try length(started.contentLength, field: "back_to_source_started.content_length") : nil,
                pieceLength: started.hasPieceLength
                    ? try length(started.pieceLength, field: "back_to_source_started.piece_length") : nil,
                responseHeader: try boundedHeaders(started.responseHeader))
        case .pieceFinished(let finished):
            let piece = finished.piece
            try checkDigest(piece.digest, field: "piece_finished.piece.digest")
            if piece.hasParentID { try checkIdentifier(piece.parentID, field: "piece_finished.piece.parent_id") }
            try checkPieceNumber(piece.number, field: "piece_finished.piece.number")
            return .pieceFinished(
                number: piece.number,
                parentID: piece.hasParentID ? piece.parentID : nil,
                length: try length(piece.length, field: "piece_finished.piece.length"),
                cost: duration(piece.cost),
                digest: piece.digest)
        case .pieceBackToSourceFinished(let finished):
            let piece = finished.piece
            try checkDigest(piece.digest, field: "piece_back_to_source_finished.piece.digest")
            try checkPieceNumber(piece.number, field: "piece_back_to_source_finished.piece.number")
            return .pieceBackToSourceFinished(
                number: piece.number,
                length: try length(piece.length, field: "piece_back_to_source_finished.piece.length"),
                cost: duration(piece.cost),
                digest: piece.digest)
        case .pieceFailed(let failed):
            try checkIdentifier(failed.parentID, field: "piece_failed.parent_id")
            return .pieceFailed(
                number: failed.pieceNumber, parentID: failed.parentID, isTemporary: failed.temporary,
                isCorrupted: !failed.temporary && failed.reason == PieceFailureReason.corrupted)
        case .reschedule(let reschedule):
            return .reschedule(blocklist: reschedule.blocklist)
        case .finished(let finished):
            return .finished(
                contentLength: try length(finished.contentLength, field: "finished.content_length"),
                pieceCount: Int(finished.pieceCount))
        case .backToSourceFinished(let finished):
            return .backToSourceFinished(
                contentLength: try length(finished.contentLength, field: "back_to_source_finished.content_length"),
                pieceCount: Int(finished.pieceCount))
        case .backToSourceFailed(let failed):
            return .backToSourceFailed(
                reason: failed.reason,
                originError: failed.hasSourceError ? originError(failed.sourceError) : nil)
        case .failed(let failed):
            return .failed(reason: failed.reason)
        }
    }

    /// The `Download` a seed trigger sends: the registrant's, reduced to what identifies the task and how to
    /// read the origin (no output, range, digest or back-to-source flags; the seed reads the whole task).
    package static func seedDownload(from download: Dragonfly_V1_Download) -> Dragonfly_V1_Download {
        var seed = Dragonfly_V1_Download()
        seed.url = download.url
        seed.tag = download.tag
        seed.application = download.application
        seed.filteredQueryParams = download.filteredQueryParams
        seed.requestHeader = download.requestHeader
        if download.hasPieceLength { seed.pieceLength = download.pieceLength }
        if download.hasContentForCalculatingTaskID {
            seed.contentForCalculatingTaskID = download.contentForCalculatingTaskID
        }
        seed.type = download.type
        seed.tenant = download.tenant
        seed.priority = download.priority
        if download.hasTimeout { seed.timeout = download.timeout }
        return seed
    }

    static func originError(_ error: Dragonfly_V1_SourceError) -> OriginError {
        OriginError(
            statusCode: Int(error.statusCode), header: error.header, message: error.message,
            isTemporary: error.temporary)
    }

    // MARK: Core → responses

    /// The proto form of a host.
    package static func protoHost(_ host: PeerHost, clock: WallClock) -> Dragonfly_V1_Host {
        var proto = Dragonfly_V1_Host()
        proto.id = host.id
        proto.type = host.isSeed ? .super : .normal
        proto.hostname = host.hostname
        proto.ip = host.ip
        proto.port = UInt32(clamping: host.peerPort)
        proto.pieceDataPort = UInt32(clamping: host.pieceDataPort)
        proto.idc = host.idc
        proto.location = host.location
        var network = Dragonfly_V1_Network()
        network.maxTxBandwidth = UInt64(clamping: host.maxTxBandwidth)
        network.txBandwidth = UInt64(clamping: max(host.maxTxBandwidth - host.idleTxBandwidth, 0))
        network.maxRxBandwidth = UInt64(clamping: host.maxRxBandwidth)
        network.rxBandwidth = UInt64(clamping: max(host.maxRxBandwidth - host.idleRxBandwidth, 0))
        proto.network = network
        proto.uploadSlots = UInt32(clamping: host.uploadSlots)
        proto.uploadSlotsUsed = UInt32(clamping: host.uploadSlotsUsed)
        proto.uploadCount = UInt64(clamping: host.uploadSuccessCount)
        proto.uploadFailedCount = UInt64(clamping: host.uploadFailureCount)
        proto.disableShared = host.isSharingDisabled
        proto.updatedAt = clock.timestamp(of: host.lastAnnounce)
        return proto
    }

    /// The proto form of a chosen parent; `host` is the parent's host when the scheduler still knows it.
    package static func parentPeer(_ choice: ParentChoice, host: PeerHost?, clock: WallClock) -> Dragonfly_V1_ParentPeer
    {
        var parent = Dragonfly_V1_ParentPeer()
        parent.peerID = choice.peerID
        if let host { parent.host = protoHost(host, clock: clock) }
        parent.peerAddress = choice.peerAddress
        parent.pieceDataAddress = choice.pieceDataAddress
        parent.isFinished = choice.isFinished
        return parent
    }

    /// The `AnnouncePeer` message for a response; `host` looks up parents' hosts.
    ///
    /// `transferGrant` is the task's grant (``TransferGrantKey``), put in `SmallTask`, `NormalTask` and
    /// `NeedBackToSource` answers: children present it to their parents, and an origin reader asks it of its
    /// children.
    package static func announcePeerResponse(
        _ response: PeerResponse, transferGrant: String = "", clock: WallClock, host: (String) -> PeerHost?
    ) -> Dragonfly_V1_AnnouncePeerResponse {
        var message = Dragonfly_V1_AnnouncePeerResponse()
        switch response {
        case .emptyTask:
            message.emptyTask = Dragonfly_V1_EmptyTaskResponse()
        case .tinyTask(let content):
            var tiny = Dragonfly_V1_TinyTaskResponse()
            tiny.content = Data(content)
            message.tinyTask = tiny
        case .smallTask(let plan):
            var small = Dragonfly_V1_SmallTaskResponse()
            small.parents = plan.parents.map { parentPeer($0, host: host($0.hostID), clock: clock) }
            small.contentLength = UInt64(clamping: plan.contentLength)
            small.pieceLength = UInt64(clamping: plan.pieceLength)
            var piece = Dragonfly_V1_Piece()
            piece.number = 0
            piece.length = UInt64(clamping: plan.contentLength)
            piece.digest = plan.pieceDigest
            small.piece = piece
            small.responseHeader = plan.responseHeader
            small.transferGrant = transferGrant
            message.smallTask = small
        case .normalTask(let plan):
            var normal = Dragonfly_V1_NormalTaskResponse()
            normal.parents = plan.parents.map { parentPeer($0, host: host($0.hostID), clock: clock) }
            if let contentLength = plan.contentLength { normal.contentLength = UInt64(clamping: contentLength) }
            normal.pieceLength = UInt64(clamping: plan.pieceLength)
            if let pieceCount = plan.pieceCount { normal.pieceCount = UInt32(clamping: pieceCount) }
            normal.pieceDigests = plan.pieceDigests
            normal.responseHeader = plan.responseHeader
            normal.transferGrant = transferGrant
            message.normalTask = normal
        case .pieceDigests(let batch):
            var digests = Dragonfly_V1_PieceDigestsResponse()
            digests.pieceDigests = batch.pieceDigests
            if let contentLength = batch.contentLength { digests.contentLength = UInt64(clamping: contentLength) }
            if let pieceCount = batch.pieceCount { digests.pieceCount = UInt32(clamping: pieceCount) }
            message.pieceDigests = digests
        case .needBackToSource(let reason):
            var need = Dragonfly_V1_NeedBackToSourceResponse()
            need.reason = reason
            need.transferGrant = transferGrant
            message.needBackToSource = need
        case .sourceError(let error):
            message.sourceError = sourceError(error)
        }
        return message
    }

    /// The proto form of an origin error.
    package static func sourceError(_ error: OriginError) -> Dragonfly_V1_SourceError {
        var proto = Dragonfly_V1_SourceError()
        proto.statusCode = UInt32(clamping: error.statusCode)
        proto.header = error.header
        proto.message = error.message
        proto.temporary = error.isTemporary
        return proto
    }

    static func taskState(_ state: TaskStateMachine.State) -> Dragonfly_V1_TaskState {
        switch state {
        case .pending: .pending
        case .running: .running
        case .succeeded: .succeeded
        case .failed: .failed
        case .leave: .leave
        }
    }

    static func peerState(_ state: PeerStateMachine.State) -> Dragonfly_V1_PeerState {
        switch state {
        case .pending: .pending
        case .receivedEmpty: .receivedEmpty
        case .receivedTiny: .receivedTiny
        case .receivedSmall: .receivedSmall
        case .receivedNormal: .receivedNormal
        case .running: .running
        case .backToSource: .backToSource
        case .succeeded: .succeeded
        case .failed: .failed
        case .leave: .leave
        }
    }

    static func sizeScope(_ scope: SizeScope?) -> Dragonfly_V1_SizeScope {
        switch scope {
        case nil: .unspecified
        case .empty: .empty
        case .tiny: .tiny
        case .small: .small
        case .normal: .normal
        }
    }

    // MARK: Helpers

    /// A protobuf duration as a `Duration`; negative values count as zero.
    package static func duration(_ proto: Google_Protobuf_Duration) -> Duration {
        guard proto.seconds >= 0, proto.nanos >= 0 else { return .zero }
        return .seconds(proto.seconds) + .nanoseconds(Int64(proto.nanos))
    }

    /// A `Duration` as a protobuf duration (whole nanoseconds).
    package static func protoDuration(_ duration: Duration) -> Google_Protobuf_Duration {
        let (seconds, attoseconds) = duration.components
        var proto = Google_Protobuf_Duration()
        proto.seconds = seconds
        proto.nanos = Int32(attoseconds / 1_000_000_000)
        return proto
    }

    private static func length(_ value: UInt64, field: String) throws(DragonflyError) -> Int64 {
        guard let length = Int64(exactly: value) else { throw invalid("\(field) \(value) is too large") }
        return length
    }

    private static func clampedInt64(_ value: UInt64) -> Int64 { Int64(clamping: value) }

    private static func checkIdentifier(_ value: String, field: String) throws(DragonflyError) {
        guard !value.isEmpty, value.utf8.count <= maxIdentifierLength else {
            throw invalid("\(field) must be 1-\(maxIdentifierLength) bytes")
        }
    }

    private static func checkPieceNumber(_ number: UInt32, field: String) throws(DragonflyError) {
        guard number < maxPieceCount else { throw invalid("\(field) \(number) must be below \(maxPieceCount)") }
    }

    /// Origin response headers within ``maxResponseHeaders`` and ``maxResponseHeaderBytes``.
    private static func boundedHeaders(_ headers: [String: String]) throws(DragonflyError) -> [String: String] {
        guard headers.count <= maxResponseHeaders else {
            throw invalid("back_to_source_started.response_header has more than \(maxResponseHeaders) headers")
        }
        var total = 0
        for (name, value) in headers {
            guard !name.isEmpty, name.utf8.count <= 256, value.utf8.count <= 8192 else {
                throw invalid("back_to_source_started.response_header names must be 1-256 bytes, values at most 8 KiB")
            }
            total += name.utf8.count + value.utf8.count
        }
        guard total <= maxResponseHeaderBytes else {
            throw invalid("back_to_source_started.response_header is larger than \(maxResponseHeaderBytes) bytes")
        }
        return headers
    }

    /// Piece digests are `sha256:<64 lowercase hex>` (DESIGN §4).
    private static func checkDigest(_ digest: String, field: String) throws(DragonflyError) {
        let prefix = "sha256:"
        guard digest.hasPrefix(prefix), TaskID(digest.dropFirst(prefix.count)) != nil else {
            throw invalid("\(field) must be 'sha256:' followed by 64 lowercase hex characters")
        }
    }

    private static func invalid(_ message: String) -> DragonflyError {
        DragonflyError(code: .invalidArgument, message: message)
    }
}

/// Turns `ContinuousClock` instants into wall-clock timestamps, relative to one pair of readings.
package struct WallClock: Sendable {
    package let instant: ContinuousClock.Instant
    package let date: Date

    package init(instant: ContinuousClock.Instant = .now, date: Date = Date()) {
        self.instant = instant
        self.date = date
    }

    /// The wall-clock time of `other`.
    package func timestamp(of other: ContinuousClock.Instant) -> Google_Protobuf_Timestamp {
        let (seconds, attoseconds) = (other - instant).components
        let offset = Double(seconds) + Double(attoseconds) / 1e18
        return Google_Protobuf_Timestamp(date: date.addingTimeInterval(offset))
    }
}
