import DragonflyCore
import Testing

@testable import DragonflyScheduler

@Suite("Default strategy")
struct DefaultStrategyTests {
    @Test("free upload prefers idle bandwidth, else free slots")
    func freeUpload() {
        #expect(
            DefaultStrategy.freeUpload(ParentCandidate(hostID: "h", idleTxBandwidth: 25, maxTxBandwidth: 100)) == 0.25)
        #expect(DefaultStrategy.freeUpload(ParentCandidate(hostID: "h", uploadSlots: 4, freeUploadSlots: 3)) == 0.75)
        #expect(DefaultStrategy.freeUpload(ParentCandidate(hostID: "h")) == 0)
        #expect(DefaultStrategy.freeUpload(ParentCandidate(hostID: "h", uploadSlots: 4, freeUploadSlots: 9)) == 1)
    }

    @Test("piece progress, upload success and affinities")
    func components() {
        #expect(DefaultStrategy.pieceProgress(ParentCandidate(hostID: "h", finishedPieces: 3, totalPieces: 4)) == 0.75)
        #expect(DefaultStrategy.pieceProgress(ParentCandidate(hostID: "h", isSeed: true)) == 1)
        #expect(DefaultStrategy.pieceProgress(ParentCandidate(hostID: "h")) == 0)
        #expect(
            DefaultStrategy.uploadSuccess(ParentCandidate(hostID: "h", uploadSuccesses: 3, uploadFailures: 1)) == 0.75)
        #expect(DefaultStrategy.uploadSuccess(ParentCandidate(hostID: "h")) == 1)
        #expect(DefaultStrategy.idcAffinity("a", "a") == 1)
        #expect(DefaultStrategy.idcAffinity("", "") == 0)
        #expect(DefaultStrategy.idcAffinity("a", "b") == 0)
        #expect(DefaultStrategy.locationAffinity("cn|hz|a", "cn|hz|b") == 2.0 / 3.0)
        #expect(DefaultStrategy.locationAffinity("cn", "cn|hz") == 0.5)
        #expect(DefaultStrategy.locationAffinity("", "cn") == 0)
    }

    @Test("the weighted sum spans 0...1")
    func total() {
        let strategy = DefaultStrategy()
        let best = ParentCandidate(
            hostID: "h", isSeed: true, uploadSlots: 1, freeUploadSlots: 1, finishedPieces: 1, totalPieces: 1,
            uploadSuccesses: 1, idc: "x", location: "a|b")
        #expect(abs(strategy.score(best, for: ChildContext(hostID: "c", idc: "x", location: "a|b")) - 1) < 1e-9)
        let worst = ParentCandidate(hostID: "h", uploadSlots: 1, totalPieces: 1, uploadFailures: 1)
        #expect(abs(strategy.score(worst, for: ChildContext(hostID: "c")) - 0.05) < 1e-9, "normal host: 0.1 × 0.5")
    }
}
