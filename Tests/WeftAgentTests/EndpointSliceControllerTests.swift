import Logging
import Testing
import WeftCore
import WeftOSFakes
@testable import WeftAgent

struct EndpointSliceControllerTests {
    static func object(_ json: String) throws -> KubeObject { KubeObject(json: try JSONValue.parse(json)) }

    @Test func writesSlicesOnceAndFollowsChanges() async throws {
        let store = MemoryDatastore()
        let cache = ClusterCache(store: store, logger: Logger(label: "test"))
        let controller = EndpointSliceController(store: store, cache: cache, logger: Logger(label: "test"), node: "node0")
        let svc = try Self.object(#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"web","namespace":"default"},"spec":{"clusterIP":"10.96.0.20","selector":{"app":"web"},"ports":[{"name":"http","port":80,"targetPort":8080}]}}"#)
        func pod(_ name: String, _ ip: String) throws -> KubeObject {
            try Self.object(#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"\#(name)","namespace":"default","labels":{"app":"web"}},"spec":{"nodeName":"node0","containers":[{"name":"c"}]},"status":{"phase":"Running","podIP":"\#(ip)"}}"#)
        }
        let foreign = try Self.object(#"{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","metadata":{"name":"other","namespace":"default","labels":{"kubernetes.io/service-name":"web","endpointslice.kubernetes.io/managed-by":"someone"}},"addressType":"IPv4","endpoints":[]}"#)
        for o in [svc, try pod("a", "10.244.0.5"), try pod("b", "10.244.0.6"), foreign] { try await store.create(try Keys.key(for: o), value: o.bytes) }
        try await withRunning(cache) {
            // Each pass reads the cache: it first catches up with the writes before it.
            func reconcile() async throws {
                try await settled(cache, store)
                try await controller.reconcile()
            }

            try await reconcile()
            let after = store.currentRevision
            let slices = try await store.list(prefix: Keys.endpointSlices).items.compactMap { try? KubeObject(bytes: $0.value) }
            #expect(slices.filter(EndpointSlices.isManaged).count == 1)
            let eps = EndpointSlices.endpoints(for: try ClusterService(svc), in: slices.filter(EndpointSlices.isManaged))
            #expect(eps.map(\.address.description) == ["10.244.0.5", "10.244.0.6"])
            // Nothing changed: nothing written (a controller that rewrites equal slices spins).
            try await reconcile()
            #expect(store.currentRevision == after)
            // A pod goes: its slice follows; the other controller's slice is untouched.
            try await store.delete(Keys.pod("default", "b"), expectedRevision: nil)
            try await reconcile()
            let now = try await store.list(prefix: Keys.endpointSlices).items.compactMap { try? KubeObject(bytes: $0.value) }
            #expect(EndpointSlices.endpoints(for: try ClusterService(svc), in: now.filter(EndpointSlices.isManaged)).map(\.address.description) == ["10.244.0.5"])
            #expect(now.contains { $0.name == "other" })
            // The service goes: weft's slices go with it.
            try await store.delete(try Keys.key(for: svc), expectedRevision: nil)
            try await reconcile()
            #expect(try await store.list(prefix: Keys.endpointSlices).items.map(\.key) == [Keys.endpointSlices + "default/other"])
        }
    }

    /// The controller's loop, led by this agent: follows pods from the cache and lists nothing
    /// on a wake-up.
    @Test func theLoopFollowsPodsWithoutListing() async throws {
        let store = CountingDatastore()
        let cache = ClusterCache(store: store, logger: Logger(label: "test"))
        let controller = EndpointSliceController(store: store, cache: cache, logger: Logger(label: "test"), node: "node0")
        try await Fixtures.put(store, try Fixtures.service("web", "10.96.0.20", selector: "web"), try Fixtures.pod("a", ip: "10.244.0.5"))
        let service = try ClusterService(try Fixtures.service("web", "10.96.0.20", selector: "web"))
        func addresses() async throws -> [String] {
            let slices = try await store.inner.list(prefix: Keys.endpointSlices).items.compactMap { try? KubeObject(bytes: $0.value) }
            return EndpointSlices.endpoints(for: service, in: slices.filter(EndpointSlices.isManaged)).map(\.address.description)
        }
        try await withRunning(cache, [{ try await controller.run() }]) {
            try await eventually("a slice for the pod") { try await addresses() == ["10.244.0.5"] }
            try await Fixtures.put(store, try Fixtures.pod("b", ip: "10.244.0.6"))
            try await eventually("the second pod in the slice") { try await addresses() == ["10.244.0.5", "10.244.0.6"] }
            try await store.delete(Keys.pod("default", "a"), expectedRevision: nil)
            try await eventually("the first pod out of it") { try await addresses() == ["10.244.0.6"] }
        }
        #expect(store.listCalls.values.allSatisfy { $0 == 1 }, "each kind listed once, by the cache: \(store.listCalls)")
    }
}
