import Testing
import WeftCore
import WeftOS

/// weft as the first plugin of a conflist followed by Debian's reference chained plugins, and
/// with Debian's host-local as a delegated IPAM, run the way libcni runs them.
@Suite(.serialized, .enabled(if: isRoot, "needs root to create network namespaces"))
struct ChainingTests {
    /// A small libcni: each plugin gets the conflist's name and cniVersion, the previous
    /// result, and the runtimeConfig of the capabilities it declares; DEL runs in reverse with
    /// the final ADD result.
    struct Chain {
        let lab: KernelLab
        let conflist: JSONValue

        func plugins() -> [JSONValue] { conflist["plugins"]?.arrayValue ?? [] }

        func config(_ plugin: JSONValue, prev: JSONValue?, runtime: [String: JSONValue]) -> String {
            var c = plugin.setting("name", to: conflist["name"]).setting("cniVersion", to: conflist["cniVersion"])
            if let prev { c = c.setting("prevResult", to: prev) }
            var rc: [(String, JSONValue)] = []
            if let caps = plugin["capabilities"] { for (k, v) in runtime where caps[k]?.boolValue == true { rc.append((k, v)) } }
            if !rc.isEmpty { c = c.setting("runtimeConfig", to: .object(rc)) }
            return c.serialized()
        }

        func binary(_ type: String) -> String { type == "weft" ? product("weft-cni") : "/usr/lib/cni/\(type)" }

        func add(containerID: String, netns: String, runtime: [String: JSONValue]) throws -> JSONValue {
            var prev: JSONValue?
            for p in plugins() {
                let type = p["type"]?.stringValue ?? ""
                let r = try lab.cni("ADD", config: config(p, prev: prev, runtime: runtime), containerID: containerID, netns: netns, plugin: binary(type))
                guard r.status == 0, let j = r.json else { throw LabError("\(type) ADD failed: \(r.stdout) \(r.stderr)") }
                prev = j
            }
            return prev!
        }

        func del(containerID: String, netns: String, runtime: [String: JSONValue], result: JSONValue) throws {
            for p in plugins().reversed() {
                let type = p["type"]?.stringValue ?? ""
                let r = try lab.cni("DEL", config: config(p, prev: result, runtime: runtime), containerID: containerID, netns: netns, plugin: binary(type))
                guard r.status == 0 else { throw LabError("\(type) DEL failed: \(r.stdout) \(r.stderr)") }
            }
        }
    }

    @Test("portmap, tuning, bandwidth and firewall chain after weft, and a hostPort reaches the pod")
    func chainedPlugins() throws {
        let lab = try KernelLab()
        defer { lab.close() }
        let client = try lab.pod("client")
        try lab.inNode(["ip", "link", "add", "uplink", "type", "veth", "peer", "name", "eth0", "netns", "/run/netns/\(client)"])
        try lab.inNode(["ip", "addr", "add", "192.168.79.2/24", "dev", "uplink"])
        try lab.inNode(["ip", "link", "set", "uplink", "up"])
        try lab.inNS(client, ["ip", "addr", "add", "192.168.79.9/24", "dev", "eth0"])
        try lab.inNS(client, ["ip", "link", "set", "eth0", "up"])

        let conflist = try JSONValue.parse("""
        {"cniVersion": "1.0.0", "name": "chain", "plugins": [
          {"type": "weft", "mode": "bridge", "bridge": "weft0", "ipMasq": true, "clusterCIDR": "10.30.0.0/16",
           "ipam": {"ranges": [[{"subnet": "10.30.0.0/24"}]], "dataDir": "\(lab.dataDir)"}},
          {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true},
          {"type": "tuning", "sysctl": {"net.core.somaxconn": "512"}},
          {"type": "bandwidth", "ingressRate": 100000000, "ingressBurst": 1000000, "egressRate": 100000000, "egressBurst": 1000000},
          {"type": "firewall", "backend": "iptables"}
        ]}
        """)
        let chain = Chain(lab: lab, conflist: conflist)
        let pod = try lab.pod("p0")
        let runtime: [String: JSONValue] = ["portMappings": .array([.object([
            ("hostPort", .number(30080)), ("containerPort", .number(8080)), ("protocol", .string("tcp")),
        ])])]
        let result = try chain.add(containerID: "c0", netns: pod, runtime: runtime)
        let podIP = try #require(result["ips"]?.arrayValue?.first?["address"]?.stringValue?.split(separator: "/").first.map(String.init))

        try lab.spawn(in: pod, [product("weft"), "serve", "--name", "p0", "--tcp", "8080"])
        let reply = try waitForReply { try lab.inNS(client, [product("weft"), "probe", "192.168.79.2:30080"]) }
        #expect(reply == "p0 192.168.79.9", "hostPort 30080 on the node reaches the pod, client address kept")
        #expect(try lab.inNS(pod, ["cat", "/proc/sys/net/core/somaxconn"]).stdout.hasPrefix("512"), "tuning ran on weft's result")
        let hostVeth = hostVethName(containerID: "c0", ifname: "eth0")
        #expect(try lab.inNode(["tc", "qdisc", "show", "dev", hostVeth]).stdout.contains("tbf"), "bandwidth found weft's host interface")
        #expect(try lab.inNode(["iptables", "-S", "CNI-FORWARD"]).stdout.contains(podIP), "firewall allowed the pod's address")

        try chain.del(containerID: "c0", netns: pod, runtime: runtime, result: result)
        #expect(lab.allocations(network: "chain").isEmpty)
        #expect(!(try lab.nodeLinks()).contains(hostVeth))
    }

    @Test("Debian's host-local works as a delegated IPAM")
    func delegatedHostLocal() throws {
        let lab = try KernelLab()
        defer { lab.close() }
        let dir = lab.dataDir + "-hl"
        defer { _ = try? sh(["rm", "-rf", dir]) }
        let config = """
        {"cniVersion": "1.0.0", "name": "hl", "type": "weft", "mode": "routed",
         "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.40.0.0/24"}]], "dataDir": "\(dir)"}}
        """
        let p0 = try lab.pod("p0"), p1 = try lab.pod("p1")
        let r0 = try lab.cni("ADD", config: config, containerID: "c0", netns: p0)
        let r1 = try lab.cni("ADD", config: config, containerID: "c1", netns: p1)
        try #require(r0.status == 0 && r1.status == 0, "\(r0.stdout) \(r1.stdout)")
        #expect(addresses(r0) == ["10.40.0.2"] && addresses(r1) == ["10.40.0.3"], "host-local's choice")
        #expect(Files.exists("\(dir)/hl/10.40.0.2"), "host-local's own store holds the allocation")
        #expect(try lab.ping(from: p0, "10.40.0.3"))
        #expect(try lab.cni("DEL", config: config, containerID: "c0", netns: p0).status == 0)
        #expect(!Files.exists("\(dir)/hl/10.40.0.2"), "DEL was forwarded to host-local")
    }
}
