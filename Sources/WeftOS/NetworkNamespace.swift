import CWeftLinux
#if canImport(Glibc)
import Glibc
#endif

/// An open network namespace. `setns` switches only the calling OS thread, and Swift tasks hop
/// threads at every `await`, so the rule here is: switch, do synchronous work, switch back —
/// never await inside `run`. Netlink sockets made by `control()` stay bound to this namespace
/// and can be used from anywhere afterwards.
public final class NetworkNamespace: @unchecked Sendable {
    public let fd: Int32
    public let path: String

    public enum OpenError: Error, CustomStringConvertible {
        case missing(String)
        case notANetworkNamespace(String)
        case failed(SystemError)
        public var description: String {
            switch self {
            case .missing(let p): "\(p) does not exist"
            case .notANetworkNamespace(let p): "\(p) is not a network namespace (expected a path like /var/run/netns/NAME or /proc/PID/ns/net)"
            case .failed(let e): e.description
            }
        }
    }

    public init(path: String) throws(OpenError) {
        let fd = retrying { open(path, O_RDONLY | O_CLOEXEC) }
        guard fd >= 0 else {
            if errno == ENOENT { throw .missing(path) }
            throw .failed(SystemError("open \(path)"))
        }
        guard weft_is_nsfs(fd) != 0 else {
            close(fd)
            throw .notANetworkNamespace(path)
        }
        self.fd = fd
        self.path = path
    }

    deinit { close(fd) }

    /// The calling thread's namespace.
    public static func current() throws(OpenError) -> NetworkNamespace {
        try NetworkNamespace(path: "/proc/thread-self/ns/net")
    }

    /// Runs `body` on this thread while switched into the namespace, then switches back.
    public func run<T, E: Error>(_ body: () throws(E) -> T) throws -> T {
        let home = try NetworkNamespace.current()
        guard weft_setns(fd, weft_clone_newnet()) == 0 else { throw SystemError("enter network namespace \(path)") }
        defer {
            // Failing to return would leave this thread in the pod's namespace: unrecoverable.
            if weft_setns(home.fd, weft_clone_newnet()) != 0 { fatalError("cannot return to network namespace: \(SystemError("setns"))") }
        }
        return try body()
    }

    /// A netlink handle that configures this namespace.
    public func control() throws -> Rtnetlink {
        try run { () throws(NetlinkError) -> Rtnetlink in try Rtnetlink() }
    }
}
