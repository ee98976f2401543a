import Testing
import WeftCore
import WeftOS
import WeftOSFakes
#if canImport(Glibc)
import Glibc
#endif

/// The fakes themselves: the CNI tests are only as good as the kernel behaviour they model.
@Suite("Fake kernel") struct FakeKernelTests {
    func errno(_ body: () throws -> Void) -> Int32? {
        do { try body(); return nil } catch let e as NetlinkError { return e.errno } catch { return -1 }
    }

    @Test func duplicateNamesAndUnknownIndexes() throws {
        let c = FakeNetworkControl(label: "t")
        try c.createLink(.bridge(name: "br0", mtu: nil))
        #expect(errno { try c.createLink(.bridge(name: "br0", mtu: nil)) } == EEXIST)
        #expect(errno { try c.createLink(.veth(name: "br0", mtu: nil, peerName: "x", peerNamespace: nil, peerMAC: nil)) } == EEXIST)
        #expect(errno { try c.createLink(.bridge(name: "name-is-too-long-here", mtu: nil)) } == EINVAL)
        #expect(errno { try c.setUp(index: 99) } == ENODEV)
        #expect(errno { try c.deleteLink(index: 99) } == ENODEV)
        #expect(errno { try c.ensureAddress(ifaddr("10.0.0.1/24"), index: 99, noDAD: false) } == ENODEV)
        #expect(errno { try c.ensureNeighbor(NeighborEntry(linkIndex: 99, address: ip("10.0.0.1"), mac: [2, 0, 0, 0, 0, 1])) } == ENODEV)
        #expect(try c.link(index: 99) == nil)
        #expect(try c.link(named: "nope") == nil)
        #expect(c.find("lo")?.index == 1 && c.find("br0")?.index == 2)
    }

    @Test func vethPeerLivesInThePeerNamespaceAndDiesWithEitherEnd() throws {
        let host = FakeNetworkControl.host()
        let pod = FakePodNamespace(path: "/var/run/netns/p")
        try host.createLink(.veth(name: "vh", mtu: 1400, peerName: "eth0", peerNamespace: pod, peerMAC: [0x0a, 0, 0, 0, 0, 5]))
        let vh = try #require(host.find("vh"))
        let eth0 = try #require(pod.network.find("eth0"))
        #expect(host.find("eth0")?.kind == nil, "the host's own eth0 is untouched")
        #expect(eth0.mac == [0x0a, 0, 0, 0, 0, 5] && eth0.mtu == 1400 && vh.mtu == 1400)
        #expect(vh.mac != eth0.mac && vh.mac.count == 6 && vh.mac[0] & 1 == 0)
        #expect(host.peer(of: vh.index)?.index == eth0.index)
        // A second pair whose peer name is taken in the pod fails as a whole.
        #expect(errno { try host.createLink(.veth(name: "vh2", mtu: nil, peerName: "eth0", peerNamespace: pod, peerMAC: nil)) } == EEXIST)
        #expect(host.find("vh2") == nil)

        try pod.network.deleteLink(index: eth0.index)
        #expect(host.find("vh") == nil)
        try host.createLink(.veth(name: "vh", mtu: nil, peerName: "eth0", peerNamespace: pod, peerMAC: nil))
        try host.deleteLink(index: try #require(host.find("vh")).index)
        #expect(pod.network.linkNames == ["lo"])
    }

    @Test func deletingALinkTakesItsAddressesRoutesAndPorts() throws {
        let c = FakeNetworkControl(label: "t")
        try c.createLink(.bridge(name: "br0", mtu: nil))
        try c.createLink(.veth(name: "a", mtu: nil, peerName: "b", peerNamespace: nil, peerMAC: nil))
        let br = try #require(c.find("br0")), a = try #require(c.find("a"))
        try c.setUp(index: br.index)
        try c.setMaster(index: a.index, master: br.index)
        try c.setHairpin(index: a.index, on: true)
        try c.ensureAddress(ifaddr("10.0.0.1/24"), index: br.index, noDAD: false)
        try c.ensureRoute(RouteEntry(destination: net("10.1.0.0/16"), gateway: ip("10.0.0.9"), linkIndex: br.index))
        try c.ensureNeighbor(NeighborEntry(linkIndex: br.index, address: ip("10.0.0.9"), mac: [2, 0, 0, 0, 0, 9]))
        try c.deleteLink(index: br.index)
        #expect(c.allAddresses.isEmpty && c.allRoutes.isEmpty && c.allNeighbors.isEmpty)
        #expect(c.find("a")?.masterIndex == nil && !c.hairpin(index: a.index))
        #expect(c.find("b") != nil)
    }

    @Test func addressesAreIdempotentPerLinkAndExclusiveAcrossLinks() throws {
        let c = FakeNetworkControl(label: "t")
        let x = c.addPhysicalLink(name: "x"), y = c.addPhysicalLink(name: "y")
        try c.ensureAddress(ifaddr("10.0.0.1/24"), index: x.index, noDAD: false)
        try c.ensureAddress(ifaddr("10.0.0.1/24"), index: x.index, noDAD: false)
        #expect(c.allAddresses.count == 1)
        #expect(errno { try c.ensureAddress(ifaddr("10.0.0.1/24"), index: y.index, noDAD: false) } == EEXIST)
        #expect(errno { try c.deleteAddress(ifaddr("10.0.0.1/24"), index: y.index) } == EADDRNOTAVAIL)
        try c.deleteAddress(ifaddr("10.0.0.1/24"), index: x.index)
        #expect(c.allAddresses.isEmpty)
    }

    @Test func routesReplaceByDestinationTableAndMetric() throws {
        let c = FakeNetworkControl(label: "t")
        let x = c.addPhysicalLink(name: "x")
        try c.ensureAddress(ifaddr("10.0.0.2/24"), index: x.index, noDAD: false)
        try c.ensureRoute(RouteEntry(destination: .defaultV4, gateway: ip("10.0.0.1"), linkIndex: x.index))
        try c.ensureRoute(RouteEntry(destination: .defaultV4, gateway: ip("10.0.0.254"), linkIndex: x.index))
        try c.ensureRoute(RouteEntry(destination: .defaultV4, gateway: ip("10.0.0.3"), linkIndex: x.index, metric: 100))
        try c.ensureRoute(RouteEntry(destination: .defaultV4, gateway: ip("10.0.0.4"), linkIndex: x.index, table: 100))
        #expect(c.allRoutes.map { $0.gateway!.description } == ["10.0.0.254", "10.0.0.3", "10.0.0.4"])
        // Unreachable gateways need onlink; down links take no IPv4 routes.
        #expect(errno { try c.ensureRoute(RouteEntry(destination: .defaultV4, gateway: ip("169.254.1.1"), linkIndex: x.index)) } == ENETUNREACH)
        try c.ensureRoute(RouteEntry(destination: .defaultV4, gateway: ip("169.254.1.1"), linkIndex: x.index, onLink: true))
        let down = c.addPhysicalLink(name: "down", up: false)
        #expect(errno { try c.ensureRoute(RouteEntry(destination: net("10.9.0.0/16"), linkIndex: down.index)) } == ENETDOWN)
        #expect(errno { try c.ensureRoute(RouteEntry(destination: net("10.9.0.0/16"), linkIndex: 77)) } == ENODEV)
    }

    @Test func hairpinAndMasterRules() throws {
        let c = FakeNetworkControl(label: "t")
        let x = c.addPhysicalLink(name: "x"), y = c.addPhysicalLink(name: "y")
        #expect(errno { try c.setHairpin(index: x.index, on: true) } == EOPNOTSUPP)
        #expect(errno { try c.setMaster(index: x.index, master: y.index) } == EOPNOTSUPP)
        #expect(errno { try c.setMaster(index: x.index, master: 99) } == EINVAL)
    }

    @Test func failNextFiresOnce() throws {
        let c = FakeNetworkControl(label: "t")
        c.failNext["createLink"] = ENOMEM
        #expect(errno { try c.createLink(.bridge(name: "br0", mtu: nil)) } == ENOMEM)
        #expect(c.find("br0") == nil)
        try c.createLink(.bridge(name: "br0", mtu: nil))
        #expect(c.failNext.isEmpty)
    }

    @Test func nodeNamespacesAndSysctls() throws {
        let node = FakeNode()
        #expect(throws: NetworkNamespace.OpenError.self) { _ = try node.openNamespace("/var/run/netns/none") }
        let ns = node.addNamespace(path: "/var/run/netns/p")
        #expect(try node.openNamespace("/var/run/netns/p") === ns)
        #expect(node.addNamespace(path: "/var/run/netns/p") === ns)
        #expect(throws: SystemError.self) { try ns.setSysctl("net/ipv6/conf/eth0/accept_dad", "0") }
        try ns.setSysctl("net/ipv6/conf/lo/accept_dad", "0")
        try node.ensureSysctl("net/ipv4/ip_forward", "1")
        #expect(node.sysctls["net/ipv4/ip_forward"] == "1")
        #expect(try node.ipamStore(dataDir: "/d", network: "n") as? MemoryIPAMStore === node.store(dataDir: "/d", network: "n"))
        #expect(node.store(dataDir: "/d", network: "n") !== node.store(dataDir: "/d", network: "m"))
        node.removeNamespace(path: "/var/run/netns/p")
        #expect(throws: NetworkNamespace.OpenError.self) { _ = try node.openNamespace("/var/run/netns/p") }
    }
}
