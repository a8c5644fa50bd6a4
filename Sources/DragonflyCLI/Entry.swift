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
        do {
            var command = try DragonflyCommand.parseAsRoot()
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
            exit(0)
        } catch let error as DragonflyError {
            writeToStandardError("dragonfly: \(error.description)\n")
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
