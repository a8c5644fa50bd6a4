import AsyncHTTPClient
import DragonflyCore
import DragonflyTelemetry
import DragonflyTestSupport
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import Prometheus
import ServiceLifecycle
import Testing

/// Runs `service` in a ServiceGroup, gives `body` its bound address, then shuts the group down gracefully.
func withRunningListener<T: Sendable>(
    _ service: HTTPListenerService,
    _ body: (String) async throws -> T
) async throws -> T {
    let group = ServiceGroup(
        configuration: ServiceGroupConfiguration(services: [service], logger: Logger(label: "test"))
    )
    return try await withThrowingTaskGroup(of: Void.self) { tasks in
        tasks.addTask { try await group.run() }
        let address = try await service.listener.value()
        do {
            let result = try await body(address)
            await group.triggerGracefulShutdown()
            try await tasks.waitForAll()
            return result
        } catch {
            await group.triggerGracefulShutdown()
            try? await tasks.waitForAll()
            throw error
        }
    }
}

func httpGet(_ url: String) async throws -> (status: Int, body: String, contentType: String?) {
    let response = try await HTTPClient.shared.execute(HTTPClientRequest(url: url), timeout: .seconds(10))
    let body = try await response.body.collect(upTo: 1 << 20)
    return (Int(response.status.code), String(buffer: body), response.headers.first(name: "content-type"))
}

@Suite struct TelemetryTests {
    @Test func healthAndMetricsOverARealSocket() async throws {
        let telemetry = Telemetry(role: "testrole")
        telemetry.registry.makeCounter(
            descriptor: MetricNameDescriptor(
                metricName: telemetry.metricName("things"), unitName: "total", helpText: "test")
        )
        .increment(by: Int64(3))
        let service = HTTPListenerService.endpoints(
            name: "metrics",
            address: ListenAddress(host: "127.0.0.1", port: 0),
            telemetry: telemetry,
            logger: Logger(label: "test")
        )
        try await withRunningListener(service) { address in
            #expect(address.hasPrefix("127.0.0.1:"))
            #expect(!address.hasSuffix(":0"))
            let health = try await httpGet("http://\(address)/healthy")
            #expect(health.status == 200)
            #expect(health.body == "OK")
            let metrics = try await httpGet("http://\(address)/metrics")
            #expect(metrics.status == 200)
            #expect(metrics.contentType?.hasPrefix("text/plain") == true)
            #expect(metrics.body.contains("dragonfly_testrole_build_info{version=\"\(DragonflyVersion.current)\""))
            #expect(metrics.body.contains("dragonfly_testrole_things_total 3"))
            #expect(try await httpGet("http://\(address)/nope").status == 404)
        }
    }

    @Test func healthOnlyListenerHasNoMetrics() async throws {
        let service = HTTPListenerService.endpoints(
            name: "health",
            address: ListenAddress(host: "127.0.0.1", port: 0),
            telemetry: nil,
            logger: Logger(label: "test")
        )
        try await withRunningListener(service) { address throws in
            #expect(try await httpGet("http://\(address)/healthy").status == 200)
            #expect(try await httpGet("http://\(address)/metrics").status == 404)
        }
    }

    @Test func aTakenPortFailsTheListenerNamingTheAddress() async throws {
        let first = HTTPListenerService.endpoints(
            name: "metrics",
            address: ListenAddress(host: "127.0.0.1", port: 0),
            telemetry: nil,
            logger: Logger(label: "test")
        )
        try await withRunningListener(first) { address in
            let taken = try #require(ListenAddress(parsing: address))
            let second = HTTPListenerService.endpoints(
                name: "metrics", address: taken, telemetry: nil, logger: Logger(label: "test"))
            await #expect {
                try await second.run()
            } throws: { error in
                (error as? DragonflyError)?.message.contains(address) == true
            }
            await #expect(throws: DragonflyError.self) { _ = try await second.listener.value() }
        }
    }

    /// Finding 11 of "Security, part 1": idle connections beyond a listener's cap once exhausted a daemon's file
    /// descriptors. Now the listener serves at most its cap and closes connections that send no request.
    @Test func idleConnectionsBeyondTheCapAreClosedAndHealthStillAnswers() async throws {
        let cap = 8
        let service = HTTPListenerService.endpoints(
            name: "health",
            address: ListenAddress(host: "127.0.0.1", port: 0),
            telemetry: nil,
            limits: HTTPListenerLimits(maxConnections: cap, idleTimeout: .milliseconds(500)),
            logger: Logger(label: "test")
        )
        try await withRunningListener(service) { address in
            let bound = try #require(ListenAddress(parsing: address))
            var channels: [any Channel] = []
            defer { for channel in channels { channel.close(promise: nil) } }
            for index in 0..<(cap + 50) {
                let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                    .connect(host: bound.host, port: bound.port).get()
                channels.append(channel)
                if index == 0 {
                    // A half-sent request head counts as idle too. Written at once; on a loaded machine the server
                    // may still have closed the connection first, which is the behaviour under test anyway.
                    try? await channel.writeAndFlush(ByteBuffer(string: "GET /healthy HTTP/1.1\r\nHost: x\r\n")).get()
                }
            }
            let all = channels
            try await poll(every: .milliseconds(50), timeLimit: .seconds(60), description: "idle connections closed") {
                all.allSatisfy { !$0.isActive }
            }
            #expect(try await httpGet("http://\(address)/healthy").status == 200)
        }
    }

    @Test(arguments: [
        ("plain", "plain"), ("two words", "\"two words\""), ("a=b", "\"a=b\""), ("", "\"\""),
        ("say \"hi\"", "\"say \\\"hi\\\"\""), ("line\nbreak", "\"line\\nbreak\""),
    ])
    func logfmtQuoting(value: String, quoted: String) {
        #expect(LogfmtLogHandler.quote(value) == quoted)
    }
}
