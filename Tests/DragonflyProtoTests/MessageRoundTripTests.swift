import DragonflyProto
import SwiftProtobuf
import Testing

/// The generated messages serialize and parse back unchanged, presence of `optional` fields included.
@Suite struct MessageRoundTripTests {
    static let taskID = String(repeating: "ab", count: 32)

    @Test func announcePeerRegisterRoundTrips() throws {
        let request = Dragonfly_V1_AnnouncePeerRequest.with {
            $0.hostID = "10.0.0.1-host1-4000"
            $0.taskID = Self.taskID
            $0.peerID = "10.0.0.1-host1-2f1c"
            $0.register = .with {
                $0.download = .with {
                    $0.url = "https://example.com/blob.bin?X-Amz-Signature=x"
                    $0.outputPath = "/tmp/blob.bin"
                    $0.digest = "sha256:" + String(repeating: "0", count: 64)
                    $0.range = .with { $0.start = 100 }
                    $0.tag = "foo"
                    $0.application = "bar"
                    $0.priority = .level3
                    $0.filteredQueryParams = ["X-Amz-Signature"]
                    $0.requestHeader = ["Authorization": "Bearer secret"]
                    $0.pieceLength = 4 << 20
                    $0.timeout = .init(seconds: 7200, nanos: 0)
                    $0.recursive = .with { $0.level = 2 }
                }
                $0.finishedPieceNumbers = [0, 1, 5]
            }
        }

        let bytes: [UInt8] = try request.serializedBytes()
        let parsed = try Dragonfly_V1_AnnouncePeerRequest(serializedBytes: bytes)

        #expect(parsed == request)
        guard case .register(let register) = parsed.request else {
            Issue.record("expected a register request, got \(String(describing: parsed.request))")
            return
        }
        #expect(register.download.hasOutputPath)
        #expect(register.download.hasRange && !register.download.range.hasLength)
        #expect(register.download.pieceLength == 4 << 20)
        #expect(!register.hasContentLength)
        #expect(register.finishedPieceNumbers == [0, 1, 5])
    }

    @Test func normalTaskResponseWithDigestsRoundTrips() throws {
        let digests: [UInt32: String] = [
            0: "sha256:" + String(repeating: "1", count: 64),
            1: "sha256:" + String(repeating: "2", count: 64),
        ]
        let response = Dragonfly_V1_AnnouncePeerResponse.with {
            $0.normalTask = .with {
                $0.parents = [
                    .with {
                        $0.peerID = "10.0.0.2-seed-9a"
                        $0.host = .with {
                            $0.id = "10.0.0.2-seed-4000-seed"
                            $0.type = .super
                            $0.ip = "10.0.0.2"
                            $0.port = 4000
                            $0.pieceDataPort = 4005
                            $0.network = .with { $0.maxTxBandwidth = 125_000_000 }
                        }
                        $0.peerAddress = "10.0.0.2:4000"
                        $0.pieceDataAddress = "10.0.0.2:4005"
                    }
                ]
                $0.pieceLength = 4 << 20
                $0.contentLength = 10 << 20
                $0.pieceCount = 3
                $0.pieceDigests = digests
                $0.responseHeader = ["Content-Type": "application/octet-stream"]
            }
        }

        let bytes: [UInt8] = try response.serializedBytes()
        let parsed = try Dragonfly_V1_AnnouncePeerResponse(serializedBytes: bytes)

        #expect(parsed == response)
        guard case .normalTask(let task) = parsed.response else {
            Issue.record("expected a normal task response, got \(String(describing: parsed.response))")
            return
        }
        #expect(task.pieceDigests == digests)
        #expect(task.hasContentLength && task.contentLength == 10 << 20)
        #expect(task.parents.first?.host.type == .super)
    }

    @Test func pieceDigestsPushWithoutContentLengthKeepsItAbsent() throws {
        let response = Dragonfly_V1_AnnouncePeerResponse.with {
            $0.pieceDigests = .with { $0.pieceDigests = [7: "sha256:" + String(repeating: "7", count: 64)] }
        }
        let parsed = try Dragonfly_V1_AnnouncePeerResponse(serializedBytes: try response.serializedBytes() as [UInt8])
        guard case .pieceDigests(let push) = parsed.response else {
            Issue.record("expected piece digests, got \(String(describing: parsed.response))")
            return
        }
        #expect(!push.hasContentLength && !push.hasPieceCount)
        #expect(push.pieceDigests.keys.sorted() == [7])
    }

    @Test func managerJobRoundTripsThroughJSON() throws {
        let message = Dragonfly_V1_CommandChannelResponse.with {
            $0.job = .with {
                $0.id = 42
                $0.schedulerClusterID = 1
                $0.preheat = .with {
                    $0.downloads = [.with { $0.url = "http://127.0.0.1:8080/blob" }]
                    $0.targets = .with {
                        $0.scope = .allPeers
                        $0.count = 3
                    }
                }
            }
        }
        let json = try message.jsonString()
        let parsed = try Dragonfly_V1_CommandChannelResponse(jsonString: json)
        #expect(parsed == message)
        #expect(parsed.job.preheat.targets.hasCount && !parsed.job.preheat.targets.hasPercentage)
    }
}
