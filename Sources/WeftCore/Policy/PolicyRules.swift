/// NetworkPolicy enforcement as one nftables table per node (`inet weft-policy`), for the pods
/// of that node. Rules are fixed per policy; the pods and peers they select are set elements, so
/// a pod appearing or changing labels changes elements only.
///
/// Layout (forward and input hooks see pod traffic after the services table's DNAT, so traffic
/// to a Service is judged against the backend pod it was sent to):
/// - `forward-egress` (forward), `input-egress` (input: pods talking to their node, e.g. its
///   DNS): replies of tracked connections pass; a packet from an egress-isolated local pod goes,
///   through the map `egress-pods4`/`6` (pod address → its namespace's chain), to
///   `ns/<namespace>/egress`, which jumps to each policy of the namespace that selects the pod
///   (`ip saddr @np/<ns>/<name>/pods4`). A policy chain `accept`s what one of its rules allows
///   (an accept ends this base chain only, so the ingress check still runs); what none allows
///   falls to `egress-denied`: counted, logged to nflog (rate-limited), dropped.
/// - `forward-ingress` (forward, after egress): the same by destination. Traffic from the node
///   itself (probes) takes the output hook and is never judged, as Kubernetes requires.
/// - `antispoof` (prerouting): a packet from a pod's interface whose source does not route
///   back through that interface is dropped (strict reverse path), before anything else.
///
/// Peer sets are shared by every rule naming the same peer (named by a digest of it) and hold
/// pod addresses of the whole cluster; selected-pod sets hold this node's pods only.
public enum PolicyRules {
    public static let table = "weft-policy"
    /// The nflog group denied packets are logged to (one per network namespace).
    public static let logGroup: UInt16 = 4210
    public static let logPrefix = "weft-policy "
    /// Logged packets per second per reason (ingress, egress, spoofed) per node; counters count every packet.
    public static let logRate = 50

    static let families: [(IPFamily, String)] = [(.v4, "4"), (.v6, "6")]

    /// Everything the rules depend on.
    public struct Input: Sendable, Equatable {
        public let policies: [NetworkPolicy]
        public let pods: [PolicyPod]
        /// Pods by namespace: a policy selects in its own namespace only, and most peers name
        /// one namespace, so matching scans a namespace rather than the cluster.
        let podsByNamespace: [String: [PolicyPod]]
        let policiesByNamespace: [String: [NetworkPolicy]]
        /// Namespace name → its labels (the `kubernetes.io/metadata.name` label is implied).
        public var namespaces: [String: [String: String]]
        public init(policies: [NetworkPolicy], pods: [PolicyPod], namespaces: [String: [String: String]]) {
            self.policies = policies; self.pods = pods; self.namespaces = namespaces
            podsByNamespace = Dictionary(grouping: pods, by: \.namespace)
            policiesByNamespace = Dictionary(grouping: policies, by: \.namespace)
        }

        public func namespaceLabels(_ ns: String) -> [String: String] {
            var l = namespaces[ns] ?? [:]
            l["kubernetes.io/metadata.name"] = ns
            return l
        }

        /// The pods a policy selects (in its namespace; never peer-only entries).
        public func selected(by p: NetworkPolicy) -> [PolicyPod] {
            (podsByNamespace[p.namespace] ?? []).filter { $0.selectable && p.podSelector.matches($0.labels) }
        }

        /// The pods a peer stands for, seen from a policy in `namespace`.
        public func pods(of peer: NetworkPolicy.Peer, policyNamespace namespace: String) -> [PolicyPod] {
            guard case .pods(let ps, let nss) = peer else { return [] }
            let namespaces = nss.map { sel in podsByNamespace.keys.filter { sel.matches(namespaceLabels($0)) }.sorted() } ?? [namespace]
            return namespaces.flatMap { podsByNamespace[$0] ?? [] }.filter { ps?.matches($0.labels) ?? true }
        }

        /// The policies isolating `pod` in direction `d` (those that select it and have the type).
        public func isolating(_ pod: PolicyPod, _ d: NetworkPolicy.Direction) -> [NetworkPolicy] {
            guard pod.selectable else { return [] }
            return (policiesByNamespace[pod.namespace] ?? []).filter { $0.policyTypes.contains(d) && $0.podSelector.matches(pod.labels) }
        }
    }

    /// The prefix of a policy's chains and sets: readable, `np/NAMESPACE/NAME`, unless that
    /// would take names past the kernel's 256 bytes (a namespace of 63 and a name of 253 can):
    /// then a digest of it.
    static func prefix(_ p: NetworkPolicy) -> String {
        let readable = "np/\(p.namespace)/\(p.name)"
        return readable.utf8.count <= 200 ? readable : "np/" + hex16(fnv1a64(readable))
    }
    public static func chainName(_ p: NetworkPolicy, _ d: NetworkPolicy.Direction) -> String { "\(prefix(p))/\(d.word)" }
    /// The local pods a policy selects: one set per namespace and selector, shared by the
    /// policies that select alike (a deny-all and an allow-this often do); fewer sets make the
    /// kernel's writes and listings cheaper (it finds sets by name in a list).
    public static func podsSet(_ p: NetworkPolicy, _ fam: String) -> String { "sel-\(hex16(fnv1a64("\(p.namespace)|\(p.podSelector)")))-\(fam)" }

    /// The address of the judged pod a direction reads (the peer's is the other).
    static func podField(_ d: NetworkPolicy.Direction) -> NFT.Field { d == .ingress ? .destination : .source }

    /// A protocol as policy names it (its parser admits TCP, UDP and SCTP only).
    static func l4(_ proto: some StringProtocol) -> NFT.L4Proto { NFT.L4Proto(kubernetes: proto) ?? .tcp }

    /// Adds a set of one family's addresses (with `ports`: address · protocol · port), its
    /// comment saying what it holds.
    static func addSet(_ name: String, _ family: IPFamily, ports: Bool = false, comment: String, _ keys: [NFT.Key], to m: inout NFT.Table) {
        m.sets[name] = NFT.NamedSet(key: ports ? .addressProtoPort(family) : .address(family), comment: String(comment.prefix(120)))
        m.elements[name] = Dictionary(keys.map { ($0, NFT.Verdict?.none) }, uniquingKeysWith: { a, _ in a })
    }

    /// The policy table for `node`, as the one table of a ruleset.
    public static func ruleset(_ input: Input, node: String) -> NFT.Ruleset { NFT.Ruleset([table: model(input, node: node)]) }

    public static func model(_ input: Input, node: String) -> NFT.Table {
        var m = NFT.Table()
        let local = input.pods.filter { $0.node == node && $0.selectable }
        for (family, fam) in families {
            for dir in ["ingress", "egress"] {
                m.sets["\(dir)-pods\(fam)"] = NFT.NamedSet(key: .address(family), isMap: true)
                m.elements["\(dir)-pods\(fam)"] = [:]
            }
        }
        m.counters = ["denied-ingress", "denied-egress", "spoofed"]

        let byNamespace = Dictionary(grouping: input.policies, by: \.namespace)
        for ns in byNamespace.keys.sorted() {
            let policies = byNamespace[ns]!.sorted { $0.name < $1.name }
            for d in NetworkPolicy.Direction.allCases {
                let typed = policies.filter { $0.policyTypes.contains(d) }
                guard !typed.isEmpty else { continue }
                let dir = d.word
                var nsRules: [NFT.Rule] = []
                for p in typed {
                    for (family, fam) in families {
                        nsRules.append(NFT.Rule(.addressIn(podField(d), family, set: podsSet(p, fam)), .verdict(.jump(chainName(p, d)))))
                    }
                    m.chains[chainName(p, d)] = NFT.Chain(rules: policyRules(p, d, input, local: local, into: &m))
                }
                nsRules.append(NFT.Rule(.verdict(.goto("\(dir)-denied"))))
                m.chains["ns/\(ns)/\(dir)"] = NFT.Chain(rules: nsRules)
                // Every local pod of the namespace some policy isolates in this direction.
                for pod in local where pod.namespace == ns && !input.isolating(pod, d).isEmpty {
                    for a in pod.addresses {
                        m.elements["\(dir)-pods\(a.family == .v4 ? "4" : "6")"]![.address(a)] = .some(.jump("ns/\(ns)/\(dir)"))
                    }
                }
            }
            for p in policies where m.sets[podsSet(p, "4")] == nil {
                let sel = input.selected(by: p).filter { $0.node == node }
                for (family, fam) in families {
                    addSet(podsSet(p, fam), family, comment: "pods \(p.podSelector) in \(p.namespace)",
                           sel.flatMap(\.addresses).filter { $0.family == family }.map { .address($0) }, to: &m)
                }
            }
        }
        fixedChains(into: &m)
        return m
    }

    /// The base chains and the denial chains, the same for every node.
    static func fixedChains(into m: inout NFT.Table) {
        // Counted always, logged at a bounded rate (the agent explains each logged packet).
        func denied(_ what: String, counter: String) -> NFT.Chain {
            NFT.Chain(rules: [NFT.Rule(.namedCounter(counter)),
                              NFT.Rule(.limit(perSecond: logRate, burst: logRate), .log(prefix: logPrefix + what, group: logGroup)),
                              NFT.Rule(.verdict(.drop))])
        }
        m.chains["ingress-denied"] = denied("ingress", counter: "denied-ingress")
        m.chains["egress-denied"] = denied("egress", counter: "denied-egress")
        m.chains["spoofed"] = denied("spoofed", counter: "spoofed")
        let tracked = NFT.Rule(.ctState([.established, .related]), .verdict(.accept))
        func dispatch(_ field: NFT.Field, _ dir: String) -> [NFT.Rule] {
            [NFT.Rule(.lookup(.address(field, .v4), map: "\(dir)-pods4")), NFT.Rule(.lookup(.address(field, .v6), map: "\(dir)-pods6"))]
        }
        m.chains["forward-egress"] = NFT.Chain(hook: .init(.filter, .forward, priority: -5), rules: [tracked] + dispatch(.source, "egress"))
        // Neighbour discovery with the node is not traffic policy speaks of, and a pod sends
        // some of it from its global address: judged, it would cut an isolated pod off.
        let discovery = [NFT.ICMPv6Type.neighborSolicit, .neighborAdvert, .routerSolicit].map { NFT.Rule(.icmpv6Type($0), .verdict(.accept)) }
        m.chains["input-egress"] = NFT.Chain(hook: .init(.filter, .input, priority: -5), rules: [tracked] + discovery + dispatch(.source, "egress"))
        m.chains["forward-ingress"] = NFT.Chain(hook: .init(.filter, .forward, priority: 0), rules: [tracked] + dispatch(.destination, "ingress"))
        // Pods' host-side interfaces are weft<hash>; the overlay device is not a pod's. `::`
        // is the source of duplicate address detection, which routes nowhere.
        m.chains["antispoof"] = NFT.Chain(hook: .init(.filter, .prerouting, priority: -300), rules: [
            NFT.Rule(.inputInterface("weft*", negated: true), .verdict(.accept)),
            NFT.Rule(.inputInterface(VXLAN.device, negated: false), .verdict(.accept)),
            NFT.Rule(.address(.source, IPAddress(family: .v6, value: 0)), .verdict(.accept)),
            NFT.Rule(.sourceRouteMissing, .verdict(.goto("spoofed"))),
        ])
    }

    /// The policy chain: one `accept` per (peer, port) of each rule, per family.
    static func policyRules(_ p: NetworkPolicy, _ d: NetworkPolicy.Direction, _ input: Input, local: [PolicyPod], into m: inout NFT.Table) -> [NFT.Rule] {
        var out: [NFT.Rule] = []
        for rule in p.rules(d) {
            for (family, fam) in families {
                let peers = peerMatches(rule.peers, p, d, family, fam, input, into: &m)
                guard !peers.isEmpty else { continue }   // only peers of the other family
                let ports = rule.ports.isEmpty ? [[]] : rule.ports.map { portMatch($0, p, d, family, fam, input, local: local, into: &m) }
                for peer in peers {
                    for port in ports { out.append(NFT.Rule(peer + port + [.verdict(.accept)])) }
                }
            }
        }
        // Identical rules (a rule that is "any" in both families) once.
        var seen = Set<NFT.Rule>()
        return out.filter { seen.insert($0).inserted }
    }

    /// The matches of a rule's peers in one family (one list per peer; an empty list is "any").
    static func peerMatches(_ rulePeers: [NetworkPolicy.Peer], _ p: NetworkPolicy, _ d: NetworkPolicy.Direction, _ family: IPFamily, _ fam: String,
                            _ input: Input, into m: inout NFT.Table) -> [[NFT.Statement]] {
        let peerField: NFT.Field = d == .ingress ? .source : .destination
        var peers: [[NFT.Statement]] = rulePeers.isEmpty ? [[]] : []
        for peer in rulePeers {
            switch peer {
            case .ipBlock(let cidr, let except):
                guard cidr.family == family else { continue }
                peers.append([.networks(peerField, [cidr], negated: false)] + (except.isEmpty ? [] : [.networks(peerField, except, negated: true)]))
            case .pods(let ps, let nss):
                let key = "pods \(ps?.description ?? "<all>") in " + (nss.map { "namespaces \($0)" } ?? "namespace \(p.namespace)")
                let name = "peer-\(hex16(fnv1a64(key + "|" + (nss == nil ? p.namespace : ""))))-\(fam)"
                let matched = input.pods(of: peer, policyNamespace: p.namespace)
                if m.sets[name] == nil {
                    let addrs = matched.filter(\.selectable).flatMap(\.addresses).filter { $0.family == family }
                    addSet(name, family, comment: key, addrs.map { .address($0) }, to: &m)
                }
                peers.append([.addressIn(peerField, family, set: name)])
                // Peer-only stand-ins (the node DNS resolvers, at node addresses) are
                // destinations for their own ports only, never sources.
                let standIns = matched.filter { !$0.selectable }
                if d == .egress && !standIns.isEmpty {
                    let svcName = name + "-ports"
                    if m.sets[svcName] == nil {
                        var keys: [NFT.Key] = []
                        for sp in standIns {
                            for (k, port) in sp.namedPorts {
                                let proto = l4(k.split(separator: "/").last ?? "TCP")
                                for a in sp.addresses where a.family == family { keys.append(.addressProtoPort(a, proto, port)) }
                            }
                        }
                        addSet(svcName, family, ports: true, comment: "served ports of " + key, keys, to: &m)
                    }
                    peers.append([.destinationProtoPortIn(family, set: svcName)])
                }
            }
        }
        return peers
    }

    /// The match of one port of a rule in one family.
    static func portMatch(_ port: NetworkPolicy.Port, _ p: NetworkPolicy, _ d: NetworkPolicy.Direction, _ family: IPFamily, _ fam: String,
                          _ input: Input, local: [PolicyPod], into m: inout NFT.Table) -> [NFT.Statement] {
        let proto = l4(port.proto)
        switch port.port {
        case nil: return [.l4proto(proto)]
        case .number(let n)?: return [.l4proto(proto), .destinationPort(n...max(n, port.endPort ?? n))]
        case .name(let n)?:
            // Resolved per destination pod: the selected pods for ingress, the peers' (any pod
            // of the cluster) for egress. Shared by every rule naming the same port of the same pods.
            let key = d == .ingress ? "in|\(p.namespace)|\(p.podSelector)|\(n)|\(port.proto)" : "out|\(n)|\(port.proto)"
            let name = "port-\(hex16(fnv1a64(key)))-\(fam)"
            if m.sets[name] == nil {
                let candidates = d == .ingress ? local.filter { p.podSelector.matches($0.labels) && $0.namespace == p.namespace } : input.pods
                var keys: [NFT.Key] = []
                for pod in candidates {
                    guard let num = pod.namedPorts["\(n)/\(port.proto)"] else { continue }
                    for a in pod.addresses where a.family == family { keys.append(.addressProtoPort(a, proto, num)) }
                }
                let what = d == .ingress ? "\(port.proto) port \(n) of pods \(p.podSelector) in \(p.namespace)" : "\(port.proto) port \(n) of any pod"
                addSet(name, family, ports: true, comment: what, keys, to: &m)
            }
            return [.destinationProtoPortIn(family, set: name)]
        }
    }
}

/// A pod as policy sees it: where it runs, its labels, addresses and named container ports.
public struct PolicyPod: Sendable, Hashable {
    public var namespace: String
    public var name: String
    public var labels: [String: String]
    public var addresses: [IPAddress]
    public var node: String?
    /// "name/PROTO" → port number, from the containers' ports.
    public var namedPorts: [String: UInt16]
    /// False for entries that are peers only (the node-local DNS servers weft runs for
    /// kube-dns): no policy selects or isolates them.
    public var selectable: Bool

    public init(namespace: String, name: String, labels: [String: String], addresses: [IPAddress], node: String?,
                namedPorts: [String: UInt16] = [:], selectable: Bool = true) {
        self.namespace = namespace; self.name = name; self.labels = labels; self.addresses = addresses
        self.node = node; self.namedPorts = namedPorts; self.selectable = selectable
    }

    /// Nil for pods policy cannot tell apart: without an address yet, on the host network
    /// (their address is their node's), or finished.
    public init?(_ o: KubeObject) {
        guard o.spec["hostNetwork"]?.boolValue != true else { return nil }
        // A finished pod's address goes back to IPAM and may soon be another pod's.
        guard !["Succeeded", "Failed"].contains(o.status["phase"]?.stringValue ?? "") else { return nil }
        var ips = (o.status["podIPs"]?.arrayValue ?? []).compactMap { $0["ip"]?.stringValue.flatMap(IPAddress.init) }
        if ips.isEmpty, let one = o.status["podIP"]?.stringValue.flatMap(IPAddress.init) { ips = [one] }
        guard !ips.isEmpty else { return nil }
        var named: [String: UInt16] = [:]
        for c in o.spec["containers"]?.arrayValue ?? [] {
            for port in c["ports"]?.arrayValue ?? [] {
                if let n = port["name"]?.stringValue, let v = port["containerPort"]?.intValue, (1...65535).contains(v) {
                    named["\(n)/\(port["protocol"]?.stringValue ?? "TCP")"] = UInt16(v)
                }
            }
        }
        self.init(namespace: o.namespace ?? "default", name: o.name, labels: o.labels, addresses: ips,
                  node: o.spec["nodeName"]?.stringValue, namedPorts: named)
    }
}

extension PolicyRules.Input {
    /// The verdict for one connection as the Kubernetes semantics give it, with the policies
    /// behind it (for `weft trace` and for explaining; the kernel's table implements the same).
    public struct Verdict: Sendable, Equatable {
        public var allowed: Bool
        /// Policies selecting the pod in this direction (none: not isolated, allowed).
        public var isolatedBy: [String]
        /// Of those, the ones with a rule allowing the connection.
        public var allowedBy: [String]
    }

    /// - pod: the pod judged (the destination for ingress, the source for egress).
    /// - peer: the other end's address, and its pod when it is one.
    public func verdict(_ d: NetworkPolicy.Direction, pod: PolicyPod, peer: IPAddress, peerPod: PolicyPod?, port: UInt16?, proto: String) -> Verdict {
        let isolating = isolating(pod, d)
        guard !isolating.isEmpty else { return Verdict(allowed: true, isolatedBy: [], allowedBy: []) }
        // Named ports resolve on the destination: the judged pod for ingress, the peer for egress.
        let destination = d == .ingress ? pod : peerPod
        var allowedBy: [String] = []
        for p in isolating {
            let allows = p.rules(d).contains { rule in
                let peerOK = rule.peers.isEmpty || rule.peers.contains { peerSpec in
                    switch peerSpec {
                    case .ipBlock(let cidr, let except):
                        return cidr.contains(peer) && !except.contains { $0.contains(peer) }
                    case .pods(let ps, let nss):
                        guard let peerPod else { return false }
                        if !peerPod.selectable {
                            // A stand-in: a destination on its own ports only.
                            guard d == .egress, let port, peerPod.namedPorts.contains(where: { $0.key.hasSuffix("/\(proto)") && $0.value == port }) else { return false }
                        }
                        let nsOK = nss.map { $0.matches(namespaceLabels(peerPod.namespace)) } ?? (peerPod.namespace == p.namespace)
                        return nsOK && (ps?.matches(peerPod.labels) ?? true)
                    }
                }
                let portOK = rule.ports.isEmpty || rule.ports.contains { sp in
                    guard sp.proto == proto else { return false }
                    switch sp.port {
                    case nil: return true
                    case .number(let n)?: return port.map { $0 >= n && $0 <= (sp.endPort ?? n) } ?? false
                    case .name(let name)?: return port != nil && destination?.namedPorts["\(name)/\(proto)"] == port
                    }
                }
                return peerOK && portOK
            }
            if allows { allowedBy.append(p.id) }
        }
        return Verdict(allowed: !allowedBy.isEmpty, isolatedBy: isolating.map(\.id).sorted(), allowedBy: allowedBy.sorted())
    }
}
