/// Everything that differs between routing modes, in one type per mode: the device the mode
/// needs and its MTU, the pod MTU, which addresses of a block pods may have, the routes and
/// forwarding entries to the live peers, the node settings it needs, and what `weft doctor`
/// and `weft trace` say about it. Pure: the agent's `RoutingSetup` and `RouteReconciler` carry
/// out what it describes, the doctor and trace compare the kernel with it. Nothing else asks
/// which mode the cluster runs; `RoutingMode.backend` is the one place a mode is looked at.
public protocol RoutingBackend: Sendable {
    var mode: RoutingMode { get }
    /// The device this mode owns on every node; nil when pod packets leave over the uplink as
    /// they are.
    var deviceName: String? { get }
    /// Bytes a packet between nodes carries beyond the pod's own packet, over a host network of
    /// `hostFamily` (the outer header differs in size between IPv4 and IPv6).
    func overhead(hostFamily: IPFamily) -> Int
    /// The device to make on a node with this host address and uplink MTU; nil when the mode
    /// needs none.
    func device(hostIP: IPAddress, uplinkMTU: Int) -> RoutingDevice?
    /// Addresses the node puts on its device for its own pod blocks.
    func deviceAddresses(blocks: [IPNetwork]) -> [IPInterfaceAddress]
    /// The first address of a node's block the CNI plugin may give a pod; nil: the IPAM's own
    /// default (the block's first address after the network address).
    func podRangeStart(of block: IPNetwork) -> IPAddress?
    /// Node settings the mode needs beyond forwarding, which every mode needs.
    func sysctls(uplink: String) -> [SysctlSetting]
    /// Routes, FDB and neighbour entries for `me` to reach its live peers. The agent diffs the
    /// result against the kernel; the doctor compares the kernel with it.
    func desiredRouting(me: String, nodes: [NodeInfo], uplink: String) -> RoutingState
    /// Refuses a cluster range that cannot work beside the host network `host` (on `uplink`).
    func check(clusterRange: IPNetwork, hostNetwork host: IPNetwork, uplink: String) throws(ManifestError)
    /// The interface packets from other nodes' pods arrive on.
    func arrivalDevice(uplink: String) -> String
    /// How a packet to a pod of `peer` leaves this node, as `weft trace` tells it.
    func path(to peer: NodeInfo, uplink: String) -> RoutingPath
}

extension RoutingBackend {
    /// The MTU pods are given (in the CNI config) and the device has: what the uplink carries,
    /// less the encapsulation over this host family. The one MTU function: the agent, the CNI
    /// config and the doctor all take it from here.
    public func podMTU(uplinkMTU: Int, hostFamily: IPFamily) -> Int { uplinkMTU - overhead(hostFamily: hostFamily) }

    /// " − 70 for vxlan encapsulation over IPv6", for messages; empty without encapsulation.
    public func overheadText(hostFamily: IPFamily) -> String {
        let o = overhead(hostFamily: hostFamily)
        return o == 0 ? "" : " − \(o) for \(mode.rawValue) encapsulation over \(hostFamily)"
    }
}

extension RoutingMode {
    /// The backend of this mode: the one place a mode is looked at.
    public func backend(vni: UInt32 = VXLAN.defaultVNI, port: UInt16 = VXLAN.defaultPort) -> any RoutingBackend {
        switch self {
        case .vxlan: VXLANBackend(vni: vni, port: port)
        case .native: NativeBackend()
        case .underlay: UnderlayBackend()
        }
    }
}

extension ClusterConfig {
    /// The routing backend every node of this cluster runs.
    public var backend: any RoutingBackend { mode.backend(vni: vni, port: vxlanPort) }
}

/// A device a routing mode owns on each node, with the MTU it must have there.
public enum RoutingDevice: Sendable, Equatable {
    case vxlan(name: String, vni: UInt32, port: UInt16, local: IPAddress, mtu: Int)

    public var name: String {
        switch self { case .vxlan(let name, _, _, _, _): name }
    }
    public var mtu: Int {
        switch self { case .vxlan(_, _, _, _, let mtu): mtu }
    }
}

/// A sysctl (path under /proc/sys) a mode needs, and why, for the doctor to say.
public struct SysctlSetting: Sendable, Hashable {
    public var key: String
    public var value: String
    public var why: String
    public init(_ key: String, _ value: String, why: String) { self.key = key; self.value = value; self.why = why }
}

/// The device a packet to another node's pod leaves on, and a sentence saying how.
public struct RoutingPath: Sendable, Equatable {
    public var device: String
    public var description: String
    public init(device: String, description: String) { self.device = device; self.description = description }
}

// MARK: the three modes

/// A mode whose pod packets leave over the uplink as they are: no device of its own, no
/// encapsulation, the block's addresses all the IPAM's.
public protocol UplinkBackend: RoutingBackend {}

extension UplinkBackend {
    public var deviceName: String? { nil }
    public func overhead(hostFamily: IPFamily) -> Int { 0 }
    public func device(hostIP: IPAddress, uplinkMTU: Int) -> RoutingDevice? { nil }
    public func deviceAddresses(blocks: [IPNetwork]) -> [IPInterfaceAddress] { [] }
    public func podRangeStart(of block: IPNetwork) -> IPAddress? { nil }
    public func arrivalDevice(uplink: String) -> String { uplink }
}

/// An overlay with its own ranges: one VXLAN device per node; per peer an FDB entry, a
/// neighbour entry and a route via the peer's tunnel address.
public struct VXLANBackend: RoutingBackend {
    public var vni: UInt32
    public var port: UInt16
    public init(vni: UInt32 = VXLAN.defaultVNI, port: UInt16 = VXLAN.defaultPort) { self.vni = vni; self.port = port }

    public var mode: RoutingMode { .vxlan }
    public var deviceName: String? { VXLAN.device }
    public func overhead(hostFamily: IPFamily) -> Int { VXLAN.overhead(over: hostFamily) }

    public func device(hostIP: IPAddress, uplinkMTU: Int) -> RoutingDevice? {
        .vxlan(name: VXLAN.device, vni: vni, port: port, local: hostIP, mtu: podMTU(uplinkMTU: uplinkMTU, hostFamily: hostIP.family))
    }

    public func deviceAddresses(blocks: [IPNetwork]) -> [IPInterfaceAddress] {
        blocks.map { IPInterfaceAddress(address: VXLAN.tunnelAddress($0), prefixLength: $0.family.bitWidth) }
    }

    /// The block's first address is the node's tunnel address; pods start after it.
    public func podRangeStart(of block: IPNetwork) -> IPAddress? { block.first.advanced(by: 2) }

    public func sysctls(uplink: String) -> [SysctlSetting] { [] }

    public func desiredRouting(me: String, nodes: [NodeInfo], uplink: String) -> RoutingState {
        var s = RoutingState(device: VXLAN.device)
        for peer in nodes where peer.name != me {
            guard let mac = peer.vtepMAC else { continue } // its device is not made yet
            s.fdb.insert(DesiredFDB(mac: mac, remote: peer.hostIP))
            for cidr in peer.podCIDRs {
                let gw = VXLAN.tunnelAddress(cidr)
                s.neighbors.insert(DesiredNeighbor(address: gw, mac: mac))
                s.routes.insert(DesiredRoute(destination: cidr, gateway: gw, device: VXLAN.device, onLink: true))
            }
        }
        return s
    }

    public func check(clusterRange: IPNetwork, hostNetwork host: IPNetwork, uplink: String) throws(ManifestError) {
        try requireApart(clusterRange, from: host, uplink: uplink, mode: mode)
    }

    public func arrivalDevice(uplink: String) -> String { VXLAN.device }

    public func path(to peer: NodeInfo, uplink: String) -> RoutingPath {
        RoutingPath(device: VXLAN.device, description: "to \(peer.name)'s pod range over VXLAN (\(VXLAN.device) → \(peer.hostIP))")
    }
}

/// A route to each peer's pod range via the peer's host address (nodes share a segment).
public struct NativeBackend: UplinkBackend {
    public init() {}
    public var mode: RoutingMode { .native }
    public func sysctls(uplink: String) -> [SysctlSetting] { [] }

    public func desiredRouting(me: String, nodes: [NodeInfo], uplink: String) -> RoutingState {
        var s = RoutingState()
        for peer in nodes where peer.name != me {
            // A gateway must be of the range's family: the host address reaches only that one.
            for cidr in peer.podCIDRs where cidr.family == peer.hostIP.family {
                s.routes.insert(DesiredRoute(destination: cidr, gateway: peer.hostIP, device: uplink))
            }
        }
        return s
    }

    public func check(clusterRange: IPNetwork, hostNetwork host: IPNetwork, uplink: String) throws(ManifestError) {
        try requireApart(clusterRange, from: host, uplink: uplink, mode: mode)
    }

    public func path(to peer: NodeInfo, uplink: String) -> RoutingPath {
        RoutingPath(device: uplink, description: "native route to \(peer.name)'s pod range via \(peer.hostIP)")
    }
}

/// Pod addresses come from the host network's own range; nodes answer ARP for their pods
/// (proxy ARP), so anything on the segment reaches a pod with no route and no encapsulation.
public struct UnderlayBackend: UplinkBackend {
    public init() {}
    public var mode: RoutingMode { .underlay }

    public func sysctls(uplink: String) -> [SysctlSetting] {
        // Answer ARP on the host segment for this node's pods, at once.
        [SysctlSetting("net/ipv4/conf/\(uplink)/proxy_arp", "1", why: "the node answers ARP for its pods on the host network; without it nothing on the segment finds them"),
         SysctlSetting("net/ipv4/neigh/\(uplink)/proxy_delay", "0", why: "proxy ARP answers at once instead of after a random delay of up to 0.8 s")]
    }

    /// The pod range is on the host segment itself: proxy ARP, no routes.
    public func desiredRouting(me: String, nodes: [NodeInfo], uplink: String) -> RoutingState { RoutingState() }

    public func check(clusterRange c: IPNetwork, hostNetwork host: IPNetwork, uplink: String) throws(ManifestError) {
        if !(host.prefixLength <= c.prefixLength && host.contains(c.address)) {
            throw ManifestError("in underlay mode the cluster range must lie inside the host network \(host) (on \(uplink)), but \(c) does not; pick a part of \(host) that no host uses")
        }
    }

    public func path(to peer: NodeInfo, uplink: String) -> RoutingPath {
        RoutingPath(device: uplink, description: "pod addresses on the host network: via \(peer.hostIP)")
    }
}

/// Modes with ranges of their own: an overlap with the host network would route host traffic
/// into pods.
private func requireApart(_ c: IPNetwork, from host: IPNetwork, uplink: String, mode: RoutingMode) throws(ManifestError) {
    if c.contains(host.address) || host.contains(c.address) {
        throw ManifestError("cluster range \(c) overlaps the host network \(host) (on \(uplink)); in \(mode.rawValue) mode pods need a range no host uses, e.g. 10.244.0.0/16, or use --mode underlay to give pods host-network addresses")
    }
}
