#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import WeftCore
import WeftOS

/// One network namespace's links, addresses, routes and neighbours, in memory, with the kernel
/// behaviour the CNI plugin relies on:
///
/// - link names are unique per namespace (`EEXIST`), indexes are allocated per namespace from 1
///   (`lo` is always index 1), and an unknown index is `ENODEV`;
/// - a veth pair's peer is created in the peer namespace's `FakeNetworkControl` (or here when
///   no namespace is given), and deleting either end deletes both;
/// - deleting a link removes its addresses, the routes through it, its neighbours, and
///   detaches the ports of a deleted bridge;
/// - `ensureAddress` is idempotent for the same link and address, `EEXIST` when the address is
///   on another link (or on this one with another prefix length);
/// - `ensureRoute` replaces by (destination, table, metric); an IPv4 route needs its link up
///   (`ENETDOWN`), and a gateway must be reachable (`ENETUNREACH`): inside a connected prefix
///   of the link's addresses, IPv6 link-local, or flagged on-link;
/// - `setHairpin` works only on a bridge port (`EOPNOTSUPP`); `setMaster` needs a bridge.
///
/// Connected (proto kernel) prefix routes are not listed by `routes(family:)`; they are only
/// consulted to decide gateway reachability.
///
/// Failure injection: `failNext[operation] = errno` makes the next call of that operation
/// throw `NetlinkError` with that errno (once) before doing anything. Operation names are the
/// protocol's method base names: "link", "links", "createLink", "deleteLink", "setUp",
/// "setMaster", "setMTU", "setMAC", "setHairpin", "addresses", "ensureAddress",
/// "deleteAddress", "routes", "ensureRoute", "deleteRoute", "neighbors", "ensureNeighbor",
/// "deleteNeighbor", "fdb", "ensureFDB", "deleteFDB".
public final class FakeNetworkControl: NetworkControl {
    /// Names this namespace in errors and seeds its MACs ("host", or a namespace path).
    public let label: String

    /// Errno to throw once per operation name; consumed when it fires.
    public var failNext: [String: Int32] = [:]
    /// Every successful mutating call, in order ("createLink weft0", "setUp #3", ...).
    public private(set) var operations: [String] = []

    private struct AddressRecord { var entry: AddressEntry; var noDAD: Bool }
    private struct PeerRef { weak var control: FakeNetworkControl?; var index: Int32 }

    private var table: [Int32: Link] = [:]
    private var addressRecords: [AddressRecord] = []
    private var routeTable: [RouteEntry] = []
    private var neighborTable: [NeighborEntry] = []
    private var fdbTable: [FDBEntry] = []
    private var hairpinOn: Set<Int32> = []
    private var peers: [Int32: PeerRef] = [:]
    private var nextIndex: Int32 = 1
    private var macCounter: UInt64 = 0

    /// A namespace holding only `lo` (down, as in a fresh namespace) plus `extraLinks`.
    public init(label: String, loopbackUp: Bool = false) {
        self.label = label
        let lo = Link(index: allocateIndex(), name: "lo", kind: nil, mac: [0, 0, 0, 0, 0, 0], mtu: 65536, isUp: loopbackUp)
        table[lo.index] = lo
    }

    /// A node's namespace: `lo` up, and an up physical `eth0` holding `address` if given.
    public static func host(address: IPInterfaceAddress? = nil) -> FakeNetworkControl {
        let c = FakeNetworkControl(label: "host", loopbackUp: true)
        let eth0 = c.addPhysicalLink(name: "eth0", up: true)
        if let address { c.addressRecords.append(AddressRecord(entry: AddressEntry(linkIndex: eth0.index, address: address), noDAD: false)) }
        return c
    }

    /// Adds a kind-less (physical) link, as the machine boots with; for test set-up.
    @discardableResult
    public func addPhysicalLink(name: String, mtu: Int = 1500, up: Bool = true) -> Link {
        let l = Link(index: allocateIndex(), name: name, kind: nil, mac: makeMAC(name), mtu: mtu, isUp: up)
        table[l.index] = l
        return l
    }

    // MARK: inspection (non-throwing, no failure injection)

    /// Links by ascending index.
    public var allLinks: [Link] { table.values.sorted { $0.index < $1.index } }
    public var linkNames: [String] { allLinks.map(\.name) }
    public func find(_ name: String) -> Link? { table.values.first { $0.name == name } }
    public var allAddresses: [AddressEntry] { addressRecords.map(\.entry) }
    public func addresses(on name: String) -> [IPInterfaceAddress] {
        guard let l = find(name) else { return [] }
        return addressRecords.filter { $0.entry.linkIndex == l.index }.map(\.entry.address)
    }
    /// Whether `a` on link `index` was added with DAD disabled.
    public func isNoDAD(_ a: IPInterfaceAddress, index: Int32) -> Bool {
        addressRecords.first { $0.entry == AddressEntry(linkIndex: index, address: a) }?.noDAD ?? false
    }
    public var allRoutes: [RouteEntry] { routeTable }
    public var allNeighbors: [NeighborEntry] { neighborTable }
    public var allFDB: [FDBEntry] { fdbTable }
    public func hairpin(index: Int32) -> Bool { hairpinOn.contains(index) }
    /// The other end of veth `index`: its namespace and index.
    public func peer(of index: Int32) -> (control: FakeNetworkControl, index: Int32)? {
        guard let p = peers[index], let c = p.control else { return nil }
        return (c, p.index)
    }

    // MARK: NetworkControl: links

    public func link(named name: String) throws(NetlinkError) -> Link? {
        try inject("link")
        return find(name)
    }

    public func link(index: Int32) throws(NetlinkError) -> Link? {
        try inject("link")
        return table[index]
    }

    public func links() throws(NetlinkError) -> [Link] {
        try inject("links")
        return allLinks
    }

    public func createLink(_ spec: LinkSpec) throws(NetlinkError) {
        try inject("createLink")
        switch spec {
        case let .veth(name, mtu, peerName, peerNamespace, peerMAC):
            let op = "create veth \(name) peer \(peerName)"
            let target: FakeNetworkControl
            if let ns = peerNamespace {
                guard let fake = ns as? FakePodNamespace else {
                    throw NetlinkError(operation: op, errno: EINVAL, kernelMessage: "peer namespace \(ns.path) is not a FakePodNamespace")
                }
                target = fake.network
            } else {
                target = self
            }
            try checkName(name, op: op)
            try checkName(peerName, op: op)
            try checkMTU(mtu, op: op)
            if let peerMAC { try checkMAC(peerMAC, op: op) }
            if find(name) != nil || (target === self && name == peerName) {
                throw NetlinkError(operation: op, errno: EEXIST, kernelMessage: "\(name) exists in \(label)")
            }
            if target.find(peerName) != nil {
                throw NetlinkError(operation: op, errno: EEXIST, kernelMessage: "\(peerName) exists in \(target.label)")
            }
            let mine = Link(index: allocateIndex(), name: name, kind: "veth", mac: makeMAC(name), mtu: mtu ?? 1500)
            table[mine.index] = mine
            let theirs = Link(index: target.allocateIndex(), name: peerName, kind: "veth", mac: peerMAC ?? target.makeMAC(peerName), mtu: mtu ?? 1500)
            target.table[theirs.index] = theirs
            peers[mine.index] = PeerRef(control: target, index: theirs.index)
            target.peers[theirs.index] = PeerRef(control: self, index: mine.index)
            record("createLink veth \(name) peer \(peerName)@\(target.label)")
            if target !== self { target.record("createLink veth \(peerName) (peer of \(name)@\(label))") }
        case let .bridge(name, mtu):
            let op = "create bridge \(name)"
            try checkName(name, op: op)
            try checkMTU(mtu, op: op)
            guard find(name) == nil else { throw NetlinkError(operation: op, errno: EEXIST) }
            let b = Link(index: allocateIndex(), name: name, kind: "bridge", mac: makeMAC(name), mtu: mtu ?? 1500)
            table[b.index] = b
            record("createLink bridge \(name)")
        case let .vxlan(name, _, _, _, underlay, mtu, _):
            let op = "create vxlan \(name)"
            try checkName(name, op: op)
            try checkMTU(mtu, op: op)
            if let underlay, table[underlay] == nil { throw NetlinkError(operation: op, errno: ENODEV, kernelMessage: "underlay #\(underlay) does not exist") }
            guard find(name) == nil else { throw NetlinkError(operation: op, errno: EEXIST) }
            let v = Link(index: allocateIndex(), name: name, kind: "vxlan", mac: makeMAC(name), mtu: mtu ?? 1450)
            table[v.index] = v
            record("createLink vxlan \(name)")
        }
    }

    public func deleteLink(index: Int32) throws(NetlinkError) {
        try inject("deleteLink")
        let l = try existing(index, "delete link")
        guard l.name != "lo" else { throw NetlinkError(operation: "delete link lo", errno: EOPNOTSUPP) }
        let name = l.name
        removeLink(index)
        record("deleteLink \(name)")
    }

    /// Memory frees at once here, so this is `deleteLink`; a peer left behind is the fake
    /// kernel's bug, reported as the real one would never be.
    public func deleteLinkReturningWhenGone(index: Int32, peer: (control: any NetworkControl, name: String)?) throws(NetlinkError) {
        try deleteLink(index: index)
        if let peer, try peer.control.link(named: peer.name) != nil {
            throw NetlinkError(operation: "delete link #\(index)", errno: EIO, kernelMessage: "fake kernel: peer \(peer.name) outlived its veth")
        }
    }

    public func setUp(index: Int32) throws(NetlinkError) {
        try inject("setUp")
        _ = try existing(index, "set link up")
        table[index]!.isUp = true
        record("setUp \(table[index]!.name)")
    }

    public func setMaster(index: Int32, master: Int32?) throws(NetlinkError) {
        try inject("setMaster")
        let l = try existing(index, "set master")
        if let master, master != 0 {
            guard let m = table[master] else {
                throw NetlinkError(operation: "set master of \(l.name)", errno: EINVAL, kernelMessage: "master #\(master) does not exist")
            }
            guard m.kind == "bridge" else {
                throw NetlinkError(operation: "set master of \(l.name)", errno: EOPNOTSUPP, kernelMessage: "\(m.name) cannot be a master")
            }
            guard master != index else { throw NetlinkError(operation: "set master of \(l.name)", errno: ELOOP) }
            table[index]!.masterIndex = master
            record("setMaster \(l.name) \(m.name)")
        } else {
            table[index]!.masterIndex = nil
            hairpinOn.remove(index)
            record("setMaster \(l.name) none")
        }
    }

    public func setMTU(index: Int32, mtu: Int) throws(NetlinkError) {
        try inject("setMTU")
        let l = try existing(index, "set mtu")
        try checkMTU(mtu, op: "set mtu of \(l.name)")
        table[index]!.mtu = mtu
        record("setMTU \(l.name) \(mtu)")
    }

    public func setMAC(index: Int32, mac: [UInt8]) throws(NetlinkError) {
        try inject("setMAC")
        let l = try existing(index, "set mac")
        try checkMAC(mac, op: "set mac of \(l.name)")
        table[index]!.mac = mac
        record("setMAC \(l.name) \(formatMAC(mac))")
    }

    public func setHairpin(index: Int32, on: Bool) throws(NetlinkError) {
        try inject("setHairpin")
        let l = try existing(index, "set hairpin")
        guard let m = l.masterIndex, table[m]?.kind == "bridge" else {
            throw NetlinkError(operation: "set hairpin on \(l.name)", errno: EOPNOTSUPP, kernelMessage: "\(l.name) is not a bridge port")
        }
        if on { hairpinOn.insert(index) } else { hairpinOn.remove(index) }
        record("setHairpin \(l.name) \(on)")
    }

    // MARK: addresses

    public func addresses() throws(NetlinkError) -> [AddressEntry] {
        try inject("addresses")
        return allAddresses
    }

    public func ensureAddress(_ a: IPInterfaceAddress, index: Int32, noDAD: Bool) throws(NetlinkError) {
        try inject("ensureAddress")
        let l = try existing(index, "add address \(a)")
        if addressRecords.contains(where: { $0.entry == AddressEntry(linkIndex: index, address: a) }) { return }
        if let other = addressRecords.first(where: { $0.entry.address.address == a.address }) {
            let where_ = table[other.entry.linkIndex]?.name ?? "#\(other.entry.linkIndex)"
            throw NetlinkError(operation: "add address \(a) to \(l.name)", errno: EEXIST, kernelMessage: "\(other.entry.address) is on \(where_)")
        }
        addressRecords.append(AddressRecord(entry: AddressEntry(linkIndex: index, address: a), noDAD: noDAD))
        record("ensureAddress \(a) \(l.name)")
    }

    public func deleteAddress(_ a: IPInterfaceAddress, index: Int32) throws(NetlinkError) {
        try inject("deleteAddress")
        let l = try existing(index, "delete address \(a)")
        guard let i = addressRecords.firstIndex(where: { $0.entry == AddressEntry(linkIndex: index, address: a) }) else {
            throw NetlinkError(operation: "delete address \(a) from \(l.name)", errno: EADDRNOTAVAIL)
        }
        addressRecords.remove(at: i)
        record("deleteAddress \(a) \(l.name)")
    }

    // MARK: routes

    public func routes(family: IPFamily) throws(NetlinkError) -> [RouteEntry] {
        try inject("routes")
        return routeTable.filter { $0.destination.family == family }
    }

    public func ensureRoute(_ r: RouteEntry) throws(NetlinkError) {
        try inject("ensureRoute")
        let op = "add route \(r.destination)\(r.gateway.map { " via \($0)" } ?? "")"
        if let gw = r.gateway, gw.family != r.destination.family {
            throw NetlinkError(operation: op, errno: EINVAL, kernelMessage: "gateway family does not match destination")
        }
        guard let idx = r.linkIndex else {
            // Device-less routes would need a FIB lookup of the gateway; the plugin always names a device.
            throw NetlinkError(operation: op, errno: EINVAL, kernelMessage: "FakeNetworkControl needs linkIndex on routes")
        }
        let l = try existing(idx, op)
        if r.destination.family == .v4 && !l.isUp {
            throw NetlinkError(operation: op, errno: ENETDOWN, kernelMessage: "\(l.name) is down")
        }
        if let gw = r.gateway {
            if r.onLink {
                guard l.isUp else { throw NetlinkError(operation: op, errno: ENETDOWN, kernelMessage: "Nexthop device is not up") }
            } else if !(gw.family == .v6 && gw.isLinkLocal) {
                let connected = addressRecords.contains {
                    $0.entry.linkIndex == idx && $0.entry.address.network.contains(gw) && $0.entry.address.address != gw
                }
                guard connected else { throw NetlinkError(operation: op, errno: ENETUNREACH, kernelMessage: "Nexthop has invalid gateway") }
            }
        }
        routeTable.removeAll { Self.sameKey($0, r) }
        routeTable.append(r)
        record("ensureRoute \(r.destination)\(r.gateway.map { " via \($0)" } ?? "") dev \(l.name) table \(r.table)")
    }

    public func deleteRoute(_ r: RouteEntry) throws(NetlinkError) {
        try inject("deleteRoute")
        guard let i = routeTable.firstIndex(where: { $0.destination == r.destination && $0.table == r.table && (r.metric == nil || $0.metric == r.metric) }) else {
            throw NetlinkError(operation: "delete route \(r.destination)", errno: ESRCH)
        }
        routeTable.remove(at: i)
        record("deleteRoute \(r.destination) table \(r.table)")
    }

    private static func sameKey(_ a: RouteEntry, _ b: RouteEntry) -> Bool {
        a.destination == b.destination && a.table == b.table && (a.metric ?? 0) == (b.metric ?? 0)
    }

    // MARK: neighbours

    public func neighbors(family: IPFamily) throws(NetlinkError) -> [NeighborEntry] {
        try inject("neighbors")
        return neighborTable.filter { $0.address.family == family }
    }

    public func ensureNeighbor(_ n: NeighborEntry) throws(NetlinkError) {
        try inject("ensureNeighbor")
        let l = try existing(n.linkIndex, "add neighbour \(n.address)")
        guard n.mac.count == 6 else { throw NetlinkError(operation: "add neighbour \(n.address)", errno: EINVAL, kernelMessage: "lladdr must be 6 bytes") }
        neighborTable.removeAll { $0.linkIndex == n.linkIndex && $0.address == n.address }
        neighborTable.append(n)
        record("ensureNeighbor \(n.address) \(formatMAC(n.mac)) \(l.name)")
    }

    public func deleteNeighbor(_ n: NeighborEntry) throws(NetlinkError) {
        try inject("deleteNeighbor")
        let l = try existing(n.linkIndex, "delete neighbour \(n.address)")
        guard let i = neighborTable.firstIndex(where: { $0.linkIndex == n.linkIndex && $0.address == n.address }) else {
            throw NetlinkError(operation: "delete neighbour \(n.address) on \(l.name)", errno: ENOENT)
        }
        neighborTable.remove(at: i)
        record("deleteNeighbor \(n.address) \(l.name)")
    }

    // MARK: VXLAN forwarding database

    public func fdb(index: Int32) throws(NetlinkError) -> [FDBEntry] {
        try inject("fdb")
        _ = try existing(index, "list fdb")
        return fdbTable.filter { $0.linkIndex == index }
    }

    /// Adds or replaces the remote for (link, MAC), as NLM_F_REPLACE does on a VXLAN device.
    public func ensureFDB(_ e: FDBEntry) throws(NetlinkError) {
        try inject("ensureFDB")
        let op = "add fdb \(formatMAC(e.mac)) -> \(e.remote)"
        let l = try existing(e.linkIndex, op)
        guard l.kind == "vxlan" else { throw NetlinkError(operation: op, errno: EINVAL, kernelMessage: "\(l.name) is not a VXLAN device") }
        guard e.mac.count == 6 else { throw NetlinkError(operation: op, errno: EINVAL, kernelMessage: "lladdr must be 6 bytes") }
        fdbTable.removeAll { $0.linkIndex == e.linkIndex && $0.mac == e.mac }
        fdbTable.append(e)
        record("ensureFDB \(formatMAC(e.mac)) \(e.remote) \(l.name)")
    }

    public func deleteFDB(_ e: FDBEntry) throws(NetlinkError) {
        try inject("deleteFDB")
        let l = try existing(e.linkIndex, "delete fdb \(formatMAC(e.mac))")
        guard let i = fdbTable.firstIndex(of: e) else {
            throw NetlinkError(operation: "delete fdb \(formatMAC(e.mac)) on \(l.name)", errno: ENOENT)
        }
        fdbTable.remove(at: i)
        record("deleteFDB \(formatMAC(e.mac)) \(l.name)")
    }

    // MARK: namespace life

    /// What the kernel does when the namespace itself goes away: every device is unregistered,
    /// which takes the other end of each veth with it.
    public func destroyAllLinks() {
        for l in allLinks where l.name != "lo" { removeLink(l.index) }
        record("destroy namespace")
    }

    // MARK: internals

    private func inject(_ operation: String) throws(NetlinkError) {
        if let e = failNext.removeValue(forKey: operation) {
            throw NetlinkError(operation: "\(operation) in \(label) (injected)", errno: e)
        }
    }

    private func record(_ s: String) { operations.append(s) }

    private func existing(_ index: Int32, _ op: String) throws(NetlinkError) -> Link {
        guard let l = table[index] else { throw NetlinkError(operation: "\(op): link #\(index) in \(label)", errno: ENODEV) }
        return l
    }

    /// Removes a link and everything hanging off it here, and its veth peer wherever that is.
    private func removeLink(_ index: Int32) {
        guard table.removeValue(forKey: index) != nil else { return }
        addressRecords.removeAll { $0.entry.linkIndex == index }
        routeTable.removeAll { $0.linkIndex == index }
        neighborTable.removeAll { $0.linkIndex == index }
        fdbTable.removeAll { $0.linkIndex == index }
        hairpinOn.remove(index)
        for (i, l) in table where l.masterIndex == index {
            table[i]!.masterIndex = nil
            hairpinOn.remove(i)
        }
        if let p = peers.removeValue(forKey: index), let other = p.control {
            other.peers.removeValue(forKey: p.index)
            let name = other.table[p.index]?.name ?? "#\(p.index)"
            other.removeLink(p.index)
            if other !== self { other.record("deleteLink \(name) (peer deleted in \(label))") }
        }
    }

    fileprivate func allocateIndex() -> Int32 {
        let i = nextIndex
        nextIndex += 1
        return i
    }

    /// Deterministic, locally administered unicast MACs: FNV-1a over the namespace label, the
    /// link name and a per-namespace counter.
    fileprivate func makeMAC(_ name: String) -> [UInt8] {
        macCounter += 1
        let h = fnv1a64("\(label)/\(name)/\(macCounter)")
        var mac = (0..<6).map { UInt8(truncatingIfNeeded: h >> UInt64(8 * $0)) }
        mac[0] = (mac[0] & 0xfc) | 0x02
        return mac
    }

    private func checkName(_ name: String, op: String) throws(NetlinkError) {
        guard !name.isEmpty, name.utf8.count <= 15, !name.contains("/"), !name.contains(":"), !name.contains(" ") else {
            throw NetlinkError(operation: op, errno: EINVAL, kernelMessage: "invalid interface name \"\(name)\"")
        }
    }

    private func checkMTU(_ mtu: Int?, op: String) throws(NetlinkError) {
        if let mtu, !(68...65535).contains(mtu) {
            throw NetlinkError(operation: op, errno: EINVAL, kernelMessage: "MTU \(mtu) out of range")
        }
    }

    private func checkMAC(_ mac: [UInt8], op: String) throws(NetlinkError) {
        guard mac.count == 6 else { throw NetlinkError(operation: op, errno: EINVAL, kernelMessage: "MAC must be 6 bytes") }
        guard mac[0] & 1 == 0, mac != [0, 0, 0, 0, 0, 0] else {
            throw NetlinkError(operation: op, errno: EADDRNOTAVAIL, kernelMessage: "MAC \(formatMAC(mac)) is not a unicast address")
        }
    }
}
