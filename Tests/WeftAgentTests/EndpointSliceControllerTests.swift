import Logging
import Testing
import WeftCore
import WeftOSFakes
@testable import WeftAgent

struct EndpointSliceControllerTests {
    static func object(_ json: String) throws -> KubeObject { KubeObject(json: try JSONValue.parse(json)) }

    @Test func writesSlicesOnceAndFollowsChanges() async throws {
        let store = MemoryDatastore()
        let controller = EndpointSliceController(store: store, logger: Logger(label: "test"), node: "node0")
        let svc = try Self.object(#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"web","namespace":"default"},"spec":{"clusterIP":"10.96.0.20","selector":{"app":"web"},"ports":[{"name":"http","port":80,"targetPort":8080}]}}"#)
        func pod(_ name: String, _ ip: String) throws -> KubeObject {
            try Self.object(#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"\#(name)","namespace":"default","labels":{"app":"web"}},"spec":{"nodeName":"node0","containers":[{"name":"c"}]},"status":{"phase":"Running","podIP":"\#(ip)"}}"#)
        }
        let foreign = try Self.object(#"{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","metadata":{"name":"other","namespace":"default","labels":{"kubernetes.io/service-name":"web","endpointslice.kubernetes.io/managed-by":"someone"}},"addressType":"IPv4","endpoints":[]}"#)
        for o in [svc, try pod("a", "10.244.0.5"), try pod("b", "10.244.0.6"), foreign] { try await store.create(try Keys.key(for: o), value: o.bytes) }

        try await controller.reconcile()
        let after = store.currentRevision
        let slices = try await store.list(prefix: Keys.endpointSlices).items.compactMap { try? KubeObject(bytes: $0.value) }
        #expect(slices.filter(EndpointSlices.isManaged).count == 1)
        let eps = EndpointSlices.endpoints(for: try ClusterService(svc), in: slices.filter(EndpointSlices.isManaged))
        #expect(eps.map(\.address.description) == ["10.244.0.5", "10.244.0.6"])
        // Nothing changed: nothing written (a controller that rewrites equal slices spins).
        try await controller.reconcile()
        #expect(store.currentRevision == after)
        // A pod goes: its slice follows; the other controller's slice is untouched.
        try await store.delete(Keys.pod("default", "b"), expectedRevision: nil)
        try await controller.reconcile()
        let now = try await store.list(prefix: Keys.endpointSlices).items.compactMap { try? KubeObject(bytes: $0.value) }
        #expect(EndpointSlices.endpoints(for: try ClusterService(svc), in: now.filter(EndpointSlices.isManaged)).map(\.address.description) == ["10.244.0.5"])
        #expect(now.contains { $0.name == "other" })
        // The service goes: weft's slices go with it.
        try await store.delete(try Keys.key(for: svc), expectedRevision: nil)
        try await controller.reconcile()
        #expect(try await store.list(prefix: Keys.endpointSlices).items.map(\.key) == [Keys.endpointSlices + "default/other"])
    }
}
