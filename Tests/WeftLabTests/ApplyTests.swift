import Foundation
import Testing
import WeftCore
import WeftLab
import WeftOSFakes

/// `weft apply` applies a file as one: every refusal of the file is reported and nothing of it is
/// stored; a file with none is stored whole.
@Suite struct ApplyTests {
    /// A cluster of `nodes` live nodes (node0...), as agents register them.
    func cluster(nodes: Int) async throws -> (MemoryDatastore, ClusterClient) {
        let store = MemoryDatastore()
        for i in 0..<nodes {
            let n = NodeInfo(name: "node\(i)", hostIP: IPAddress("192.168.100.\(10 + i)")!, podCIDRs: [IPNetwork("10.22.\(i).0/24")!], vtepMAC: nil)
            try await store.create(Keys.node(n.name), value: n.object.bytes)
            let lease = try await store.grantLease(ttlSeconds: 600)
            try await store.create(Keys.nodeLease(n.name), value: Array("{}".utf8), lease: lease)
        }
        return (store, ClusterClient(store: store))
    }

    static let file = """
        apiVersion: v1
        kind: Namespace
        metadata: {name: shop}
        ---
        apiVersion: v1
        kind: List
        items:
        - {apiVersion: v1, kind: Pod, metadata: {name: web-0}, spec: {nodeName: node0, containers: [{name: web, ports: [{containerPort: 8080}]}]}}
        - {apiVersion: v1, kind: Pod, metadata: {name: web-2}, spec: {nodeName: node2, containers: [{name: web, ports: [{containerPort: 8080}]}]}}
        - {apiVersion: v1, kind: Pod, metadata: {name: cart-0, namespace: shop}, spec: {containers: [{name: cart, ports: [{containerPort: 9090}]}]}}
        - {apiVersion: v1, kind: Pod, metadata: {name: lost-0, namespace: nowhere}, spec: {containers: [{name: x}]}}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: web}
        spec: {type: NodePort, selector: {app: web}, ports: [{port: 80, nodePort: 30080}]}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: web-copy}
        spec: {type: NodePort, selector: {app: web}, ports: [{port: 80, nodePort: 30080}]}
        """

    /// Every key the objects live under, and the allocations.
    func storedKeys(_ store: MemoryDatastore) async throws -> [String] {
        try await store.list(prefix: "/").items.map(\.key).filter { !$0.hasPrefix(Keys.nodes) && !$0.hasPrefix(Keys.nodeLeases) }.sorted()
    }

    @Test("a file with refusals: each is reported, nothing is stored")
    func refusedFileStoresNothing() async throws {
        let (store, client) = try await cluster(nodes: 2)
        let objects = try Manifests.parse(Self.file, source: "pods.yaml")
        let before = try await storedKeys(store)
        let error = await #expect(throws: ManifestError.self) { try await client.apply(objects, source: "pods.yaml") }
        let message = error?.description ?? ""
        #expect(message.contains("3 objects of pods.yaml were refused"), "\(message)")
        #expect(message.contains("pod default/web-2: spec.nodeName \"node2\" is not a node of this cluster"), "\(message)")
        #expect(message.contains("pod nowhere/lost-0: namespace \"nowhere\" does not exist"), "\(message)")
        // Two services of one file asking for one node port: the second is refused, before either is stored.
        #expect(message.contains("service default/web-copy: spec.ports[0].nodePort 30080 is already used"), "\(message)")
        #expect(message.hasSuffix("nothing of pods.yaml was applied"), "\(message)")
        #expect(try await storedKeys(store) == before, "no namespace, pod, service or allocation stored")
    }

    @Test("the same file, mended: stored whole, the namespace it creates found by its pods")
    func mendedFileIsApplied() async throws {
        let (store, client) = try await cluster(nodes: 3)
        // The lost pod in a namespace that exists, and the second service gone.
        let documents = Self.file.replacingOccurrences(of: "namespace: nowhere", with: "namespace: shop").components(separatedBy: "---\n")
        let objects = try Manifests.parse(documents.dropLast().joined(separator: "---\n"), source: "pods.yaml")
        let result = try await client.apply(objects, source: "pods.yaml")
        #expect(result.lines == ["namespace/shop created", "pod/web-0 created", "pod/web-2 created", "pod/cart-0 created", "pod/lost-0 created", "service/web created"])
        #expect(try await store.get(Keys.pods + "shop/lost-0") != nil)
        #expect(try await store.get("/weft/nodeports/tcp-30080") != nil)
    }

    @Test("an existing pod whose spec changes is refused with the rest, and stays as it was")
    func changedPodIsRefused() async throws {
        let (store, client) = try await cluster(nodes: 1)
        let first = try Manifests.parse("{apiVersion: v1, kind: Pod, metadata: {name: a}, spec: {nodeName: node0, containers: [{name: a}]}}", source: "a.yaml")
        _ = try await client.apply(first)
        let stored = try await store.get(Keys.pods + "default/a")
        let changed = try Manifests.parse("""
            {apiVersion: v1, kind: Pod, metadata: {name: a}, spec: {nodeName: node0, containers: [{name: b}]}}
            ---
            {apiVersion: v1, kind: Pod, metadata: {name: c}, spec: {nodeName: node0, containers: [{name: c}]}}
            """, source: "a.yaml")
        await #expect(throws: ManifestError.self) { try await client.apply(changed, source: "a.yaml") }
        #expect(try await store.get(Keys.pods + "default/a") == stored)
        #expect(try await store.get(Keys.pods + "default/c") == nil, "the good pod of a refused file is not stored either")
    }

    @Test("static mistakes of several documents are all reported by the parser")
    func parserReportsEveryMistake() throws {
        let text = """
            {apiVersion: v1, kind: Pod, metadata: {name: Bad_Name}, spec: {containers: [{name: a}]}}
            ---
            {apiVersion: v1, kind: Pod, metadata: {name: ok}, spec: {containers: [{name: a, ports: [{containerPort: 70000}]}]}}
            ---
            {apiVersion: v1, kind: Pod, metadata: {name: fine}, spec: {containers: [{name: a}]}}
            """
        let error = #expect(throws: ManifestError.self) { try Manifests.parse(text, source: "x.yaml") }
        let message = error?.description ?? ""
        #expect(message.contains("2 objects of x.yaml were refused"), "\(message)")
        #expect(message.contains("x.yaml document 1: metadata.name \"Bad_Name\""), "\(message)")
        #expect(message.contains("x.yaml document 2: spec.containers[0].ports[0].containerPort 70000"), "\(message)")
    }
}
