/// The package managers and repository tools of the proxy's client tests (RECIPES §6), all from Debian:
/// Maven with a JDK (`maven`, `openjdk-17-jdk-headless`), and dnf with rpmbuild and createrepo_c (`dnf`, `rpm`,
/// `createrepo-c`). Tests run them to completion with ``runTool(_:_:environment:workingDirectory:timeLimit:)``.
package enum PackageTools {
    /// Apache Maven.
    package static let mvn = "/usr/bin/mvn"
    /// The JDK's compiler, for an artifact with real class content.
    package static let javac = "/usr/bin/javac"
    /// The JDK's `jar` tool.
    package static let jar = "/usr/bin/jar"
    /// dnf (`dnf-3`).
    package static let dnf = "/usr/bin/dnf"
    /// rpmbuild, for a package built in the test.
    package static let rpmbuild = "/usr/bin/rpmbuild"
    /// createrepo_c, for the repository metadata of a YUM repository.
    package static let createrepo = "/usr/bin/createrepo_c"

    /// What Maven tests need.
    package static let maven = [mvn, javac, jar]
    /// What dnf tests need.
    package static let yum = [dnf, rpmbuild, createrepo]

    /// Why `tools` cannot run here, or nil when every one of them is installed.
    package static func unavailableReason(_ tools: [String]) -> String? {
        let missing = tools.filter { !isExecutableFile($0) }
        return missing.isEmpty ? nil : "missing \(missing.joined(separator: ", ")) (scripts/install-deps)"
    }
}

/// Runs a short command (a package manager, a build tool) to completion and returns how it ended with its
/// whole output; a non-zero exit is not an error here, callers look at ``ToolOutput/succeeded``.
///
/// - Throws: ``TestSupportError/Code/timedOut`` (with the stderr so far) if it runs longer than `timeLimit`;
///   the command is then killed.
package func runTool(
    _ executablePath: String,
    _ arguments: [String],
    environment: [String: String] = [:],
    workingDirectory: String? = nil,
    timeLimit: Duration = .seconds(120)
) async throws -> ToolOutput {
    let output = try await runCommand(
        executablePath, arguments, environment: environment, workingDirectory: workingDirectory,
        timeLimit: timeLimit)
    return ToolOutput(
        succeeded: output.status.isSuccess, status: "\(output.status)", standardOutput: output.standardOutput,
        standardError: output.standardError)
}
