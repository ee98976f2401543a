import Testing
import WeftCore

/// Each mode's backend: the routes it wants for its peers, its device and MTU by the host
/// network's family, the addresses pods may take, the node settings it needs.
struct RoutingBackendTests {
    let nodes = [
        NodeInfo(name: "a", hostIP: ip("192.168.1.1"), podCIDRs: [net("10.244.0.0/24"), net("fd00::/80")], vtepMAC: [2, 0, 0, 0, 0, 1]),
        NodeInfo(name: "b", hostIP: ip("192.168.1.2"), podCIDRs: [net("10.244.1.0/24"), net("fd00:0:0:0:1::/80")], vtepMAC: [2, 0, 0, 0, 0, 2]),
        NodeInfo(name: "c", hostIP: ip("192.168.1.3"), podCIDRs: [net("10.244.2.0/24")], vtepMAC: nil),
    ]

    @Test func eachModeHasItsBackend() {
        for mode in RoutingMode.allCases { #expect(mode.backend().mode == mode) }
        let c = ClusterConfig(mode: .vxlan, clusterCIDRs: [net("10.244.0.0/16")], vni: 7, vxlanPort: 8472)
        #expect(c.backend.device(hostIP: ip("192.168.1.1"), uplinkMTU: 1500) == .vxlan(name: "weft.vxlan", vni: 7, port: 8472, local: ip("192.168.1.1"), mtu: 1450))
    }

    @Test func nativeRoutesEachPeerRangeViaItsHostOfTheSameFamily() {
        let s = NativeBackend().desiredRouting(me: "a", nodes: nodes, uplink: "eth0")
        #expect(s.routes == [DesiredRoute(destination: net("10.244.1.0/24"), gateway: ip("192.168.1.2"), device: "eth0"),
                             DesiredRoute(destination: net("10.244.2.0/24"), gateway: ip("192.168.1.3"), device: "eth0")])
        #expect(s.fdb.isEmpty && s.neighbors.isEmpty && s.device == nil)
    }

    @Test func vxlanProgramsFDBNeighbourAndOnlinkRoutePerPeerRange() {
        let s = VXLANBackend().desiredRouting(me: "a", nodes: nodes, uplink: "eth0")
        // c has not published its VTEP yet: nothing for it until it does.
        #expect(s.device == VXLAN.device)
        #expect(s.fdb == [DesiredFDB(mac: [2, 0, 0, 0, 0, 2], remote: ip("192.168.1.2"))])
        #expect(s.neighbors == [DesiredNeighbor(address: ip("10.244.1.0"), mac: [2, 0, 0, 0, 0, 2]),
                                DesiredNeighbor(address: ip("fd00:0:0:0:1::"), mac: [2, 0, 0, 0, 0, 2])])
        #expect(s.routes == [DesiredRoute(destination: net("10.244.1.0/24"), gateway: ip("10.244.1.0"), device: VXLAN.device, onLink: true),
                             DesiredRoute(destination: net("fd00:0:0:0:1::/80"), gateway: ip("fd00:0:0:0:1::"), device: VXLAN.device, onLink: true)])
    }

    @Test func underlayNeedsNoRoutesAndNoPeerMeansNothing() {
        #expect(UnderlayBackend().desiredRouting(me: "a", nodes: nodes, uplink: "eth0") == RoutingState())
        #expect(NativeBackend().desiredRouting(me: "a", nodes: [nodes[0]], uplink: "eth0") == RoutingState())
        #expect(VXLANBackend().desiredRouting(me: "a", nodes: [nodes[0]], uplink: "eth0").routes.isEmpty)
    }

    /// The IPv6 MTU bug: over an IPv6 host network the outer header is 20 bytes longer, and pods
    /// sized for IPv4's overhead sent packets the VXLAN device could not carry.
    @Test(arguments: [(RoutingMode.vxlan, IPFamily.v4, 1450), (.vxlan, .v6, 1430), (.native, .v4, 1500), (.native, .v6, 1500),
                      (.underlay, .v4, 1500), (.underlay, .v6, 1500)])
    func podMTUIsTheUplinksLessTheOverheadOverTheHostFamily(mode: RoutingMode, family: IPFamily, want: Int) {
        let b = mode.backend()
        #expect(b.podMTU(uplinkMTU: 1500, hostFamily: family) == want)
        let host = family == .v4 ? ip("192.168.1.1") : ip("fd00:100::1")
        // The device, where there is one, carries exactly what pods are given.
        #expect(b.device(hostIP: host, uplinkMTU: 1500)?.mtu == (mode == .vxlan ? want : nil))
    }

    @Test func vxlanKeepsTheBlocksFirstAddressesForTheTunnel() {
        let b = VXLANBackend()
        #expect(b.podRangeStart(of: net("10.244.1.0/24")) == ip("10.244.1.2"))
        #expect(b.deviceAddresses(blocks: [net("10.244.1.0/24"), net("fd00:0:0:0:1::/80")]) == [ifaddr("10.244.1.0/32"), ifaddr("fd00:0:0:0:1::/128")])
        #expect(NativeBackend().podRangeStart(of: net("10.244.1.0/24")) == nil)
        #expect(UnderlayBackend().deviceAddresses(blocks: [net("192.168.100.128/28")]).isEmpty)
    }

    @Test func onlyUnderlayNeedsProxyARP() {
        #expect(UnderlayBackend().sysctls(uplink: "ens3").map(\.key) == ["net/ipv4/conf/ens3/proxy_arp", "net/ipv4/neigh/ens3/proxy_delay"])
        #expect(VXLANBackend().sysctls(uplink: "ens3").isEmpty && NativeBackend().sysctls(uplink: "ens3").isEmpty)
    }

    @Test func traceSaysWhichDeviceAPacketToAPeerLeavesOn() {
        #expect(VXLANBackend().path(to: nodes[1], uplink: "eth0") == RoutingPath(device: "weft.vxlan", description: "to b's pod range over VXLAN (weft.vxlan → 192.168.1.2)"))
        #expect(NativeBackend().path(to: nodes[1], uplink: "eth0").device == "eth0")
        #expect(UnderlayBackend().path(to: nodes[1], uplink: "eth0").description == "pod addresses on the host network: via 192.168.1.2")
        #expect(VXLANBackend().arrivalDevice(uplink: "eth0") == "weft.vxlan" && NativeBackend().arrivalDevice(uplink: "eth0") == "eth0")
    }
}

/// What the doctor says about each backend's MTU, device and settings.
struct RoutingDoctorTests {
    func findings(_ mode: RoutingMode, family: IPFamily = .v4, uplink: Int = 1500, configured: Int?, links: [String: Int]? = nil,
                  sysctls: [String: String] = [:]) -> [Finding] {
        var o = NodeObservation(node: "n0", uplink: "eth0")
        o.uplinkMTU = uplink
        o.configuredPodMTU = configured
        o.linkMTUs = links
        o.sysctls = sysctls
        return Doctor.check(o, NodeExpectation(backend: mode.backend(), hostFamily: family, routing: RoutingState()))
    }

    @Test func vxlanOverIPv6WantsSeventyBytesLess() {
        let f = findings(.vxlan, family: .v6, configured: 1450, links: ["eth0": 1500, "weft.vxlan": 1430])
        #expect(f.map(\.check) == ["mtu", "mtu"], "\(f)")
        #expect(f.first?.message.hasPrefix("pods are given MTU 1450 but eth0 carries 1500 − 70 for vxlan encapsulation over IPv6 = 1430: full-size packets are dropped") == true, "\(f)")
        #expect(f.last?.message.hasPrefix("pods are given MTU 1450 but weft.vxlan carries 1430") == true, "\(f)")
        #expect(findings(.vxlan, family: .v6, configured: 1430, links: ["eth0": 1500, "weft.vxlan": 1430]).isEmpty)
    }

    @Test func vxlanOverIPv4WantsFiftyBytesLess() {
        #expect(findings(.vxlan, configured: 1450, links: ["eth0": 1500, "weft.vxlan": 1450]).isEmpty)
        let f = findings(.vxlan, uplink: 1300, configured: 1450, links: ["eth0": 1300, "weft.vxlan": 1450])
        #expect(f.map(\.message).contains { $0.hasPrefix("pods are given MTU 1450 but eth0 carries 1300 − 50 for vxlan encapsulation over IPv4 = 1250") }, "\(f)")
        #expect(f.map(\.message).contains { $0.hasPrefix("weft.vxlan has MTU 1450 but eth0 carries 1300 − 50") }, "\(f)")
    }

    @Test func aMissingVXLANDeviceIsAProblem() {
        let f = findings(.vxlan, configured: 1450, links: ["eth0": 1500])
        #expect(f.map(\.check) == ["routes"] && f[0].message.hasPrefix("weft.vxlan, the vxlan device, is missing"), "\(f)")
        #expect(findings(.native, configured: 1500, links: ["eth0": 1500]).isEmpty, "native needs no device")
    }

    @Test(arguments: [RoutingMode.native, .underlay])
    func withoutEncapsulationPodsGetTheUplinksMTU(mode: RoutingMode) {
        #expect(findings(mode, configured: 1500, links: ["eth0": 1500]).isEmpty)
        #expect(findings(mode, family: .v6, configured: 1500, links: ["eth0": 1500]).isEmpty)
        let f = findings(mode, uplink: 1400, configured: 1500)
        #expect(f.count == 1 && f[0].message.hasPrefix("pods are given MTU 1500 but eth0 carries 1400: full-size packets are dropped"), "\(f)")
    }

    @Test func underlayWithoutProxyARPIsAProblem() {
        let f = findings(.underlay, configured: 1500, sysctls: ["net/ipv4/conf/eth0/proxy_arp": "0", "net/ipv4/neigh/eth0/proxy_delay": "0"])
        #expect(f.count == 1 && f[0].check == "sysctl" && f[0].message.hasPrefix("net/ipv4/conf/eth0/proxy_arp is 0 but underlay mode needs 1"), "\(f)")
        #expect(findings(.native, configured: 1500, sysctls: ["net/ipv4/conf/eth0/proxy_arp": "0"]).isEmpty, "only underlay needs it")
    }

    @Test func strictReversePathFilteringIsCheckedWherePeersPacketsArrive() {
        let strict = ["net/ipv4/conf/all/rp_filter": "1", "net/ipv4/conf/eth0/rp_filter": "0", "net/ipv4/conf/weft.vxlan/rp_filter": "0"]
        #expect(findings(.vxlan, configured: 1450, sysctls: strict).filter { $0.check == "sysctl" }.count == 2)
        #expect(findings(.native, configured: 1500, sysctls: strict).filter { $0.check == "sysctl" }.count == 1)
    }
}
