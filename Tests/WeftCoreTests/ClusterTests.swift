import Testing
import WeftCore

/// The pure cluster logic the agent runs on: settings checks, block search.
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
