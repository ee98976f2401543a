/// LoadBalancer services on the cluster's own network, in the style of MetalLB's layer-2 mode:
/// each load balancer address is announced (held as a local address on the uplink, so the node
/// answers ARP/NDP for it) by exactly one node, chosen by rendezvous hashing so that every agent
/// agrees without talking and a node that goes moves only its own addresses. With
/// externalTrafficPolicy Local only nodes with a local endpoint are candidates, which keeps the
/// client's address and never sends the traffic through a second node.
/// Pure: the agent reconciles addresses and health-check listeners to what these return.
public enum LoadBalancing {
    /// The node announcing `address` among `candidates`; nil when there is none.
    public static func announcer(of address: IPAddress, among candidates: some Collection<String>) -> String? {
        candidates.max { (fnv1a64("\(address)/\($0)"), $0) < (fnv1a64("\(address)/\($1)"), $1) }
    }

    /// The load balancer addresses `node` should announce, given the live nodes.
    public static func addresses(announcedBy node: String, entries: [ServiceRules.Entry], liveNodes: Set<String>) -> Set<IPAddress> {
        var mine = Set<IPAddress>()
        for e in entries where !e.service.loadBalancerIPs.isEmpty {
            for ip in e.service.loadBalancerIPs {
                var candidates = liveNodes
                if e.service.externalLocal {
                    candidates = candidates.intersection(localEndpointNodes(e, family: ip.family))
                }
                if announcer(of: ip, among: candidates) == node { mine.insert(ip) }
            }
        }
        return mine
    }

    /// Nodes with an endpoint of `family` that takes traffic.
    static func localEndpointNodes(_ e: ServiceRules.Entry, family: IPFamily) -> Set<String> {
        Set(ServiceEndpoint.takingTraffic(e.endpoints.filter { $0.address.family == family }) { $0 }.compactMap(\.nodeName))
    }

    /// What a health-check node port answers on `node`, as kube-proxy's: the service and how
    /// many local endpoints it has here (a load balancer sends traffic only to nodes with one).
    public struct HealthCheck: Sendable, Equatable {
        public var service: String
        public var localEndpoints: Int
        public init(service: String, localEndpoints: Int) { self.service = service; self.localEndpoints = localEndpoints }
    }

    /// The health-check node ports this node serves (LoadBalancer services with
    /// externalTrafficPolicy Local and a healthCheckNodePort).
    public static func healthChecks(node: String, entries: [ServiceRules.Entry]) -> [UInt16: HealthCheck] {
        var out: [UInt16: HealthCheck] = [:]
        for e in entries {
            guard let port = e.service.healthCheckNodePort, e.service.externalLocal else { continue }
            let usable = ServiceEndpoint.takingTraffic(e.endpoints) { $0 }
            // Counted per pod, not per address: a dual-stack pod is one endpoint.
            let local = Set(usable.filter { $0.nodeName == node }.map { $0.pod.isEmpty ? $0.address.description : $0.pod })
            out[port] = HealthCheck(service: "\(e.service.namespace)/\(e.service.name)", localEndpoints: local.count)
        }
        return out
    }
}
