/// The services dataplane as nftables tables, laid out as kube-proxy's nftables mode does:
/// fixed chains whose lookups go through verdict maps keyed by address · protocol · port (so
/// the cost of a lookup does not grow with the number of services), one chain per service port
/// that picks an endpoint at random, one chain per endpoint that DNATs to it.
///
/// - `service-ips` / `service-ips6`: VIP · proto · port → the service port's chain.
/// - `service-nodeports`: proto · port → the NodePort chain (which masquerades, then goes to
///   the service port's chain), for packets addressed to any local address of the node.
/// - `no-endpoint-services` / `no-endpoint-nodeports`: the same keys → reject, checked for new
///   connections in the filter hooks, so a service with no ready endpoint refuses at once.
/// - The services are spread over `shardCount` tables of that layout (`weft-services-0` …), each
///   hooked into NAT: the kernel validates the whole jump graph of every table a transaction
///   touches, so a change costs the walk of one shard, not of every service. A new connection
///   looks its address up in the shards until one DNATs it (the kernel stops at the first NAT).
///   The front table `weft-services` holds what is not per service: the filter hooks with the
///   no-endpoint maps, and the masquerade of marked traffic.
/// - A service port's chain picks an endpoint with `numgen random mod N vmap @<chain>/pick`: a
///   named map, not an inline one, because the kernel binds each anonymous set by walking the
///   whole transaction, which made a 10,000-service table take minutes to load.
/// - An endpoint that reaches itself through its service (hairpin) is masqueraded, or the
///   reply would skip the DNAT's reversal.
///
/// Jobs, one a file: names (here), what one service puts in the tables (`ServiceFragments`),
/// the model kept per service with its claims on contested map keys and the transaction of a
/// change (`ServiceModel`), the fixed tables and the full replace (`ServiceTables`), and the
/// conntrack entries a change leaves stale (`StaleConntrack`). Everything is written in the
/// typed nftables layer (`NFT`). Chain names are nftables identifiers built from Kubernetes
/// names, protocols, ports and addresses (`:` written `_`). Pure: the agent writes the tables.
public enum ServiceRules {
    /// The front table (see above); the services' own chains are in `shardTable(_:)`s.
    public static let frontTable = "weft-services"
    public static let shardCount = 32
    public static func shardTable(_ i: Int) -> String { "weft-services-\(i)" }
    /// Every table the services dataplane writes.
    public static var tables: [String] { [frontTable] + (0..<shardCount).map(shardTable) }
    /// The table holding a service's chains and its elements of `service-ips(6)` and `service-nodeports`.
    public static func table(for service: ClusterService) -> String { table(forKey: "\(service.namespace)/\(service.name)") }
    static func table(forKey key: String) -> String { shardTable(Int(fnv1a64(key) % UInt64(shardCount))) }
    /// The mark of traffic to masquerade on its way out.
    public static let masqMarkBit: UInt32 = 0x4000

    // The maps, by what they are keyed by.
    static func serviceIPs(_ f: IPFamily) -> String { f == .v4 ? "service-ips" : "service-ips6" }
    static let serviceNodePorts = "service-nodeports"
    static func noEndpointServices(_ f: IPFamily) -> String { f == .v4 ? "no-endpoint-services" : "no-endpoint-services6" }
    static let noEndpointNodePorts = "no-endpoint-nodeports"
    static let rejectChain = "reject-chain", dropChain = "drop-chain", markForMasquerade = "mark-for-masquerade"

    public struct Entry: Sendable, Equatable {
        public let service: ClusterService
        public let endpoints: [ServiceEndpoint]
        /// What the entry was derived from, when the reader knows (the datastore revisions of the
        /// Service and its EndpointSlices): two entries with the same source are the same entry,
        /// which spares comparing them field by field.
        public var source: String?
        public init(service: ClusterService, endpoints: [ServiceEndpoint], source: String? = nil) {
            self.service = service; self.endpoints = endpoints; self.source = source
            key = "\(service.namespace)/\(service.name)"
        }
        /// "namespace/name", made once (the model looks every entry up by it on every pass).
        public let key: String
        /// The same as `other`: by source when both have one, else field by field.
        func same(as other: Entry) -> Bool {
            if let a = source, let b = other.source { return a == b }
            return service == other.service && endpoints == other.endpoints
        }
    }

    /// A service port's protocol as nftables has it (Kubernetes' parser admits these three only).
    static func l4(_ p: ClusterService.Port) -> NFT.L4Proto { NFT.L4Proto(kubernetes: p.proto) ?? .sctp }

    static func chainName(_ s: ClusterService, _ p: ClusterService.Port) -> String {
        "svc-\(s.namespace)/\(s.name)/\(l4(p))/\(p.port)"
    }

    /// The chain that DNATs to one endpoint. Named by address and port, so it stays while other
    /// endpoints come and go.
    static func endpointChain(_ svc: ClusterService, _ p: ClusterService.Port, _ ep: ServiceEndpoint, _ port: UInt16) -> String {
        "\(chainName(svc, p))/ep/\(ep.address.description.replacingColons())/\(port)"
    }
}

extension String {
    func replacingColons() -> String { String(map { $0 == ":" ? "_" : $0 }) }
}
