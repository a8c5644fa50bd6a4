import DragonflyCore
import DragonflyRPC
import Testing

/// Parsing and printing of listener and target addresses.
@Suite struct RPCAddressTests {
    @Test(arguments: [
        ("127.0.0.1:4000", RPCAddress.tcp(host: "127.0.0.1", port: 4000)),
        ("0.0.0.0:0", .tcp(host: "0.0.0.0", port: 0)),
        ("[::1]:65003", .tcp(host: "::1", port: 65003)),
        ("scheduler.example:8002", .tcp(host: "scheduler.example", port: 8002)),
        ("unix:/var/run/dragonfly/dfdaemon.sock", .unixDomainSocket(path: "/var/run/dragonfly/dfdaemon.sock")),
        ("unix:///tmp/x.sock", .unixDomainSocket(path: "/tmp/x.sock")),
    ])
    func parses(text: String, address: RPCAddress) throws {
        #expect(try RPCAddress(parsing: text) == address)
    }

    @Test(arguments: ["127.0.0.1:4000", "[::1]:65003", "unix:/tmp/x.sock", "host:1"])
    func printsWhatItParses(text: String) throws {
        #expect(try RPCAddress(parsing: text).description == text)
    }

    @Test(arguments: ["", "127.0.0.1", "127.0.0.1:", ":4000", "127.0.0.1:65536", "::1:4000", "unix:", "h:-1"])
    func rejectsMalformed(text: String) {
        let error = #expect(throws: DragonflyError.self) { try RPCAddress(parsing: text) }
        #expect(error?.code == .invalidArgument)
        #expect(error?.message.contains("'\(text)'") == true)
    }
}
