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

    static let families: [(IPFamily, String, String)] = [(.v4, "ip", "4"), (.v6, "ip6", "6")]

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

    /// A set of one family's addresses (with `ports`: address · protocol · port), its comment
    /// saying what it holds.
    static func namedSet(_ family: IPFamily, ports: Bool = false, comment: String, _ elements: [String]) -> TableModel.NamedSet {
        .init(spec: "type \(family == .v4 ? "ipv4_addr" : "ipv6_addr")\(ports ? " . inet_proto . inet_service" : "") ; comment \(TableModel.quoted(String(comment.prefix(120)))) ;",
              elements: Dictionary(elements.map { ($0, "") }, uniquingKeysWith: { a, _ in a }))
    }

    public static func model(_ input: Input, node: String) -> TableModel {
        var m = TableModel(name: table)
        let local = input.pods.filter { $0.node == node && $0.selectable }
        for (_, _, fam) in families {
            m.sets["ingress-pods\(fam)"] = .init(spec: "type \(fam == "4" ? "ipv4_addr" : "ipv6_addr") : verdict ;", isMap: true)
            m.sets["egress-pods\(fam)"] = .init(spec: "type \(fam == "4" ? "ipv4_addr" : "ipv6_addr") : verdict ;", isMap: true)
        }
        m.counters = ["denied-ingress", "denied-egress", "spoofed"]

        let byNamespace = Dictionary(grouping: input.policies, by: \.namespace)
        for ns in byNamespace.keys.sorted() {
            let policies = byNamespace[ns]!.sorted { $0.name < $1.name }
            for d in NetworkPolicy.Direction.allCases {
                let typed = policies.filter { $0.policyTypes.contains(d) }
                guard !typed.isEmpty else { continue }
                let dir = d.word
                let match = d == .ingress ? "daddr" : "saddr"
                var nsRules: [String] = []
                for p in typed {
                    for (_, nfam, fam) in families { nsRules.append("\(nfam) \(match) @\(podsSet(p, fam)) jump \(chainName(p, d))") }
                    m.chains[chainName(p, d)] = .init(rules: policyRules(p, d, input, local: local, into: &m))
                }
                nsRules.append("goto \(dir)-denied")
                m.chains["ns/\(ns)/\(dir)"] = .init(rules: nsRules)
                // Every local pod of the namespace some policy isolates in this direction.
                for pod in local where pod.namespace == ns && !input.isolating(pod, d).isEmpty {
                    for a in pod.addresses {
                        m.sets["\(dir)-pods\(a.family == .v4 ? "4" : "6")"]!.elements[a.description] = "jump ns/\(ns)/\(dir)"
                    }
                }
            }
            for p in policies where m.sets[podsSet(p, "4")] == nil {
                let sel = input.selected(by: p).filter { $0.node == node }
                for (family, _, fam) in families {
                    m.sets[podsSet(p, fam)] = namedSet(family, comment: "pods \(p.podSelector) in \(p.namespace)",
                                                       sel.flatMap(\.addresses).filter { $0.family == family }.map(\.description))
                }
            }
        }

        // Counted always, logged at a bounded rate (the agent explains each logged packet).
        func denied(_ what: String, counter: String) -> TableModel.Chain {
            .init(rules: ["counter name \"\(counter)\"",
                          "limit rate \(logRate)/second burst \(logRate) packets log prefix \"\(logPrefix)\(what)\" group \(logGroup)", "drop"])
        }
        m.chains["ingress-denied"] = denied("ingress", counter: "denied-ingress")
        m.chains["egress-denied"] = denied("egress", counter: "denied-egress")
        m.chains["spoofed"] = denied("spoofed", counter: "spoofed")
        let tracked = "ct state established,related accept"
        m.chains["forward-egress"] = .init(hook: "type filter hook forward priority -5 ; policy accept ;",
                                           rules: [tracked, "ip saddr vmap @egress-pods4", "ip6 saddr vmap @egress-pods6"])
        // Neighbour discovery with the node is not traffic policy speaks of, and a pod sends
        // some of it from its global address: judged, it would cut an isolated pod off.
        m.chains["input-egress"] = .init(hook: "type filter hook input priority -5 ; policy accept ;",
                                         rules: [tracked, "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit } accept",
                                                 "ip saddr vmap @egress-pods4", "ip6 saddr vmap @egress-pods6"])
        m.chains["forward-ingress"] = .init(hook: "type filter hook forward priority 0 ; policy accept ;",
                                            rules: [tracked, "ip daddr vmap @ingress-pods4", "ip6 daddr vmap @ingress-pods6"])
        // Pods' host-side interfaces are weft<hash>; the overlay device is not a pod's. `::`
        // is the source of duplicate address detection, which routes nowhere.
        m.chains["antispoof"] = .init(hook: "type filter hook prerouting priority -300 ; policy accept ;",
                                      rules: ["iifname != \"weft*\" accept", "iifname \"\(VXLAN.device)\" accept", "ip6 saddr :: accept",
                                              "fib saddr . iif oif missing goto spoofed"])
        return m
    }

    /// The policy chain: one `accept` per (peer, port) of each rule, per family.
    static func policyRules(_ p: NetworkPolicy, _ d: NetworkPolicy.Direction, _ input: Input, local: [PolicyPod], into m: inout TableModel) -> [String] {
        let peerField = d == .ingress ? "saddr" : "daddr"
        var out: [String] = []
        for rule in p.rules(d) {
            for (family, nfam, fam) in families {
                // Peer matches for this family; nil entries are "any".
                var peers: [String?] = []
                if rule.peers.isEmpty { peers = [nil] }
                for peer in rule.peers {
                    switch peer {
                    case .ipBlock(let cidr, let except):
                        guard cidr.family == family else { continue }
                        var s = "\(nfam) \(peerField) \(cidr)"
                        if !except.isEmpty { s += " \(nfam) \(peerField) != { \(except.map(\.description).joined(separator: ", ")) }" }
                        peers.append(s)
                    case .pods(let ps, let nss):
                        let key = "pods \(ps?.description ?? "<all>") in " + (nss.map { "namespaces \($0)" } ?? "namespace \(p.namespace)")
                        let name = "peer-\(hex16(fnv1a64(key + "|" + (nss == nil ? p.namespace : ""))))-\(fam)"
                        let matched = input.pods(of: peer, policyNamespace: p.namespace)
                        if m.sets[name] == nil {
                            let addrs = matched.filter(\.selectable).flatMap(\.addresses).filter { $0.family == family }
                            m.sets[name] = namedSet(family, comment: key, addrs.map(\.description))
                        }
                        peers.append("\(nfam) \(peerField) @\(name)")
                        // Peer-only stand-ins (the node DNS resolvers, at node addresses) are
                        // destinations for their own ports only, never sources.
                        let standIns = matched.filter { !$0.selectable }
                        if d == .egress && !standIns.isEmpty {
                            let svcName = name + "-ports"
                            if m.sets[svcName] == nil {
                                var elements: [String] = []
                                for sp in standIns {
                                    for (k, port) in sp.namedPorts {
                                        let proto = k.split(separator: "/").last.map { $0.lowercased() } ?? "tcp"
                                        for a in sp.addresses where a.family == family { elements.append("\(a) . \(proto) . \(port)") }
                                    }
                                }
                                m.sets[svcName] = namedSet(family, ports: true, comment: "served ports of " + key, elements)
                            }
                            peers.append("\(nfam) daddr . meta l4proto . th dport @\(svcName)")
                        }
                    }
                }
                guard !peers.isEmpty else { continue }   // only peers of the other family
                var ports: [String?] = []
                if rule.ports.isEmpty { ports = [nil] }
                for port in rule.ports {
                    let l4 = port.proto.lowercased()
                    switch port.port {
                    case nil: ports.append("meta l4proto \(l4)")
                    case .number(let n)?:
                        if let e = port.endPort, e != n { ports.append("meta l4proto \(l4) th dport \(n)-\(e)") } else { ports.append("meta l4proto \(l4) th dport \(n)") }
                    case .name(let n)?:
                        // Resolved per destination pod: the selected pods for ingress, the peers'
                        // (any pod of the cluster) for egress.
                        // Shared by every rule naming the same port of the same pods.
                        let key = d == .ingress ? "in|\(p.namespace)|\(p.podSelector)|\(n)|\(port.proto)" : "out|\(n)|\(port.proto)"
                        let name = "port-\(hex16(fnv1a64(key)))-\(fam)"
                        if m.sets[name] == nil {
                            let candidates = d == .ingress ? local.filter { p.podSelector.matches($0.labels) && $0.namespace == p.namespace } : input.pods
                            var elements: [String] = []
                            for pod in candidates {
                                guard let num = pod.namedPorts["\(n)/\(port.proto)"] else { continue }
                                for a in pod.addresses where a.family == family { elements.append("\(a) . \(l4) . \(num)") }
                            }
                            let what = d == .ingress ? "\(port.proto) port \(n) of pods \(p.podSelector) in \(p.namespace)" : "\(port.proto) port \(n) of any pod"
                            m.sets[name] = namedSet(family, ports: true, comment: what, elements)
                        }
                        ports.append("\(nfam) daddr . meta l4proto . th dport @\(name)")
                    }
                }
                for peer in peers {
                    for port in ports {
                        out.append([peer, port, "accept"].compactMap { $0 }.joined(separator: " "))
                    }
                }
            }
        }
        // Identical rules (a rule that is "any" in both families) once.
        var seen = Set<String>()
        return out.filter { seen.insert($0).inserted }
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
