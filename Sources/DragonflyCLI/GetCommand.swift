import ArgumentParser
import DragonflyCore

/// `dragonfly get URL -O PATH`.
struct GetCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "get",
        abstract: "Download a URL through the local daemon (P2P), falling back to the origin."
    )

    @Argument(help: "The URL to download.") var url: String
    @Option(name: [.customShort("O"), .long], help: "Output path; '-' writes to standard output.") var output: String

    func run() async throws {
        throw DragonflyError(code: .unimplemented, message: "get is not available in this build yet")
    }
}
