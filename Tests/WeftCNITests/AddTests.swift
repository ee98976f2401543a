import Testing
import WeftCNI
import WeftCore
import WeftOS
import WeftOSFakes
#if canImport(Glibc)
import Glibc
#endif

@Suite("ADD") struct AddTests {
    @Test func bridgeMode() throws {
        let h = Harness()
        let r = h.add("pod-a")
        expectSuccess(r)
        let netns = Harness.netnsPath("pod-a")
        let vethName = hostVethName(containerID: "pod-a", ifname: "eth0")

        // Kernel state on the node: the bridge with the gateway, the host veth on it with hairpin.
        let bridge = try #require(h.host.find("weft0"))
        #expect(bridge.kind == "bridge" && bridge.isUp)
        #expect(h.host.addresses(on: "weft0") == [ifaddr("10.22.0.1/24")])
        let hv = try #require(h.hostVeth("pod-a"))
        #expect(hv.kind == "veth" && hv.isUp && hv.masterIndex == bridge.index)
        #expect(h.host.hairpin(index: hv.index))
        #expect(h.host.addresses(on: vethName).isEmpty)
        #expect(h.node.sysctls["net/ipv4/ip_forward"] == "1")

        // In the pod: eth0 (the veth's other end) with the address and a default route, lo up.
        let pod = try #require(h.podNet("pod-a"))
        let eth0 = try #require(pod.find("eth0"))
        let peer = try #require(h.host.peer(of: hv.index))
        #expect(peer.control === pod && peer.index == eth0.index)
        #expect(eth0.isUp && eth0.kind == "veth")
        #expect(pod.find("lo")?.isUp == true)
        #expect(pod.addresses(on: "eth0") == [ifaddr("10.22.0.2/24")])
        #expect(pod.allRoutes == [RouteEntry(destination: .defaultV4, gateway: ip("10.22.0.1"), linkIndex: eth0.index)])
        #expect(pod.allNeighbors.isEmpty)
        #expect(h.held("pod-a") == [ip("10.22.0.2")])
        let owner = try #require(h.store.owner(of: ip("10.22.0.2")) ?? nil)
        #expect(owner.podName == "pod-a" && owner.podNamespace == "default")

        // The result.
        let j = try #require(r.json)
        #expect(j["cniVersion"]?.stringValue == "1.0.0")
        let ifs = r.interfaces
        try #require(ifs.count == 3)
        #expect(ifs[0]["name"]?.stringValue == "weft0")
        #expect(ifs[0]["mac"]?.stringValue == formatMAC(h.host.find("weft0")!.mac))
        #expect(ifs[0]["sandbox"] == nil)
        #expect(ifs[1]["name"]?.stringValue == vethName)
        #expect(ifs[1]["mac"]?.stringValue == formatMAC(hv.mac))
        #expect(ifs[1]["sandbox"] == nil)
        #expect(ifs[2]["name"]?.stringValue == "eth0")
        #expect(ifs[2]["mac"]?.stringValue == formatMAC(eth0.mac))
        #expect(ifs[2]["sandbox"]?.stringValue == netns)
        for i in ifs { #expect(i["mtu"] == nil, "1.0.0 results carry no interface mtu") }
        try #require(r.ips.count == 1)
        #expect(r.ips[0]["address"]?.stringValue == "10.22.0.2/24")
        #expect(r.ips[0]["gateway"]?.stringValue == "10.22.0.1")
        #expect(r.ips[0]["interface"]?.intValue == 2)
        #expect(r.ips[0]["version"] == nil)
        try #require(r.routes.count == 1)
        #expect(r.routes[0]["dst"]?.stringValue == "0.0.0.0/0")
        #expect(r.routes[0]["gw"]?.stringValue == "10.22.0.1")
        #expect(h.node.nft.scripts.isEmpty, "no ipMasq, no nftables")
    }

    @Test func bridgeIsCreatedOnceAndShared() throws {
        let h = Harness()
        expectSuccess(h.add("pod-a"))
        let bridgeBefore = try #require(h.host.find("weft0"))
        let r = h.add("pod-b")
        expectSuccess(r)
        #expect(h.host.operations.filter { $0.hasPrefix("createLink bridge") }.count == 1)
        let bridge = try #require(h.host.find("weft0"))
        #expect(bridge.index == bridgeBefore.index && bridge.mac == bridgeBefore.mac, "the bridge's MAC is pinned")
        #expect(h.host.addresses(on: "weft0") == [ifaddr("10.22.0.1/24")])
        #expect(h.podNet("pod-b")?.addresses(on: "eth0") == [ifaddr("10.22.0.3/24")])
        let ports = h.host.allLinks.filter { $0.masterIndex == bridge.index }.map(\.name).sorted()
        #expect(ports == [hostVethName(containerID: "pod-a", ifname: "eth0"), hostVethName(containerID: "pod-b", ifname: "eth0")].sorted())
        #expect(r.ips.first?["address"]?.stringValue == "10.22.0.3/24")
    }

    @Test func existingBridgeThatIsNotABridgeIsAConfigError() {
        let h = Harness()
        h.host.addPhysicalLink(name: "weft0")
        let r = h.add("pod-a")
        expectError(r, code: 7, mentioning: ["weft0", "not a bridge"])
        h.expectNothingLeft("pod-a")
    }

    @Test func routedMode() throws {
        var c = Conf()
        c.mode = "routed"
        let h = Harness(c)
        let r = h.add("pod-a")
        expectSuccess(r)
        let vethName = hostVethName(containerID: "pod-a", ifname: "eth0")

        #expect(h.host.allLinks.allSatisfy { $0.kind != "bridge" }, "routed mode makes no bridge")
        let hv = try #require(h.hostVeth("pod-a"))
        #expect(hv.isUp && hv.masterIndex == nil && !h.host.hairpin(index: hv.index))
        #expect(h.host.allRoutes == [RouteEntry(destination: net("10.22.0.2/32"), linkIndex: hv.index, scope: .link)])

        let pod = try #require(h.podNet("pod-a"))
        let eth0 = try #require(pod.find("eth0"))
        #expect(eth0.isUp)
        #expect(pod.addresses(on: "eth0") == [ifaddr("10.22.0.2/32")])
        #expect(pod.allRoutes == [RouteEntry(destination: .defaultV4, gateway: ip("169.254.1.1"), linkIndex: eth0.index, onLink: true)])
        #expect(pod.allNeighbors == [NeighborEntry(linkIndex: eth0.index, address: ip("169.254.1.1"), mac: hv.mac, permanent: true)])

        let ifs = r.interfaces
        try #require(ifs.count == 2)
        #expect(ifs[0]["name"]?.stringValue == vethName && ifs[0]["sandbox"] == nil)
        #expect(ifs[0]["mac"]?.stringValue == formatMAC(hv.mac))
        #expect(ifs[1]["name"]?.stringValue == "eth0" && ifs[1]["sandbox"]?.stringValue == Harness.netnsPath("pod-a"))
        try #require(r.ips.count == 1)
        #expect(r.ips[0]["address"]?.stringValue == "10.22.0.2/32")
        #expect(r.ips[0]["gateway"]?.stringValue == "169.254.1.1")
        #expect(r.ips[0]["interface"]?.intValue == 1)
        #expect(r.routes.count == 1 && r.routes.first?["gw"]?.stringValue == "169.254.1.1")
        #expect(r.routes.first?["dst"]?.stringValue == "0.0.0.0/0")
    }

    @Test func dualStackBridge() throws {
        var c = Conf()
        c.ranges = [["10.22.0.0/24"], ["fd00:22::/64"]]
        let h = Harness(c)
        let r = h.add("pod-a")
        expectSuccess(r)
        let vethName = hostVethName(containerID: "pod-a", ifname: "eth0")

        #expect(Set(h.host.addresses(on: "weft0")) == [ifaddr("10.22.0.1/24"), ifaddr("fd00:22::1/64")])
        let pod = try #require(h.podNet("pod-a"))
        let eth0 = try #require(pod.find("eth0"))
        #expect(pod.addresses(on: "eth0") == [ifaddr("10.22.0.2/24"), ifaddr("fd00:22::2/64")])
        #expect(pod.isNoDAD(ifaddr("fd00:22::2/64"), index: eth0.index))
        #expect(Set(pod.allRoutes.map { "\($0.destination) via \($0.gateway!)" }) == ["0.0.0.0/0 via 10.22.0.1", "::/0 via fd00:22::1"])
        #expect(h.pod("pod-a")?.sysctls["net/ipv6/conf/eth0/accept_dad"] == "0")
        #expect(h.node.sysctls["net/ipv6/conf/\(vethName)/accept_dad"] == "0")
        #expect(h.node.sysctls["net/ipv4/ip_forward"] == "1" && h.node.sysctls["net/ipv6/conf/all/forwarding"] == "1")
        #expect(Set(h.held("pod-a")) == [ip("10.22.0.2"), ip("fd00:22::2")])

        #expect(r.ips.map { $0["address"]?.stringValue } == ["10.22.0.2/24", "fd00:22::2/64"])
        #expect(r.ips.map { $0["gateway"]?.stringValue } == ["10.22.0.1", "fd00:22::1"])
        #expect(r.ips.allSatisfy { $0["interface"]?.intValue == 2 })
        #expect(r.routes.map { $0["dst"]?.stringValue } == ["0.0.0.0/0", "::/0"])
        #expect(r.routes.map { $0["gw"]?.stringValue } == ["10.22.0.1", "fd00:22::1"])
    }

    @Test func dualStackRouted() throws {
        var c = Conf()
        c.mode = "routed"
        c.ranges = [["10.22.0.0/24"], ["fd00:22::/64"]]
        let h = Harness(c)
        let r = h.add("pod-a")
        expectSuccess(r)
        let hv = try #require(h.hostVeth("pod-a"))
        let pod = try #require(h.podNet("pod-a"))
        let eth0 = try #require(pod.find("eth0"))
        #expect(pod.addresses(on: "eth0") == [ifaddr("10.22.0.2/32"), ifaddr("fd00:22::2/128")])
        #expect(pod.allNeighbors.sorted { $0.address < $1.address } == [
            NeighborEntry(linkIndex: eth0.index, address: ip("169.254.1.1"), mac: hv.mac),
            NeighborEntry(linkIndex: eth0.index, address: ip("fe80::1"), mac: hv.mac),
        ])
        #expect(pod.allRoutes.allSatisfy { $0.onLink && $0.linkIndex == eth0.index })
        #expect(Set(pod.allRoutes.map { "\($0.destination) via \($0.gateway!)" }) == ["0.0.0.0/0 via 169.254.1.1", "::/0 via fe80::1"])
        #expect(Set(h.host.allRoutes.map(\.destination)) == [net("10.22.0.2/32"), net("fd00:22::2/128")])
        #expect(h.host.allRoutes.allSatisfy { $0.linkIndex == hv.index && $0.scope == .link })
        #expect(r.ips.map { $0["gateway"]?.stringValue } == ["169.254.1.1", "fe80::1"])
        #expect(r.ips.allSatisfy { $0["interface"]?.intValue == 1 })
    }

    @Test(arguments: ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    func resultFollowsCNIVersion(version: String) throws {
        var c = Conf()
        c.cniVersion = version
        c.ranges = [["10.22.0.0/24"], ["fd00:22::/64"]]
        c.mtu = 1400
        let h = Harness(c)
        let r = h.add("pod-a")
        expectSuccess(r)
        #expect(r.json?["cniVersion"]?.stringValue == version)
        let legacy = version.hasPrefix("0.")
        #expect(r.ips.map { $0["version"]?.stringValue } == (legacy ? ["4", "6"] : [nil, nil]))
        #expect(r.ips.allSatisfy { $0["interface"]?.intValue == 2 })
        let mtus = r.interfaces.map { $0["mtu"]?.intValue }
        #expect(mtus == (version == "1.1.0" ? [1400, 1400, 1400] : [nil, nil, nil]))
        #expect(h.podNet("pod-a")?.find("eth0")?.mtu == 1400)
        #expect(h.hostVeth("pod-a")?.mtu == 1400)
    }

    @Test func requestedMACIsUsedForThePodEnd() throws {
        let h = Harness(Conf().with("runtimeConfig", .object([("mac", .string("0a:58:0a:16:00:99"))])))
        let r = h.add("pod-a")
        expectSuccess(r)
        #expect(h.podNet("pod-a")?.find("eth0")?.mac == [0x0a, 0x58, 0x0a, 0x16, 0x00, 0x99])
        #expect(r.interfaces.last?["mac"]?.stringValue == "0a:58:0a:16:00:99")
    }

    @Test func requestedIPIsAllocated() {
        let h = Harness(Conf().with("runtimeConfig", .object([("ips", .array([.string("10.22.0.77/24")]))])))
        let r = h.add("pod-a")
        expectSuccess(r)
        #expect(h.held("pod-a") == [ip("10.22.0.77")])
        #expect(h.podNet("pod-a")?.addresses(on: "eth0") == [ifaddr("10.22.0.77/24")])
    }

    @Test func interfaceAlreadyInThePod() throws {
        let h = Harness()
        let ns = h.node.addNamespace(path: Harness.netnsPath("pod-a"))
        ns.network.addPhysicalLink(name: "eth0")
        let r = h.add("pod-a")
        expectError(r, code: 102, mentioning: ["eth0"])
        #expect(h.held("pod-a").isEmpty)
        #expect((try? h.store.allocations())?.isEmpty == true)
        #expect(h.hostVeth("pod-a") == nil)
        #expect(h.host.operations.isEmpty, "nothing touched on the node: \(h.host.operations)")
        #expect(ns.network.linkNames == ["lo", "eth0"])
    }

    @Test func missingNetns() {
        let h = Harness()
        let r = h.add("pod-a", createNamespace: false)
        expectError(r, code: 4, mentioning: [Harness.netnsPath("pod-a")])
        #expect((try? h.store.allocations())?.isEmpty == true)
        #expect(h.host.operations.isEmpty)
    }

    @Test func exhaustedRange() throws {
        var c = Conf()
        c.ranges = [["10.22.0.0/30"]]
        let h = Harness(c)
        expectSuccess(h.add("pod-a"))
        #expect(h.held("pod-a") == [ip("10.22.0.2")])
        let r = h.add("pod-b")
        expectError(r, code: 100, mentioning: ["10.22.0.0/30"])
        h.expectNothingLeft("pod-b")
        #expect(h.held("pod-a") == [ip("10.22.0.2")])
        #expect(h.hostVeth("pod-a") != nil)
        // Releasing pod-a frees the address for pod-b.
        expectSuccess(h.del("pod-a"))
        let again = h.add("pod-b")
        expectSuccess(again)
        #expect(h.held("pod-b") == [ip("10.22.0.2")])
    }

    @Test func retriedAddReplacesAStaleHostVeth() throws {
        let h = Harness()
        expectSuccess(h.add("pod-a"))
        // The runtime lost the pod's namespace but not the node's veth end (e.g. a crash
        // between the namespace being recreated and DEL).
        h.node.removeNamespace(path: Harness.netnsPath("pod-a"), destroyLinks: false)
        let stale = try #require(h.hostVeth("pod-a"))
        let r = h.add("pod-a")
        expectSuccess(r)
        let fresh = try #require(h.hostVeth("pod-a"))
        #expect(fresh.index != stale.index)
        #expect(h.held("pod-a") == [ip("10.22.0.2")], "a retried ADD keeps the attachment's address")
        #expect(h.podNet("pod-a")?.addresses(on: "eth0") == [ifaddr("10.22.0.2/24")])
    }

    @Test func ipMasqScriptNamesChainAndClusterCIDR() throws {
        var c = Conf()
        c.ipMasq = true
        c.clusterCIDR = "10.0.0.0/8"
        let h = Harness(c)
        expectSuccess(h.add("pod-a"))
        try #require(h.node.nft.scripts.count == 1)
        let s = h.node.nft.scripts[0]
        #expect(s.contains(Masquerade.chain(network: "weftnet")))
        #expect(s.contains("masquerade-weftnet"))
        #expect(s.contains("10.0.0.0/8"))
        #expect(s.contains("10.22.0.0/24"), "pod range as source: \(s)")
        #expect(s.contains("masquerade"))
        #expect(try h.node.nft.list(table: Masquerade.table, family: "inet") != nil)
    }

    @Test func ipMasqChainIsWrittenOnlyWhenItDiffers() throws {
        var c = Conf()
        c.ipMasq = true
        c.clusterCIDR = "10.0.0.0/8"
        let h = Harness(c)
        expectSuccess(h.add("pod-a"))
        expectSuccess(h.add("pod-b"))
        #expect(h.node.nft.scripts.count == 1, "the second pod finds the chain already right")
        // Someone flushed the chain: the next ADD puts the rules back.
        try h.node.nft.run("flush chain inet weft masquerade-weftnet")
        expectSuccess(h.add("pod-c"))
        #expect(h.node.nft.scripts.count == 3)
        #expect(try h.node.nft.ruleComments(table: "weft", chain: "masquerade-weftnet").count == 1)
    }

    @Test func ipMasqWithoutClusterCIDRExemptsThePodSubnet() throws {
        var c = Conf()
        c.ipMasq = true
        let h = Harness(c)
        expectSuccess(h.add("pod-a"))
        let s = try #require(h.node.nft.scripts.first)
        #expect(s.contains("daddr != 10.22.0.0/24"), "\(s)")
    }
}

extension AddTests {
    @Test func configuredRoutesReplaceTheDefault() throws {
        var c = Conf()
        c.ipamRoutes = ["10.96.0.0/12"]
        let h = Harness(c)
        let r = h.add("pod-a")
        expectSuccess(r)
        let pod = try #require(h.podNet("pod-a"))
        let eth0 = try #require(pod.find("eth0"))
        #expect(pod.allRoutes == [RouteEntry(destination: net("10.96.0.0/12"), gateway: ip("10.22.0.1"), linkIndex: eth0.index)])
        #expect(r.routes.map { $0["dst"]?.stringValue } == ["10.96.0.0/12"])
        #expect(r.routes.map { $0["gw"]?.stringValue } == ["10.22.0.1"])
    }

    @Test func configuredRoutesInRoutedModeGoViaTheLinkLocalGateway() throws {
        var c = Conf()
        c.mode = "routed"
        c.ipamRoutes = ["10.96.0.0/12", "0.0.0.0/0"]
        let h = Harness(c)
        expectSuccess(h.add("pod-a"))
        let pod = try #require(h.podNet("pod-a"))
        #expect(pod.allRoutes.count == 2)
        #expect(pod.allRoutes.allSatisfy { $0.gateway == ip("169.254.1.1") && $0.onLink })
    }

    @Test func hairpinCanBeTurnedOff() throws {
        let h = Harness(Conf().with("hairpinMode", .bool(false)))
        expectSuccess(h.add("pod-a"))
        let hv = try #require(h.hostVeth("pod-a"))
        #expect(hv.masterIndex == h.host.find("weft0")?.index)
        #expect(!h.host.hairpin(index: hv.index))
    }

    @Test func twoAttachmentsOfOnePod() throws {
        let h = Harness()
        expectSuccess(h.add("pod-a", ifname: "eth0"))
        expectSuccess(h.add("pod-a", ifname: "net1"))
        #expect(h.hostVeth("pod-a", "eth0") != nil && h.hostVeth("pod-a", "net1") != nil)
        #expect(hostVethName(containerID: "pod-a", ifname: "eth0") != hostVethName(containerID: "pod-a", ifname: "net1"))
        #expect(h.held("pod-a", "eth0") == [ip("10.22.0.2")] && h.held("pod-a", "net1") == [ip("10.22.0.3")])
        let pod = try #require(h.podNet("pod-a"))
        #expect(pod.addresses(on: "net1") == [ifaddr("10.22.0.3/24")])

        expectSuccess(h.del("pod-a", ifname: "net1"))
        #expect(h.held("pod-a", "eth0") == [ip("10.22.0.2")] && h.held("pod-a", "net1").isEmpty)
        #expect(h.hostVeth("pod-a", "eth0") != nil && h.hostVeth("pod-a", "net1") == nil)
        #expect(pod.linkNames == ["lo", "eth0"])
    }

    @Test func errorReplySpeaksTheConfigVersion() {
        var c = Conf()
        c.cniVersion = "0.3.1"
        let h = Harness(c)
        let r = h.add("pod-a", createNamespace: false)
        expectError(r, code: 4)
        #expect(r.json?["cniVersion"]?.stringValue == "0.3.1")
    }
}

/// A kernel failure at each step of ADD must leave nothing of the attachment behind.
@Suite("ADD rollback") struct AddRollbackTests {
    enum Step: String, CaseIterable, Sendable, CustomTestStringConvertible {
        case bridgeCreate, vethCreate, setMaster, setHairpin, hostSetUp, podEnsureAddress, podSetUp, podEnsureRoute
        case routedNeighbor, routedHostRoute, dualStackDADSysctl, podDADSysctl, forwardingSysctl, nftRun, nftUnavailable
        var testDescription: String { rawValue }
    }

    @Test(arguments: Step.allCases)
    func failureRollsBack(step: Step) throws {
        var c = Conf()
        switch step {
        case .routedNeighbor, .routedHostRoute: c.mode = "routed"
        case .dualStackDADSysctl, .podDADSysctl: c.ranges = [["10.22.0.0/24"], ["fd00:22::/64"]]
        case .nftRun, .nftUnavailable: c.ipMasq = true; c.clusterCIDR = "10.0.0.0/8"
        default: break
        }
        let h = Harness(c)
        // A first pod, so the failing one shares the node with a healthy attachment
        // (except for the bridge step, which must hit the bridge's creation).
        if step != .bridgeCreate {
            expectSuccess(h.add("pod-ok"))
        }
        let pod = h.node.addNamespace(path: Harness.netnsPath("pod-bad"))
        switch step {
        case .bridgeCreate: h.host.failNext["createLink"] = EPERM
        case .vethCreate: h.host.failNext["createLink"] = EEXIST
        case .setMaster: h.host.failNext["setMaster"] = EBUSY
        case .setHairpin: h.host.failNext["setHairpin"] = EOPNOTSUPP
        case .hostSetUp: h.host.failNext["setUp"] = ENOMEM
        case .podEnsureAddress: pod.network.failNext["ensureAddress"] = EADDRINUSE
        case .podSetUp: pod.network.failNext["setUp"] = ENOMEM
        case .podEnsureRoute: pod.network.failNext["ensureRoute"] = ENETUNREACH
        case .routedNeighbor: pod.network.failNext["ensureNeighbor"] = EINVAL
        case .routedHostRoute: h.host.failNext["ensureRoute"] = EINVAL
        case .dualStackDADSysctl: h.node.failNext["ensureSysctl"] = EACCES
        case .podDADSysctl: pod.failNext["setSysctl"] = EROFS
        case .forwardingSysctl: h.node.failNext["ensureSysctl"] = EACCES
        case .nftRun:
            // The chain drifted (so this ADD must write it), and the write fails.
            try h.node.nft.run("flush chain inet weft masquerade-weftnet")
            h.node.nft.failNext = "Error: Could not process rule: No such file or directory"
        case .nftUnavailable: h.node.nftablesUnavailable = NFTablesError(message: "cannot create an nftables context")
        }
        let before = step == .bridgeCreate ? [] : h.held("pod-ok")
        let r = h.add("pod-bad")
        expectError(r, code: 103)
        h.expectNothingLeft("pod-bad")
        if step == .nftRun { #expect(r.msg.contains("No such file or directory")) }
        if step != .bridgeCreate {
            #expect(h.held("pod-ok") == before)
            #expect(h.hostVeth("pod-ok") != nil)
            #expect(h.podNet("pod-ok")?.find("eth0") != nil)
        }
        // Every injected failure fired (so the test exercised the step it names).
        #expect(h.host.failNext.isEmpty && pod.network.failNext.isEmpty && pod.failNext.isEmpty && h.node.failNext.isEmpty)
        #expect(h.node.nft.failNext == nil)
        // And the node is left consistent: the same ADD now succeeds.
        h.node.nftablesUnavailable = nil
        let again = h.add("pod-bad")
        expectSuccess(again)
        #expect(!h.held("pod-bad").isEmpty)
    }
}
