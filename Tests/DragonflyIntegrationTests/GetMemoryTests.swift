import DragonflyTestSupport
import Foundation
import Testing

/// Memory is bounded by configuration, never by file size: the peak RSS of `get --no-daemon` (measured by
/// GNU time in its own process, so other tests running in parallel do not count) barely differs between a
/// 32 MiB and a 256 MiB download.
@Suite(.serialized, .timeLimit(.minutes(5)))
struct GetMemoryTests {
    /// Peak resident set size in KiB of one `get` of `name`, from `/usr/bin/time -f %M`.
    static func peakKiB(origin: NginxOrigin, name: String, dir: TemporaryDirectory) async throws -> Int {
        let binary = try DragonflyExecutable.locate()
        let arguments = [
            "-f", "peak-kib=%M", binary, "get", origin.url(for: name), "-O", dir.appending(name), "--no-daemon",
            "--data-dir", dir.appending("data-\(name)"),
        ]
        return try await withDragonfly(arguments, readyFile: false, executablePath: "/usr/bin/time") { process in
            let status = try await process.waitForExit(timeLimit: .seconds(120))
            let stderr = process.stderrText()
            #expect(status == .exited(0), "\(stderr)")
            let line = try #require(stderr.split(separator: "\n").last { $0.hasPrefix("peak-kib=") })
            return try #require(Int(line.dropFirst("peak-kib=".count)))
        }
    }

    /// A file of `mebibytes` MiB: one random MiB repeated, each copy stamped with its index.
    static func writeFile(_ origin: NginxOrigin, name: String, mebibytes: Int) throws {
        var block = [UInt8](repeating: 0, count: 1 << 20)
        for index in block.indices { block[index] = UInt8.random(in: 0...255) }
        var content = [UInt8]()
        content.reserveCapacity(mebibytes << 20)
        for copy in 0..<mebibytes {
            withUnsafeBytes(of: UInt64(copy)) { stamp in
                for (offset, byte) in stamp.enumerated() { block[offset] = byte }
            }
            content += block
        }
        try origin.writeFile(name, contents: content)
    }

    @Test func peakMemoryDoesNotGrowWithFileSize() async throws {
        try await withNginxOrigin { origin in
            try Self.writeFile(origin, name: "small.bin", mebibytes: 32)
            try Self.writeFile(origin, name: "large.bin", mebibytes: 256)
            try await withTemporaryDirectory { dir in
                let small = try await Self.peakKiB(origin: origin, name: "small.bin", dir: dir)
                let large = try await Self.peakKiB(origin: origin, name: "large.bin", dir: dir)
                // Eight times the bytes; the peak may move by a few pieces in flight, not by the file size.
                #expect(large - small < 48 << 10, "peak RSS \(small) KiB for 32 MiB, \(large) KiB for 256 MiB")
            }
        }
    }
}
