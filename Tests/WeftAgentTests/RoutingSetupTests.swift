#if canImport(Glibc)
import Glibc
#endif
import Logging
import Testing
import WeftCore
import WeftOS
import WeftOSFakes
@testable import WeftAgent

/// The routing backends carried out against the fake netlink, no root: the device and its MTU,
/// the CNI config's pod MTU, the node's sysctls, the routes to peers, and that a second pass
/// over a node that is already right changes nothing.
struct RoutingSetupTests {
    /// An agent on a fake node whose uplink eth0 (MTU 1500) holds `hostAddress`; its CNI config
    /// goes to a directory of its own, removed by `cleanUp`.
    struct Node {
        let net: FakeNetworkControl
        let system: FakeNode
        let agent: NodeAgent
        let cluster: ClusterConfig
        let hostIP: IPAddress
        let confDir: String

        init(mode: RoutingMode, hostAddress: String, clusterCIDRs: [String] = ["10.244.0.0/16", "fd00:244::/56"]) {
            let address = ifaddr(hostAddress)
            net = FakeNetworkControl.host(address: address)
            system = FakeNode(host: net)
            hostIP = address.address
            confDir = "/tmp/weft-routing-test-\(getpid())-\(UInt32.random(in: 0..<UInt32.max))"
            cluster = ClusterConfig(mode: mode, clusterCIDRs: clusterCIDRs.map(netw))
            agent = NodeAgent(config: AgentConfig(nodeName: "n0", hostIP: hostIP, uplink: "eth0", cluster: cluster, cniConfDir: confDir, ipamDataDir: confDir + "/ipam"),
                              store: MemoryDatastore(), net: net, servicesNet: net, logger: Logger(label: "test"))
            agent.ensureSysctl = system.ensureSysctl
        }

        /// What the agent does to the node at start: the device, then (blocks claimed) the
        /// device's addresses, sysctls and the CNI config. The MAC it publishes.
        @discardableResult
        func start(blocks: [IPNetwork]) throws -> [UInt8]? {
            let mac = try agent.routing(cluster).ensureDevice(hostIP: hostIP)
            try agent.prepareNode(cluster: cluster, ranges: blocks)
            try agent.writeCNIConfig(cluster: cluster, ranges: blocks, hostIP: hostIP)
            return mac
        }

        var conflist: JSONValue? { (try? Files.read(confDir + "/10-weft.conflist")).flatMap { try? JSONValue.parse($0) } }
        var podMTU: Int? { conflist?["plugins"]?.arrayValue?.first?["mtu"]?.intValue }

        func cleanUp() {
            unlink(confDir + "/10-weft.conflist")
            rmdir(confDir)
        }
    }

    static let blocks = [netw("10.244.3.0/24"), netw("fd00:244:0:0:3::/80")]

    /// The IPv6 MTU bug: the device got uplink − 70 and the CNI config uplink − 50, so pods sent
    /// packets 20 bytes too big for the device. Both now come from the backend's one function.
    @Test("the device and the CNI config get the same MTU, by the host address's family", arguments: [
        (RoutingMode.vxlan, "fd00:100::11/64", 1430), (.vxlan, "192.168.100.11/24", 1450),
        (.native, "fd00:100::11/64", 1500), (.native, "192.168.100.11/24", 1500), (.underlay, "192.168.100.11/24", 1500),
    ])
    func podAndDeviceMTU(mode: RoutingMode, hostAddress: String, mtu: Int) throws {
        let node = Node(mode: mode, hostAddress: hostAddress, clusterCIDRs: mode == .underlay ? ["192.168.100.128/25"] : ["10.244.0.0/16", "fd00:244::/56"])
        defer { node.cleanUp() }
        let blocks = mode == .underlay ? [netw("192.168.100.144/28")] : Self.blocks
        let mac = try node.start(blocks: blocks)
        #expect(node.podMTU == mtu)
        let device = node.net.find(VXLAN.device)
        if mode == .vxlan {
            #expect(device?.mtu == mtu && device?.kind == "vxlan" && device?.isUp == true)
            #expect(mac == device?.mac, "the MAC peers' forwarding entries name")
        } else {
            #expect(device == nil && mac == nil, "\(mode) needs no device")
        }
    }

    @Test func vxlanPutsTheTunnelAddressesOnItsDeviceAndKeepsThemFromPods() throws {
        let node = Node(mode: .vxlan, hostAddress: "fd00:100::11/64")
        defer { node.cleanUp() }
        try node.start(blocks: Self.blocks)
        #expect(node.net.addresses(on: VXLAN.device) == [ifaddr("10.244.3.0/32"), ifaddr("fd00:244:0:0:3::/128")])
        let ranges = node.conflist?["plugins"]?.arrayValue?.first?["ipam"]?["ranges"]?.arrayValue?.compactMap { $0.arrayValue?.first?["rangeStart"]?.stringValue }
        #expect(ranges == ["10.244.3.2", "fd00:244::3:0:0:2"])
        #expect(node.system.sysctls["net/ipv4/ip_forward"] == "1" && node.system.sysctls["net/ipv6/conf/all/forwarding"] == "1")
    }

    @Test func underlayTurnsOnProxyARPOnTheUplink() throws {
        let node = Node(mode: .underlay, hostAddress: "192.168.100.11/24", clusterCIDRs: ["192.168.100.128/25"])
        defer { node.cleanUp() }
        try node.start(blocks: [netw("192.168.100.144/28")])
        #expect(node.system.sysctls["net/ipv4/conf/eth0/proxy_arp"] == "1" && node.system.sysctls["net/ipv4/neigh/eth0/proxy_delay"] == "0")
        let range = node.conflist?["plugins"]?.arrayValue?.first?["ipam"]?["ranges"]?.arrayValue?.first?.arrayValue?.first
        #expect(range?["rangeStart"] == nil, "the IPAM's own start: no tunnel address to skip")
    }

    @Test("a second start over a node that is right changes nothing", arguments: RoutingMode.allCases)
    func startIsIdempotent(mode: RoutingMode) throws {
        let node = Node(mode: mode, hostAddress: "192.168.100.11/24", clusterCIDRs: mode == .underlay ? ["192.168.100.128/25"] : ["10.244.0.0/16", "fd00:244::/56"])
        defer { node.cleanUp() }
        let blocks = mode == .underlay ? [netw("192.168.100.144/28")] : Self.blocks
        let mac = try node.start(blocks: blocks)
        let operations = node.net.operations, sysctls = node.system.sysctls
        #expect(try node.start(blocks: blocks) == mac)
        #expect(node.net.operations == operations, "no netlink change the second time")
        #expect(node.system.sysctls == sysctls)
    }

    @Test func aDeviceWhoseMTUDriftedIsSetBack() throws {
        let node = Node(mode: .vxlan, hostAddress: "fd00:100::11/64")
        defer { node.cleanUp() }
        try node.start(blocks: Self.blocks)
        let dev = try #require(node.net.find(VXLAN.device))
        try node.net.setMTU(index: dev.index, mtu: 1450)
        try node.start(blocks: Self.blocks)
        #expect(node.net.find(VXLAN.device)?.mtu == 1430)
        #expect(node.net.find(VXLAN.device)?.index == dev.index, "repaired in place, not remade: pods' flows keep going")
    }

    // MARK: routes to peers

    static func peers(hostFamily: IPFamily) -> [NodeInfo] {
        let host = { (i: Int) in hostFamily == .v4 ? ip("192.168.100.\(10 + i)") : ip("fd00:100::\(10 + i)") }
        return [NodeInfo(name: "n0", hostIP: host(1), podCIDRs: blocks, vtepMAC: nil),
                NodeInfo(name: "n1", hostIP: host(2), podCIDRs: [netw("10.244.4.0/24"), netw("fd00:244:0:0:4::/80")], vtepMAC: [2, 0, 0, 0, 0, 4]),
                NodeInfo(name: "n2", hostIP: host(3), podCIDRs: [netw("10.244.5.0/24")], vtepMAC: [2, 0, 0, 0, 0, 5])]
    }

    func weftRoutes(_ net: FakeNetworkControl) -> [String] {
        net.allRoutes.filter { $0.protocolID == RouteEntry.weftProtocol }.map { r in
            "\(r.destination)\(r.gateway.map { " via \($0)" } ?? "") dev \(net.allLinks.first { $0.index == r.linkIndex }?.name ?? "?")\(r.onLink ? " onlink" : "")"
        }.sorted()
    }

    @Test func vxlanOverIPv6ProgramsForwardingNeighboursAndRoutesThenWithdrawsThem() throws {
        let node = Node(mode: .vxlan, hostAddress: "fd00:100::11/64")
        defer { node.cleanUp() }
        try node.start(blocks: Self.blocks)
        let backend = node.cluster.backend
        let reconciler = RouteReconciler(net: node.net)
        let peers = Self.peers(hostFamily: .v6)
        let report = try reconciler.reconcile(backend.desiredRouting(me: "n0", nodes: peers, uplink: "eth0"))
        #expect(weftRoutes(node.net) == ["10.244.4.0/24 via 10.244.4.0 dev weft.vxlan onlink", "10.244.5.0/24 via 10.244.5.0 dev weft.vxlan onlink",
                                         "fd00:244:0:0:4::/80 via fd00:244:0:0:4:: dev weft.vxlan onlink"])
        #expect(Set(node.net.allFDB.map(\.remote)) == [ip("fd00:100::12"), ip("fd00:100::13")])
        #expect(Set(node.net.allNeighbors.map(\.address)) == [ip("10.244.4.0"), ip("fd00:244:0:0:4::"), ip("10.244.5.0")])
        #expect(report.added == 8)
        #expect(try reconciler.reconcile(backend.desiredRouting(me: "n0", nodes: peers, uplink: "eth0")).isEmpty, "a second pass changes nothing")
        // n2 leaves: its route, neighbour and forwarding entry go; n1's stay.
        let left = try reconciler.reconcile(backend.desiredRouting(me: "n0", nodes: Array(peers.prefix(2)), uplink: "eth0"))
        #expect(left.removed == 3 && left.added == 0)
        #expect(node.net.allFDB.map(\.remote) == [ip("fd00:100::12")])
    }

    @Test(arguments: [IPFamily.v4, .v6])
    func nativeRoutesPeersRangesOfTheHostFamilyViaTheirHostAddresses(family: IPFamily) throws {
        let node = Node(mode: .native, hostAddress: family == .v4 ? "192.168.100.11/24" : "fd00:100::11/64")
        defer { node.cleanUp() }
        try node.start(blocks: Self.blocks)
        let reconciler = RouteReconciler(net: node.net)
        let want = node.cluster.backend.desiredRouting(me: "n0", nodes: Self.peers(hostFamily: family), uplink: "eth0")
        try reconciler.reconcile(want)
        #expect(weftRoutes(node.net) == (family == .v4 ? ["10.244.4.0/24 via 192.168.100.12 dev eth0", "10.244.5.0/24 via 192.168.100.13 dev eth0"]
                                                       : ["fd00:244:0:0:4::/80 via fd00:100::12 dev eth0"]))
        #expect(node.net.allFDB.isEmpty && node.net.allNeighbors.isEmpty)
        #expect(try reconciler.reconcile(want).isEmpty)
    }

    @Test func underlayProgramsNothing() throws {
        let node = Node(mode: .underlay, hostAddress: "192.168.100.11/24", clusterCIDRs: ["192.168.100.128/25"])
        defer { node.cleanUp() }
        let report = try RouteReconciler(net: node.net).reconcile(node.cluster.backend.desiredRouting(me: "n0", nodes: Self.peers(hostFamily: .v4), uplink: "eth0"))
        #expect(report.isEmpty && weftRoutes(node.net).isEmpty)
    }
}

private func ip(_ s: String) -> IPAddress { IPAddress(s)! }
private func netw(_ s: String) -> IPNetwork { IPNetwork(s)! }
private func ifaddr(_ s: String) -> IPInterfaceAddress { IPInterfaceAddress(s)! }
