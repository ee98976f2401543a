import Testing
import WeftCore
@testable import WeftAgent

/// The route loop's view of the cluster is complete only once nodes and leases are both listed:
/// a restarted agent that reconciled between the two lists withdrew every peer's route.
struct PeerStateTests {
    @Test func notSyncedUntilNodesAndLeasesAreBothListed() async throws {
        let node = KubeObject(json: try JSONValue.parse(#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"n1"},"spec":{"podCIDRs":["10.244.1.0/24"]},"status":{"addresses":[{"type":"InternalIP","address":"192.168.0.11"}]}}"#))
        let state = PeerState()
        await state.replace(prefix: Keys.nodes, [KeyValue(key: Keys.nodes + "n1", value: node.bytes, createRevision: 1, modRevision: 1)])
        #expect(await !state.isSynced)
        #expect(await state.liveNodes().isEmpty, "no lease seen yet: the node looks dead, which is why the loop waits")
        await state.replace(prefix: Keys.nodeLeases, [KeyValue(key: Keys.nodeLeases + "n1", value: [], createRevision: 2, modRevision: 2)])
        #expect(await state.isSynced)
        #expect(await state.liveNodes().map(\.name) == ["n1"])
    }
}
