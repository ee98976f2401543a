import Logging
import Synchronization
import Testing
import WeftCore
import WeftOS
import WeftOSFakes
@testable import WeftAgent

/// A datastore that counts the lists it serves (by prefix) and can break its open watches, as
/// a datastore restart does. Everything else goes to the store inside.
final class CountingDatastore: Datastore, Sendable {
    let inner: MemoryDatastore
    private let lists = Mutex([String: Int]())
    private let open = Mutex([Int: AsyncThrowingStream<WatchEvent, Error>.Continuation]())
    private let nextWatch = Atomic<Int>(0)

    init(_ inner: MemoryDatastore = MemoryDatastore()) { self.inner = inner }

    var listCalls: [String: Int] { lists.withLock { $0 } }
    var totalLists: Int { listCalls.values.reduce(0, +) }

    /// Ends every open watch with `.unavailable`.
    func breakWatches() {
        for c in open.withLock({ o in defer { o = [:] }; return Array(o.values) }) {
            c.finish(throwing: DatastoreError.unavailable("the test broke the watch"))
        }
    }

    func list(prefix: String) async throws -> (items: [KeyValue], revision: Int64) {
        lists.withLock { $0[prefix, default: 0] += 1 }
        return try await inner.list(prefix: prefix)
    }

    func watch(prefix: String, afterRevision: Int64) -> AsyncThrowingStream<WatchEvent, Error> {
        let (stream, continuation) = AsyncThrowingStream.makeStream(of: WatchEvent.self, throwing: Error.self)
        let id = nextWatch.add(1, ordering: .relaxed).newValue
        open.withLock { $0[id] = continuation }
        let upstream = inner.watch(prefix: prefix, afterRevision: afterRevision)
        let task = Task {
            do {
                for try await e in upstream { continuation.yield(e) }
                continuation.finish()
            } catch { continuation.finish(throwing: error) }
        }
        continuation.onTermination = { [weak self] _ in
            task.cancel()
            _ = self?.open.withLock { $0.removeValue(forKey: id) }
        }
        return stream
    }

    func get(_ key: String) async throws -> KeyValue? { try await inner.get(key) }
    func create(_ key: String, value: [UInt8], lease: Int64) async throws -> Int64 { try await inner.create(key, value: value, lease: lease) }
    func update(_ key: String, value: [UInt8], expectedRevision: Int64, lease: Int64) async throws -> Int64 {
        try await inner.update(key, value: value, expectedRevision: expectedRevision, lease: lease)
    }
    func delete(_ key: String, expectedRevision: Int64?) async throws { try await inner.delete(key, expectedRevision: expectedRevision) }
    func grantLease(ttlSeconds: Int64) async throws -> Int64 { try await inner.grantLease(ttlSeconds: ttlSeconds) }
    func keepAlive(lease: Int64) async throws { try await inner.keepAlive(lease: lease) }
    func revokeLease(_ lease: Int64) async throws { try await inner.revokeLease(lease) }
}

struct Timeout: Error, CustomStringConvertible { var description: String }

/// Waits (polling) until `condition` holds; fails naming `what` after `seconds`.
func eventually(_ what: String, within seconds: Double = 10, _ condition: () async throws -> Bool) async throws {
    let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
    while try await !condition() {
        if ContinuousClock.now > deadline { throw Timeout(description: "not within \(seconds) s: \(what)") }
        try await Task.sleep(for: .milliseconds(10))
    }
}

/// Runs `cache` (and `loops`) as child tasks around `body`; cancels them after.
func withRunning<T: Sendable>(_ cache: ClusterCache, _ loops: [@Sendable () async throws -> Void] = [],
                              _ body: () async throws -> T) async throws -> T {
    try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { try await cache.run() }
        for loop in loops { group.addTask { try await loop() } }
        defer { group.cancelAll() }
        return try await body()
    }
}

/// Until the cache holds what the datastore holds under every kind it keeps.
func settled(_ cache: ClusterCache, _ store: MemoryDatastore) async throws {
    try await eventually("the cache catches up with the datastore") {
        for p in cache.prefixes where cache.items(p) != (try await store.list(prefix: p).items) { return false }
        return cache.isSynced(cache.prefixes)
    }
}

enum Fixtures {
    static func object(_ json: String) throws -> KubeObject { KubeObject(json: try JSONValue.parse(json)) }
    static func node(_ name: String, ip: String, cidr: String) throws -> KubeObject {
        try object(#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"\#(name)"},"spec":{"podCIDRs":["\#(cidr)"]},"status":{"addresses":[{"type":"InternalIP","address":"\#(ip)"}]}}"#)
    }
    static func service(_ name: String, _ ip: String, selector: String? = nil) throws -> KubeObject {
        let sel = selector.map { #","selector":{"app":"\#($0)"}"# } ?? ""
        return try object(#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"\#(name)","namespace":"default"},"spec":{"clusterIP":"\#(ip)"\#(sel),"ports":[{"name":"http","port":80,"targetPort":8080}]}}"#)
    }
    static func slice(_ name: String, service: String, _ ips: [String]) throws -> KubeObject {
        let eps = ips.map { #"{"addresses":["\#($0)"],"conditions":{"ready":true}}"# }.joined(separator: ",")
        return try object(#"{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","metadata":{"name":"\#(name)","namespace":"default","labels":{"kubernetes.io/service-name":"\#(service)"}},"addressType":"IPv4","ports":[{"name":"http","port":8080}],"endpoints":[\#(eps)]}"#)
    }
    static func pod(_ name: String, ip: String, app: String = "web", node: String = "node0") throws -> KubeObject {
        try object(#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"\#(name)","namespace":"default","labels":{"app":"\#(app)"}},"spec":{"nodeName":"\#(node)","containers":[{"name":"c"}]},"status":{"phase":"Running","podIP":"\#(ip)"}}"#)
    }
    static func put(_ store: any Datastore, _ objects: KubeObject...) async throws {
        for o in objects {
            let key = try Keys.key(for: o)
            if let held = try await store.get(key) { try await store.update(key, value: o.bytes, expectedRevision: held.modRevision) }
            else { try await store.create(key, value: o.bytes) }
        }
    }
}

struct ClusterCacheTests {
    let logger = Logger(label: "test")

    /// One list per kind, then the watch: a subscriber is first woken once every kind it reads is
    /// listed, with everything held, then with exactly the keys that changed. After a broken
    /// watch the cache relists and tells what differs, and nothing else.
    @Test func subscribersAreToldWhatChangedAndTheCacheRelistsOnlyAfterABrokenWatch() async throws {
        let store = CountingDatastore()
        try await Fixtures.put(store, try Fixtures.service("a", "10.96.0.1"), try Fixtures.service("b", "10.96.0.2"))
        let cache = ClusterCache(store: store, prefixes: [Keys.services, Keys.endpointSlices], logger: logger)
        let changes = cache.subscribe([Keys.services, Keys.endpointSlices])
        try await withRunning(cache) {
            // Wake-ups coalesce, and one may come with nothing new: what counts is what is told.
            func told(_ want: Set<String>) async throws -> Set<String> {
                var told: Set<String> = []
                try await eventually("told \(want)") {
                    told.formUnion(await changes.next() ?? [])
                    return told.isSuperset(of: want)
                }
                return told
            }
            #expect(try await told([Keys.services + "default/a", Keys.services + "default/b"]) == [Keys.services + "default/a", Keys.services + "default/b"])
            try await Fixtures.put(store, try Fixtures.slice("a-1", service: "a", ["10.244.0.1"]))
            #expect(try await told([Keys.endpointSlices + "default/a-1"]) == [Keys.endpointSlices + "default/a-1"])
            #expect(cache.items(Keys.endpointSlices).count == 1)

            // A datastore restart: the watch breaks, and the cache relists. Meanwhile b went
            // away and c came: that is what subscribers hear.
            store.breakWatches()
            try await store.delete(Keys.services + "default/b", expectedRevision: nil)
            try await Fixtures.put(store, try Fixtures.service("c", "10.96.0.3"))
            #expect(try await told([Keys.services + "default/b", Keys.services + "default/c"]) == [Keys.services + "default/b", Keys.services + "default/c"])
            #expect(cache.items(Keys.services).map(\.key) == [Keys.services + "default/a", Keys.services + "default/c"])
            try await eventually("both kinds relisted") { store.listCalls[Keys.endpointSlices] == 2 }
            #expect(store.listCalls == [Keys.services: 2, Keys.endpointSlices: 2], "one list each at start and after the broken watch")
        }
    }

    /// The routes loop: programs a route to each live peer from the cache, follows a node that
    /// joins and one whose lease goes, and re-runs its pass on every resync tick without listing.
    @Test func routesFollowTheCacheAndNoWakeUpLists() async throws {
        let store = CountingDatastore()
        let net = FakeNetworkControl.host(address: IPInterfaceAddress(address: IPAddress("192.168.0.11")!, prefixLength: 24))
        var config = AgentConfig(nodeName: "n1", hostIP: IPAddress("192.168.0.11")!, uplink: "eth0",
                                 cluster: ClusterConfig(mode: .native, clusterCIDRs: [IPNetwork("10.244.0.0/16")!]), cniConfDir: "/nonexistent")
        config.resyncSeconds = 0.02
        let agent = NodeAgent(config: config, store: store, net: net, servicesNet: net, logger: logger)
        func live(_ name: String, _ ip: String, _ cidr: String) async throws {
            try await Fixtures.put(store, try Fixtures.node(name, ip: ip, cidr: cidr))
            try await store.create(Keys.nodeLease(name), value: [])
        }
        try await live("n1", "192.168.0.11", "10.244.1.0/24")
        try await live("n2", "192.168.0.12", "10.244.2.0/24")
        func routes() throws -> [String] {
            try net.routes(family: .v4).filter { $0.protocolID == RouteEntry.weftProtocol }.map { "\($0.destination) via \($0.gateway.map(\.description) ?? "-")" }.sorted()
        }
        func passes() -> Int {
            let line = String(decoding: agent.metrics.text(), as: UTF8.self).split(separator: "\n")
                .first { $0.hasPrefix("weft_reconcile_duration_seconds_count") && $0.contains(#"loop="routes""#) }
            return line.flatMap { Int($0.split(separator: " ").last ?? "") } ?? 0
        }
        try await withRunning(agent.cache, [{ try await agent.routeLoop(backend: RoutingMode.native.backend()) }]) {
            try await eventually("a route to n2") { try routes() == ["10.244.2.0/24 via 192.168.0.12"] }
            try await live("n3", "192.168.0.13", "10.244.3.0/24")
            try await eventually("a route to n3") { try routes() == ["10.244.2.0/24 via 192.168.0.12", "10.244.3.0/24 via 192.168.0.13"] }
            try await store.delete(Keys.nodeLease("n2"), expectedRevision: nil)
            try await eventually("n2's route withdrawn") { try routes() == ["10.244.3.0/24 via 192.168.0.13"] }
            let seen = passes()
            try await eventually("resync ticks run passes") { passes() >= seen + 3 }
        }
        #expect(store.listCalls[Keys.nodes] == 1 && store.listCalls[Keys.nodeLeases] == 1, "listed once, at start: \(store.listCalls)")
    }

    /// What reaches the services loop and the DNS zone: the services a change touched, parsed
    /// from the cache, with no list on a wake-up.
    @Test func servicesAndDNSReadTheCacheOnWakeUps() async throws {
        let store = CountingDatastore()
        try await Fixtures.put(store, try Fixtures.service("web", "10.96.0.20"), try Fixtures.slice("web-1", service: "web", ["10.244.0.5"]))
        let cache = ClusterCache(store: store, logger: logger)
        let changes = cache.subscribe([Keys.services, Keys.endpointSlices, Keys.nodeLeases])
        let source = ServiceSource()
        func pass() async throws -> ServiceSource.Delta {
            source.update(try #require(await changes.next()), from: cache)
            return source.take()
        }
        func lookup(_ name: DNSName) -> [String] {
            let zone = ClusterDNS(domain: "cluster.local", entries: source.entries)
            return zone.answer(DNSMessage.query(id: 1, name: name, type: .a)).answers.compactMap { if case .address(let a) = $0.data { "\(a)" } else { nil } }
        }
        try await withRunning(cache) {
            let first = try await pass()
            #expect(first.changed.map(\.service.name) == ["web"])
            #expect(source.entries.first?.endpoints.map(\.address.description) == ["10.244.0.5"])
            #expect(lookup("web.default.svc.cluster.local") == ["10.96.0.20"])

            try await Fixtures.put(store, try Fixtures.service("api", "10.96.0.30"), try Fixtures.slice("web-1", service: "web", ["10.244.0.6"]))
            var delta = ServiceSource.Delta()
            try await eventually("both changes reach the source") {
                let d = try await pass()
                delta.changed += d.changed
                return Set(delta.changed.map(\.service.name)) == ["api", "web"]
            }
            #expect(source.entry("default/web")?.endpoints.map(\.address.description) == ["10.244.0.6"])
            #expect(lookup("api.default.svc.cluster.local") == ["10.96.0.30"])
            try await store.delete(Keys.services + "default/api", expectedRevision: nil)
            var removed: Set<String> = []
            try await eventually("the removal reaches the source") { removed.formUnion(try await pass().removed); return removed == ["default/api"] }
            #expect(lookup("api.default.svc.cluster.local").isEmpty)
            // A resync tick: a pass from the cache, no change, no list.
            changes.poke()
            #expect(try await pass().isEmpty)
        }
        #expect(store.listCalls.values.allSatisfy { $0 == 1 }, "each kind listed once: \(store.listCalls)")
    }

    /// The policy loop's input, read from the cache on each wake-up: pods, policies, namespaces
    /// and node names, with no list.
    @Test func policyInputComesFromTheCache() async throws {
        let store = CountingDatastore()
        let policy = try Fixtures.object(#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"deny","namespace":"default"},"spec":{"podSelector":{"matchLabels":{"app":"web"}},"policyTypes":["Ingress"]}}"#)
        try await Fixtures.put(store, try Fixtures.pod("web-0", ip: "10.244.0.5"), policy, try Fixtures.node("node0", ip: "192.168.0.10", cidr: "10.244.0.0/24"),
                               try Fixtures.object(#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"default","labels":{"team":"a"}}}"#))
        let cache = ClusterCache(store: store, logger: logger)
        let enforcer = PolicyEnforcer(cache: cache, logger: logger, node: "node0", dataplane: FakeDataplane(node: "node0"), openLog: { nil })
        let changes = cache.subscribe(DesiredState.policyPrefixes)
        try await withRunning(cache) {
            _ = await changes.next()
            var input = enforcer.readInput()
            #expect(input.pods.map(\.name) == ["web-0"] && input.policies.count == 1 && input.namespaces["default"] == ["team": "a"])
            #expect(enforcer.nodeAddresses.withLock { $0 } == [IPAddress("192.168.0.10")!: "node0"])
            try await Fixtures.put(store, try Fixtures.pod("web-1", ip: "10.244.0.6"))
            try await eventually("the new pod reaches the input") {
                _ = await changes.next()
                input = enforcer.readInput()
                return input.pods.count == 2
            }
            #expect(input.pods.map(\.name) == ["web-0", "web-1"])
        }
        #expect(store.listCalls.values.allSatisfy { $0 == 1 }, "each kind listed once: \(store.listCalls)")
    }
}
