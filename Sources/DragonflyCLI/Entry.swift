import ArgumentParser
import DragonflyCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The process entry point: parses the command line, runs the chosen role, and maps failures to the exit codes
/// of DESIGN §15 — 0 success, 1 the work failed, 2 usage or configuration error (ArgumentParser's 64 included).
package enum DragonflyMain {
    package static func main() async -> Never {
        MemoryTuning.returnLargeBuffersPromptly()
        do {
            var command = try DragonflyCommand.parseAsRoot()
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
            exit(0)
        } catch let error as DragonflyError {
            // The message only: the cause is for logs, and internal code names mean nothing to a person.
            writeToStandardError("dragonfly: \(Redaction.message(error.message))\n")
            exit(error.code.exitCode)
        } catch let error as ProcessExit {
            exit(error.code)
        } catch {
            let code = DragonflyCommand.exitCode(for: error).rawValue
            let message = DragonflyCommand.fullMessage(for: error)
            if code == 0 {
                if !message.isEmpty { print(message) }
                exit(0)
            }
            if !message.isEmpty { writeToStandardError(message + "\n") }
            // ArgumentParser uses 64 (EX_USAGE) for usage and validation errors; DESIGN §15 says 2.
            exit(code == 64 ? 2 : code)
        }
    }
}

/// Ends the process with a given code after the command has reported what it needs to.
package struct ProcessExit: Error {
    package var code: Int32
    package init(code: Int32) { self.code = code }
}

/// glibc allocator tuning for a process that moves multi-megabyte piece buffers.
enum MemoryTuning {
    private typealias MallocOption = @convention(c) (Int32, Int32) -> Int32

    /// Fixes glibc's mmap threshold at 1 MiB. By default the threshold grows to the size of the largest buffer
    /// freed, after which freed piece buffers stay in the heap and the peak RSS climbs with the pieces in flight
    /// (measured: 64–72 MiB for a 1 GiB `get`, 53–56 MiB with a fixed threshold). `mallopt` is not exported by
    /// Swift's Glibc module, so it is looked up at run time; elsewhere this does nothing.
    static func returnLargeBuffersPromptly() {
        #if os(Linux)
        let mmapThreshold: Int32 = -3  // M_MMAP_THRESHOLD in <malloc.h>
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "mallopt") else { return }
        _ = unsafeBitCast(symbol, to: MallocOption.self)(mmapThreshold, 1 << 20)
        #endif
    }
}
