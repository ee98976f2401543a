import Testing
import WeftCore
@testable import WeftAgent

/// The route loop routes to the nodes that hold a live lease, and no others.
struct PeerStateTests {
    @Test func onlyNodesWithALeaseAreLive() async throws {
        func node(_ name: String, _ ip: String) throws -> KeyValue {
            let o = KubeObject(json: try JSONValue.parse(#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"\#(name)"},"spec":{"podCIDRs":["10.244.1.0/24"]},"status":{"addresses":[{"type":"InternalIP","address":"\#(ip)"}]}}"#))
            return KeyValue(key: Keys.node(name), value: o.bytes, createRevision: 1, modRevision: 1)
        }
        let nodes = [try node("n2", "192.168.0.12"), try node("n1", "192.168.0.11")]
        #expect(PeerState.liveNodes(nodes: nodes, leases: []).isEmpty, "no lease seen: every node looks dead, which is why the loop waits for both lists")
        let lease = KeyValue(key: Keys.nodeLease("n1"), value: [], createRevision: 2, modRevision: 2)
        #expect(PeerState.liveNodes(nodes: nodes, leases: [lease]).map(\.name) == ["n1"])
    }
}
