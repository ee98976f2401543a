/// How pods on different nodes reach each other; `backend` gives what each mode does.
public enum RoutingMode: String, Sendable, CaseIterable {
    /// An overlay with its own ranges: one VXLAN device per node; per peer an FDB entry, a
    /// neighbour entry and a route.
    case vxlan
    /// A route to each peer's pod range via the peer's host address (nodes share a segment).
    case native
    /// Pod addresses come from the host network's own range; nodes answer ARP for their pods
    /// (proxy ARP), so anything on the segment reaches a pod with no route and no encapsulation.
    case underlay
}

/// Cluster-wide settings every agent must agree on, stored once in the datastore.
public struct ClusterConfig: Sendable, Equatable {
    public var mode: RoutingMode
    public var clusterCIDRs: [IPNetwork]
    /// Prefix length of the block each node claims, per family.
    public var blockPrefixV4: Int
    public var blockPrefixV6: Int
    public var vni: UInt32
    public var vxlanPort: UInt16
    /// Where LoadBalancer services get their addresses: ranges of the host network that no
    /// host uses; the node announcing an address answers ARP/NDP for it there.
    public var loadBalancerCIDRs: [IPNetwork]

    public init(mode: RoutingMode, clusterCIDRs: [IPNetwork], blockPrefixV4: Int = 24, blockPrefixV6: Int = 80, vni: UInt32 = VXLAN.defaultVNI, vxlanPort: UInt16 = VXLAN.defaultPort,
                loadBalancerCIDRs: [IPNetwork] = []) {
        self.mode = mode; self.clusterCIDRs = clusterCIDRs; self.blockPrefixV4 = blockPrefixV4; self.blockPrefixV6 = blockPrefixV6
        self.vni = vni; self.vxlanPort = vxlanPort; self.loadBalancerCIDRs = loadBalancerCIDRs
    }

    public func blockPrefix(_ f: IPFamily) -> Int { f == .v4 ? blockPrefixV4 : blockPrefixV6 }

    /// Checks ranges and block sizes; the message names the value and what is accepted.
    public func validate() throws(ManifestError) {
        guard !clusterCIDRs.isEmpty else { throw ManifestError("no cluster range given; pass e.g. --cluster-cidr 10.244.0.0/16") }
        for (i, c) in clusterCIDRs.enumerated() {
            for o in clusterCIDRs[..<i] where o.family == c.family {
                throw ManifestError("cluster ranges \(o) and \(c) are both \(c.family); give at most one per family")
            }
            let block = blockPrefix(c.family)
            guard block >= c.prefixLength else {
                throw ManifestError("block size /\(block) is larger than the cluster range \(c); use a block of /\(c.prefixLength) or longer")
            }
            guard c.family.bitWidth - block >= 2 else {
                throw ManifestError("block size /\(block) is too small for pods; use /\(c.family.bitWidth - 2) or shorter")
            }
        }
        for lb in loadBalancerCIDRs {
            for c in clusterCIDRs where c.family == lb.family && (c.contains(lb.address) || lb.contains(c.address)) {
                throw ManifestError("load balancer range \(lb) overlaps the cluster range \(c); give a part of the host network that no host and no pod uses")
            }
        }
    }

    /// Checks the cluster ranges against the host network a node sits on, as the mode's
    /// backend requires (vxlan and native: apart from it; underlay: inside it).
    public func check(hostNetwork host: IPNetwork, uplink: String) throws(ManifestError) {
        for c in clusterCIDRs where c.family == host.family {
            try backend.check(clusterRange: c, hostNetwork: host, uplink: uplink)
        }
    }

    public var json: JSONValue {
        .object([("mode", .string(mode.rawValue)), ("clusterCIDRs", .array(clusterCIDRs.map { .string($0.description) })),
                 ("blockPrefixV4", .number(Double(blockPrefixV4))), ("blockPrefixV6", .number(Double(blockPrefixV6))),
                 ("vni", .number(Double(vni))), ("vxlanPort", .number(Double(vxlanPort))),
                 ("loadBalancerCIDRs", .array(loadBalancerCIDRs.map { .string($0.description) }))])
    }

    public init?(json j: JSONValue) {
        guard let m = j["mode"]?.stringValue.flatMap(RoutingMode.init) else { return nil }
        self.init(mode: m, clusterCIDRs: (j["clusterCIDRs"]?.arrayValue ?? []).compactMap { $0.stringValue.flatMap(IPNetwork.init) },
                  blockPrefixV4: j["blockPrefixV4"]?.intValue ?? 24, blockPrefixV6: j["blockPrefixV6"]?.intValue ?? 80,
                  vni: UInt32(j["vni"]?.intValue ?? Int(VXLAN.defaultVNI)), vxlanPort: UInt16(j["vxlanPort"]?.intValue ?? Int(VXLAN.defaultPort)),
                  loadBalancerCIDRs: (j["loadBalancerCIDRs"]?.arrayValue ?? []).compactMap { $0.stringValue.flatMap(IPNetwork.init) })
    }
}

/// The blocks of `cluster` of the given prefix length, in order, skipping any in `taken`.
/// Lazy, so a /8 cut into /24s is not materialised.
public func freeBlocks(of cluster: IPNetwork, prefix: Int, taken: Set<IPNetwork>) -> some Sequence<IPNetwork> {
    let count = UInt128(1) << UInt128(prefix - cluster.prefixLength)
    let step = UInt128(1) << UInt128(cluster.family.bitWidth - prefix)
    return (0..<min(count, 1 << 20)).lazy
        .map { IPNetwork(containing: IPAddress(family: cluster.family, value: cluster.address.value + UInt128($0) * step), prefixLength: prefix) }
        .filter { !taken.contains($0) }
}

// MARK: desired routing state

public struct DesiredRoute: Sendable, Hashable, CustomStringConvertible {
    public var destination: IPNetwork
    public var gateway: IPAddress?
    public var device: String
    public var onLink: Bool
    public init(destination: IPNetwork, gateway: IPAddress?, device: String, onLink: Bool = false) {
        self.destination = destination; self.gateway = gateway; self.device = device; self.onLink = onLink
    }
    public var description: String { "\(destination)\(gateway.map { " via \($0)" } ?? "") dev \(device)\(onLink ? " onlink" : "")" }
}

public struct DesiredFDB: Sendable, Hashable {
    public var mac: [UInt8]
    public var remote: IPAddress
    public init(mac: [UInt8], remote: IPAddress) { self.mac = mac; self.remote = remote }
}

public struct DesiredNeighbor: Sendable, Hashable {
    public var address: IPAddress
    public var mac: [UInt8]
    public init(address: IPAddress, mac: [UInt8]) { self.address = address; self.mac = mac }
}

/// Everything one node must program to reach its live peers, as its `RoutingBackend` says.
public struct RoutingState: Sendable, Equatable {
    public var routes: Set<DesiredRoute> = []
    public var fdb: Set<DesiredFDB> = []
    public var neighbors: Set<DesiredNeighbor> = []
    /// The device the FDB and neighbour entries belong to (the mode's own); nil: it has none.
    public var device: String?
    public init(device: String? = nil) { self.device = device }
}

public enum VXLAN {
    public static let device = "weft.vxlan"
    public static let defaultVNI: UInt32 = 4096
    public static let defaultPort: UInt16 = 4789
    /// Encapsulation overhead: the outer IP header (20 bytes for IPv4, 40 for IPv6) + UDP (8) +
    /// VXLAN (8) + the inner Ethernet header (14). By the host network's family: an IPv6 host
    /// network costs 20 bytes more, and a pod MTU sized for IPv4 drops full-size packets there.
    public static func overhead(over hostFamily: IPFamily) -> Int { hostFamily == .v4 ? 50 : 70 }
    /// A node's VXLAN address: the first address of its IPv4 (or IPv6) pod block, as flannel does.
    public static func tunnelAddress(_ block: IPNetwork) -> IPAddress { block.first }
}
