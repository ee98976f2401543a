import Testing
import WeftCore
import WeftOSFakes
@testable import WeftAgent

struct DesiredStateTests {
    static func object(_ json: String) throws -> KubeObject { KubeObject(json: try JSONValue.parse(json)) }
    static func service(_ name: String, _ ip: String) throws -> KubeObject {
        try object(#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"\#(name)","namespace":"default"},"spec":{"clusterIP":"\#(ip)","ports":[{"port":80,"targetPort":8080}]}}"#)
    }
    static func slice(_ name: String, service: String, _ ips: [String]) throws -> KubeObject {
        let eps = ips.map { #"{"addresses":["\#($0)"],"conditions":{"ready":true}}"# }.joined(separator: ",")
        return try object(#"{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","metadata":{"name":"\#(name)","namespace":"default","labels":{"kubernetes.io/service-name":"\#(service)"}},"addressType":"IPv4","ports":[{"port":8080}],"endpoints":[\#(eps)]}"#)
    }

    /// The agent's copy of Services and slices, fed a list and then the watch's events, gives
    /// what a fresh read gives after every step, and hands over exactly the services a step
    /// touched, with what they were before.
    @Test func serviceSourceFollowsTheWatchAndHandsOverWhatChanged() async throws {
        let store = MemoryDatastore()
        for o in [try Self.service("a", "10.96.0.1"), try Self.service("b", "10.96.0.2"),
                  try Self.slice("a-1", service: "a", ["10.244.0.1"]), try Self.slice("b-1", service: "b", ["10.244.0.2"])] {
            try await store.create(try Keys.key(for: o), value: o.bytes)
        }
        let source = ServiceSource()
        for prefix in [Keys.services, Keys.endpointSlices] {
            #expect(!source.isSynced, "not before both prefixes are listed")
            source.replace(prefix: prefix, with: try await store.list(prefix: prefix).items)
        }
        #expect(source.isSynced)
        /// Writes (or deletes) `objects` as the datastore's watch would report it, feeds the
        /// events, takes the change, and checks the copy against a fresh read.
        func step(put: [KubeObject] = [], delete: [String] = []) async throws -> ServiceSource.Delta {
            for o in put {
                let key = try Keys.key(for: o)
                if let held = try await store.get(key) {
                    try await store.update(key, value: o.bytes, expectedRevision: held.modRevision)
                } else {
                    try await store.create(key, value: o.bytes)
                }
                source.apply(WatchEvent(kind: .put, kv: try #require(try await store.get(key))))
            }
            for key in delete {
                let held = try #require(try await store.get(key))
                try await store.delete(key, expectedRevision: nil)
                source.apply(WatchEvent(kind: .delete, kv: held))
            }
            let delta = source.take()
            let fresh = try await DesiredState.serviceEntries(store)
            #expect(source.entries == fresh.sorted { $0.key < $1.key }, "the copy reads as the datastore")
            return delta
        }
        let first = source.take()
        #expect(Set(first.changed.map(\.service.name)) == ["a", "b"] && first.previous.isEmpty)
        #expect(try await step().isEmpty, "nothing changed")
        // A's slice changes, and a second slice for B appears.
        let b2 = try Self.slice("b-2", service: "b", ["10.244.0.3"])
        let changed = try await step(put: [try Self.slice("a-1", service: "a", ["10.244.0.9"]), b2])
        #expect(Set(changed.changed.map(\.service.name)) == ["a", "b"])
        #expect(changed.previous["default/a"]?.endpoints.map(\.address.description) == ["10.244.0.1"])
        #expect(source.entry("default/a")?.endpoints.map(\.address.description) == ["10.244.0.9"])
        #expect(source.entry("default/b")?.endpoints.map(\.address.description).sorted() == ["10.244.0.2", "10.244.0.3"])
        // B's second slice goes: only B is handed over.
        let sliceGone = try await step(delete: [try Keys.key(for: b2)])
        #expect(sliceGone.changed.map(\.service.name) == ["b"] && sliceGone.removed.isEmpty)
        // A slice moves from B to A (its label changes): both are handed over.
        let moved = try await step(put: [try Self.slice("b-1", service: "a", ["10.244.0.2"])])
        #expect(Set(moved.changed.map(\.service.name)) == ["a", "b"])
        #expect(source.entry("default/b")?.endpoints.isEmpty == true)
        // Service A goes: removed, with what it was.
        let serviceGone = try await step(delete: [Keys.services + "default/a"])
        #expect(serviceGone.removed == ["default/a"] && serviceGone.changed.isEmpty && serviceGone.previous["default/a"] != nil)
        // A relist that finds what is held hands over nothing.
        source.replace(prefix: Keys.services, with: try await store.list(prefix: Keys.services).items)
        source.replace(prefix: Keys.endpointSlices, with: try await store.list(prefix: Keys.endpointSlices).items)
        #expect(source.take().isEmpty)
    }
}
