import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Returns a TCP port on 127.0.0.1 that was free a moment ago.
///
/// It binds a POSIX socket to `127.0.0.1:0`, reads back the port the kernel chose and closes the socket.
/// **There is a small race**: another process may take the port between this call and the moment the real
/// server binds it. Only servers that cannot bind port 0 themselves should use it (nginx, PostgreSQL), and
/// their launchers (``withNginxOrigin(limitRate:tls:serverConfiguration:isolation:_:)``,
/// ``withPostgres(database:isolation:_:)``) retry a bounded number of times with a fresh port when the bind
/// fails. Our own processes always listen on `127.0.0.1:0` and report the bound ports in their ready file
/// instead.
package func freeLoopbackPort() throws -> Int {
    #if canImport(Glibc)
    let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    #else
    let descriptor = socket(AF_INET, SOCK_STREAM, 0)
    #endif
    guard descriptor >= 0 else {
        throw systemCallFailure("socket", "could not create a socket to find a free port")
    }
    defer { close(descriptor) }

    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = 0
    address.sin_addr = in_addr(s_addr: in_addr_t(0x7F00_0001).bigEndian)
    let bound = withUnsafePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
        }
    }
    guard bound == 0 else {
        throw systemCallFailure("bind", "could not bind 127.0.0.1:0 to find a free port")
    }

    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let named = withUnsafeMutablePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            getsockname(descriptor, $0, &length)
        }
    }
    guard named == 0 else {
        throw systemCallFailure("getsockname", "could not read back the port bound to 127.0.0.1:0")
    }
    return Int(UInt16(bigEndian: address.sin_port))
}

/// Whether a TCP connection to `host:port` can be opened right now (it is closed again at once).
///
/// Used by the launchers to wait for a server to accept connections, through ``poll(every:timeLimit:description:until:)``.
package func isAcceptingConnections(host: String = "127.0.0.1", port: Int) async -> Bool {
    do {
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connectTimeout(.seconds(1))
            .connect(host: host, port: port)
            .get()
        try? await channel.close()
        return true
    } catch {
        return false
    }
}

/// Sends `request` as raw bytes over one TCP connection to `host:port`, half-closes nothing, and returns
/// every byte the server sent until it closed the connection (or `maximumBytes` arrived, or `timeLimit`
/// passed). For requests no HTTP client library would send: malformed heads, `CONNECT`.
package func rawTCPExchange(
    host: String = "127.0.0.1",
    port: Int,
    request: [UInt8],
    maximumBytes: Int = 1 << 20,
    timeLimit: Duration = .seconds(10)
) async throws -> [UInt8] {
    let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
        .connectTimeout(.seconds(5))
        .connect(host: host, port: port) { channel in
            channel.eventLoop.makeCompletedFuture {
                try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
            }
        }
    return try await withThrowingTaskGroup(of: [UInt8]?.self) { group in
        group.addTask {
            try await channel.executeThenClose { inbound, outbound in
                try await outbound.write(ByteBuffer(bytes: request))
                var received: [UInt8] = []
                for try await chunk in inbound {
                    received.append(contentsOf: chunk.readableBytesView)
                    if received.count >= maximumBytes { break }
                }
                return received
            }
        }
        group.addTask {
            try await Task.sleep(for: timeLimit)
            return nil
        }
        defer { group.cancelAll() }
        guard let first = try await group.next(), let received = first else {
            throw TestSupportError(
                code: .timedOut, message: "\(host):\(port) did not close the connection within \(timeLimit)")
        }
        return received
    }
}
