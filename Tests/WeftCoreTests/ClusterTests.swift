import Testing
import WeftCore

/// The pure cluster logic the agent runs on: settings checks, block search, desired routing.
struct ClusterConfigTests {
    func config(_ mode: RoutingMode, _ cidrs: [String], v4: Int = 24, v6: Int = 80) -> ClusterConfig {
        ClusterConfig(mode: mode, clusterCIDRs: cidrs.map(net), blockPrefixV4: v4, blockPrefixV6: v6)
    }

    func message(_ body: () throws -> Void) -> String? {
        do { try body(); return nil } catch { return "\(error)" }
    }

    @Test func acceptsOneRangePerFamily() throws {
        try config(.vxlan, ["10.244.0.0/16", "fd00:244::/56"]).validate()
    }

    @Test(arguments: [
        (["10.244.0.0/16", "10.245.0.0/16"], 24, "are both IPv4"),
        (["10.244.0.0/24"], 16, "block size /16 is larger than the cluster range 10.244.0.0/24"),
        (["10.244.0.0/16"], 31, "block size /31 is too small"),
        ([], 24, "no cluster range given"),
    ])
    func refusesBadSettings(cidrs: [String], block: Int, says: String) {
        let m = message { try config(.native, cidrs, v4: block).validate() }
        #expect(m?.contains(says) == true, "\(m ?? "accepted")")
    }

    @Test func overlayAndNativeRangesMustNotOverlapTheHostNetwork() {
        for mode in [RoutingMode.vxlan, .native] {
            let m = message { try config(mode, ["192.168.0.0/16"]).check(hostNetwork: net("192.168.100.0/24"), uplink: "eth0") }
            #expect(m?.contains("overlaps the host network 192.168.100.0/24") == true, "\(m ?? "accepted")")
            #expect(message { try config(mode, ["10.244.0.0/16", "fd00::/56"]).check(hostNetwork: net("192.168.100.0/24"), uplink: "eth0") } == nil)
        }
    }

    @Test func underlayRangesMustLieInsideTheHostNetwork() {
        #expect(message { try config(.underlay, ["192.168.100.128/25"], v4: 28).check(hostNetwork: net("192.168.100.0/24"), uplink: "eth0") } == nil)
        let m = message { try config(.underlay, ["10.244.0.0/16"]).check(hostNetwork: net("192.168.100.0/24"), uplink: "eth0") }
        #expect(m?.contains("must lie inside the host network 192.168.100.0/24") == true, "\(m ?? "accepted")")
    }

    @Test func blocksSkipTakenOnesInOrder() {
        let blocks = Array(freeBlocks(of: net("10.0.0.0/22"), prefix: 24, taken: [net("10.0.1.0/24")]))
        #expect(blocks == [net("10.0.0.0/24"), net("10.0.2.0/24"), net("10.0.3.0/24")])
        #expect(Array(freeBlocks(of: net("10.0.0.0/23"), prefix: 24, taken: [net("10.0.0.0/24"), net("10.0.1.0/24")])).isEmpty)
        #expect(Array(freeBlocks(of: net("fd00::/56"), prefix: 80, taken: []).prefix(2)) == [net("fd00::/80"), net("fd00:0:0:0:1::/80")])
    }

    @Test func settingsRoundTripThroughJSON() {
        let c = config(.vxlan, ["10.244.0.0/16", "fd00:244::/56"], v4: 26, v6: 96)
        #expect(ClusterConfig(json: c.json) == c)
    }
}

struct DesiredRoutingTests {
    let nodes = [
        NodeInfo(name: "a", hostIP: ip("192.168.1.1"), podCIDRs: [net("10.244.0.0/24"), net("fd00::/80")], vtepMAC: [2, 0, 0, 0, 0, 1]),
        NodeInfo(name: "b", hostIP: ip("192.168.1.2"), podCIDRs: [net("10.244.1.0/24"), net("fd00:0:0:0:1::/80")], vtepMAC: [2, 0, 0, 0, 0, 2]),
        NodeInfo(name: "c", hostIP: ip("192.168.1.3"), podCIDRs: [net("10.244.2.0/24")], vtepMAC: nil),
    ]

    @Test func nativeRoutesEachPeerRangeViaItsHostOfTheSameFamily() {
        let s = desiredRouting(me: "a", nodes: nodes, mode: .native, uplink: "eth0")
        #expect(s.routes == [DesiredRoute(destination: net("10.244.1.0/24"), gateway: ip("192.168.1.2"), device: "eth0"),
                             DesiredRoute(destination: net("10.244.2.0/24"), gateway: ip("192.168.1.3"), device: "eth0")])
        #expect(s.fdb.isEmpty && s.neighbors.isEmpty)
    }

    @Test func vxlanProgramsFDBNeighbourAndOnlinkRoutePerPeerRange() {
        let s = desiredRouting(me: "a", nodes: nodes, mode: .vxlan, uplink: "eth0")
        // c has not published its VTEP yet: nothing for it until it does.
        #expect(s.fdb == [DesiredFDB(mac: [2, 0, 0, 0, 0, 2], remote: ip("192.168.1.2"))])
        #expect(s.neighbors == [DesiredNeighbor(address: ip("10.244.1.0"), mac: [2, 0, 0, 0, 0, 2]),
                                DesiredNeighbor(address: ip("fd00:0:0:0:1::"), mac: [2, 0, 0, 0, 0, 2])])
        #expect(s.routes == [DesiredRoute(destination: net("10.244.1.0/24"), gateway: ip("10.244.1.0"), device: VXLAN.device, onLink: true),
                             DesiredRoute(destination: net("fd00:0:0:0:1::/80"), gateway: ip("fd00:0:0:0:1::"), device: VXLAN.device, onLink: true)])
    }

    @Test func underlayNeedsNoRoutesAndNoPeerMeansNothing() {
        #expect(desiredRouting(me: "a", nodes: nodes, mode: .underlay, uplink: "eth0") == RoutingState())
        #expect(desiredRouting(me: "a", nodes: [nodes[0]], mode: .native, uplink: "eth0") == RoutingState())
    }
}
