import Testing
import WeftCore
import WeftOS
#if canImport(Glibc)
import Glibc
#endif

/// Pods on one node, through the real plugin binary, proven with real packets.
@Suite(.serialized, .enabled(if: isRoot, "needs root to create network namespaces"))
struct PodNetworkingTests {
    @Test("pods reach each other and the node, IPv4 and IPv6", arguments: ["bridge", "routed"])
    func podsReachEachOtherAndTheNode(mode: String) throws {
        let lab = try KernelLab()
        defer { lab.close() }
        // The node's own address on its "host network" (a veth to a namespace standing in for it).
        let host = try lab.pod("hostnet")
        try lab.inNode(["ip", "link", "add", "uplink", "type", "veth", "peer", "name", "eth0", "netns", "/run/netns/\(host)"])
        try lab.inNode(["ip", "addr", "add", "192.168.77.2/24", "dev", "uplink"])
        try lab.inNode(["ip", "-6", "addr", "add", "fd77::2/64", "dev", "uplink", "nodad"])
        try lab.inNode(["ip", "link", "set", "uplink", "up"])

        let config = weftConfig(mode: mode, dataDir: lab.dataDir, v4: "10.22.0.0/24", v6: "fd00:22::/64")
        var pods: [(ns: String, v4: String, v6: String)] = []
        for i in 0..<3 {
            let ns = try lab.pod("p\(i)")
            let r = try lab.cni("ADD", config: config, containerID: "c\(i)", netns: ns, args: "K8S_POD_NAMESPACE=default;K8S_POD_NAME=p\(i)")
            #expect(r.status == 0, "ADD failed: \(r.stdout)")
            let ips = addresses(r)
            try #require(ips.count == 2, "expected one IPv4 and one IPv6 address: \(r.stdout)")
            pods.append((ns, ips[0], ips[1]))
        }
        #expect(Set(pods.map(\.v4)).count == 3 && Set(pods.map(\.v6)).count == 3, "addresses must be unique")

        for a in pods {
            for b in pods where a.ns != b.ns {
                #expect(try lab.ping(from: a.ns, b.v4), "\(a.ns) -> \(b.v4) (\(mode))")
                #expect(try lab.ping(from: a.ns, b.v6), "\(a.ns) -> \(b.v6) (\(mode))")
            }
            #expect(try lab.ping(from: a.ns, "192.168.77.2"), "pod -> node address (\(mode))")
            #expect(try lab.ping(from: a.ns, "fd77::2"), "pod -> node IPv6 address (\(mode))")
            #expect(try lab.ping(from: lab.node, a.v4), "node -> pod \(a.v4) (\(mode))")
            #expect(try lab.ping(from: lab.node, a.v6), "node -> pod \(a.v6) (\(mode))")
        }
        // Each allocation names its pod.
        let record = try Files.readString("\(lab.dataDir)/testnet/\(pods[1].v4)")
        #expect(record == "c1\r\neth0\r\ndefault/p1")
    }

    @Test("masquerade rewrites pod traffic leaving the cluster, and only that", arguments: ["bridge", "routed"])
    func masquerade(mode: String) throws {
        let lab = try KernelLab()
        defer { lab.close() }
        let outside = try lab.pod("outside")
        try lab.inNode(["ip", "link", "add", "uplink", "type", "veth", "peer", "name", "eth0", "netns", "/run/netns/\(outside)"])
        try lab.inNode(["ip", "addr", "add", "192.168.78.1/24", "dev", "uplink"])
        try lab.inNode(["ip", "link", "set", "uplink", "up"])
        try lab.inNS(outside, ["ip", "addr", "add", "192.168.78.9/24", "dev", "eth0"])
        try lab.inNS(outside, ["ip", "link", "set", "eth0", "up"])
        // The outside host knows no route back to pods: only a masqueraded reply can arrive.
        let config = weftConfig(mode: mode, dataDir: lab.dataDir, extra: "\"ipMasq\": true, \"clusterCIDR\": \"10.22.0.0/16\"")
        let p0 = try lab.pod("p0"), p1 = try lab.pod("p1")
        let r0 = try lab.cni("ADD", config: config, containerID: "c0", netns: p0)
        let r1 = try lab.cni("ADD", config: config, containerID: "c1", netns: p1)
        try #require(r0.status == 0 && r1.status == 0, "\(r0.stdout)\(r1.stdout)")

        try lab.spawn(in: outside, [product("weft"), "serve", "--name", "outside", "--tcp", "8080"])
        try lab.spawn(in: p1, [product("weft"), "serve", "--name", "p1", "--tcp", "8080"])
        let viaOutside = try waitForReply { try lab.inNS(p0, [product("weft"), "probe", "192.168.78.9:8080"]) }
        #expect(viaOutside == "outside 192.168.78.1", "the outside host must see the node's address")
        let p1Addr = addresses(r1)[0]
        let podToPod = try waitForReply { try lab.inNS(p0, [product("weft"), "probe", "\(p1Addr):8080"]) }
        #expect(podToPod == "p1 \(addresses(r0)[0])", "pod-to-pod traffic keeps its source address")

        // The chain is emptied behind weft's back: the next ADD notices and writes it again.
        try lab.inNode(["nft", "flush", "chain", "inet", "weft", "masquerade-testnet"])
        let p2 = try lab.pod("p2")
        try #require(try lab.cni("ADD", config: config, containerID: "c2", netns: p2).status == 0)
        let again = try waitForReply { try lab.inNS(p0, [product("weft"), "probe", "192.168.78.9:8080"]) }
        #expect(again == "outside 192.168.78.1", "masquerade restored by the next ADD")
        try lab.cni("DEL", config: config, containerID: "c2", netns: p2)

        // DEL of every pod leaves the masquerade chain (per network, not per pod) and no allocation.
        try lab.cni("DEL", config: config, containerID: "c0", netns: p0)
        try lab.cni("DEL", config: config, containerID: "c1", netns: p1)
        #expect(lab.allocations(network: "testnet").isEmpty)
        let rules = try lab.inNode(["nft", "list", "table", "inet", "weft"]).stdout
        #expect(rules.contains("masquerade-testnet"))
        #expect(rules.components(separatedBy: "masquerade comment").count == 2, "one rule for the one IPv4 range:\n\(rules)")
    }

    @Test("bridge ports are put in hairpin mode (hairpinMode defaults on)")
    func hairpin() throws {
        let lab = try KernelLab()
        defer { lab.close() }
        let config = weftConfig(dataDir: lab.dataDir)
        let p0 = try lab.pod("p0")
        let r = try lab.cni("ADD", config: config, containerID: "c0", netns: p0)
        try #require(r.status == 0, "\(r.stdout)")
        let ip = addresses(r)[0]
        let hostVeth = hostVethName(containerID: "c0", ifname: "eth0")
        #expect(try lab.inNode(["cat", "/sys/class/net/\(hostVeth)/brport/hairpin_mode"]).stdout.hasPrefix("1"))
        _ = ip
    }

    @Test("MTU is applied to both ends of the veth")
    func mtu() throws {
        let lab = try KernelLab()
        defer { lab.close() }
        let config = weftConfig(mode: "routed", dataDir: lab.dataDir, extra: "\"mtu\": 1400")
        let p0 = try lab.pod("p0")
        let r = try lab.cni("ADD", config: config, containerID: "c0", netns: p0)
        try #require(r.status == 0, "\(r.stdout)")
        #expect(try lab.inNS(p0, ["cat", "/sys/class/net/eth0/mtu"]).stdout.hasPrefix("1400"))
        let hostVeth = hostVethName(containerID: "c0", ifname: "eth0")
        #expect(try lab.inNode(["cat", "/sys/class/net/\(hostVeth)/mtu"]).stdout.hasPrefix("1400"))
    }
}

/// Retries a request for up to ~3 s while a freshly spawned server starts listening.
func waitForReply(_ probe: () throws -> CommandResult) throws -> String {
    var last = CommandResult(status: -1, stdout: "", stderr: "")
    for _ in 0..<30 {
        last = try probe()
        if last.status == 0 { return last.stdout.trimmingSuffixNewlines() }
        usleep(100_000)
    }
    return "no reply: \(last.stderr)"
}

extension String {
    func trimmingSuffixNewlines() -> String {
        var s = self
        while s.last == "\n" || s.last == "\r" { s.removeLast() }
        return s
    }
}
