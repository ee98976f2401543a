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

/// A datastore that refuses the create of one key, after writing a status into another as a
/// node's runtime does meanwhile: the write phase of an apply failing half way.
final class FailingCreate: Datastore, @unchecked Sendable {
    let base: MemoryDatastore, failing: String, touched: String
    init(_ base: MemoryDatastore, failing: String, touching: String) { self.base = base; self.failing = failing; touched = touching }
    func get(_ key: String) async throws -> KeyValue? { try await base.get(key) }
    func list(prefix: String) async throws -> (items: [KeyValue], revision: Int64) { try await base.list(prefix: prefix) }
    func create(_ key: String, value: [UInt8], lease: Int64) async throws -> Int64 {
        if key == failing {
            if let kv = try await base.get(touched) { try await base.update(touched, value: kv.value + Array(" ".utf8), expectedRevision: kv.modRevision) }
            throw DatastoreError.unavailable("refused for the test")
        }
        return try await base.create(key, value: value, lease: lease)
    }
    func update(_ key: String, value: [UInt8], expectedRevision: Int64, lease: Int64) async throws -> Int64 {
        try await base.update(key, value: value, expectedRevision: expectedRevision, lease: lease)
    }
    func delete(_ key: String, expectedRevision: Int64?) async throws { try await base.delete(key, expectedRevision: expectedRevision) }
    func watch(prefix: String, afterRevision: Int64) -> AsyncThrowingStream<WatchEvent, Error> { base.watch(prefix: prefix, afterRevision: afterRevision) }
    func grantLease(ttlSeconds: Int64) async throws -> Int64 { try await base.grantLease(ttlSeconds: ttlSeconds) }
    func keepAlive(lease: Int64) async throws { try await base.keepAlive(lease: lease) }
    func revokeLease(_ lease: Int64) async throws { try await base.revokeLease(lease) }
}

extension ApplyTests {
    @Test("a write that fails half way: what the apply wrote is undone, also a pod whose status was written since")
    func failedWriteIsUndone() async throws {
        let (memory, _) = try await cluster(nodes: 1)
        let before = try await storedKeys(memory)
        let store = FailingCreate(memory, failing: Keys.pods + "default/c", touching: Keys.pods + "default/a")
        let objects = try Manifests.parse("""
            {apiVersion: v1, kind: Service, metadata: {name: s}, spec: {type: NodePort, ports: [{port: 80}]}}
            ---
            {apiVersion: v1, kind: Pod, metadata: {name: a}, spec: {nodeName: node0, containers: [{name: a}]}}
            ---
            {apiVersion: v1, kind: Pod, metadata: {name: c}, spec: {nodeName: node0, containers: [{name: c}]}}
            """, source: "f.yaml")
        let error = await #expect(throws: ManifestError.self) { try await ClusterClient(store: store).apply(objects, source: "f.yaml") }
        #expect(error?.description.contains("refused for the test") == true)
        #expect(error?.description.hasSuffix("nothing of f.yaml was kept: what this apply had written is undone") == true, "\(error?.description ?? "")")
        // The default namespace stays: a cluster always has it (it is made on first use).
        let left = try await storedKeys(memory).filter { !before.contains($0) }
        #expect(left == [Keys.namespace("default")], "the service, its cluster IP and node port, and pod a are gone: \(left)")
    }
}
