import DragonflyCore
import DragonflyRPC
import GRPCCore
import Testing

/// `DragonflyError` ↔ `RPCError` mapping, without I/O.
@Suite struct ErrorMappingTests {
    static let expectedStatus: [(DragonflyError.Code, RPCError.Code)] = [
        (.invalidArgument, .invalidArgument),
        (.configuration, .invalidArgument),
        (.usage, .invalidArgument),
        (.notFound, .notFound),
        (.alreadyExists, .alreadyExists),
        (.permissionDenied, .permissionDenied),
        (.unauthenticated, .unauthenticated),
        (.failedPrecondition, .failedPrecondition),
        (.originError, .failedPrecondition),
        (.resourceExhausted, .resourceExhausted),
        (.dataLoss, .dataLoss),
        (.unavailable, .unavailable),
        (.deadlineExceeded, .deadlineExceeded),
        (.cancelled, .cancelled),
        (.unimplemented, .unimplemented),
        (.internalError, .internalError),
    ]

    @Test(arguments: expectedStatus)
    func dragonflyCodeMapsToStatus(code: DragonflyError.Code, status: RPCError.Code) {
        let error = DragonflyError(code: code, message: "what happened")
        let rpcError = RPCError(error)
        #expect(rpcError.code == status)
        #expect(rpcError.message == "what happened")
        #expect(Array(rpcError.metadata[stringValues: DragonflyError.codeMetadataKey]) == [code.description])
    }

    @Test(arguments: expectedStatus.map(\.0))
    func dragonflyCodeSurvivesTheRoundTrip(code: DragonflyError.Code) {
        let original = DragonflyError(code: code, message: "m")
        let back = DragonflyError(rpcError: RPCError(original))
        #expect(back.code == code)
        #expect(back.message == "m")
        #expect(back.cause is RPCError)
    }

    @Test func statusWithoutDragonflyMetadataMapsByCode() {
        let cases: [(RPCError.Code, DragonflyError.Code)] = [
            (.unavailable, .unavailable), (.aborted, .unavailable), (.notFound, .notFound),
            (.outOfRange, .invalidArgument), (.unknown, .internalError), (.dataLoss, .dataLoss),
            (.deadlineExceeded, .deadlineExceeded), (.cancelled, .cancelled),
        ]
        for (status, code) in cases {
            #expect(DragonflyError(rpcError: RPCError(code: status, message: "x")).code == code, "\(status)")
        }
    }

    @Test func unknownMetadataCodeFallsBackToStatus() {
        let error = RPCError(
            code: .resourceExhausted,
            message: "slots full",
            metadata: [DragonflyError.codeMetadataKey: "fromTheFuture"]
        )
        #expect(DragonflyError(rpcError: error).code == .resourceExhausted)
    }

    @Test func convertingWrapsOtherErrors() async {
        #expect(DragonflyError(converting: CancellationError()).code == .cancelled)
        #expect(DragonflyError(converting: RPCError(code: .dataLoss, message: "bad digest")).code == .dataLoss)
        struct Odd: Error {}
        #expect(DragonflyError(converting: Odd()).code == .internalError)

        let error = await #expect(throws: DragonflyError.self) {
            try await convertingRPCErrors { throw RPCError(code: .notFound, message: "gone") }
        }
        #expect(error?.code == .notFound)
    }

    @Test func everyCodeHasAName() {
        for (code, _) in Self.expectedStatus {
            #expect(DragonflyError.Code(name: code.description) == code)
        }
        #expect(DragonflyError.Code(name: "nonsense") == nil)
    }
}
