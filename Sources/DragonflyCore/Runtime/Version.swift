/// The version of this build of dragonfly.
package enum DragonflyVersion {
    /// Semantic version of the release.
    package static let current = "0.1.0"
}
