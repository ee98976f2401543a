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
/// The script replaces the whole table in one transaction (`add`, `delete`, then the new
/// table), so readers never see a half-built state. Pure: the agent runs it in the node.
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

    public static func script(_ entries: [Entry]) -> String {
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
        for e in entries.sorted(by: { ($0.service.namespace, $0.service.name) < ($1.service.namespace, $1.service.name) }) {
            let svc = e.service
            guard !svc.headless, svc.kind != .externalName else { continue }
            for p in svc.ports {
                let c = chainName(svc, p)
                let l4 = proto(p.proto)
                // Ready endpoints; terminating or unready ones only when none is ready (as
                // Kubernetes falls back), and only those that serve this port.
                let serving = e.endpoints.compactMap { ep in ep.port(for: p).map { (ep, $0) } }
                let ready = serving.filter { $0.0.ready }
                var backends: [(ServiceEndpoint, UInt16)] = ready.isEmpty ? [] : ready
                backends = backends.filter { b in svc.clusterIPs.contains { $0.family == b.0.address.family } }
                if backends.isEmpty {
                    for ip in svc.clusterIPs {
                        s += "add element \(t) \(ip.family == .v4 ? "no-endpoint-services" : "no-endpoint-services6") { \(ip) . \(l4) . \(p.port) : goto reject-chain }\n"
                    }
                    if let np = p.nodePort { s += "add element \(t) no-endpoint-nodeports { \(l4) . \(np) : goto reject-chain }\n" }
                    continue
                }
                s += "add chain \(t) \(quoted(c))\n"
                var arms: [String] = []
                for (i, (ep, port)) in backends.enumerated() {
                    let ec = "\(c)/ep\(i)"
                    let fam = ep.address.family == .v4 ? "ip" : "ip6"
                    let dest = ep.address.family == .v4 ? "\(ep.address):\(port)" : "[\(ep.address)]:\(port)"
                    s += "add chain \(t) \(quoted(ec))\n"
                    s += "add rule \(t) \(quoted(ec)) \(fam) saddr \(ep.address) jump mark-for-masquerade\n"
                    s += "add rule \(t) \(quoted(ec)) meta l4proto \(l4) dnat \(fam) to \(dest)\n"
                    arms.append("\(i) : goto \(quoted(ec))")
                }
                s += "add rule \(t) \(quoted(c)) numgen random mod \(backends.count) vmap { \(arms.joined(separator: ", ")) }\n"
                for ip in svc.clusterIPs {
                    s += "add element \(t) \(ip.family == .v4 ? "service-ips" : "service-ips6") { \(ip) . \(l4) . \(p.port) : goto \(quoted(c)) }\n"
                }
                if let np = p.nodePort {
                    // Traffic from outside comes back through this node only if masqueraded
                    // (externalTrafficPolicy: Cluster).
                    let nc = "\(c)/nodeport"
                    s += "add chain \(t) \(quoted(nc))\n"
                    s += "add rule \(t) \(quoted(nc)) jump mark-for-masquerade\n"
                    s += "add rule \(t) \(quoted(nc)) goto \(quoted(c))\n"
                    s += "add element \(t) service-nodeports { \(l4) . \(np) : goto \(quoted(nc)) }\n"
                }
            }
        }
        return s
    }

    /// Chain names are identifiers (letters, digits, `-`, `_`, `/`, `.`), which Kubernetes
    /// names and the numbers used here always are.
    static func quoted(_ name: String) -> String { name }
}
