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

    /// The cached reader gives what a fresh read gives, and an entry's source changes exactly
    /// when its service or one of its slices does (the model then rebuilds only that service).
    @Test func cachedServiceEntriesFollowTheirSources() async throws {
        let store = MemoryDatastore()
        for o in [try Self.service("a", "10.96.0.1"), try Self.service("b", "10.96.0.2"),
                  try Self.slice("a-1", service: "a", ["10.244.0.1"]), try Self.slice("b-1", service: "b", ["10.244.0.2"])] {
            try await store.create(try Keys.key(for: o), value: o.bytes)
        }
        let cache = DesiredState.ServiceCache()
        func read() async throws -> [String: ServiceRules.Entry] {
            let cached = try await DesiredState.serviceEntries(store, cache: cache)
            let fresh = try await DesiredState.serviceEntries(store)
            #expect(cached == fresh, "the cache changes nothing")
            return Dictionary(uniqueKeysWithValues: cached.map { ($0.service.name, $0) })
        }
        let first = try await read()
        #expect(first["a"]?.endpoints.map(\.address.description) == ["10.244.0.1"])
        // Nothing changed: the same sources.
        let again = try await read()
        #expect(again["a"]?.source == first["a"]?.source && again["b"]?.source == first["b"]?.source)
        // A's slice changes, and a second slice for B appears.
        let a1 = try Self.slice("a-1", service: "a", ["10.244.0.9"])
        let kv = try #require(try await store.list(prefix: Keys.endpointSlices + "default/a-1").items.first)
        try await store.update(try Keys.key(for: a1), value: a1.bytes, expectedRevision: kv.modRevision)
        let b2 = try Self.slice("b-2", service: "b", ["10.244.0.3"])
        try await store.create(try Keys.key(for: b2), value: b2.bytes)
        let changed = try await read()
        #expect(changed["a"]?.endpoints.map(\.address.description) == ["10.244.0.9"])
        #expect(changed["b"]?.endpoints.map(\.address.description).sorted() == ["10.244.0.2", "10.244.0.3"])
        #expect(changed["a"]?.source != first["a"]?.source && changed["b"]?.source != first["b"]?.source)
        // B's second slice goes.
        try await store.delete(try Keys.key(for: b2), expectedRevision: nil)
        let gone = try await read()
        #expect(gone["b"]?.endpoints.map(\.address.description) == ["10.244.0.2"])
        #expect(gone["a"]?.source == changed["a"]?.source && gone["b"]?.source != changed["b"]?.source)
    }
}
