import Foundation
import Logging
import Testing
import WeftCore
import WeftOS
import WeftOSFakes
@testable import WeftAgent

/// The agent's services and policy loops without root: objects in the in-memory datastore, the
/// loop running against the fake dataplane, the fake's dump compared with a golden file under
/// Golden/ (as cilium's load-balancer tests and knftables' fake do); and the nftables text the
/// nftables dataplane writes for the same objects, recorded instead of sent, compared too.
/// `WEFT_UPDATE_GOLDEN=1 swift test --filter DataplaneGoldenTests` rewrites the files; review
/// the diff before committing it.
@Suite struct DataplaneGoldenTests {
    static let golden = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Golden")

    static func expectGolden(_ text: String, _ name: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let url = golden.appendingPathComponent(name)
        if ProcessInfo.processInfo.environment["WEFT_UPDATE_GOLDEN"] == "1" {
            try text.write(to: url, atomically: true, encoding: .utf8)
            return
        }
        let want = try String(contentsOf: url, encoding: .utf8)
        let a = text.split(separator: "\n", omittingEmptySubsequences: false), b = want.split(separator: "\n", omittingEmptySubsequences: false)
        let first = zip(a, b).enumerated().first { $0.element.0 != $0.element.1 }.map { "line \($0.offset + 1): got \"\($0.element.0)\", want \"\($0.element.1)\"" }
            ?? "lengths differ: \(a.count) lines, want \(b.count)"
        #expect(text == want, "differs from Golden/\(name) (\(first)); WEFT_UPDATE_GOLDEN=1 rewrites it", sourceLocation: sourceLocation)
    }

    static func objects(_ json: [String]) throws -> [KubeObject] { try json.map { KubeObject(json: try JSONValue.parse($0)) } }

    static func put(_ store: MemoryDatastore, _ objects: [KubeObject]) async throws {
        for o in objects {
            let key = try Keys.key(for: o)
            if let held = try await store.get(key) {
                try await store.update(key, value: o.bytes, expectedRevision: held.modRevision)
            } else {
                try await store.create(key, value: o.bytes)
            }
        }
    }

    /// Waits (boundedly) until `done`; a loop that never gets there fails the test, it does not hang it.
    static func until(_ what: String, sourceLocation: SourceLocation = #_sourceLocation, _ done: () -> Bool) async throws {
        for _ in 0..<1000 {
            if done() { return }
            try await Task.sleep(for: .milliseconds(10))
        }
        Issue.record("never happened: \(what)", sourceLocation: sourceLocation)
    }

    static let logger = Logger(label: "test")

    // MARK: services

    static func service(_ name: String, _ spec: String, status: String = "{}") -> String {
        #"{"apiVersion":"v1","kind":"Service","metadata":{"name":"\#(name)","namespace":"default"},"spec":\#(spec),"status":\#(status)}"#
    }

    /// One endpoint: address, pod, node and conditions (ready, serving, terminating).
    static func slice(_ name: String, service: String, port: String = #"{"port":8080}"#, _ endpoints: [(String, String, String, (Bool, Bool, Bool))]) -> String {
        let eps = endpoints.map { a, pod, node, c in
            #"{"addresses":["\#(a)"],"nodeName":"\#(node)","targetRef":{"kind":"Pod","name":"\#(pod)"},"conditions":{"ready":\#(c.0),"serving":\#(c.1),"terminating":\#(c.2)}}"#
        }.joined(separator: ",")
        return #"{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","metadata":{"name":"\#(name)","namespace":"default","labels":{"kubernetes.io/service-name":"\#(service)"}},"addressType":"IPv4","ports":[\#(port)],"endpoints":[\#(eps)]}"#
    }

    static let ready = (true, true, false)

    /// ClusterIP with affinity, NodePort with traffic policy Local, LoadBalancer with an external
    /// IP, terminating endpoints taking traffic as the fallback, internal traffic policy Local with
    /// no endpoint on this node, a service with no endpoint, and a headless one.
    static func servicesManifests() throws -> [KubeObject] {
        try objects([
            service("web", #"{"clusterIP":"10.96.0.10","ports":[{"port":80,"targetPort":8080}],"sessionAffinity":"ClientIP","sessionAffinityConfig":{"clientIP":{"timeoutSeconds":600}}}"#),
            slice("web-1", service: "web", [("10.244.0.5", "web-0", "node0", ready), ("10.244.1.5", "web-1", "node1", ready)]),
            service("np", #"{"type":"NodePort","clusterIP":"10.96.0.11","externalTrafficPolicy":"Local","ports":[{"port":80,"targetPort":8080,"nodePort":30080}]}"#),
            slice("np-1", service: "np", [("10.244.0.6", "np-0", "node0", ready), ("10.244.1.6", "np-1", "node1", ready)]),
            service("lb", #"{"type":"LoadBalancer","clusterIP":"10.96.0.12","externalIPs":["203.0.113.7"],"ports":[{"port":443,"targetPort":8443,"nodePort":30443}]}"#,
                    status: #"{"loadBalancer":{"ingress":[{"ip":"192.168.100.240"}]}}"#),
            slice("lb-1", service: "lb", port: #"{"port":8443}"#, [("10.244.1.7", "lb-0", "node1", ready)]),
            service("drain", #"{"clusterIP":"10.96.0.13","ports":[{"port":53,"protocol":"UDP","targetPort":5353}]}"#),
            slice("drain-1", service: "drain", port: #"{"port":5353,"protocol":"UDP"}"#,
                  [("10.244.0.8", "drain-0", "node0", (false, true, true)), ("10.244.1.8", "drain-1", "node1", (false, false, true))]),
            service("local", #"{"clusterIP":"10.96.0.14","internalTrafficPolicy":"Local","ports":[{"port":80,"targetPort":8080}]}"#),
            slice("local-1", service: "local", [("10.244.1.9", "local-1", "node1", ready)]),
            service("empty", #"{"clusterIP":"10.96.0.15","ports":[{"port":80,"targetPort":8080}]}"#),
            service("headless", #"{"clusterIP":"None","ports":[{"port":80}]}"#),
        ])
    }

    /// After the start: web loses an endpoint, drain's second endpoint becomes ready, empty goes.
    static func servicesChange() throws -> [KubeObject] {
        try objects([
            slice("web-1", service: "web", [("10.244.0.5", "web-0", "node0", ready)]),
            slice("drain-1", service: "drain", port: #"{"port":5353,"protocol":"UDP"}"#,
                  [("10.244.0.8", "drain-0", "node0", (false, true, true)), ("10.244.1.8", "drain-1", "node1", ready)]),
        ])
    }

    @Test("services: the proxy hands the dataplane every service at start, then only what changed; the dump is the golden one")
    func servicesThroughTheProxy() async throws {
        let store = MemoryDatastore()
        try await Self.put(store, try Self.servicesManifests())
        let dataplane = FakeDataplane(node: "node0")
        let cache = ClusterCache(store: store, logger: Self.logger)
        let proxy = ServiceProxy(cache: cache, logger: Self.logger, node: "node0", addresses: nil, healthChecks: HealthCheckServer(logger: Self.logger),
                                 dns: nil, dataplane: dataplane)
        try await withRunning(cache, [{ try await proxy.run() }]) {
            try await Self.until("the proxy programs the services") { dataplane.services.count == 7 }
            // The whole set first; other wake-ups (leases, the cache's lists) hand over empty changes,
            // which are also how a dataplane whose write failed gets to retry.
            #expect(dataplane.writes.first == "services all 7" && dataplane.writes.dropFirst().allSatisfy { $0 == "services change +0 -0" }, "\(dataplane.writes)")
            try Self.expectGolden(dataplane.dump(), "services.txt")

            try await Self.put(store, try Self.servicesChange())
            try await store.delete(Keys.services + "default/empty", expectedRevision: nil)
            try await Self.until("the change reaches the dataplane") {
                dataplane.services.count == 6 && dataplane.services.first { $0.key == "default/web" }?.endpoints.count == 1
                    && dataplane.services.first { $0.key == "default/drain" }?.endpoints.contains { $0.ready } == true
            }
            #expect(dataplane.writes.dropFirst().allSatisfy { $0.hasPrefix("services change") }, "only changes after the start: \(dataplane.writes)")
            try Self.expectGolden(dataplane.dump(), "services-changed.txt")
        }
    }

    @Test("services: a failed write is retried whole by the dataplane; the proxy does not resend what it handed over")
    func aFailedServicesWrite() async throws {
        let store = MemoryDatastore()
        try await Self.put(store, try Self.servicesManifests())
        let dataplane = FakeDataplane(node: "node0")
        dataplane.failNext(.services)
        let cache = ClusterCache(store: store, logger: Self.logger)
        let proxy = ServiceProxy(cache: cache, logger: Self.logger, node: "node0", addresses: nil, healthChecks: HealthCheckServer(logger: Self.logger),
                                 dns: nil, dataplane: dataplane)
        try await withRunning(cache, [{ try await proxy.run() }]) {
            try await Self.until("the first write") { !dataplane.writes.isEmpty }
            // The start's whole set failed; since the dataplane holds it, the next pass brings only the change.
            try await Self.put(store, try Self.servicesChange())
            try await Self.until("the change after the failure") { dataplane.writes.count >= 2 && dataplane.services.first { $0.key == "default/web" }?.endpoints.count == 1 }
            #expect(dataplane.writes.first == "services all 7")
            try await Self.until("both slices") { dataplane.services.first { $0.key == "default/drain" }?.endpoints.contains { $0.ready } == true }
            #expect(dataplane.services.count == 7)
        }
    }

    /// Records what the nftables dataplane would send to the kernel.
    final class RecordingKernel: NFTablesKernel, NFTablesOpsWriter, @unchecked Sendable {
        var log: [String] = []
        func run(_ script: String) throws(NFTablesError) {
            if script.hasPrefix("get element") {
                // "get element inet TABLE MAP { KEY }": the map and key
                guard elements.contains(String(script.split(separator: " ", maxSplits: 4)[4])) else { throw NFTablesError(message: "no such element") }
                return
            }
            log.append(script)
        }
        func tableNames() throws(NFTablesError) -> [String] { [] }
        /// The batches applied, in order.
        var batches: [[NFT.Op]] = []
        /// What the kernel lists: the chains and rules the batches leave, then `tamper` (a hand edit).
        var tamper: (inout [String: [String: Int]]) -> Void = { _ in }
        /// Elements `get element` finds ("map key"); others are missing.
        var elements: Set<String> = []
        func ruleCounts(tables: [String]) throws(NFTablesError) -> [String: [String: Int]] {
            var out: [String: [String: Int]] = [:]
            for op in batches.joined() {
                switch op {
                case .addTable(let t): out[t] = out[t] ?? [:]
                case .deleteTable(let t): out[t] = nil
                case .addChain(let t, let c, _): out[t, default: [:]][c, default: 0] += 0
                case .flushChain(let t, let c): out[t]?[c] = 0
                case .deleteChain(let t, let c): out[t]?[c] = nil
                case .addRule(let t, let c, _): out[t, default: [:]][c, default: 0] += 1
                default: break
                }
            }
            tamper(&out)
            return out.filter { tables.contains($0.key) }
        }
        func counters(table: String) throws(NFTablesError) -> [String: (packets: UInt64, bytes: UInt64)] { [:] }
        func apply(_ ops: [NFT.Op]) throws(NFTablesError) {
            batches.append(ops)
            log.append("# netlink batch\n" + NFT.text(ops))
        }
    }

    @Test("services: the nftables text for the same objects (whole, then the change as a netlink batch), and the stale UDP conntrack it clears")
    func servicesAsNFTables() async throws {
        let store = MemoryDatastore()
        try await Self.put(store, try Self.servicesManifests())
        let kernel = RecordingKernel()
        // A client of drain, NATed to drain-0 (terminating); it must move to drain-1 once that is ready.
        let client = IPAddress("10.244.0.30")!, vip = IPAddress("10.96.0.13")!, old = IPAddress("10.244.0.8")!
        nonisolated(unsafe) let conntrack = FakeConntrack([ConntrackEntry(original: ConntrackTuple(source: client, destination: vip, proto: .udp, sourcePort: 40000, destinationPort: 53),
                                                                          reply: ConntrackTuple(source: old, destination: client, proto: .udp, sourcePort: 5353, destinationPort: 40000))])
        let dataplane = NFTablesDataplane(node: "node0", logger: Self.logger, kernel: { kernel }, netlink: { kernel }, conntrack: { conntrack })
        #expect(try dataplane.programServices(.all(try await DesiredState.serviceEntries(store))) == .replaced)
        try await Self.put(store, try Self.servicesChange())
        try await store.delete(Keys.services + "default/empty", expectedRevision: nil)
        let changed = try await DesiredState.serviceEntries(store).filter { ["default/web", "default/drain"].contains($0.key) }
        #expect(try dataplane.programServices(.change(changed: changed, removed: ["default/empty"])) == .updated)
        try Self.expectGolden(kernel.log.joined(separator: "\n"), "services.nft")
        #expect(conntrack.deleted.map(\.reply.source) == [old], "the entry answered by the endpoint that no longer takes traffic is gone")
        #expect(dataplane.dump() == DataplaneView.dump(services: try await DesiredState.serviceEntries(store), policy: nil, node: "node0"),
                "the nftables dataplane's logical dump is the fake's format")
    }

    // MARK: policy

    static func pod(_ ns: String, _ name: String, node: String, ip: String, labels: String, ports: String = "[]") -> String {
        #"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"\#(name)","namespace":"\#(ns)","labels":\#(labels)},"spec":{"nodeName":"\#(node)","containers":[{"name":"c","image":"agnhost","ports":\#(ports)}]},"status":{"phase":"Running","podIP":"\#(ip)","podIPs":[{"ip":"\#(ip)"}]}}"#
    }

    /// Pods in two namespaces on two nodes; b (node0) is isolated both ways: ingress from a on its
    /// named port, egress to namespace y's pods on 5432 and to 10.0.0.0/8 but the service range on
    /// UDP 53; a is isolated for ingress by a deny-all.
    static func policyManifests() throws -> [KubeObject] {
        try objects([
            #"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"x","labels":{"team":"x"}}}"#,
            #"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"y","labels":{"team":"y"}}}"#,
            pod("x", "a", node: "node0", ip: "10.244.0.20", labels: #"{"pod":"a"}"#),
            pod("x", "b", node: "node0", ip: "10.244.0.21", labels: #"{"pod":"b","role":"db-client"}"#, ports: #"[{"name":"web","containerPort":80}]"#),
            pod("x", "c", node: "node1", ip: "10.244.1.22", labels: #"{"pod":"c"}"#),
            pod("y", "d", node: "node1", ip: "10.244.1.23", labels: #"{"app":"db"}"#),
            #"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"only-a","namespace":"x"},"spec":{"podSelector":{"matchLabels":{"pod":"b"}},"ingress":[{"from":[{"podSelector":{"matchLabels":{"pod":"a"}}}],"ports":[{"port":"web"}]}]}}"#,
            #"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"egress-b","namespace":"x"},"spec":{"podSelector":{"matchLabels":{"role":"db-client"}},"policyTypes":["Egress"],"egress":[{"to":[{"namespaceSelector":{"matchLabels":{"team":"y"}}}],"ports":[{"port":5432}]},{"to":[{"ipBlock":{"cidr":"10.0.0.0/8","except":["10.96.0.0/12"]}}],"ports":[{"protocol":"UDP","port":53}]}]}}"#,
            #"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"deny-all","namespace":"x"},"spec":{"podSelector":{"matchLabels":{"pod":"a"}},"policyTypes":["Ingress"]}}"#,
        ])
    }

    @Test("policy: the enforcer hands the dataplane the policy state for this node's pods; dump, trace verdicts and nftables text are the golden ones")
    func policyThroughTheEnforcer() async throws {
        let store = MemoryDatastore()
        try await Self.put(store, try Self.policyManifests())
        let dataplane = FakeDataplane(node: "node0")
        let cache = ClusterCache(store: store, logger: Self.logger)
        let enforcer = PolicyEnforcer(cache: cache, logger: Self.logger, node: "node0", dataplane: dataplane, openLog: { nil })
        try await withRunning(cache, [{ try await enforcer.run() }]) {
            try await Self.until("the enforcer programs the policies") { dataplane.policy?.policies.count == 3 && dataplane.policy?.pods.count == 4 }
        }
        #expect(dataplane.writes.first == "policy resync", "the whole state first: \(dataplane.writes)")
        try Self.expectGolden(dataplane.dump(), "policy.txt")

        let a = IPAddress("10.244.0.20")!, b = IPAddress("10.244.0.21")!, c = IPAddress("10.244.1.22")!, d = IPAddress("10.244.1.23")!
        #expect(dataplane.tracePolicy(.ingress, pod: b, peer: a, port: 80, proto: "TCP") == PolicyTrace(pod: "x/b", allowed: true, isolatedBy: ["x/only-a"], allowedBy: ["x/only-a"]))
        #expect(dataplane.tracePolicy(.ingress, pod: b, peer: c, port: 80, proto: "TCP").allowed == false)
        #expect(dataplane.tracePolicy(.egress, pod: b, peer: d, port: 5432, proto: "TCP").allowedBy == ["x/egress-b"])
        #expect(dataplane.tracePolicy(.egress, pod: b, peer: IPAddress("10.96.0.10")!, port: 53, proto: "UDP").allowed == false, "the service range is excepted")
        #expect(dataplane.tracePolicy(.ingress, pod: c, peer: a, port: 80, proto: "TCP").pod == nil, "c is node1's to judge")

        let kernel = RecordingKernel()
        let nft = NFTablesDataplane(node: "node0", logger: Self.logger, kernel: { kernel }, netlink: { kernel }, conntrack: { throw NFTablesError(message: "none") })
        #expect(try nft.programPolicy(try #require(dataplane.policy), resync: true) == .replaced)
        try Self.expectGolden(kernel.log.joined(separator: "\n"), "policy.nft")
        #expect(nft.dump() == dataplane.dump(), "the nftables dataplane's logical dump is the fake's")
        #expect(nft.counts(.policy).first?.name == PolicyRules.table)
    }

    @Test("nftables: doctor's drift and trace's kernel side come from the dataplane, which alone knows its tables, maps and keys")
    func nftablesObserved() async throws {
        let store = MemoryDatastore()
        try await Self.put(store, try Self.servicesManifests() + Self.policyManifests())
        let kernel = RecordingKernel()
        let dataplane = NFTablesDataplane(node: "node0", logger: Self.logger, kernel: { kernel }, netlink: { kernel }, conntrack: { throw NFTablesError(message: "none") })
        #expect(try dataplane.check().isEmpty, "nothing programmed, nothing to compare")
        try dataplane.programServices(.all(try await DesiredState.serviceEntries(store)))
        try dataplane.programPolicy(try await DesiredState.policyInput(store).0, resync: false)
        #expect(try dataplane.check().isEmpty, "the kernel holds what was written")
        kernel.tamper = { t in t["weft-policy"]!["antispoof"]! -= 1; t["weft-services-3"] = nil }
        #expect(try dataplane.check() == [DataplaneDrift(object: "table inet weft-policy", missing: false, differences: ["chain antispoof: 3 rule(s), 4 meant"]),
                                          DataplaneDrift(object: "table inet weft-services-3", missing: true)])

        // web's VIP: the kernel has its element in the shard, so the trace agrees; drain's is missing.
        let web = try #require(dataplane.traceService(address: IPAddress("10.96.0.10")!, port: 80, proto: "TCP"))
        let shard = try #require(web.place?.split(separator: " ").last)
        kernel.elements = ["service-ips { 10.96.0.10 . tcp . 80 }", "no-endpoint-services { 10.96.0.15 . tcp . 80 }", "ingress-pods4 { 10.244.0.21 }"]
        let webAgain = try #require(dataplane.traceService(address: IPAddress("10.96.0.10")!, port: 80, proto: "TCP"))
        #expect(webAgain.live == DataplaneLive(text: "service-ips has 10.96.0.10 . tcp . 80", agrees: true) && shard.hasPrefix("weft-services-"))
        #expect(dataplane.traceService(address: IPAddress("10.96.0.13")!, port: 53, proto: "UDP")?.live?.agrees == false)
        #expect(dataplane.traceService(address: IPAddress("10.96.0.15")!, port: 80, proto: "TCP")?.live == DataplaneLive(text: "no-endpoint-services has 10.96.0.15 . tcp . 80 (reject)", agrees: true))
        #expect(dataplane.traceService(address: IPAddress("10.96.0.10")!, port: 81, proto: "TCP") == nil)
        let b = IPAddress("10.244.0.21")!, a = IPAddress("10.244.0.20")!
        #expect(dataplane.tracePolicy(.ingress, pod: b, peer: a, port: 80, proto: "TCP").live == DataplaneLive(text: "10.244.0.21 is in ingress-pods (isolated)", agrees: true))
        #expect(dataplane.tracePolicy(.ingress, pod: a, peer: b, port: 80, proto: "TCP").live == DataplaneLive(text: "10.244.0.20 is not in ingress-pods (not isolated)", agrees: false),
                "a is isolated by deny-all, but the kernel's map lacks it")
    }

    // MARK: the agent's endpoint

    @Test("/dataplane answers the node's loopback only, with the dump, service and policy traces as JSON, and names bad input")
    func endpoint() async throws {
        let store = MemoryDatastore()
        try await Self.put(store, try Self.servicesManifests())
        let dataplane = FakeDataplane(node: "node0")
        try dataplane.programServices(.all(try await DesiredState.serviceEntries(store)))
        func get(_ uri: String, remote: String = "127.0.0.1") -> AgentHTTPServer.Response {
            var r = AgentHTTPServer.parse(uri)
            r.remote = remote
            return DataplaneEndpoint.respond(dataplane, r)
        }
        #expect(get("/dataplane", remote: "10.244.0.5").status == .forbidden)
        #expect(String(decoding: get("/dataplane").body, as: UTF8.self) == "kind fake\n" + dataplane.dump())
        let r = get("/dataplane/service?address=10.96.0.10&port=80&protocol=TCP")
        let t = try #require(ServiceTrace(json: try JSONValue.parse(r.body)))
        #expect(t == dataplane.traceService(address: IPAddress("10.96.0.10")!, port: 80, proto: "TCP"))
        guard case .forward(let backends) = t.frontend.action else { Issue.record("web forwards: \(t)"); return }
        #expect(backends.map(\.pod).sorted() == ["web-0", "web-1"] && t.frontend.affinitySeconds == 600)
        #expect(try ServiceTrace(json: try JSONValue.parse(get("/dataplane/service?address=10.96.0.15&port=80").body))?.frontend.action == .reject)
        #expect(get("/dataplane/service?address=10.96.0.99&port=80").status == .notFound)
        let bad = get("/dataplane/service?address=10.96.0.10&port=99999")
        #expect(bad.status == .badRequest && String(decoding: bad.body, as: UTF8.self).contains("port \"99999\""))
        #expect(String(decoding: get("/dataplane/policy?direction=sideways&pod=10.0.0.1&peer=10.0.0.2").body, as: UTF8.self).contains("direction \"sideways\""))
        let p = try #require(PolicyTrace(json: try JSONValue.parse(get("/dataplane/policy?direction=ingress&pod=10.244.0.5&peer=10.244.0.6&port=80").body)))
        #expect(p == PolicyTrace(pod: nil, allowed: true, isolatedBy: [], allowedBy: []), "no policy given: nothing judged")
        #expect(try JSONValue.parse(get("/dataplane/check").body)["drift"]?.arrayValue?.isEmpty == true)
    }
}
