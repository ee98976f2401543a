import Foundation
import Testing
import WeftCore
import WeftOS

/// The services table's changes written as raw nf_tables netlink batches: the kernel must end
/// up holding exactly what libnftables writes for the same model, for every kind of rule, set
/// and element; a refused batch changes nothing.
@Suite(.serialized) struct ServiceTableTests {
    static func service(_ name: String, _ spec: String) throws -> ClusterService {
        let j = try JSONValue.parse(Array(#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"\#(name)","namespace":"t"},"spec":\#(spec)}"#.utf8))
        return try ClusterService(KubeObject(json: j))
    }

    static func endpoint(_ pod: String, _ ip: String, node: String = "n0", ready: Bool = true) -> ServiceEndpoint {
        ServiceEndpoint(pod: pod, address: IPAddress(ip)!, ready: ready, nodeName: node, ports: ["": 8080, "dns": 53])
    }

    /// Services covering every rule shape: dual-stack, node ports with Local policy, session
    /// affinity in both families, external IPs, UDP and SCTP, no endpoints.
    static func entries(_ endpoints: [String: [ServiceEndpoint]]) throws -> [ServiceRules.Entry] {
        var web = try service("web", #"{"type":"NodePort","ipFamilyPolicy":"PreferDualStack","ports":[{"port":80,"targetPort":8080,"nodePort":30080}],"sessionAffinity":"ClientIP","sessionAffinityConfig":{"clientIP":{"timeoutSeconds":60}}}"#)
        web.clusterIPs = [IPAddress("10.96.0.10")!, IPAddress("fd00:96::10")!]
        var local = try service("local", #"{"type":"NodePort","externalTrafficPolicy":"Local","internalTrafficPolicy":"Local","ports":[{"port":81,"targetPort":8080,"nodePort":30081}],"externalIPs":["192.0.2.7"]}"#)
        local.clusterIPs = [IPAddress("10.96.0.11")!]
        var dns = try service("dns", #"{"ports":[{"name":"dns","port":53,"protocol":"UDP","targetPort":"dns"},{"name":"s","port":9,"protocol":"SCTP","targetPort":8080}]}"#)
        dns.clusterIPs = [IPAddress("10.96.0.12")!]
        var empty = try service("empty", #"{"ports":[{"port":82}]}"#)
        empty.clusterIPs = [IPAddress("10.96.0.13")!]
        return [web, local, dns, empty].map { .init(service: $0, endpoints: endpoints[$0.name] ?? []) }
    }

    /// `nft list table` made comparable: blocks sorted by name, each map's elements sorted
    /// (the kernel lists chains in the order they were made and elements in hash order).
    static func canonical(_ listing: String) -> [String] {
        var blocks: [String] = [], current: [String] = []
        for raw in listing.split(separator: "\n") {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.hasPrefix("chain ") || line.hasPrefix("map ") || line.hasPrefix("set ") || line.hasPrefix("counter ") {
                current = [line]
            } else if line == "}" && !current.isEmpty {
                var text = current.joined(separator: "\n")
                if let open = text.range(of: "elements = { "), let close = text.range(of: " }", range: open.upperBound..<text.endIndex) {
                    let items = text[open.upperBound..<close.lowerBound].split(separator: ",").map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }
                    text = text[..<open.upperBound] + items.sorted().joined(separator: ", ") + text[close.lowerBound...]
                }
                blocks.append(text)
                current = []
            } else if !current.isEmpty {
                current.append(line)
            }
        }
        return blocks.sorted()
    }

    /// Every table of the services dataplane, canonical, each block named by its table.
    static func listing(_ ns: NetworkNamespace, _ nft: LibNFTables) throws -> [String] {
        try ServiceRules.tables.flatMap { t in
            let text = try ns.run { () throws(NFTablesError) in try nft.list(table: t, family: "inet") } ?? ""
            return canonical(text).map { "\(t): \($0)" }
        }
    }

    @Test func netlinkChangesLeaveWhatAFullSyncWrites() throws {
        let lab = try KernelLab()
        defer { lab.close() }
        let ns = try NetworkNamespace(path: "/run/netns/\(lab.node)")
        let a = Self.endpoint("a", "10.244.0.5"), b = Self.endpoint("b", "10.244.1.5", node: "n1"), a6 = Self.endpoint("a6", "fd00:244::5")
        let c = Self.endpoint("c", "10.244.2.5")
        let steps: [[String: [ServiceEndpoint]]] = [
            ["web": [a, b, a6], "local": [a, b], "dns": [a]],
            // An endpoint added, one gone, a family gone, a service losing all, one gaining its first.
            ["web": [a, c], "local": [b], "dns": [], "empty": [c]],
            ["web": [b, a6, c], "local": [a, c], "dns": [a, b]],
            [:],
        ]
        let nft = LibNFTables(), netlink = NFTablesNetlink()
        var model = ServiceRules.Model(node: "n0")
        var seenOps = Set<String>(), seenRules = Set<String>(), seenTables = Set<String>()
        for (i, step) in steps.enumerated() {
            // In place, as the agent does: the update returns the change to write.
            let update = model.update(with: try Self.entries(step))
            if i == 0 {
                try ns.run { () throws(NFTablesError) in try nft.run(ServiceRules.fullScript(model)) }
            } else {
                let change = try #require(update)
                for op in change.ops {
                    seenOps.insert(String("\(op)".prefix { $0 != "(" }))
                    if case .addRule(_, _, let r) = op { for st in r.statements { seenRules.insert(String("\(st)".prefix { $0 != "(" })) } }
                    seenTables.insert(op.table)
                }
                try ns.run { () throws(NFTablesError) in
                    try netlink.apply(change.ops)
                }
            }
            let written = try Self.listing(ns, nft)
            // The same model written whole by libnftables, in a second namespace.
            try lab.addNamespace(lab.id + "-ref\(i)")
            let ref = try NetworkNamespace(path: "/run/netns/\(lab.id)-ref\(i)")
            try ref.run { () throws(NFTablesError) in try nft.run(ServiceRules.fullScript(ServiceRules.model(try! Self.entries(step), node: "n0"))) }
            let expected = try Self.listing(ref, nft)
            #expect(written == expected, "step \(i):\n\(written.joined(separator: "\n"))")
            #expect(written.count > 8 * ServiceRules.tables.count, "every table was read")
        }
        // Every kind of operation and rule went through netlink at least once.
        #expect(seenOps == ["addSet", "addChain", "flushChain", "addRule", "addElements", "deleteElements", "deleteChain", "deleteSet"])
        #expect(seenRules == ["address", "setMarkBits", "addSourceTo", "addressIn", "verdict", "l4proto", "dnat", "lookup", "family"])
        #expect(seenTables.contains(ServiceRules.frontTable) && seenTables.count > 2, "the front table and several shards changed: \(seenTables)")
    }

    @Test func aRefusedBatchChangesNothingAndSaysWhy() throws {
        let lab = try KernelLab()
        defer { lab.close() }
        let ns = try NetworkNamespace(path: "/run/netns/\(lab.node)")
        let nft = LibNFTables(), netlink = NFTablesNetlink()
        let model = ServiceRules.model(try Self.entries(["web": [Self.endpoint("a", "10.244.0.5")]]), node: "n0")
        try ns.run { () throws(NFTablesError) in try nft.run(ServiceRules.fullScript(model)) }
        let before = try Self.listing(ns, nft)
        // Across two tables: a chain and an element in a shard, a rule naming a chain that does not exist.
        let shard = ServiceRules.shardTable(3)
        let bad: [NFT.Op] = [
            .addChain(table: shard, "new-chain", nil),
            .addElements(table: shard, set: "service-ips", [.addressProtoPort(IPAddress("10.96.0.99")!, .tcp, 80): NFT.Verdict.goto("new-chain")]),
            .addElements(table: ServiceRules.frontTable, set: "no-endpoint-services", [.addressProtoPort(IPAddress("10.96.0.98")!, .tcp, 80): NFT.Verdict.goto("reject-chain")]),
            .addRule(table: shard, chain: "no-such-chain", NFT.Rule(.verdict(.jump("new-chain")))),
        ]
        let error = try #require(throws: NFTablesError.self) {
            try ns.run { () throws(NFTablesError) in try netlink.apply(bad) }
        }
        #expect(error.message.contains("add rule inet \(shard) no-such-chain jump new-chain"), "names the refused operation: \(error.message)")
        #expect(try Self.listing(ns, nft) == before, "nothing of the batch applied")
        // The writer still works after a refusal.
        try ns.run { () throws(NFTablesError) in try netlink.apply(Array(bad.prefix(3))) }
        let now = try Self.listing(ns, nft).joined(separator: "\n")
        #expect(now.contains("\(shard): chain new-chain") && now.contains("10.96.0.99 . tcp . 80 : goto new-chain") && now.contains("10.96.0.98 . tcp . 80 : goto reject-chain"))
    }

    /// A map change larger than one netlink attribute holds (16-bit length) is split over
    /// several messages of the same transaction: 600 endpoints with long chain names.
    @Test func aLargeMapChangeIsSplitAcrossMessages() throws {
        let lab = try KernelLab()
        defer { lab.close() }
        let ns = try NetworkNamespace(path: "/run/netns/\(lab.node)")
        let nft = LibNFTables(), netlink = NFTablesNetlink()
        let t = ServiceRules.shardTable(0)
        try ns.run { () throws(NFTablesError) in try nft.run("add table inet \(t)\n") }
        let chains = (0..<600).map { "svc-monitoring/kube-prometheus-stack-prometheus-node-exporter/tcp/9100/ep/10.244.\($0 / 250).\($0 % 250)/9100" }
        var ops: [NFT.Op] = chains.map { .addChain(table: t, $0, nil) } + [.addSet(table: t, "pick", NFT.NamedSet(key: .random, isMap: true))]
        ops.append(.addElements(table: t, set: "pick", Dictionary(uniqueKeysWithValues: chains.enumerated().map { (NFT.Key.index($0.offset), NFT.Verdict?.some(.goto($0.element))) })))
        try ns.run { () throws(NFTablesError) in try netlink.apply(ops) }
        let listed = try ns.run { () throws(NFTablesError) in try nft.list(table: t, family: "inet") } ?? ""
        #expect(listed.components(separatedBy: " : goto svc-monitoring/").count - 1 == 600)
        try ns.run { () throws(NFTablesError) in try netlink.apply([.deleteElements(table: t, set: "pick", (0..<600).map { .index($0) })]) }
        let after = try ns.run { () throws(NFTablesError) in try nft.list(table: t, family: "inet") } ?? ""
        #expect(!after.contains(" : goto svc-monitoring/"))
    }

    /// A full sync removes shards of another layout (left by an agent of another version).
    @Test func aFullSyncRemovesShardsOfAnotherLayout() throws {
        let lab = try KernelLab()
        defer { lab.close() }
        let ns = try NetworkNamespace(path: "/run/netns/\(lab.node)")
        let nft = LibNFTables()
        let stale = ServiceRules.shardTable(ServiceRules.shardCount + 7)
        try ns.run { () throws(NFTablesError) in
            try nft.run("add table inet \(stale)\nadd table inet someone-else\n")
            try nft.run(ServiceRules.fullScript(ServiceRules.model(try! Self.entries([:])), replacing: try nft.tableNames()))
        }
        let names = try ns.run { () throws(NFTablesError) in try nft.tableNames() }
        #expect(!names.contains(stale), "the stale shard is gone: \(names)")
        #expect(names.contains("someone-else") && Set(ServiceRules.tables).isSubset(of: Set(names)))
    }
    /// The whole tables written as one netlink transaction hold what libnftables' full replace
    /// of the same tables writes: the services (every rule shape, over tables already there),
    /// the policy table (counters, logging, named ports, ipBlocks with exceptions, antispoofing)
    /// and masquerade.
    @Test func aFullReplaceThroughNetlinkEqualsLibnftables() throws {
        let lab = try KernelLab()
        defer { lab.close() }
        let nft = LibNFTables(), netlink = NFTablesNetlink()
        try lab.addNamespace(lab.id + "-nl")
        try lab.addNamespace(lab.id + "-ref")
        let viaNetlink = try NetworkNamespace(path: "/run/netns/\(lab.id)-nl"), viaLib = try NetworkNamespace(path: "/run/netns/\(lab.id)-ref")
        let a = Self.endpoint("a", "10.244.0.5"), b = Self.endpoint("b", "10.244.1.5", node: "n1"), a6 = Self.endpoint("a6", "fd00:244::5")
        let rulesets: [NFT.Ruleset] = [
            ServiceRules.ruleset(ServiceRules.model(try Self.entries(["web": [a, b, a6], "local": [a, b], "dns": [a]]), node: "n0")),
            ServiceRules.ruleset(ServiceRules.model(try Self.entries(["web": [b], "empty": [a]]), node: "n0")),
            PolicyRules.ruleset(try Self.policyInput(), node: "n1"),
            NFT.Ruleset([Masquerade.table: Self.masquerade()]),
        ]
        for (i, r) in rulesets.enumerated() {
            let ops = NFT.replacing(r)
            try viaNetlink.run { () throws(NFTablesError) in try netlink.apply(ops) }
            try viaLib.run { () throws(NFTablesError) in try nft.run(NFT.text(ops)) }
            for t in r.tables.keys.sorted() {
                let got = Self.canonical(try viaNetlink.run { () throws(NFTablesError) in try nft.list(table: t, family: "inet") } ?? "")
                let want = Self.canonical(try viaLib.run { () throws(NFTablesError) in try nft.list(table: t, family: "inet") } ?? "")
                #expect(got == want, "ruleset \(i), table \(t):\n\(got.joined(separator: "\n"))\n---\n\(want.joined(separator: "\n"))")
                #expect(!want.isEmpty, "ruleset \(i), table \(t) was listed")
            }
        }
    }

    static func policyInput() throws -> PolicyRules.Input {
        func policy(_ name: String, _ spec: String) throws -> NetworkPolicy {
            try NetworkPolicy(KubeObject(json: JSONValue.parse(Array(#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"\#(name)","namespace":"a"},"spec":\#(spec)}"#.utf8))))
        }
        let db = try policy("db", #"{"podSelector":{"matchLabels":{"app":"db"}},"ingress":[{"from":[{"podSelector":{"matchLabels":{"app":"web"}}},{"ipBlock":{"cidr":"192.168.0.0/16","except":["192.168.1.0/24","192.168.2.0/24"]}}],"ports":[{"port":"pg"},{"port":8000,"endPort":8080},{"protocol":"UDP"}]}]}"#)
        let egress = try policy("out", #"{"podSelector":{},"policyTypes":["Egress"],"egress":[{"to":[{"namespaceSelector":{}}]},{"to":[{"ipBlock":{"cidr":"fd00::/8"}}],"ports":[{"port":53,"protocol":"UDP"}]}]}"#)
        let pods = [PolicyPod(namespace: "a", name: "db", labels: ["app": "db"], addresses: [IPAddress("10.0.1.2")!, IPAddress("fd00:1::2")!], node: "n1", namedPorts: ["pg/TCP": 5432]),
                    PolicyPod(namespace: "a", name: "web", labels: ["app": "web"], addresses: [IPAddress("10.0.2.3")!], node: "n2"),
                    PolicyPod(namespace: "kube-system", name: "dns", labels: [:], addresses: [IPAddress("192.168.100.11")!], node: "n1",
                              namedPorts: ["dns/UDP": 53], selectable: false)]
        return PolicyRules.Input(policies: [db, egress], pods: pods, namespaces: ["a": [:], "kube-system": [:]])
    }

    static func masquerade() -> NFT.Table {
        var t = NFT.Table()
        let rules = Masquerade.rules(podRanges: [IPNetwork("10.22.0.0/24")!, IPNetwork("fd00:22::/64")!],
                                     clusterRanges: [IPNetwork("10.0.0.0/8")!, IPNetwork("10.22.0.0/24")!, IPNetwork("fd00::/8")!])
        t.chains[Masquerade.chain(network: "n")] = NFT.Chain(hook: .init(.nat, .postrouting, priority: 100), rules: rules)
        return t
    }
}
