#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import WeftCore
import WeftOS

/// A pod's network namespace in memory: its own `FakeNetworkControl` and sysctls.
///
/// Sysctls under `net/ipv4/conf/IF/` and `net/ipv6/conf/IF/` exist only while link IF does
/// (as in /proc/sys), so setting one for a missing interface fails with ENOENT.
/// `failNext["control" | "setSysctl"] = errno` fails the next such call once.
public final class FakePodNamespace: PodNamespace {
    public let path: String
    public let network: FakeNetworkControl
    public var sysctls: [String: String] = [:]
    public var failNext: [String: Int32] = [:]

    public init(path: String) {
        self.path = path
        network = FakeNetworkControl(label: path)
    }

    public func control() throws -> NetworkControl {
        if let e = failNext.removeValue(forKey: "control") { throw NetlinkError(operation: "open netlink in \(path) (injected)", errno: e) }
        return network
    }

    public func setSysctl(_ key: String, _ value: String) throws {
        if let e = failNext.removeValue(forKey: "setSysctl") { throw SystemError("write /proc/sys/\(key) (injected)", errno: e) }
        try checkSysctlKey(key, in: network)
        sysctls[key] = value
    }
}

/// Records the nftables scripts run; `failNext` fails the next run once, `failAlways` every run.
public final class FakeNFTables: NFTablesRunner {
    public private(set) var scripts: [String] = []
    public var failNext: String?
    public var failAlways: String?

    public init() {}

    public func run(_ script: String) throws(NFTablesError) {
        if let m = failNext {
            failNext = nil
            throw NFTablesError(message: m)
        }
        if let m = failAlways { throw NFTablesError(message: m) }
        scripts.append(script)
    }

    /// Every script that created the table, joined; nil when none did.
    public func list(table: String, family: String) throws(NFTablesError) -> String? {
        if let m = failAlways { throw NFTablesError(message: m) }
        let hits = scripts.filter { $0.contains("add table \(family) \(table)\n") || $0.hasSuffix("add table \(family) \(table)") }
        return hits.isEmpty ? nil : hits.joined(separator: "\n")
    }

    /// Replays the recorded scripts' `flush chain` and `add rule ... comment` lines.
    public func ruleComments(table: String, chain: String) throws(NFTablesError) -> [String] {
        if let m = failAlways { throw NFTablesError(message: m) }
        var comments: [String] = []
        for line in scripts.joined(separator: "\n").split(separator: "\n") {
            if line == "flush chain inet \(table) \(chain)" { comments = [] }
            let parts = line.split(separator: " comment \"", maxSplits: 1)
            if line.hasPrefix("add rule inet \(table) \(chain) "), parts.count == 2 { comments.append(String(parts[1].dropLast())) }
        }
        return comments
    }
}

/// A node in memory, for CNI tests without root: the host namespace, pod namespaces by path,
/// sysctls, nftables, IPAM stores, and other CNI plugin binaries.
public final class FakeNode: NodeSystem {
    public typealias PluginBody = ([String: String], [UInt8]) -> Subprocess.Output

    public let host: FakeNetworkControl
    public private(set) var namespaces: [String: FakePodNamespace] = [:]
    /// The node's sysctls (keys as written to /proc/sys, e.g. "net/ipv4/ip_forward").
    public var sysctls: [String: String] = ["net/ipv4/ip_forward": "0", "net/ipv6/conf/all/forwarding": "0"]
    public let nft = FakeNFTables()
    /// When set, `nftables()` fails with it (libnftables missing).
    public var nftablesUnavailable: NFTablesError?
    /// Plugin binaries by absolute path: each gets the environment and stdin and answers.
    public var plugins: [String: PluginBody] = [:]
    /// Every `exec`, in order.
    public private(set) var execCalls: [(path: String, environment: [String: String], stdin: [UInt8])] = []
    /// `failNext["hostNetwork" | "ensureSysctl" | "exec"] = errno` fails the next such call once.
    public var failNext: [String: Int32] = [:]
    /// When set, `ipamStore` fails with it.
    public var ipamStoreError: CNIError?

    private var stores: [String: MemoryIPAMStore] = [:]

    public init(host: FakeNetworkControl = .host(address: IPInterfaceAddress("192.168.1.10/24"))) {
        self.host = host
    }

    // MARK: set-up and inspection

    /// Creates (or returns) the namespace at `path`.
    @discardableResult
    public func addNamespace(path: String) -> FakePodNamespace {
        if let ns = namespaces[path] { return ns }
        let ns = FakePodNamespace(path: path)
        namespaces[path] = ns
        return ns
    }

    /// Makes `path` unopenable. With `destroyLinks` (the namespace itself is gone, not just
    /// its bind mount) its devices go too, taking the host ends of their veths with them.
    public func removeNamespace(path: String, destroyLinks: Bool = true) {
        guard let ns = namespaces.removeValue(forKey: path) else { return }
        if destroyLinks { ns.network.destroyAllLinks() }
    }

    /// The store `ipamStore(dataDir:network:)` hands out for this pair (created on first use).
    public func store(dataDir: String = NetworkConfig.defaultDataDir, network: String) -> MemoryIPAMStore {
        let key = dataDir + "\u{0}" + network
        if let s = stores[key] { return s }
        let s = MemoryIPAMStore()
        stores[key] = s
        return s
    }

    // MARK: NodeSystem

    public func hostNetwork() throws -> NetworkControl {
        if let e = failNext.removeValue(forKey: "hostNetwork") { throw NetlinkError(operation: "open netlink socket (injected)", errno: e) }
        return host
    }

    public func openNamespace(_ path: String) throws(NetworkNamespace.OpenError) -> PodNamespace {
        guard let ns = namespaces[path] else { throw .missing(path) }
        return ns
    }

    public func ensureSysctl(_ key: String, _ value: String) throws {
        if let e = failNext.removeValue(forKey: "ensureSysctl") { throw SystemError("write /proc/sys/\(key) (injected)", errno: e) }
        try checkSysctlKey(key, in: host)
        sysctls[key] = value
    }

    public func nftables() throws(NFTablesError) -> NFTablesRunner {
        if let e = nftablesUnavailable { throw e }
        return nft
    }

    public func ipamStore(dataDir: String, network: String) throws(CNIError) -> IPAMStore {
        if let e = ipamStoreError { throw e }
        return store(dataDir: dataDir, network: network)
    }

    public func exec(_ path: String, environment: [String: String], stdin: [UInt8]) throws(SystemError) -> Subprocess.Output {
        if let e = failNext.removeValue(forKey: "exec") { throw SystemError("start \(path) (injected)", errno: e) }
        execCalls.append((path, environment, stdin))
        guard let body = plugins[path] else { throw SystemError("start \(path)", errno: ENOENT) }
        return body(environment, stdin)
    }

    public func isExecutable(_ path: String) -> Bool { plugins[path] != nil }
}

/// Per-interface sysctl directories exist only for existing interfaces ("all" and "default"
/// always do).
private func checkSysctlKey(_ key: String, in net: FakeNetworkControl) throws {
    let parts = key.split(separator: "/").map(String.init)
    if parts.count >= 4, parts[0] == "net", parts[1] == "ipv4" || parts[1] == "ipv6", parts[2] == "conf" {
        let ifname = parts[3]
        if ifname != "all" && ifname != "default" && net.find(ifname) == nil {
            throw SystemError("write /proc/sys/\(key)", errno: ENOENT)
        }
    }
}
