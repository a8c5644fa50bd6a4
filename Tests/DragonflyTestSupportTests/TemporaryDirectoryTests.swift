import DragonflyTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

@Suite struct TemporaryDirectoryTests {
    @Test func isCreatedAccessibleAndRemovedAfterTheScope() async throws {
        let path = try await withTemporaryDirectory { directory in
            #expect(directory.path.split(separator: "/").last?.hasPrefix("dragonfly-test-") == true)
            var info = stat()
            #expect(stat(directory.path, &info) == 0)
            #expect(info.st_mode & 0o777 == 0o755)
            try directory.writeFile("nested/deeper/file.txt", text: "hello")
            let script = try directory.writeFile("run.sh", text: "#!/bin/sh\n", permissions: 0o755)
            #expect(access(script, X_OK) == 0)
            #expect(access(directory.appending("nested/deeper/file.txt"), R_OK) == 0)
            return directory.path
        }
        #expect(access(path, F_OK) != 0)
    }

    @Test func isRemovedWhenTheBodyThrows() async throws {
        struct Boom: Error {}
        var seen: String?
        await #expect(throws: Boom.self) {
            try await withTemporaryDirectory { directory in
                seen = directory.path
                try directory.writeFile("file.bin", contents: [1, 2, 3])
                throw Boom()
            }
        }
        let path = try #require(seen)
        #expect(access(path, F_OK) != 0)
    }

    @Test func freeLoopbackPortsAreInRange() throws {
        let first = try freeLoopbackPort()
        let second = try freeLoopbackPort()
        #expect((1024...65_535).contains(first))
        #expect((1024...65_535).contains(second))
    }
}
