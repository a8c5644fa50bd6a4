#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The process's limit on open file descriptors, which every listener's connection cap must fit under.
package enum OpenFileLimit {
    /// The most a role asks for: its listeners' caps (a few thousand connections each) fit below it.
    package static let wanted: UInt64 = 65_536

    /// Raises the soft limit towards the hard one (at most ``wanted``), as servers do: the usual soft default of
    /// 1,024 is what 1,100 idle connections to one listener once exhausted. Returns the soft limit in force.
    @discardableResult
    package static func raise() -> UInt64 {
        #if os(Linux)
        let resource = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)
        #else
        let resource = RLIMIT_NOFILE
        #endif
        var limit = rlimit()
        guard getrlimit(resource, &limit) == 0 else { return 0 }
        let target = min(UInt64(limit.rlim_max), wanted)
        if UInt64(limit.rlim_cur) < target {
            var raised = limit
            raised.rlim_cur = rlim_t(target)
            if setrlimit(resource, &raised) == 0 { return target }
        }
        return UInt64(limit.rlim_cur)
    }
}
