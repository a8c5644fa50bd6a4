import DragonflyCore
import DragonflyTestSupport
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite struct RuntimeTests {
    @Test func dataDirectoryLockNamesTheHolder() async throws {
        try await withTemporaryDirectory { dir in
            let path = dir.path + "/data/nested"
            let lock = try DataDirectoryLock(directory: path)
            #expect {
                _ = try DataDirectoryLock(directory: path)
            } throws: { error in
                let error = error as? DragonflyError
                return error?.code == .failedPrecondition && error?.message.contains("process \(getpid())") == true
                    && error?.code.exitCode == 1
            }
            lock.release()
            // Released: the next process (here: the next open) takes it.
            _ = try DataDirectoryLock(directory: path)
        }
    }

    @Test func readyFileIsWrittenAtomicallyAndParses() async throws {
        try await withTemporaryDirectory { dir in
            let path = dir.path + "/ready.json"
            let file = DragonflyCore.ReadyFile(
                role: "daemon", pid: 42, listeners: ["peer": "127.0.0.1:4000"], socket: "/s.sock")
            try file.write(to: path)
            #expect(try DragonflyCore.ReadyFile.read(from: path) == file)
            // No temporary file is left beside it.
            #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path) == ["ready.json"])
        }
    }

    @Test func listenerAddressDeliversToWaitersAndLateReaders() async throws {
        let listener = ListenerAddress(name: "peer")
        #expect(listener.current == nil)
        async let early = listener.value()
        listener.fulfil("127.0.0.1:1234")
        #expect(try await early == "127.0.0.1:1234")
        #expect(try await listener.value() == "127.0.0.1:1234")
        // A second fulfil does not change the published address.
        listener.fulfil("127.0.0.1:9")
        #expect(listener.current == "127.0.0.1:1234")
        let failing = ListenerAddress(name: "proxy")
        failing.fail(DragonflyError(code: .unavailable, message: "address in use"))
        await #expect(throws: DragonflyError.self) { _ = try await failing.value() }
    }
}
