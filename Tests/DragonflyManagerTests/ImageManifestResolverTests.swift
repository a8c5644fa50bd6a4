import DragonflyCore
import Testing

@testable import DragonflyManager

/// The parts of image resolution that need no registry (the end-to-end flow runs against a real docker-registry
/// in the integration tests).
struct ImageManifestResolverTests {
    @Test func bearerChallengesAreParsedWithQuotesCommasAndEscapes() {
        let parameters = ImageManifestResolver.challengeParameters(
            #" realm="https://auth.example.com/token",service="registry.example.com",scope="repository:a/b:pull,push",x=plain, note="say \"hi\"""#
        )
        #expect(parameters["realm"] == "https://auth.example.com/token")
        #expect(parameters["service"] == "registry.example.com")
        #expect(parameters["scope"] == "repository:a/b:pull,push")
        #expect(parameters["x"] == "plain")
        #expect(parameters["note"] == #"say "hi""#)
        #expect(ImageManifestResolver.challengeParameters("").isEmpty)
        #expect(ImageManifestResolver.challengeParameters("garbage-without-equals").isEmpty)
    }

    @Test func manifestURLsAreTakenApart() throws {
        let reference = try #require(ManifestReference("https://reg.example.com:5000/v2/library/redis/manifests/7.2"))
        #expect(reference.repository == "library/redis")
        #expect(reference.reference == "7.2")
        #expect(reference.blobURL("sha256:ab") == "https://reg.example.com:5000/v2/library/redis/blobs/sha256:ab")
        #expect(ManifestReference("https://reg.example.com/v2/redis/blobs/sha256:ab") == nil)
        #expect(ManifestReference("ftp://reg.example.com/v2/redis/manifests/1") == nil)
        #expect(ManifestReference("https://reg.example.com/v2//manifests/1") == nil)
    }

    @Test func platformsMatchOSArchitectureAndVariant() {
        let arm = Platform("linux/arm64/v8")
        #expect(
            arm.matches(.object(["os": .string("linux"), "architecture": .string("arm64"), "variant": .string("v8")])))
        #expect(!arm.matches(.object(["os": .string("linux"), "architecture": .string("arm64")])))
        let amd = Platform("linux/amd64")
        #expect(
            amd.matches(.object(["os": .string("linux"), "architecture": .string("amd64"), "variant": .string("v2")])))
        #expect(!amd.matches(nil))
        #expect(amd.description == "linux/amd64")
    }
}
