import DragonflyCore
import DragonflyTestSupport
import Foundation
import Testing

/// Issue 13 point 6: `get`'s progress bar, in a real pseudo-terminal (`script`) of a given width, is redrawn in
/// place, never wider than the terminal, and shows where the bytes came from.
@Suite(.serialized, .timeLimit(.minutes(2)))
struct GetProgressBarTests {
    @Test(arguments: [60, 80])
    func theBarFitsTheTerminalAndRedrawsInPlace(columns: Int) async throws {
        try await withNginxOrigin { origin in
            try origin.writeFile("blob.bin", contents: [UInt8](repeating: 0x5A, count: 5 << 20))
            // About 2.5 s: the bar is drawn several times (at most five times a second).
            let url = origin.rateLimitedURL(for: "blob.bin", bytesPerSecond: 2 << 20)
            try await withTemporaryDirectory { dir in
                let executable = try DragonflyExecutable.locate()
                let command =
                    "stty cols \(columns) rows 24; exec '\(executable)' get '\(url)' -O '\(dir.appending("out.bin"))' "
                    + "--no-daemon --data-dir '\(dir.appending("get"))'"
                let capture = dir.appending("tty.out")
                FileManager.default.createFile(atPath: capture, contents: nil)
                let script = Process()
                script.executableURL = URL(fileURLWithPath: "/usr/bin/script")
                script.arguments = ["-q", "-e", "-c", command, "/dev/null"]
                script.standardInput = FileHandle.nullDevice
                script.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: capture))
                try script.run()
                try await poll(timeLimit: .seconds(60), description: "get in the pseudo-terminal to finish") {
                    !script.isRunning
                }
                #expect(script.terminationStatus == 0)
                let output = String(decoding: FileManager.default.contents(atPath: capture) ?? Data(), as: UTF8.self)
                // Every redraw starts with carriage return + erase line, so no stale characters survive.
                let draws = output.components(separatedBy: "\r\u{1B}[2K").dropFirst()
                #expect(draws.count >= 2, "\(output.debugDescription)")
                var sawShare = false
                for draw in draws {
                    for line in draw.split(whereSeparator: { $0 == "\r" || $0 == "\n" })
                    where !line.hasPrefix("dragonfly:") && !line.isEmpty {
                        #expect(line.count < columns, "\(columns) columns: \(line.debugDescription)")
                        #expect(!line.contains("ss "), "\(line.debugDescription)")
                        if line.contains("origin 100%") { sawShare = true }
                    }
                }
                #expect(sawShare, "\(output.debugDescription)")
                #expect(output.contains("dragonfly: "), "\(output.debugDescription)")
            }
        }
    }
}
