import Testing
import WeftCore

struct NetworkPolicyTests {
    static func policy(_ spec: String, name: String = "p", namespace: String = "default") throws -> NetworkPolicy {
        let j = try JSONValue.parse(#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"\#(name)","namespace":"\#(namespace)"},"spec":\#(spec)}"#)
        return try NetworkPolicy(KubeObject(json: j))
    }

    func expectError(_ spec: String, mentioning parts: [String], sourceLocation: SourceLocation = #_sourceLocation) {
        let e = #expect(throws: ManifestError.self, sourceLocation: sourceLocation) { _ = try Self.policy(spec) }
        for p in parts { #expect(e?.description.contains(p) == true, "\"\(e?.description ?? "")\" should mention \"\(p)\"", sourceLocation: sourceLocation) }
    }

    @Test func policyTypesDefaultAsKubernetesDoes() throws {
        #expect(try Self.policy(#"{"podSelector":{}}"#).policyTypes == [.ingress])
        #expect(try Self.policy(#"{"podSelector":{},"egress":[{}]}"#).policyTypes == [.ingress, .egress])
        #expect(try Self.policy(#"{"podSelector":{},"egress":[]}"#).policyTypes == [.ingress], "an empty egress list is no egress rule")
        #expect(try Self.policy(#"{"podSelector":{},"policyTypes":["Egress"]}"#).policyTypes == [.egress])
    }

    @Test func selectorsAndPeersParse() throws {
        let p = try Self.policy(#"""
        {"podSelector":{"matchLabels":{"app":"db"},"matchExpressions":[{"key":"tier","operator":"NotIn","values":["test"]}]},
         "ingress":[{"from":[{"podSelector":{"matchLabels":{"app":"web"}},"namespaceSelector":{"matchLabels":{"team":"a"}}},
                             {"podSelector":{"matchLabels":{"app":"web"}}},{"namespaceSelector":{}},
                             {"ipBlock":{"cidr":"192.168.0.0/16","except":["192.168.1.0/24"]}}],
                     "ports":[{"port":5432},{"protocol":"UDP","port":"dns"},{"port":8000,"endPort":8080},{"protocol":"SCTP"}]}]}
        """#)
        #expect(p.podSelector.matches(["app": "db"]) && p.podSelector.matches(["app": "db", "tier": "prod"]))
        #expect(!p.podSelector.matches(["app": "db", "tier": "test"]) && !p.podSelector.matches(["app": "web"]))
        let web = LabelSelector(matchLabels: ["app": "web"])
        #expect(p.ingress[0].peers == [.pods(podSelector: web, namespaceSelector: LabelSelector(matchLabels: ["team": "a"])),
                                       .pods(podSelector: web, namespaceSelector: nil), .pods(podSelector: nil, namespaceSelector: .everything),
                                       .ipBlock(cidr: net("192.168.0.0/16"), except: [net("192.168.1.0/24")])])
        #expect(p.ingress[0].ports == [.init(port: .number(5432)), .init(proto: "UDP", port: .name("dns")),
                                       .init(port: .number(8000), endPort: 8080), .init(proto: "SCTP")])
    }

    @Test func badPoliciesNameTheField() {
        expectError(#"{"podSelector":{"matchExpressions":[{"key":"app","operator":"Has"}]}}"#, mentioning: ["spec.podSelector.matchExpressions[0].operator", "In, NotIn, Exists or DoesNotExist"])
        expectError(#"{"podSelector":{"matchExpressions":[{"key":"app","operator":"In"}]}}"#, mentioning: ["matchExpressions[0].values is empty"])
        expectError(#"{"podSelector":{"matchExpressions":[{"key":"app","operator":"Exists","values":["x"]}]}}"#, mentioning: ["must be empty"])
        expectError(#"{"podSelector":{"matchLabels":{"bad key!":"x"}}}"#, mentioning: ["spec.podSelector.matchLabels", "bad key!"])
        expectError(#"{"podSelector":{},"ingress":[{"ports":[{"protocol":"ICMP"}]}]}"#, mentioning: ["spec.ingress[0].ports[0].protocol", "TCP, UDP or SCTP"])
        expectError(#"{"podSelector":{},"ingress":[{"ports":[{"port":70000}]}]}"#, mentioning: ["spec.ingress[0].ports[0].port 70000", "1 to 65535"])
        expectError(#"{"podSelector":{},"ingress":[{"ports":[{"port":"HTTP_PORT"}]}]}"#, mentioning: ["ports[0].port \"HTTP_PORT\"", "port name"])
        expectError(#"{"podSelector":{},"egress":[{"ports":[{"port":"http","endPort":90}]}]}"#, mentioning: ["spec.egress[0].ports[0].endPort", "numbered port"])
        expectError(#"{"podSelector":{},"egress":[{"ports":[{"port":90,"endPort":80}]}]}"#, mentioning: ["endPort 80 is below port 90"])
        expectError(#"{"podSelector":{},"ingress":[{"from":[{"ipBlock":{"cidr":"10.0.0.300/8"}}]}]}"#, mentioning: ["spec.ingress[0].from[0].ipBlock.cidr", "not a CIDR"])
        expectError(#"{"podSelector":{},"ingress":[{"from":[{"ipBlock":{"cidr":"10.0.0.0/16","except":["10.1.0.0/24"]}}]}]}"#, mentioning: ["except[0]", "strict subset"])
        expectError(#"{"podSelector":{},"ingress":[{"from":[{"ipBlock":{"cidr":"10.0.0.0/16"},"podSelector":{}}]}]}"#, mentioning: ["from[0]", "cannot be combined"])
        expectError(#"{"podSelector":{},"ingress":[{"from":[{}]}]}"#, mentioning: ["from[0] is empty"])
        expectError(#"{"podSelector":{},"policyTypes":["Ingres"]}"#, mentioning: ["spec.policyTypes[0]", "\"Ingress\" or \"Egress\""])
        expectError(#"{"podSelector":{},"ingress":{}}"#, mentioning: ["spec.ingress is an object", "list of rules"])
        expectError(#"{"podSelector":{},"ingres":[{}]}"#, mentioning: ["spec: unknown field \"ingres\"", "podSelector, policyTypes, ingress, egress"])
        expectError(#"{"podSelector":{},"ingress":[{"from":[{"namespaceSelecter":{}}]}]}"#, mentioning: ["spec.ingress[0].from[0]: unknown field \"namespaceSelecter\""])
        expectError(#"{"podSelector":{},"ingress":[{"ports":[{"port":"80"}]}]}"#, mentioning: ["ports[0].port \"80\" is a string", "without quotes"])
        expectError(#"{"podSelector":{},"ingress":[{"from":[{"ipBlock":{"cidr":10}}]}]}"#, mentioning: ["ipBlock.cidr is a number", "CIDR string"])
    }

    // MARK: the table

    static let ns: [String: [String: String]] = ["a": ["team": "a"], "b": ["team": "b"]]
    static func pod(_ ns: String, _ name: String, _ labels: [String: String], _ ip: String, node: String = "n1", ports: [String: UInt16] = [:]) -> PolicyPod {
        PolicyPod(namespace: ns, name: name, labels: labels, addresses: [IPAddress(ip)!], node: node, namedPorts: ports)
    }

    /// A chain's rules as nft text; a set's keys as nft text, sorted.
    static func texts(_ m: NFT.Table, _ chain: String) -> [String] { (m.chains[chain]?.rules ?? []).map { NFT.text($0) } }
    static func keys(_ m: NFT.Table, _ set: String) -> [String] { (m.elements[set] ?? [:]).keys.map { NFT.text($0) }.sorted() }

    @Test func onlyIsolatedLocalPodsAreDispatchedAndPeersAreSetElements() throws {
        let p = try Self.policy(#"{"podSelector":{"matchLabels":{"app":"db"}},"ingress":[{"from":[{"podSelector":{"matchLabels":{"app":"web"}}}],"ports":[{"port":"pg"}]}]}"#, namespace: "a")
        let pods = [Self.pod("a", "db", ["app": "db"], "10.0.1.2", ports: ["pg/TCP": 5432]),
                    Self.pod("a", "db-remote", ["app": "db"], "10.0.2.2", node: "n2", ports: ["pg/TCP": 5433]),
                    Self.pod("a", "web", ["app": "web"], "10.0.2.3", node: "n2"),
                    Self.pod("b", "web", ["app": "web"], "10.0.1.4")]
        let m = PolicyRules.model(.init(policies: [p], pods: pods, namespaces: Self.ns), node: "n1")
        #expect(m.elements["ingress-pods4"] == [.address(ip("10.0.1.2")): NFT.Verdict.jump("ns/a/ingress")], "the local db pod only")
        #expect((m.elements["egress-pods4"] ?? [:]).isEmpty)
        let chain = Self.texts(m, "np/a/p/ingress")
        #expect(chain.count == 2, "\(chain)")
        let peerSet = try #require(m.sets.first { $0.key.hasPrefix("peer-") && $0.key.hasSuffix("-4") })
        #expect(Self.keys(m, peerSet.key) == ["10.0.2.3"], "same-namespace web pods, any node; not b's web")
        let portSet = try #require(m.sets.first { $0.key.hasPrefix("port-") && $0.key.hasSuffix("-4") })
        #expect(Self.keys(m, portSet.key) == ["10.0.1.2 . tcp . 5432"], "the named port of the local selected pod")
        #expect(chain[0] == "ip saddr @\(peerSet.key) ip daddr . meta l4proto . th dport @\(portSet.key) accept")
        let sel4 = PolicyRules.podsSet(p, "4"), sel6 = PolicyRules.podsSet(p, "6")
        #expect(Self.keys(m, sel4) == ["10.0.1.2"], "the local pod the policy selects")
        #expect(Self.texts(m, "ns/a/ingress") == ["ip daddr @\(sel4) jump np/a/p/ingress", "ip6 daddr @\(sel6) jump np/a/p/ingress", "goto ingress-denied"])
    }

    @Test func aPodChangingLabelsChangesElementsOnly() throws {
        let p = try Self.policy(#"{"podSelector":{"matchLabels":{"app":"db"}},"ingress":[{"from":[{"namespaceSelector":{"matchLabels":{"team":"b"}},"podSelector":{"matchLabels":{"app":"web"}}}]}]}"#, namespace: "a")
        var pods = [Self.pod("a", "db", ["app": "db"], "10.0.1.2"), Self.pod("b", "web", ["app": "web"], "10.0.1.4")]
        let before = PolicyRules.model(.init(policies: [p], pods: pods, namespaces: Self.ns), node: "n1")
        pods[1].labels = ["app": "other"]
        let after = PolicyRules.model(.init(policies: [p], pods: pods, namespaces: Self.ns), node: "n1")
        #expect(before.chains == after.chains)
        let change = try #require(NFT.transaction(from: NFT.Ruleset([PolicyRules.table: before]), to: NFT.Ruleset([PolicyRules.table: after])), "an incremental update")
        let (update, cleanup) = change.scripts
        #expect(update.hasPrefix("delete element inet weft-policy peer-") && update.hasSuffix("{ 10.0.1.4 }\n") && update.split(separator: "\n").count == 1, "\(update)")
        #expect(cleanup.isEmpty)
    }

    @Test func ipBlocksFollowTheirFamilyAndPortRangesAreRanges() throws {
        let p = try Self.policy(#"{"podSelector":{},"policyTypes":["Egress"],"egress":[{"to":[{"ipBlock":{"cidr":"192.168.0.0/16","except":["192.168.1.0/24"]}}],"ports":[{"port":8000,"endPort":8080},{"protocol":"UDP"}]}]}"#, namespace: "a")
        let m = PolicyRules.model(.init(policies: [p], pods: [Self.pod("a", "x", [:], "10.0.1.2")], namespaces: Self.ns), node: "n1")
        #expect(Self.texts(m, "np/a/p/egress") == [
            "ip daddr 192.168.0.0/16 ip daddr != 192.168.1.0/24 meta l4proto tcp th dport 8000-8080 accept",
            "ip daddr 192.168.0.0/16 ip daddr != 192.168.1.0/24 meta l4proto udp accept",
        ])
        #expect(m.chains["np/a/p/ingress"] == nil && m.elements["egress-pods4"] == [.address(ip("10.0.1.2")): NFT.Verdict.jump("ns/a/egress")])
    }

    @Test func emptyRulesAllowEverythingAndNoRulesAllowNothing() throws {
        let allowAll = try Self.policy(#"{"podSelector":{},"ingress":[{}]}"#, namespace: "a")
        let denyAll = try Self.policy(#"{"podSelector":{}}"#, name: "deny", namespace: "a")
        let m = PolicyRules.model(.init(policies: [allowAll, denyAll], pods: [Self.pod("a", "x", [:], "10.0.1.2")], namespaces: Self.ns), node: "n1")
        #expect(Self.texts(m, "np/a/p/ingress") == ["accept"])
        #expect(m.chains["np/a/deny/ingress"]!.rules.isEmpty)
    }
}

struct PolicyVerdictTests {
    @Test func aDenialNamesThePodThePeerThePortAndTheIsolatingPolicies() throws {
        let deny = try NetworkPolicyTests.policy(#"{"podSelector":{}}"#, name: "deny", namespace: "a")
        let web = try NetworkPolicyTests.policy(#"{"podSelector":{"matchLabels":{"app":"db"}},"ingress":[{"ports":[{"port":5432}]}]}"#, name: "db", namespace: "a")
        let other = try NetworkPolicyTests.policy(#"{"podSelector":{}}"#, name: "elsewhere", namespace: "b")
        let input = PolicyRules.Input(policies: [deny, web, other],
                                      pods: [NetworkPolicyTests.pod("a", "db", ["app": "db"], "10.0.1.2"), NetworkPolicyTests.pod("b", "c", [:], "10.0.2.3")],
                                      namespaces: NetworkPolicyTests.ns)
        let v = PolicyVerdict.explain("weft-policy ingress", source: ip("10.0.2.3"), destination: ip("10.0.1.2"), proto: 6, sourcePort: 40000,
                                      destinationPort: 80, input: input, nodes: [:])
        #expect(v.summary == "policy denied ingress to a/db from b/c, TCP port 80: no policy allows it; isolated by a/db, a/deny")
        let fromNode = PolicyVerdict.explain("weft-policy egress", source: ip("10.0.1.2"), destination: ip("192.168.100.12"), proto: 17, sourcePort: 1,
                                             destinationPort: 53, input: input, nodes: [ip("192.168.100.12"): "node1"])
        #expect(fromNode.peer == "node/node1" && fromNode.policies.isEmpty, "no egress policy isolates a/db now (the log came from an older table)")
        let spoof = PolicyVerdict.explain("weft-policy spoofed", source: ip("10.0.2.3"), destination: ip("10.0.1.2"), proto: 1, sourcePort: nil,
                                          destinationPort: nil, interface: "weft0123456789a", input: input, nodes: [:])
        #expect(spoof.pod == nil && spoof.summary.contains("the pod behind weft0123456789a sent from 10.0.2.3"), "a spoofed source blames nobody by address")
    }
}

struct PolicyEdgeTests {
    typealias T = NetworkPolicyTests

    @Test func nodeDNSStandInsAreDestinationsOnTheirPortsOnly() throws {
        let egress = try T.policy(#"{"podSelector":{},"policyTypes":["Egress","Ingress"],"egress":[{"to":[{"namespaceSelector":{}}]}],"ingress":[{"from":[{"namespaceSelector":{}}]}]}"#, namespace: "a")
        let dns = PolicyPod(namespace: "kube-system", name: "kube-dns-n1", labels: ["k8s-app": "kube-dns"], addresses: [ip("192.168.100.11")],
                            node: "n1", namedPorts: ["dns/UDP": 53, "dns-tcp/TCP": 53], selectable: false)
        let input = PolicyRules.Input(policies: [egress], pods: [T.pod("a", "x", [:], "10.0.1.2"), dns], namespaces: T.ns)
        let m = PolicyRules.model(input, node: "n1")
        let peers = m.sets.filter { $0.key.hasPrefix("peer-") && $0.key.hasSuffix("-4") }
        #expect(peers.keys.allSatisfy { !T.keys(m, $0).contains("192.168.100.11") }, "the node address is no plain peer")
        #expect(m.sets.first { $0.key.hasSuffix("-4-ports") }.map { T.keys(m, $0.key) } == ["192.168.100.11 . tcp . 53", "192.168.100.11 . udp . 53"])
        #expect(T.texts(m, "np/a/p/ingress").allSatisfy { !$0.contains("-ports") }, "never a source")
        let x = input.pods[0]
        #expect(input.verdict(.egress, pod: x, peer: ip("192.168.100.11"), peerPod: dns, port: 53, proto: "UDP").allowed)
        #expect(!input.verdict(.egress, pod: x, peer: ip("192.168.100.11"), peerPod: dns, port: 22, proto: "TCP").allowed, "not ssh on the node")
    }

    @Test func finishedPodsAreNotPodsAndLongNamesFitTheKernel() throws {
        let j = try JSONValue.parse(#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"done","namespace":"a"},"spec":{},"status":{"phase":"Succeeded","podIP":"10.0.1.9"}}"#)
        #expect(PolicyPod(KubeObject(json: j)) == nil, "its address may already be another pod's")
        let long = try T.policy(#"{"podSelector":{},"ingress":[{"ports":[{"port":"web"}]}]}"#, name: Array(repeating: String(repeating: "n", count: 61), count: 4).joined(separator: "."), namespace: String(repeating: "s", count: 63))
        let m = PolicyRules.model(.init(policies: [long], pods: [T.pod(String(repeating: "s", count: 63), "x", [:], "10.0.1.2", ports: ["web/TCP": 80])], namespaces: [:]), node: "n1")
        #expect((Array(m.chains.keys) + Array(m.sets.keys)).allSatisfy { $0.utf8.count < 256 }, "chain and set names within NFT_NAME_MAXLEN")
    }

    @Test func sctpPortsAreProgrammedLikeTheOthers() throws {
        // This machine's kernel has no SCTP, so no packet test: the rule is checked here.
        let p = try T.policy(#"{"podSelector":{},"ingress":[{"ports":[{"protocol":"SCTP","port":7777},{"protocol":"SCTP"}]}]}"#, namespace: "a")
        let m = PolicyRules.model(.init(policies: [p], pods: [T.pod("a", "x", [:], "10.0.1.2")], namespaces: T.ns), node: "n1")
        #expect(T.texts(m, "np/a/p/ingress") == ["meta l4proto sctp th dport 7777 accept", "meta l4proto sctp accept"])
        let x = PolicyPod(namespace: "a", name: "x", labels: [:], addresses: [ip("10.0.1.2")], node: "n1")
        let input = PolicyRules.Input(policies: [p], pods: [x], namespaces: T.ns)
        #expect(input.verdict(.ingress, pod: x, peer: ip("10.0.2.2"), peerPod: nil, port: 7777, proto: "SCTP").allowed)
        #expect(!input.verdict(.ingress, pod: x, peer: ip("10.0.2.2"), peerPod: nil, port: 7777, proto: "TCP").allowed)
    }
}

