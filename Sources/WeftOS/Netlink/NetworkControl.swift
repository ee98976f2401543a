import WeftCore

/// A network interface as the kernel reports it.
public struct Link: Sendable, Equatable {
    public var index: Int32
    public var name: String
    /// IFLA_INFO_KIND: "veth", "bridge", "vxlan"; nil for physical and loopback.
    public var kind: String?
    public var mac: [UInt8]
    public var mtu: Int
    public var isUp: Bool
    public var masterIndex: Int32?
    public init(index: Int32, name: String, kind: String? = nil, mac: [UInt8] = [], mtu: Int = 1500, isUp: Bool = false, masterIndex: Int32? = nil) {
        self.index = index; self.name = name; self.kind = kind; self.mac = mac; self.mtu = mtu; self.isUp = isUp; self.masterIndex = masterIndex
    }
}

public struct AddressEntry: Sendable, Equatable {
    public var linkIndex: Int32
    public var address: IPInterfaceAddress
    public init(linkIndex: Int32, address: IPInterfaceAddress) { self.linkIndex = linkIndex; self.address = address }
}

public struct RouteEntry: Sendable, Equatable {
    public enum Scope: UInt8, Sendable { case universe = 0, link = 253, host = 254 }
    public var destination: IPNetwork
    public var gateway: IPAddress?
    public var linkIndex: Int32?
    public var scope: Scope
    public var onLink: Bool
    public var table: UInt32
    public var metric: UInt32?
    public var mtu: Int?
    public var advmss: Int?
    public var preferredSource: IPAddress?
    /// rtm_protocol: who owns the route. weft's agent marks its routes with `weftProtocol` so it
    /// can find (and repair or withdraw) exactly its own.
    public var protocolID: UInt8
    public static let bootProtocol: UInt8 = 3
    public static let weftProtocol: UInt8 = 0x57
    public init(destination: IPNetwork, gateway: IPAddress? = nil, linkIndex: Int32? = nil, scope: Scope = .universe, onLink: Bool = false,
                table: UInt32 = 254, metric: UInt32? = nil, mtu: Int? = nil, advmss: Int? = nil, preferredSource: IPAddress? = nil,
                protocolID: UInt8 = RouteEntry.bootProtocol) {
        self.destination = destination; self.gateway = gateway; self.linkIndex = linkIndex; self.scope = scope; self.onLink = onLink
        self.table = table; self.metric = metric; self.mtu = mtu; self.advmss = advmss; self.preferredSource = preferredSource
        self.protocolID = protocolID
    }
}

/// A VXLAN forwarding entry: frames for `mac` go to the VTEP at `remote`.
public struct FDBEntry: Sendable, Equatable {
    public var linkIndex: Int32
    public var mac: [UInt8]
    public var remote: IPAddress
    public init(linkIndex: Int32, mac: [UInt8], remote: IPAddress) { self.linkIndex = linkIndex; self.mac = mac; self.remote = remote }
}

public struct NeighborEntry: Sendable, Equatable {
    public var linkIndex: Int32
    public var address: IPAddress
    public var mac: [UInt8]
    public var permanent: Bool
    public init(linkIndex: Int32, address: IPAddress, mac: [UInt8], permanent: Bool = true) {
        self.linkIndex = linkIndex; self.address = address; self.mac = mac; self.permanent = permanent
    }
}

/// What to create: a veth pair's two ends (the peer placed straight into another namespace),
/// a bridge, or a VXLAN device.
public enum LinkSpec {
    case veth(name: String, mtu: Int?, peerName: String, peerNamespace: (any PodNamespace)?, peerMAC: [UInt8]?)
    case bridge(name: String, mtu: Int?)
    case vxlan(name: String, vni: UInt32, port: UInt16, local: IPAddress?, underlayIndex: Int32?, mtu: Int?, learning: Bool)
}

/// The kernel's network configuration of one namespace. `Rtnetlink` is the real one;
/// `FakeNetworkControl` (WeftOSFakes) keeps the same state in memory for tests.
/// Names of the form `ensureX` are idempotent: they succeed when X is already as asked.
public protocol NetworkControl: AnyObject {
    func link(named: String) throws(NetlinkError) -> Link?
    func link(index: Int32) throws(NetlinkError) -> Link?
    func links() throws(NetlinkError) -> [Link]
    func createLink(_ spec: LinkSpec) throws(NetlinkError)
    func deleteLink(index: Int32) throws(NetlinkError)
    /// `deleteLink`, returning as soon as the link and its veth peer (`peer.name` in
    /// `peer.control`'s namespace) are gone rather than when the kernel has freed them; see
    /// `Rtnetlink.deleteLinkReturningWhenGone`.
    func deleteLinkReturningWhenGone(index: Int32, peer: (control: any NetworkControl, name: String)?) throws(NetlinkError)
    func setUp(index: Int32) throws(NetlinkError)
    func setMaster(index: Int32, master: Int32?) throws(NetlinkError)
    func setMTU(index: Int32, mtu: Int) throws(NetlinkError)
    func setMAC(index: Int32, mac: [UInt8]) throws(NetlinkError)
    func setHairpin(index: Int32, on: Bool) throws(NetlinkError)

    func addresses() throws(NetlinkError) -> [AddressEntry]
    /// Adds an address; `noDAD` skips IPv6 duplicate detection (IPAM already guarantees
    /// uniqueness, and DAD would leave the address unusable for about a second).
    func ensureAddress(_ a: IPInterfaceAddress, index: Int32, noDAD: Bool) throws(NetlinkError)
    func deleteAddress(_ a: IPInterfaceAddress, index: Int32) throws(NetlinkError)

    func routes(family: IPFamily) throws(NetlinkError) -> [RouteEntry]
    /// Adds or replaces the route to `destination` (same table and metric).
    func ensureRoute(_ r: RouteEntry) throws(NetlinkError)
    func deleteRoute(_ r: RouteEntry) throws(NetlinkError)

    func neighbors(family: IPFamily) throws(NetlinkError) -> [NeighborEntry]
    func ensureNeighbor(_ n: NeighborEntry) throws(NetlinkError)
    func deleteNeighbor(_ n: NeighborEntry) throws(NetlinkError)

    func fdb(index: Int32) throws(NetlinkError) -> [FDBEntry]
    func ensureFDB(_ e: FDBEntry) throws(NetlinkError)
    func deleteFDB(_ e: FDBEntry) throws(NetlinkError)
}
