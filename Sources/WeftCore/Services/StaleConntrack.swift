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
