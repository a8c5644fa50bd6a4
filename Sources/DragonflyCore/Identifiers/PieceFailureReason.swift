/// Values of `PieceFailedRequest.reason` (DESIGN §5) that the scheduler acts on; any other text is only logged.
package enum PieceFailureReason {
    /// The parent's bytes failed verification against the trusted digest, or had the wrong length. The scheduler
    /// stops handing that parent out for the task, to every child, not only to the one that reported it.
    package static let corrupted = "corrupted"
}
