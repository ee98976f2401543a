import Testing
import WeftCore

/// The typed nftables layer: the one diff, the one renderer.
struct NFTTests {
    static func table() -> NFT.Table {
        var t = NFT.Table()
        t.sets["pods"] = NFT.NamedSet(key: .address(.v4), comment: "the pods")
        t.sets["dispatch"] = NFT.NamedSet(key: .address(.v4), isMap: true)
        t.elements["pods"] = [.address(IPAddress("10.0.0.1")!): nil, .address(IPAddress("10.0.0.2")!): nil]
        t.elements["dispatch"] = [.address(IPAddress("10.0.0.1")!): .jump("a")]
        t.chains["in"] = NFT.Chain(hook: .init(.filter, .input, priority: 0), rules: [NFT.Rule(.lookup(.address(.source, .v4), map: "dispatch"))])
        t.chains["a"] = NFT.Chain(rules: [NFT.Rule(.addressIn(.source, .v4, set: "pods"), .l4proto(.tcp), .destinationPort(80...80), .verdict(.accept))])
        return t
    }

    @Test func theDiffIsTheMinimalTransaction() throws {
        let before = Self.table()
        var after = before
        after.elements["pods"]![.address(IPAddress("10.0.0.2")!)] = nil           // an element gone
        after.elements["pods"]![.address(IPAddress("10.0.0.3")!)] = .some(nil)     // one added
        after.chains["a"]!.rules = [NFT.Rule(.addressIn(.source, .v4, set: "pods"), .verdict(.accept))]   // a chain rewritten
        after.chains["b"] = NFT.Chain(rules: [NFT.Rule(.verdict(.drop))])             // a chain added
        after.elements["dispatch"]![.address(IPAddress("10.0.0.1")!)] = .some(.jump("b"))   // a verdict changed
        let change = try #require(NFT.transaction(from: NFT.Ruleset(["t": before]), to: NFT.Ruleset(["t": after])))
        #expect(change.scripts.update == """
            delete element inet t dispatch { 10.0.0.1 }
            delete element inet t pods { 10.0.0.2 }
            add chain inet t b
            flush chain inet t a
            add rule inet t a ip saddr @pods accept
            add rule inet t b drop
            add element inet t dispatch { 10.0.0.1 : jump b }
            add element inet t pods { 10.0.0.3 }

            """)
        #expect(change.cleanup.isEmpty)
        // Back again: the chain that goes is emptied in the update and deleted after it.
        let back = try #require(NFT.transaction(from: NFT.Ruleset(["t": after]), to: NFT.Ruleset(["t": before])))
        #expect(back.update.contains(.flushChain(table: "t", "b")) && back.cleanup == [.deleteChain(table: "t", "b")])
        #expect(NFT.transaction(from: NFT.Ruleset(["t": before]), to: NFT.Ruleset(["t": before]))?.isEmpty == true)
        // A set's definition or a base chain's hook changed: only a replace does it.
        var redefined = before
        redefined.sets["pods"]!.comment = "other pods"
        #expect(NFT.transaction(from: NFT.Ruleset(["t": before]), to: NFT.Ruleset(["t": redefined])) == nil)
        var rehooked = before
        rehooked.chains["in"]!.hook = .init(.filter, .forward, priority: 0)
        #expect(NFT.transaction(from: NFT.Ruleset(["t": before]), to: NFT.Ruleset(["t": rehooked])) == nil)
    }

    @Test func aFullReplaceIsOneScriptInDependencyOrder() {
        #expect(NFT.text(NFT.replacing(NFT.Ruleset(["t": Self.table()]), deleting: ["old"])) == """
            delete table inet old
            add table inet t
            delete table inet t
            add table inet t
            add map inet t dispatch { type ipv4_addr : verdict ; }
            add set inet t pods { type ipv4_addr ; comment "the pods" ; }
            add chain inet t a
            add chain inet t in { type filter hook input priority 0 ; }
            add rule inet t a ip saddr @pods meta l4proto tcp th dport 80 accept
            add rule inet t in ip saddr vmap @dispatch
            add element inet t dispatch { 10.0.0.1 : jump a }
            add element inet t pods { 10.0.0.1, 10.0.0.2 }

            """)
    }

    /// Elements go in commands of at most 1,000; read back, the commands hold every element once.
    @Test func elementsAreSplitAndComeBackWhole() {
        let keys = (0..<2500).map { NFT.Key.addressProtoPort(IPAddress(family: .v4, value: 0x0A00_0000 + UInt128($0)), .udp, 53) }
        let text = NFT.text([.addElements(table: "t", set: "s", Dictionary(uniqueKeysWithValues: keys.map { ($0, NFT.Verdict?.some(.drop)) }))])
        let commands = text.split(separator: "\n")
        #expect(commands.count == 3 && commands.allSatisfy { $0.hasPrefix("add element inet t s { ") && $0.hasSuffix(" }") })
        let back = commands.flatMap { $0.dropFirst("add element inet t s { ".count).dropLast(2).split(separator: ", ").map(String.init) }
        #expect(back.count == 2500 && Set(back) == Set(keys.map { "\(NFT.text($0)) : drop" }))
    }

    @Test func masqueradeGolden() {
        let script = Masquerade.ensureScript(network: "weftnet", podRanges: [IPNetwork("10.22.0.0/24")!],
                                             clusterRanges: [IPNetwork("10.0.0.0/8")!, IPNetwork("10.22.0.0/24")!])
        let rule = "ip saddr 10.22.0.0/24 ip daddr != 10.0.0.0/8 ip daddr != 10.22.0.0/24 ip daddr != 224.0.0.0/4 counter masquerade"
        #expect(script == """
            add table inet weft
            add chain inet weft masquerade-weftnet { type nat hook postrouting priority 100 ; }
            flush chain inet weft masquerade-weftnet
            add rule inet weft masquerade-weftnet \(rule) comment "pod traffic leaving the cluster weft:\(hex16(fnv1a64(rule)))"

            """)
    }

    /// One service with two endpoints: its shard's part of the tables and the front table's element.
    @Test func servicesGolden() throws {
        var web = try ServiceTests.service(#"{"selector":{"app":"web"},"ports":[{"port":80,"targetPort":8080}]}"#)
        web.clusterIPs = [IPAddress("10.96.0.20")!]
        let eps = [ServiceEndpoint(pod: "a", address: IPAddress("10.244.0.5")!, ready: true, nodeName: "n", ports: ["": 8080]),
                   ServiceEndpoint(pod: "b", address: IPAddress("10.244.1.5")!, ready: true, nodeName: "n", ports: ["": 8080])]
        var empty = try ServiceTests.service(#"{"selector":{"app":"none"},"ports":[{"port":81}]}"#, name: "empty")
        empty.clusterIPs = [IPAddress("10.96.0.21")!]
        let m = ServiceRules.model([.init(service: web, endpoints: eps), .init(service: empty, endpoints: [])])
        let shard = ServiceRules.table(for: web)
        let t = m.fragments
        #expect(Set(t.tables.keys) == [shard, ServiceRules.frontTable])
        #expect(NFT.text(NFT.Transaction(update: NFT.replacing(NFT.Ruleset([shard: t[shard]])).dropFirst(3).map { $0 }).update) == """
            add map inet \(shard) svc-default/web/tcp/80/pick { typeof numgen random mod 1 : verdict ; }
            add chain inet \(shard) svc-default/web/tcp/80
            add chain inet \(shard) svc-default/web/tcp/80/ep/10.244.0.5/8080
            add chain inet \(shard) svc-default/web/tcp/80/ep/10.244.1.5/8080
            add rule inet \(shard) svc-default/web/tcp/80 numgen random mod 2 vmap @svc-default/web/tcp/80/pick
            add rule inet \(shard) svc-default/web/tcp/80/ep/10.244.0.5/8080 ip saddr 10.244.0.5 meta mark set meta mark | 0x4000
            add rule inet \(shard) svc-default/web/tcp/80/ep/10.244.0.5/8080 meta l4proto tcp dnat ip to 10.244.0.5:8080
            add rule inet \(shard) svc-default/web/tcp/80/ep/10.244.1.5/8080 ip saddr 10.244.1.5 meta mark set meta mark | 0x4000
            add rule inet \(shard) svc-default/web/tcp/80/ep/10.244.1.5/8080 meta l4proto tcp dnat ip to 10.244.1.5:8080
            add element inet \(shard) service-ips { 10.96.0.20 . tcp . 80 : goto svc-default/web/tcp/80 }
            add element inet \(shard) svc-default/web/tcp/80/pick { 0 : goto svc-default/web/tcp/80/ep/10.244.0.5/8080, 1 : goto svc-default/web/tcp/80/ep/10.244.1.5/8080 }

            """)
        #expect(t[ServiceRules.frontTable].elements == ["no-endpoint-services": [.addressProtoPort(IPAddress("10.96.0.21")!, .tcp, 81): .goto("reject-chain")]])
    }

    /// A policy's chains, sets and elements as nft text.
    @Test func policyGolden() throws {
        let p = try NetworkPolicyTests.policy(#"{"podSelector":{"matchLabels":{"app":"db"}},"ingress":[{"from":[{"ipBlock":{"cidr":"10.1.0.0/16","except":["10.1.2.0/24"]}}],"ports":[{"port":5432}]}]}"#, name: "db", namespace: "a")
        let pods = [NetworkPolicyTests.pod("a", "db", ["app": "db"], "10.0.1.2")]
        let t = PolicyRules.model(.init(policies: [p], pods: pods, namespaces: NetworkPolicyTests.ns), node: "n1")
        let sel = PolicyRules.podsSet(p, "4"), sel6 = PolicyRules.podsSet(p, "6")
        #expect(NetworkPolicyTests.texts(t, "np/a/db/ingress") == ["ip saddr 10.1.0.0/16 ip saddr != 10.1.2.0/24 meta l4proto tcp th dport 5432 accept"])
        #expect(NetworkPolicyTests.texts(t, "ns/a/ingress") == ["ip daddr @\(sel) jump np/a/db/ingress", "ip6 daddr @\(sel6) jump np/a/db/ingress", "goto ingress-denied"])
        #expect(NetworkPolicyTests.texts(t, "ingress-denied") == ["counter name \"denied-ingress\"",
                                                                  "limit rate 50/second burst 50 packets log prefix \"weft-policy ingress\" group 4210", "drop"])
        #expect(NetworkPolicyTests.texts(t, "antispoof") == ["iifname != \"weft*\" accept", "iifname \"weft.vxlan\" accept", "ip6 saddr :: accept",
                                                             "fib saddr . iif oif missing goto spoofed"])
        #expect(NetworkPolicyTests.texts(t, "input-egress") == ["ct state established,related accept", "icmpv6 type nd-neighbor-solicit accept",
                                                                "icmpv6 type nd-neighbor-advert accept", "icmpv6 type nd-router-solicit accept",
                                                                "ip saddr vmap @egress-pods4", "ip6 saddr vmap @egress-pods6"])
        #expect(NFT.text(t.sets[sel]!) == "{ type ipv4_addr ; comment \"pods app=db in a\" ; }")
        #expect(NetworkPolicyTests.keys(t, sel) == ["10.0.1.2"] && t.elements["ingress-pods4"] == [.address(IPAddress("10.0.1.2")!): NFT.Verdict.jump("ns/a/ingress")])
        #expect(t.counters == ["denied-ingress", "denied-egress", "spoofed"])
    }
}
