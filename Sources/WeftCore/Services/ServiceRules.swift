/// The services dataplane as one nftables table, laid out as kube-proxy's nftables mode does:
/// fixed chains whose lookups go through verdict maps keyed by address · protocol · port (so
/// the cost of a lookup does not grow with the number of services), one chain per service port
/// that picks an endpoint at random, one chain per endpoint that DNATs to it.
///
/// - `service-ips` / `service-ips6`: VIP · proto · port → the service port's chain.
/// - `service-nodeports`: proto · port → the NodePort chain (which masquerades, then goes to
///   the service port's chain), for packets addressed to any local address of the node.
/// - `no-endpoint-services` / `no-endpoint-nodeports`: the same keys → reject, checked for new
///   connections in the filter hooks, so a service with no ready endpoint refuses at once.
/// - An endpoint that reaches itself through its service (hairpin) is masqueraded, or the
///   reply would skip the DNAT's reversal.
///
/// `model` computes what the table should hold; `fullScript` replaces the whole table in one
/// transaction (`add`, `delete`, then the new table), so readers never see a half-built state;
/// `updateScripts` writes only the difference between two models. Chain names are nftables
/// identifiers built from Kubernetes names, protocols, ports and addresses (`:` written `_`).
/// Pure: the agent runs the scripts in the node.
public enum ServiceRules {
    public static let table = "weft-services"
    static let masqMark = "0x4000"

    public struct Entry: Sendable, Equatable {
        public var service: ClusterService
        public var endpoints: [ServiceEndpoint]
        public init(service: ClusterService, endpoints: [ServiceEndpoint]) { self.service = service; self.endpoints = endpoints }
    }

    static func proto(_ p: String) -> String { p.lowercased() }

    static func chainName(_ s: ClusterService, _ p: ClusterService.Port) -> String {
        "svc-\(s.namespace)/\(s.name)/\(proto(p.proto))/\(p.port)"
    }

    /// What the table holds beyond its fixed part: the per-service and per-endpoint chains
    /// (name → rules, in order) and the elements of each map (map → key → verdict).
    public struct Model: Sendable, Equatable {
        public var chains: [String: [String]] = [:]
        public var elements: [String: [String: String]] = [:]
        /// Sets (name → definition): the client addresses each endpoint has under session affinity.
        public var sets: [String: String] = [:]
        public init() {}
    }

    /// - node: the node the table is for (Local traffic policies keep to its endpoints).
    public static func model(_ entries: [Entry], node: String? = nil) -> Model {
        var m = Model()
        func element(_ map: String, _ key: String, _ verdict: String) { m.elements[map, default: [:]][key] = verdict }
        for e in entries {
            let svc = e.service
            guard !svc.headless, svc.kind != .externalName else { continue }
            for p in svc.ports {
                let l4 = proto(p.proto)
                // Per family the service has an address in (a DNAT cannot change the family):
                // the chain traffic from inside takes (`internal`) and the one traffic from
                // outside takes (`external`: node ports, external IPs).
                var external: [(IPFamily, String)] = []
                for family in [IPFamily.v4, .v6] {
                    let vips = svc.clusterIPs.filter { $0.family == family }
                    // External IPs and load balancer addresses: traffic from outside.
                    let extIPs = (svc.externalIPs + svc.loadBalancerIPs).filter { $0.family == family }
                    guard !vips.isEmpty || !extIPs.isEmpty || p.nodePort != nil else { continue }
                    let base = chainName(svc, p) + (family == .v6 ? "/v6" : "")
                    let candidates = e.endpoints.filter { $0.address.family == family }.compactMap { ep in ep.port(for: p).map { (ep, $0) } }
                    let ready = usable(candidates)
                    if ready.isEmpty {
                        for ip in vips + extIPs { element(family == .v4 ? "no-endpoint-services" : "no-endpoint-services6", "\(ip) . \(l4) . \(p.port)", "goto reject-chain") }
                        continue
                    }
                    let local = usable(candidates.filter { $0.0.nodeName != nil && $0.0.nodeName == node })
                    // A chain choosing at random among `backends` (session affinity first); nil
                    // when there is none, and then the traffic is dropped, as Kubernetes does
                    // for a Local policy without a local endpoint.
                    func picker(_ name: String, _ backends: [(ServiceEndpoint, UInt16)]) -> String? {
                        guard !backends.isEmpty else { return nil }
                        var arms: [String] = [], sticky: [String] = []
                        for (i, (ep, port)) in backends.enumerated() {
                            let ec = endpointChain(svc, p, ep, port, into: &m)
                            if svc.affinityTimeout != nil { sticky.append("\(family == .v4 ? "ip" : "ip6") saddr @\(ec)/affinity goto \(ec)") }
                            arms.append("\(i) : goto \(ec)")
                        }
                        m.chains[name] = sticky + ["numgen random mod \(backends.count) vmap { \(arms.joined(separator: ", ")) }"]
                        return name
                    }
                    let all = picker(base, ready)!
                    let inside = svc.internalLocal ? picker(base + "/local", local) : all
                    let outside: String?
                    if p.nodePort == nil && extIPs.isEmpty {
                        outside = nil   // no traffic from outside
                    } else if svc.externalLocal {
                        outside = picker(base + "/local", local)
                    } else {
                        // Traffic from outside comes back through this node only if masqueraded.
                        m.chains[base + "/external"] = ["jump mark-for-masquerade", "goto \(all)"]
                        outside = base + "/external"
                    }
                    let map = family == .v4 ? "service-ips" : "service-ips6"
                    for ip in vips { element(map, "\(ip) . \(l4) . \(p.port)", inside.map { "goto \($0)" } ?? "drop") }
                    for ip in extIPs { element(map, "\(ip) . \(l4) . \(p.port)", outside.map { "goto \($0)" } ?? "drop") }
                    if p.nodePort != nil { external.append((family, outside ?? "drop-chain")) }
                }
                if let np = p.nodePort {
                    if external.isEmpty {
                        element("no-endpoint-nodeports", "\(l4) . \(np)", "goto reject-chain")
                    } else {
                        let nc = "\(chainName(svc, p))/nodeport"
                        m.chains[nc] = external.map { "meta nfproto \($0.0 == .v4 ? "ipv4" : "ipv6") goto \($0.1)" } + ["goto reject-chain"]
                        element("service-nodeports", "\(l4) . \(np)", "goto \(nc)")
                    }
                }
            }
        }
        return m
    }

    /// The endpoints traffic goes to (see `ServiceEndpoint.takingTraffic`).
    static func usable(_ endpoints: [(ServiceEndpoint, UInt16)]) -> [(ServiceEndpoint, UInt16)] {
        ServiceEndpoint.takingTraffic(endpoints) { $0.0 }
    }

    /// The chain that DNATs to one endpoint (and remembers its clients under session
    /// affinity). Named by address and port, so it stays while other endpoints come and go.
    static func endpointChain(_ svc: ClusterService, _ p: ClusterService.Port, _ ep: ServiceEndpoint, _ port: UInt16, into m: inout Model) -> String {
        let ec = "\(chainName(svc, p))/ep/\(ep.address.description.replacingColons())/\(port)"
        let fam = ep.address.family == .v4 ? "ip" : "ip6"
        let dest = ep.address.family == .v4 ? "\(ep.address):\(port)" : "[\(ep.address)]:\(port)"
        var rules = ["\(fam) saddr \(ep.address) jump mark-for-masquerade"]   // hairpin
        if let timeout = svc.affinityTimeout {
            // Session affinity as kube-proxy does it: each endpoint remembers its clients for
            // the timeout; a remembered client goes straight back (see `picker`).
            m.sets["\(ec)/affinity"] = "{ type \(ep.address.family == .v4 ? "ipv4_addr" : "ipv6_addr") ; flags dynamic,timeout ; timeout \(timeout)s ; }"
            rules.append("update @\(ec)/affinity { \(fam) saddr }")
        }
        rules.append("meta l4proto \(proto(p.proto)) dnat \(fam) to \(dest)")
        m.chains[ec] = rules
        return ec
    }

    /// The whole table, replacing whatever is there, in one transaction.
    public static func script(_ entries: [Entry]) -> String { fullScript(model(entries)) }

    public static func fullScript(_ m: Model) -> String {
        let t = "inet \(table)"
        var s = """
        add table \(t)
        delete table \(t)
        add table \(t)
        add map \(t) service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; }
        add map \(t) service-ips6 { type ipv6_addr . inet_proto . inet_service : verdict ; }
        add map \(t) service-nodeports { type inet_proto . inet_service : verdict ; }
        add map \(t) no-endpoint-services { type ipv4_addr . inet_proto . inet_service : verdict ; }
        add map \(t) no-endpoint-services6 { type ipv6_addr . inet_proto . inet_service : verdict ; }
        add map \(t) no-endpoint-nodeports { type inet_proto . inet_service : verdict ; }
        add chain \(t) services
        add rule \(t) services ip daddr . meta l4proto . th dport vmap @service-ips
        add rule \(t) services ip6 daddr . meta l4proto . th dport vmap @service-ips6
        add rule \(t) services fib daddr type local meta l4proto . th dport vmap @service-nodeports
        add chain \(t) nat-prerouting { type nat hook prerouting priority dstnat ; }
        add rule \(t) nat-prerouting jump services
        add chain \(t) nat-output { type nat hook output priority -100 ; }
        add rule \(t) nat-output jump services
        add chain \(t) nat-postrouting { type nat hook postrouting priority srcnat ; }
        add rule \(t) nat-postrouting meta mark & \(masqMark) != 0 meta mark set meta mark ^ \(masqMark) masquerade
        add chain \(t) mark-for-masquerade
        add rule \(t) mark-for-masquerade meta mark set meta mark | \(masqMark)
        add chain \(t) reject-chain
        add chain \(t) drop-chain
        add rule \(t) drop-chain drop
        add rule \(t) reject-chain meta l4proto tcp reject with tcp reset
        add rule \(t) reject-chain reject
        add chain \(t) endpoints-check
        add rule \(t) endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services
        add rule \(t) endpoints-check ip6 daddr . meta l4proto . th dport vmap @no-endpoint-services6
        add rule \(t) endpoints-check fib daddr type local meta l4proto . th dport vmap @no-endpoint-nodeports

        """
        for hook in ["input", "forward", "output"] {
            s += "add chain \(t) filter-\(hook) { type filter hook \(hook) priority -110 ; }\n"
            s += "add rule \(t) filter-\(hook) ct state new jump endpoints-check\n"
        }
        for name in m.sets.keys.sorted() { s += "add set \(t) \(name) \(m.sets[name]!)\n" }
        for name in m.chains.keys.sorted() { s += "add chain \(t) \(name)\n" }
        for name in m.chains.keys.sorted() { for r in m.chains[name]! { s += "add rule \(t) \(name) \(r)\n" } }
        for map in m.elements.keys.sorted() {
            for (k, v) in m.elements[map]!.sorted(by: { $0.key < $1.key }) { s += "add element \(t) \(map) { \(k) : \(v) }\n" }
        }
        return s
    }

    /// The change from `old` to `new` as two transactions: the first adds and rewrites what
    /// changed (new chains, changed chains flushed and refilled, map elements deleted and
    /// added), so every lookup switches at once; the second deletes chains nothing refers to
    /// any more. Its size follows the change, not the table: one endpoint's change touches its
    /// service's chains and elements only. Nil when nothing changed.
    public static func updateScripts(from old: Model, to new: Model) -> (update: String, cleanup: String)? {
        guard old != new else { return nil }
        let t = "inet \(table)"
        var s = ""
        for map in Set(old.elements.keys).union(new.elements.keys).sorted() {
            let was = old.elements[map] ?? [:], now = new.elements[map] ?? [:]
            for (k, v) in was.sorted(by: { $0.key < $1.key }) where now[k] != v { s += "delete element \(t) \(map) { \(k) }\n" }
        }
        // A set whose timeout changed cannot be redefined in place: its `add set` fails, and the
        // agent then replaces the whole table (which only forgets who had affinity).
        for name in new.sets.keys.sorted() where old.sets[name] != new.sets[name] { s += "add set \(t) \(name) \(new.sets[name]!)\n" }
        for name in new.chains.keys.sorted() where old.chains[name] == nil { s += "add chain \(t) \(name)\n" }
        for name in new.chains.keys.sorted() where old.chains[name] != new.chains[name] {
            if old.chains[name] != nil { s += "flush chain \(t) \(name)\n" }
            for r in new.chains[name]! { s += "add rule \(t) \(name) \(r)\n" }
        }
        for name in old.chains.keys.sorted() where new.chains[name] == nil { s += "flush chain \(t) \(name)\n" }
        for map in new.elements.keys.sorted() {
            let was = old.elements[map] ?? [:]
            for (k, v) in new.elements[map]!.sorted(by: { $0.key < $1.key }) where was[k] != v { s += "add element \(t) \(map) { \(k) : \(v) }\n" }
        }
        var cleanup = ""
        for name in old.chains.keys.sorted() where new.chains[name] == nil { cleanup += "delete chain \(t) \(name)\n" }
        for name in old.sets.keys.sorted() where new.sets[name] == nil { cleanup += "delete set \(t) \(name)\n" }
        return (s, cleanup)
    }

}

extension String {
    func replacingColons() -> String { String(map { $0 == ":" ? "_" : $0 }) }
}

/// Connection-tracking entries a service change leaves stale. UDP has no connection to end, so
/// the kernel keeps NATing a client's datagrams by the entry it made first: to a removed
/// endpoint, or (made while the service had none) to the reject. kube-proxy deletes them; so
/// does the agent, with these filters. A nil field matches anything.
public struct StaleConntrack: Sendable, Hashable {
    public var family: IPFamily
    public var proto: String
    public var destination: IPAddress?
    public var destinationPort: UInt16?
    public var replySource: IPAddress?
    public var replySourcePort: UInt16?
    public init(family: IPFamily, proto: String, destination: IPAddress? = nil, destinationPort: UInt16? = nil,
                replySource: IPAddress? = nil, replySourcePort: UInt16? = nil) {
        self.family = family; self.proto = proto; self.destination = destination; self.destinationPort = destinationPort
        self.replySource = replySource; self.replySourcePort = replySourcePort
    }
}

extension ServiceRules {
    /// What to delete after going from `old` to `new`, per UDP service port and family: every
    /// entry to its addresses and node port when it gains endpoints after having none (or is
    /// new), and those answered by an endpoint that no longer takes its traffic.
    public static func staleConntrack(from old: [Entry], to new: [Entry]) -> Set<StaleConntrack> {
        var out = Set<StaleConntrack>()
        let before = Dictionary(old.map { ("\($0.service.namespace)/\($0.service.name)", $0) }, uniquingKeysWith: { a, _ in a })
        for e in new {
            // A service new since `old` counts as having had no endpoints: datagrams sent to its
            // address before it was programmed were routed un-NATed, and their entries would
            // keep every later datagram of the flow from being NATed.
            let was = before["\(e.service.namespace)/\(e.service.name)"]
            for p in e.service.ports where p.proto == "UDP" {
                for family in [IPFamily.v4, .v6] {
                    func backends(_ entry: Entry?) -> Set<String> {
                        guard let entry else { return [] }
                        let c = entry.endpoints.filter { $0.address.family == family }.compactMap { ep in ep.port(for: p).map { (ep, $0) } }
                        return Set(usable(c).map { "\($0.0.address)|\($0.1)" })
                    }
                    let had = backends(was), has = backends(e)
                    let addresses = (e.service.clusterIPs + e.service.externalIPs + e.service.loadBalancerIPs).filter { $0.family == family }
                    if had.isEmpty && !has.isEmpty {
                        for ip in addresses { out.insert(StaleConntrack(family: family, proto: "UDP", destination: ip, destinationPort: p.port)) }
                        if let np = p.nodePort { out.insert(StaleConntrack(family: family, proto: "UDP", destinationPort: np)) }
                    }
                    for gone in had.subtracting(has) {
                        let parts = gone.split(separator: "|")
                        guard let ip = IPAddress(String(parts[0])), let port = UInt16(parts[1]) else { continue }
                        for vip in addresses {
                            out.insert(StaleConntrack(family: family, proto: "UDP", destination: vip, destinationPort: p.port, replySource: ip, replySourcePort: port))
                        }
                        if let np = p.nodePort {
                            out.insert(StaleConntrack(family: family, proto: "UDP", destinationPort: np, replySource: ip, replySourcePort: port))
                        }
                    }
                }
            }
        }
        return out
    }
}
