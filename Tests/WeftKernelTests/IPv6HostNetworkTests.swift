import Foundation
import Testing
import WeftCore
import WeftOS

/// Nodes whose host network is IPv6 only. `weft lab` builds an IPv4 host network, so this test
/// builds its own: a bridge in a namespace, two node namespaces on it with IPv6 addresses, an
/// agent in each (vxlan over IPv6: 70 bytes of encapsulation), pods made by the CNI plugin from
/// the conflist the agent wrote. A full-size packet with "don't fragment" crosses the nodes: with
/// the pod MTU sized for IPv4's 50 bytes it was dropped at the VXLAN device.
@Suite(.serialized, .enabled(if: isRoot, "needs root to create network namespaces"))
struct IPv6HostNetworkTests {
    @Test("vxlan over an IPv6 host network: pods get uplink − 70, and a full-size packet crosses nodes")
    func fullSizePacketsCrossAnIPv6HostNetwork() throws {
        let lab = try KernelLab() // lab.node: the host network, a bridge
        defer { lab.close() }
        let hostNet = lab.node
        try #require(lab.inNS(hostNet, ["ip", "link", "add", "br0", "type", "bridge", "mcast_snooping", "0"]).status == 0)
        try #require(lab.inNS(hostNet, ["ip", "link", "set", "br0", "up"]).status == 0)
        let store = "sqlite://\(lab.dataDir)/cluster.db"
        try Files.makeDirectories(lab.dataDir)

        var nodes: [(ns: String, dir: String, hostIP: String)] = []
        for i in 0..<2 {
            let ns = "\(lab.id)-n\(i)", dir = "\(lab.dataDir)/n\(i)", hostIP = "fd00:100::1\(i)"
            try lab.addNamespace(ns)
            try Files.makeDirectories(dir)
            for cmd in [["ip", "link", "add", "p\(i)", "type", "veth", "peer", "name", "eth0", "netns", ns], ["ip", "link", "set", "p\(i)", "master", "br0", "up"]] {
                let r = try lab.inNS(hostNet, cmd)
                try #require(r.status == 0, "\(cmd): \(r.stderr)")
            }
            for cmd in [["ip", "link", "set", "lo", "up"], ["ip", "addr", "add", "\(hostIP)/64", "dev", "eth0", "nodad"], ["ip", "link", "set", "eth0", "up"]] {
                let r = try lab.inNS(ns, cmd)
                try #require(r.status == 0, "\(cmd): \(r.stderr)")
            }
            let agent = [product("weft"), "agent", "--node", "n\(i)", "--datastore", store, "--mode", "vxlan", "--uplink", "eth0", "--host-ip", hostIP,
                         "--cluster-cidr", "10.244.0.0/16", "--cluster-cidr", "fd00:244::/56", "--cni-conf-dir", "\(dir)/net.d", "--ipam-data-dir", "\(dir)/ipam",
                         "--dns-port", "0", "--metrics-port", "0", "--lease-ttl", "10"]
            try lab.spawn(in: ns, ["/bin/sh", "-c", "exec " + agent.joined(separator: " ") + " >\(dir)/agent.log 2>&1"])
            nodes.append((ns, dir, hostIP))
        }

        // Each agent writes its conflist with the pod MTU for an IPv6 host network.
        var plugins: [JSONValue] = []
        for n in nodes {
            var conf: JSONValue?
            let written = eventually(30) { conf = (try? Files.read("\(n.dir)/net.d/10-weft.conflist")).flatMap { try? JSONValue.parse($0) }; return conf != nil }
            try #require(written, "no conflist from \(n.ns): \((try? Files.readString("\(n.dir)/agent.log")) ?? "")")
            let plugin = try #require(conf?["plugins"]?.arrayValue?.first)
            #expect(plugin["mtu"]?.intValue == 1430, "uplink 1500 − 70 for VXLAN over IPv6: \(plugin)")
            let vxlan = try lab.inNS(n.ns, ["ip", "-j", "link", "show", VXLAN.device]).json?.arrayValue?.first?["mtu"]?.intValue
            #expect(vxlan == 1430, "the device and the pods agree")
            plugins.append(plugin.setting("cniVersion", to: .string("1.0.0")).setting("name", to: .string("weft")))
        }

        // A pod on each node, wired by the plugin from the agent's config.
        var pods: [(ns: String, v4: String, v6: String, mtu: Int)] = []
        for (i, n) in nodes.enumerated() {
            let pod = try lab.pod("pod\(i)")
            let r = try sh(["ip", "netns", "exec", n.ns, product("weft-cni")], stdin: plugins[i].serialized(), env: [
                "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c\(i)-\(lab.id)", "CNI_IFNAME": "eth0", "CNI_NETNS": "/run/netns/\(pod)", "CNI_PATH": "/usr/lib/cni"])
            try #require(r.status == 0, "ADD on \(n.ns): \(r.stdout)\(r.stderr)")
            let ips = addresses(r)
            let v4 = try #require(ips.first { !$0.contains(":") }), v6 = try #require(ips.first { $0.contains(":") })
            let mtu = try #require(try lab.inNS(pod, ["ip", "-j", "link", "show", "eth0"]).json?.arrayValue?.first?["mtu"]?.intValue)
            #expect(mtu == 1430)
            pods.append((pod, v4, v6, mtu))
        }

        // The peers' routes over weft.vxlan, then full-size packets (the pod's own MTU), not
        // fragmented, both ways.
        for (i, n) in nodes.enumerated() {
            let peerPod = pods[1 - i]
            let routed = eventually(30) { (try? lab.inNS(n.ns, ["ip", "route", "get", peerPod.v4]))?.stdout.contains("dev \(VXLAN.device)") == true }
            try #require(routed, "no route on \(n.ns) to \(peerPod.v4): \((try? Files.readString("\(n.dir)/agent.log")) ?? "")")
        }
        for (from, to) in [(0, 1), (1, 0)] {
            for (address, payload) in [(pods[to].v4, pods[from].mtu - 28), (pods[to].v6, pods[from].mtu - 48)] {
                let v6 = address.contains(":")
                let r = try lab.inNS(pods[from].ns, ["ping", v6 ? "-6" : "-4", "-M", "do", "-s", "\(payload)", "-c", "3", "-i", "0.2", "-W", "2", address])
                #expect(r.status == 0, "a \(payload + (v6 ? 48 : 28))-byte packet from pod\(from) to pod\(to) \(address): \(r.stdout)\(r.stderr)")
            }
        }
    }
}
