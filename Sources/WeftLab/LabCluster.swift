import WeftCore
import WeftOS
import WeftDatastore
#if canImport(Glibc)
import Glibc
#endif

/// A whole cluster on one machine: a host network (a bridge inside a namespace of its own —
/// never the root namespace), N node namespaces on it, the datastore (an SQLite file, or a
/// three-member etcd cluster on the host network), and per node an agent and a runtime.
/// Its state lives in /run/weft/lab/NAME so every `weft` command can find it.
public struct LabState: Sendable {
    public struct Node: Sendable { public var name: String; public var netns: String; public var hostIP: String }
    public var name: String
    public var id: String
    public var mode: RoutingMode
    public var datastore: String
    public var hostNetwork: String
    public var nodes: [Node]
    public var extraNamespaces: [String]
    public var dir: String

    public static let root = "/run/weft/lab"
    public static func dir(_ name: String) -> String { "\(root)/\(name)" }

    var json: JSONValue {
        .object([
            ("name", .string(name)), ("id", .string(id)), ("mode", .string(mode.rawValue)), ("datastore", .string(datastore)),
            ("hostNetwork", .string(hostNetwork)), ("dir", .string(dir)),
            ("nodes", .array(nodes.map { .object([("name", .string($0.name)), ("netns", .string($0.netns)), ("hostIP", .string($0.hostIP))]) })),
            ("extraNamespaces", .array(extraNamespaces.map { .string($0) })),
        ])
    }

    public static func load(_ name: String) throws(LabError) -> LabState {
        let path = dir(name) + "/state.json"
        guard let bytes = try? Files.read(path), let j = try? JSONValue.parse(bytes), let mode = j["mode"]?.stringValue.flatMap(RoutingMode.init) else {
            throw LabError("no lab named \"\(name)\" is up (\(path) is missing); start one with `weft lab up`")
        }
        return LabState(name: name, id: j["id"]?.stringValue ?? "", mode: mode, datastore: j["datastore"]?.stringValue ?? "",
                        hostNetwork: j["hostNetwork"]?.stringValue ?? "",
                        nodes: (j["nodes"]?.arrayValue ?? []).map { Node(name: $0["name"]?.stringValue ?? "", netns: $0["netns"]?.stringValue ?? "", hostIP: $0["hostIP"]?.stringValue ?? "") },
                        extraNamespaces: (j["extraNamespaces"]?.arrayValue ?? []).compactMap(\.stringValue), dir: j["dir"]?.stringValue ?? dir(name))
    }

    func save() throws { try Files.writeAtomically(dir + "/state.json", Array(json.serialized(pretty: true).utf8)) }

    public var usesEtcd: Bool { datastore.hasPrefix("etcd://") }
}

public struct LabSpec: Sendable {
    public var name = "weft"
    public var nodes = 3
    public var mode = RoutingMode.vxlan
    public var etcd = false
    public var leaseTTL = 10
    public var weftBinary: String
    public var cniBinary: String
    public init(weftBinary: String, cniBinary: String) { self.weftBinary = weftBinary; self.cniBinary = cniBinary }

    /// Cluster ranges per mode: vxlan and native have their own; underlay takes the upper half
    /// of the host network's own /24.
    public var clusterCIDRs: [String] {
        switch mode {
        case .vxlan: ["10.244.0.0/16", "fd00:244::/56"]
        case .native: ["10.245.0.0/16", "fd00:245::/56"]
        case .underlay: ["192.168.100.128/25"]
        }
    }
    public var blockPrefixV4: Int { mode == .underlay ? 28 : 24 }
    /// LoadBalancer addresses: a part of the host network no node, etcd member or underlay pod uses.
    public static let loadBalancerCIDR = "192.168.100.64/28"
}

public enum LabCluster {
    static let hostSubnet = "192.168.100"

    public static func up(_ spec: LabSpec, log: (String) -> Void) throws -> LabState {
        guard (1...60).contains(spec.nodes) else { throw LabError("--nodes \(spec.nodes): choose 1 to 60") }
        guard spec.name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber) }), spec.name.count <= 12 else {
            throw LabError("--name \"\(spec.name)\": use up to 12 letters and digits")
        }
        let dir = LabState.dir(spec.name)
        if Files.exists(dir + "/state.json") { throw LabError("lab \"\(spec.name)\" is already up; `weft lab down --name \(spec.name)` first") }
        for b in [spec.weftBinary, spec.cniBinary] where !Files.exists(b) { throw LabError("\(b) not found; build with `swift build`") }

        let id = "wl-\(spec.name)"
        var state = LabState(name: spec.name, id: id, mode: spec.mode, datastore: "", hostNetwork: "\(id)-net", nodes: [], extraNamespaces: [], dir: dir)
        do {
            try Files.makeDirectories(dir + "/bin")
            try state.save() // from here on, `lab down` can clean up whatever exists
            try sh(["ip", "netns", "add", state.hostNetwork])
            try inNS(state.hostNetwork, ["ip", "link", "set", "lo", "up"])
            try inNS(state.hostNetwork, ["ip", "link", "add", "br0", "type", "bridge"])
            try inNS(state.hostNetwork, ["ip", "addr", "add", "\(hostSubnet).1/24", "dev", "br0"])
            try inNS(state.hostNetwork, ["ip", "link", "set", "br0", "up"])

            // The CNI plugin directory the runtimes use: weft plus Debian's chained plugins.
            try sh(["ln", "-sf", spec.cniBinary, dir + "/bin/weft"])
            for p in ["portmap", "bandwidth", "tuning", "firewall", "loopback", "host-local"] where Files.exists("/usr/lib/cni/\(p)") {
                try sh(["ln", "-sf", "/usr/lib/cni/\(p)", dir + "/bin/\(p)"])
            }

            if spec.etcd {
                var members: [String] = []
                for i in 0..<3 {
                    let ns = "\(id)-etcd\(i)"
                    try attach(ns: ns, to: state, port: "e\(i)", address: "\(hostSubnet).\(2 + i)")
                    state.extraNamespaces.append(ns)
                    members.append("e\(i)=http://\(hostSubnet).\(2 + i):2380")
                }
                try state.save()
                for i in 0..<3 {
                    let ip = "\(hostSubnet).\(2 + i)"
                    try spawnDetached(["ip", "netns", "exec", "\(id)-etcd\(i)", "etcd", "--name", "e\(i)", "--data-dir", "\(dir)/etcd\(i)",
                                       "--listen-client-urls", "http://\(ip):2379", "--advertise-client-urls", "http://\(ip):2379",
                                       "--listen-peer-urls", "http://\(ip):2380", "--initial-advertise-peer-urls", "http://\(ip):2380",
                                       "--initial-cluster", members.joined(separator: ","), "--initial-cluster-state", "new",
                                       "--initial-cluster-token", id], log: "\(dir)/etcd\(i).log")
                }
                state.datastore = "etcd://" + (0..<3).map { "\(hostSubnet).\(2 + $0):2379" }.joined(separator: ",")
            } else {
                // Made here, before the agents and runtimes that would otherwise all create it at once.
                _ = try SQLiteDatastore(path: "\(dir)/weft.db")
                state.datastore = "sqlite://\(dir)/weft.db"
            }

            for i in 0..<spec.nodes {
                let name = "node\(i)"
                let ns = "\(id)-\(name)"
                let ip = "\(hostSubnet).\(11 + i)"
                try attach(ns: ns, to: state, port: "n\(i)", address: ip)
                state.nodes.append(.init(name: name, netns: ns, hostIP: ip))
                try state.save()
            }
            for n in state.nodes { try startNode(n, state: state, spec: spec) }
            try state.save()
            log("lab \(spec.name): \(spec.nodes) nodes, mode \(spec.mode.rawValue), datastore \(state.datastore)")
            return state
        } catch {
            down(state)
            throw error
        }
    }

    /// Starts a node's agent and runtime (also used to restart them).
    public static func startNode(_ n: LabState.Node, state: LabState, spec: LabSpec) throws {
        let nodeDir = "\(state.dir)/\(n.name)"
        try Files.makeDirectories(nodeDir)
        // nsenter, not `ip netns exec`: the latter gives the process a private mount namespace,
        // and namespaces the runtime makes for pods (bind mounts in /run/netns) would not be
        // seen outside it.
        let enter = ["nsenter", "--net=/run/netns/\(n.netns)", "--"]
        var agent = enter + [spec.weftBinary, "agent", "--node", n.name, "--datastore", state.datastore,
                     "--mode", spec.mode.rawValue, "--uplink", "eth0", "--block-prefix-v4", "\(spec.blockPrefixV4)",
                     "--cni-conf-dir", "\(nodeDir)/net.d", "--ipam-data-dir", "\(nodeDir)/ipam", "--lease-ttl", "\(spec.leaseTTL)"]
        for c in spec.clusterCIDRs { agent += ["--cluster-cidr", c] }
        agent += ["--load-balancer-cidr", LabSpec.loadBalancerCIDR]
        try spawnDetached(agent, log: "\(nodeDir)/agent.log")
        try spawnDetached(enter + [spec.weftBinary, "runtime", "--node", n.name, "--datastore", state.datastore,
                           "--lab-id", state.id, "--cni-conf-dir", "\(nodeDir)/net.d", "--cni-bin-dir", "\(state.dir)/bin",
                           "--cache-dir", "\(nodeDir)/cache"], log: "\(nodeDir)/runtime.log")
    }

    /// A namespace plugged into the host network bridge with one address.
    public static func attach(ns: String, to state: LabState, port: String, address: String) throws {
        // A namespace deleted a moment ago can linger in the kernel (its cleanup is
        // asynchronous) with its veth, and so the port name, still taken: remove the port.
        _ = try? sh(["ip", "-n", state.hostNetwork, "link", "del", port])
        try sh(["ip", "netns", "add", ns])
        try inNS(ns, ["ip", "link", "set", "lo", "up"])
        try inNS(state.hostNetwork, ["ip", "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", "/run/netns/\(ns)"])
        try inNS(state.hostNetwork, ["ip", "link", "set", port, "master", "br0", "up"])
        try inNS(ns, ["ip", "addr", "add", "\(address)/24", "dev", "eth0"])
        try inNS(ns, ["ip", "link", "set", "eth0", "up"])
        try inNS(ns, ["ip", "route", "add", "default", "via", "\(hostSubnet).1"])
    }

    /// Removes every namespace of the lab (pods included) after killing what runs in them.
    public static func down(_ state: LabState) {
        let all = ((try? Files.list("/run/netns")) ?? []).filter { $0.hasPrefix(state.id + "-") }
        // Nodes first (agents and runtimes), then pods and the rest, so nothing is recreated.
        let ordered = all.sorted { a, b in a.contains("-node") && !b.contains("-node") }
        for ns in ordered {
            if let pids = try? sh(["ip", "netns", "pids", ns]) {
                for p in pids.split(separator: "\n") { if let pid = pid_t(p) { kill(pid, SIGKILL) } }
            }
        }
        usleep(100_000)
        for ns in ordered { _ = try? sh(["ip", "netns", "del", ns]) }
        // The pods' resolv.conf files (see NodeRuntime.writeResolvConf).
        for d in ((try? Files.list("/etc/netns")) ?? []) where d.hasPrefix(state.id + "-") { _ = try? sh(["rm", "-rf", "/etc/netns/\(d)"]) }
        _ = try? sh(["rm", "-rf", state.dir])
    }

    @discardableResult
    static func sh(_ args: [String]) throws -> String {
        let out = try Subprocess.run("/usr/bin/env", arguments: args, environment: ["PATH": "/usr/sbin:/usr/bin:/sbin:/bin"], stdin: [])
        guard out.status == 0 else { throw LabError("\(args.joined(separator: " ")): \(String(decoding: out.stderr, as: UTF8.self))") }
        return String(decoding: out.stdout, as: UTF8.self)
    }

    @discardableResult
    static func inNS(_ ns: String, _ args: [String]) throws -> String { try sh(["ip", "netns", "exec", ns] + args) }
}
