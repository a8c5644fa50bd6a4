import DragonflyCore
import Testing

@Suite struct ConfigValuesTests {
    @Test(arguments: [
        ("500ms", Int64(500)), ("30s", 30_000), ("5m", 300_000), ("2h", 7_200_000), ("1h30m", 5_400_000),
        ("10", 10_000), ("1.5", 1500), ("0", 0), ("1d", 86_400_000),
    ])
    func durationParses(text: String, milliseconds: Int64) {
        #expect(ConfigDuration(parsing: text)?.milliseconds == milliseconds)
    }

    @Test(arguments: ["", "abc", "5x", "-3s", "m", "1h-2m", "99999999999999999999h"])
    func durationRejects(text: String) {
        #expect(ConfigDuration(parsing: text) == nil)
    }

    @Test(arguments: [Int64(0), 1, 999, 1000, 61_000, 5_400_000, 86_400_000, 3_723_004])
    func durationCanonicalTextRoundTrips(milliseconds: Int64) {
        let value = ConfigDuration(milliseconds: milliseconds)
        #expect(ConfigDuration(parsing: value.description) == value)
    }

    @Test(arguments: [
        ("123", Int64(123)), ("4K", 4096), ("4M", 4 << 20), ("1G", 1 << 30), ("2T", Int64(2) << 40),
        ("4MiB", 4 << 20), ("4mb", 4 << 20), ("1.5M", 1_572_864), ("512k", 524_288),
    ])
    func byteSizeParses(text: String, bytes: Int64) {
        #expect(ByteSize(parsing: text)?.bytes == bytes)
    }

    @Test(arguments: ["", "M", "-1", "4X", "1.5", "9999999999999T"])
    func byteSizeRejects(text: String) {
        #expect(ByteSize(parsing: text) == nil)
    }

    @Test func byteSizeCanonicalText() {
        #expect(ByteSize(bytes: 4 << 20).description == "4M")
        #expect(ByteSize(bytes: 1536 << 10).description == "1536K")
        #expect(ByteSize(bytes: 100).description == "100")
        #expect(ByteSize(bytes: 0).description == "0")
    }

    @Test func listenAddressParses() {
        #expect(ListenAddress(parsing: "0.0.0.0:4000") == ListenAddress(host: "0.0.0.0", port: 4000))
        #expect(ListenAddress(parsing: "127.0.0.1:0")?.port == 0)
        #expect(ListenAddress(parsing: "[::1]:8080") == ListenAddress(host: "::1", port: 8080))
        #expect(ListenAddress(host: "::1", port: 8080).description == "[::1]:8080")
        for bad in ["4000", "host:", ":80", "a:70000", "::1:80", "[::1]80", "h:-1"] {
            #expect(ListenAddress(parsing: bad) == nil, "\(bad) should be rejected")
        }
    }
}
