import WeftCore
#if canImport(Glibc)
import Glibc
#endif

/// A pod's network namespace as the plugin sees it.
public protocol PodNamespace: AnyObject {
    var path: String { get }
    /// Netlink bound to the pod's namespace.
    func control() throws -> NetworkControl
    func setSysctl(_ key: String, _ value: String) throws
}

/// Everything the CNI plugin needs from the node it runs on, behind one seam: the real
/// `LinuxNode` below, and `FakeNode` in WeftOSFakes for tests without root.
public protocol NodeSystem: AnyObject {
    /// Netlink for the node's own namespace (where the plugin runs).
    func hostNetwork() throws -> NetworkControl
    func openNamespace(_ path: String) throws(NetworkNamespace.OpenError) -> PodNamespace
    func ensureSysctl(_ key: String, _ value: String) throws
    func nftables() throws(NFTablesError) -> NFTablesRunner
    func ipamStore(dataDir: String, network: String) throws(CNIError) -> IPAMStore
    /// Runs another CNI plugin binary (delegated IPAM).
    func exec(_ path: String, environment: [String: String], stdin: [UInt8]) throws(SystemError) -> Subprocess.Output
    func isExecutable(_ path: String) -> Bool
}

extension NetworkNamespace: PodNamespace {
    public func control() throws -> NetworkControl { try control() as Rtnetlink }
    public func setSysctl(_ key: String, _ value: String) throws {
        try run { () throws(SystemError) in try Sysctl.set(key, value) }
    }
}

public final class LinuxNode: NodeSystem {
    private var host: Rtnetlink?
    private var nft: LibNFTables?

    public init() {}

    public func hostNetwork() throws -> NetworkControl {
        if let host { return host }
        let h = try Rtnetlink()
        host = h
        return h
    }

    public func openNamespace(_ path: String) throws(NetworkNamespace.OpenError) -> PodNamespace {
        try NetworkNamespace(path: path)
    }

    public func ensureSysctl(_ key: String, _ value: String) throws { try Sysctl.ensure(key, value) }

    public func nftables() throws(NFTablesError) -> NFTablesRunner {
        if let nft { return nft }
        let n = LibNFTables()
        nft = n
        return n
    }

    public func ipamStore(dataDir: String, network: String) throws(CNIError) -> IPAMStore {
        try DiskIPAMStore(dataDir: dataDir, network: network)
    }

    /// The child inherits this process's environment (as the spec's delegation expects), with
    /// `environment` on top.
    public func exec(_ path: String, environment: [String: String], stdin: [UInt8]) throws(SystemError) -> Subprocess.Output {
        var env: [String: String] = [:]
        var p = environ
        while let entry = p.pointee {
            let s = String(cString: entry)
            if let eq = s.firstIndex(of: "=") { env[String(s[..<eq])] = String(s[s.index(after: eq)...]) }
            p += 1
        }
        for (k, v) in environment { env[k] = v }
        // Variables the caller left out on purpose (GC and STATUS carry no container) stay out.
        for k in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"] where environment[k] == nil { env[k] = nil }
        return try Subprocess.run(path, environment: env, stdin: stdin)
    }

    public func isExecutable(_ path: String) -> Bool { access(path, X_OK) == 0 }
}
