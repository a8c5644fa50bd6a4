import DragonflyCore
import DragonflyStorage
import DragonflyTestSupport
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The store's files are the role's user's alone (issue 12, finding 10), and metadata writes neither follow
/// nor reuse what sits at their temporary's name (finding 12).
@Suite struct StoragePermissionTests {
    /// The permission bits of `path` (not following a symlink).
    static func mode(_ path: String) -> mode_t? {
        var info = stat()
        guard lstat(path, &info) == 0 else { return nil }
        return info.st_mode & 0o7777
    }

    static func isSymlink(_ path: String) -> Bool {
        var info = stat()
        return lstat(path, &info) == 0 && (info.st_mode & S_IFMT) == S_IFLNK
    }

    @Test func directoriesAre0700AndFiles0600() async throws {
        let previous = umask(0o022)
        defer { umask(previous) }
        try await withTemporaryDirectory { directory in
            let store = Fixtures.makeStore(directory)
            let id = Fixtures.taskID("private")
            try await Fixtures.store(Fixtures.content(count: 10_000, seed: 1), as: id, pieceLength: 4096, in: store)
            let data = directory.appending("data")
            #expect(Self.mode(data + "/tasks") == 0o700)
            #expect(Self.mode(data + "/tasks/\(id.shard)") == 0o700)
            #expect(Self.mode(data + "/tasks/\(id.shard)/\(id)") == 0o700)
            #expect(Self.mode(data + "/tasks/\(id.shard)/\(id)/data") == 0o600)
            #expect(Self.mode(data + "/tasks/\(id.shard)/\(id)/meta") == 0o600)
        }
    }

    @Test func theDataDirectoryLockCreatesAPrivateDirectory() throws {
        let previous = umask(0o022)
        defer { umask(previous) }
        let directory = try TemporaryDirectory(prefix: "dragonfly-test-lock-")
        defer { directory.remove() }
        let data = directory.appending("role/data")
        let lock = try DataDirectoryLock(directory: data)
        defer { lock.release() }
        #expect(Self.mode(data) == 0o700)
    }

    @Test func aStoreLeftWorldReadableByAnOlderVersionIsTightenedOnReload() async throws {
        try await withTemporaryDirectory { directory in
            let id = Fixtures.taskID("old")
            let content = Fixtures.content(count: 9000, seed: 2)
            let data = directory.appending("data")
            let taskDirectory = data + "/tasks/\(id.shard)/\(id)"
            do {
                let store = Fixtures.makeStore(directory)
                try await Fixtures.store(content, as: id, pieceLength: 4096, in: store)
            }
            // What an older version left: every directory 0755, every file 0644.
            for path in [data, data + "/tasks", data + "/tasks/\(id.shard)", taskDirectory] {
                #expect(chmod(path, 0o755) == 0)
            }
            for path in [taskDirectory + "/data", taskDirectory + "/meta"] { #expect(chmod(path, 0o644) == 0) }

            let store = Fixtures.makeStore(directory)
            #expect(try await store.reload() == 1)
            for path in [data, data + "/tasks", data + "/tasks/\(id.shard)", taskDirectory] {
                #expect(Self.mode(path) == 0o700, "\(path)")
            }
            for path in [taskDirectory + "/data", taskDirectory + "/meta"] {
                #expect(Self.mode(path) == 0o600, "\(path)")
            }
            #expect(
                try await store.readPiece(taskID: id, number: 2) == Fixtures.piece(2, of: content, pieceLength: 4096))
        }
    }

    @Test func atomicFileNeverFollowsASymlinkPlantedAtItsTemporary() throws {
        let directory = try TemporaryDirectory(prefix: "dragonfly-test-atomic-")
        defer { directory.remove() }
        let victim = try directory.writeFile("victim", text: "keep me\n")
        let target = directory.appending("meta")
        // Someone who can write the directory plants the temporary's name, pointing at another file.
        let temporary = directory.appending(".meta.\(getpid()).tmp")
        #expect(symlink(victim, temporary) == 0)

        try AtomicFile.write(Array("new contents\n".utf8), to: target, mode: 0o600)

        #expect(try String(contentsOfFile: victim, encoding: .utf8) == "keep me\n")
        #expect(try String(contentsOfFile: target, encoding: .utf8) == "new contents\n")
        #expect(!Self.isSymlink(target))
        #expect(Self.mode(target) == 0o600)
        #expect(Self.mode(temporary) == nil, "the planted link is gone")
    }

    @Test func atomicFileReplacesAStaleTemporaryWithAFreshFile() throws {
        let directory = try TemporaryDirectory(prefix: "dragonfly-test-atomic-")
        defer { directory.remove() }
        let target = directory.appending("meta")
        // A crash left a world-writable temporary; its mode and bytes must not carry over.
        let temporary = try directory.writeFile(".meta.\(getpid()).tmp", text: String(repeating: "x", count: 100))
        #expect(chmod(temporary, 0o666) == 0)

        try AtomicFile.write(Array("short".utf8), to: target, mode: 0o600)

        #expect(try String(contentsOfFile: target, encoding: .utf8) == "short")
        #expect(Self.mode(target) == 0o600)
    }
}
