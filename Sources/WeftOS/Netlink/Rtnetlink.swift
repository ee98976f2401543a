import CWeftLinux
import WeftCore
#if canImport(Glibc)
import Glibc
#endif

/// `NetworkControl` over a real NETLINK_ROUTE socket. The socket's namespace decides which
/// namespace is configured; see `NetworkNamespace.control()`.
public final class Rtnetlink: NetworkControl {
    let socket: NetlinkSocket

    /// Configures the namespace the calling thread is in now.
    public init() throws(NetlinkError) { socket = try NetlinkSocket() }
    init(socket: NetlinkSocket) { self.socket = socket }

    // MARK: links

    func linkMessage(_ type: some BinaryInteger, flags: Int32 = 0, index: Int32 = 0, family: Int32 = AF_UNSPEC) -> NetlinkRequest {
        var r = NetlinkRequest(type: UInt16(type), flags: flags)
        var m = ifinfomsg()
        m.ifi_family = UInt8(family)
        m.ifi_index = index
        r.appendStruct(m)
        return r
    }

    public func link(named name: String) throws(NetlinkError) -> Link? {
        var r = linkMessage(RTM_GETLINK)
        r.attr(k(IFLA_IFNAME), string: name)
        do throws(NetlinkError) {
            return try socket.exchange(r, { "get link \(name)" }).compactMap(Rtnetlink.parseLink).first
        } catch where error.isNotFound { return nil }
    }

    public func link(index: Int32) throws(NetlinkError) -> Link? {
        let r = linkMessage(RTM_GETLINK, index: index)
        do throws(NetlinkError) {
            return try socket.exchange(r, { "get link #\(index)" }).compactMap(Rtnetlink.parseLink).first
        } catch where error.isNotFound { return nil }
    }

    public func links() throws(NetlinkError) -> [Link] {
        try socket.exchange(linkMessage(RTM_GETLINK, flags: NLM_F_DUMP), { "list links" }).compactMap(Rtnetlink.parseLink)
    }

    static func parseLink(_ m: NetlinkMessage) -> Link? {
        guard m.type == UInt16(RTM_NEWLINK), let h = m.header(ifinfomsg.self) else { return nil }
        let a = m.attributes(after: ifinfomsg.self)
        let info = a.nested(k(IFLA_LINKINFO))
        return Link(index: h.ifi_index, name: a.string(k(IFLA_IFNAME)) ?? "",
                    kind: info?.string(k(IFLA_INFO_KIND)),
                    mac: a[k(IFLA_ADDRESS)].map(Array.init) ?? [],
                    mtu: Int(a.u32(k(IFLA_MTU)) ?? 0),
                    isUp: h.ifi_flags & UInt32(k(IFF_UP)) != 0,
                    masterIndex: a.u32(k(IFLA_MASTER)).map { Int32(bitPattern: $0) })
    }

    public func createLink(_ spec: LinkSpec) throws(NetlinkError) {
        var r = linkMessage(RTM_NEWLINK, flags: NLM_F_CREATE | NLM_F_EXCL)
        let name: String
        switch spec {
        case let .veth(n, mtu, peerName, peerNamespace, peerMAC):
            name = n
            r.attr(k(IFLA_IFNAME), string: n)
            if let mtu { r.attr(k(IFLA_MTU), u32: UInt32(mtu)) }
            // One queue each way per end: by default a veth gets one per possible CPU and is
            // trimmed to one at once, which costs an expedited RCU grace period per end.
            r.attr(k(IFLA_NUM_TX_QUEUES), u32: 1)
            r.attr(k(IFLA_NUM_RX_QUEUES), u32: 1)
            r.beginNest(k(IFLA_LINKINFO))
            r.attr(k(IFLA_INFO_KIND), string: "veth")
            r.beginNest(k(IFLA_INFO_DATA))
            r.beginNest(k(VETH_INFO_PEER))
            r.appendStruct(ifinfomsg())
            r.attr(k(IFLA_IFNAME), string: peerName)
            if let mtu { r.attr(k(IFLA_MTU), u32: UInt32(mtu)) }
            r.attr(k(IFLA_NUM_TX_QUEUES), u32: 1)
            r.attr(k(IFLA_NUM_RX_QUEUES), u32: 1)
            if let peerMAC { r.attr(k(IFLA_ADDRESS), peerMAC) }
            if let ns = peerNamespace as? NetworkNamespace { r.attr(k(IFLA_NET_NS_FD), u32: UInt32(ns.fd)) }
            r.endNest(); r.endNest(); r.endNest()
        case let .bridge(n, mtu):
            name = n
            r.attr(k(IFLA_IFNAME), string: n)
            if let mtu { r.attr(k(IFLA_MTU), u32: UInt32(mtu)) }
            r.beginNest(k(IFLA_LINKINFO))
            r.attr(k(IFLA_INFO_KIND), string: "bridge")
            // Without snooping the bridge floods multicast, so IPv6 neighbour solicitation for
            // a new pod works before the pod's MLD report has been seen.
            r.beginNest(k(IFLA_INFO_DATA))
            r.attr(k(IFLA_BR_MCAST_SNOOPING), u8: 0)
            r.endNest()
            r.endNest()
        case let .vxlan(n, vni, port, local, underlay, mtu, learning):
            name = n
            r.attr(k(IFLA_IFNAME), string: n)
            if let mtu { r.attr(k(IFLA_MTU), u32: UInt32(mtu)) }
            r.beginNest(k(IFLA_LINKINFO))
            r.attr(k(IFLA_INFO_KIND), string: "vxlan")
            r.beginNest(k(IFLA_INFO_DATA))
            r.attr(k(IFLA_VXLAN_ID), u32: vni)
            r.attr(k(IFLA_VXLAN_PORT), be16: port)
            r.attr(k(IFLA_VXLAN_LEARNING), u8: learning ? 1 : 0)
            if let local {
                r.attr((local.family == .v4 ? k(IFLA_VXLAN_LOCAL) : k(IFLA_VXLAN_LOCAL6)), local.bytes)
            }
            if let underlay { r.attr(k(IFLA_VXLAN_LINK), u32: UInt32(underlay)) }
            r.endNest(); r.endNest()
        }
        try socket.execute(r, "create link \(name)")
    }

    public func deleteLink(index: Int32) throws(NetlinkError) {
        try socket.execute(linkMessage(RTM_DELLINK, index: index), "delete link #\(index)")
    }

    public func setUp(index: Int32) throws(NetlinkError) {
        var r = NetlinkRequest(type: UInt16(RTM_NEWLINK), flags: 0)
        var m = ifinfomsg()
        m.ifi_index = index
        m.ifi_flags = UInt32(k(IFF_UP))
        m.ifi_change = UInt32(k(IFF_UP))
        r.appendStruct(m)
        try socket.execute(r, "set link #\(index) up")
    }

    public func setMaster(index: Int32, master: Int32?) throws(NetlinkError) {
        var r = linkMessage(RTM_NEWLINK, index: index)
        r.attr(k(IFLA_MASTER), u32: UInt32(bitPattern: master ?? 0))
        try socket.execute(r, "set master of link #\(index)")
    }

    public func setMTU(index: Int32, mtu: Int) throws(NetlinkError) {
        var r = linkMessage(RTM_NEWLINK, index: index)
        r.attr(k(IFLA_MTU), u32: UInt32(mtu))
        try socket.execute(r, "set mtu \(mtu) on link #\(index)")
    }

    public func setMAC(index: Int32, mac: [UInt8]) throws(NetlinkError) {
        var r = linkMessage(RTM_NEWLINK, index: index)
        r.attr(k(IFLA_ADDRESS), mac)
        try socket.execute(r, "set mac of link #\(index)")
    }

    /// Hairpin lets a bridge port send a frame back out the port it came in on, so a pod can
    /// reach itself through a Service address.
    public func setHairpin(index: Int32, on: Bool) throws(NetlinkError) {
        var r = linkMessage(RTM_SETLINK, index: index, family: AF_BRIDGE)
        r.beginNest(k(IFLA_PROTINFO), flagged: true)
        r.attr(k(IFLA_BRPORT_MODE), u8: on ? 1 : 0)
        r.endNest()
        try socket.execute(r, "set hairpin on link #\(index)")
    }

    // MARK: addresses

    public func addresses() throws(NetlinkError) -> [AddressEntry] {
        var out: [AddressEntry] = []
        for family in [AF_INET, AF_INET6] {
            var r = NetlinkRequest(type: UInt16(RTM_GETADDR), flags: NLM_F_DUMP)
            var m = ifaddrmsg()
            m.ifa_family = UInt8(family)
            r.appendStruct(m)
            for msg in try socket.exchange(r, { "list addresses" }) {
                guard msg.type == UInt16(RTM_NEWADDR), let h = msg.header(ifaddrmsg.self) else { continue }
                let a = msg.attributes(after: ifaddrmsg.self)
                // IFA_LOCAL is the interface's own address on point-to-point links; prefer it.
                guard let raw = a[k(IFA_LOCAL)] ?? a[k(IFA_ADDRESS)], let ip = IPAddress(bytes: Array(raw)) else { continue }
                out.append(AddressEntry(linkIndex: Int32(bitPattern: h.ifa_index), address: IPInterfaceAddress(address: ip, prefixLength: Int(h.ifa_prefixlen))))
            }
        }
        return out
    }

    private func addressMessage(_ type: some BinaryInteger, flags: Int32, _ a: IPInterfaceAddress, index: Int32, noDAD: Bool = false) -> NetlinkRequest {
        var r = NetlinkRequest(type: UInt16(type), flags: flags)
        var m = ifaddrmsg()
        m.ifa_family = UInt8(a.address.family == .v4 ? AF_INET : AF_INET6)
        m.ifa_prefixlen = UInt8(a.prefixLength)
        m.ifa_index = UInt32(bitPattern: index)
        m.ifa_scope = UInt8(a.address.isLinkLocal ? RT_SCOPE_LINK.rawValue : RT_SCOPE_UNIVERSE.rawValue)
        r.appendStruct(m)
        r.attr(k(IFA_LOCAL), a.address.bytes)
        r.attr(k(IFA_ADDRESS), a.address.bytes)
        if noDAD && a.address.family == .v6 { r.attr(k(IFA_FLAGS), u32: UInt32(IFA_F_NODAD)) }
        return r
    }

    public func ensureAddress(_ a: IPInterfaceAddress, index: Int32, noDAD: Bool) throws(NetlinkError) {
        do throws(NetlinkError) {
            try socket.execute(addressMessage(RTM_NEWADDR, flags: NLM_F_CREATE | NLM_F_EXCL, a, index: index, noDAD: noDAD), "add address \(a) to link #\(index)")
        } catch where error.isExists {
            // Present already: fine if it is on this link with this prefix, a conflict otherwise.
            if try addresses().contains(AddressEntry(linkIndex: index, address: a)) { return }
            throw error
        }
    }

    public func deleteAddress(_ a: IPInterfaceAddress, index: Int32) throws(NetlinkError) {
        try socket.execute(addressMessage(RTM_DELADDR, flags: 0, a, index: index), "delete address \(a) from link #\(index)")
    }

    // MARK: routes

    public func routes(family: IPFamily) throws(NetlinkError) -> [RouteEntry] {
        var r = NetlinkRequest(type: UInt16(RTM_GETROUTE), flags: NLM_F_DUMP)
        var m = rtmsg()
        m.rtm_family = UInt8(family == .v4 ? AF_INET : AF_INET6)
        r.appendStruct(m)
        var out: [RouteEntry] = []
        for msg in try socket.exchange(r, { "list routes" }) {
            guard msg.type == UInt16(RTM_NEWROUTE), let h = msg.header(rtmsg.self), h.rtm_type == UInt8(RTN_UNICAST) else { continue }
            let a = msg.attributes(after: rtmsg.self)
            let table = a.u32(k(RTA_TABLE)) ?? UInt32(h.rtm_table)
            let dst = a[k(RTA_DST)].flatMap { IPAddress(bytes: Array($0)) }
            let dstNet = dst.map { IPNetwork(containing: $0, prefixLength: Int(h.rtm_dst_len)) } ?? (family == .v4 ? .defaultV4 : .defaultV6)
            var entry = RouteEntry(destination: dstNet,
                                   gateway: a[k(RTA_GATEWAY)].flatMap { IPAddress(bytes: Array($0)) },
                                   linkIndex: a.u32(k(RTA_OIF)).map { Int32(bitPattern: $0) },
                                   scope: RouteEntry.Scope(rawValue: h.rtm_scope) ?? .universe,
                                   onLink: h.rtm_flags & UInt32(RTNH_F_ONLINK) != 0,
                                   table: table, metric: a.u32(k(RTA_PRIORITY)),
                                   preferredSource: a[k(RTA_PREFSRC)].flatMap { IPAddress(bytes: Array($0)) },
                                   protocolID: h.rtm_protocol)
            if let metrics = a.nested(k(RTA_METRICS)) {
                entry.mtu = metrics.u32(k(RTAX_MTU)).map(Int.init)
                entry.advmss = metrics.u32(k(RTAX_ADVMSS)).map(Int.init)
            }
            out.append(entry)
        }
        return out
    }

    private func routeMessage(_ type: some BinaryInteger, flags: Int32, _ e: RouteEntry) -> NetlinkRequest {
        var r = NetlinkRequest(type: UInt16(type), flags: flags)
        var m = rtmsg()
        m.rtm_family = UInt8(e.destination.family == .v4 ? AF_INET : AF_INET6)
        m.rtm_dst_len = UInt8(e.destination.prefixLength)
        m.rtm_table = e.table < 256 ? UInt8(e.table) : UInt8(k(RT_TABLE_UNSPEC))
        m.rtm_protocol = e.protocolID
        m.rtm_scope = e.scope.rawValue
        m.rtm_type = UInt8(RTN_UNICAST)
        if e.onLink { m.rtm_flags = UInt32(RTNH_F_ONLINK) }
        r.appendStruct(m)
        if e.destination.prefixLength > 0 { r.attr(k(RTA_DST), e.destination.address.bytes) }
        if let gw = e.gateway { r.attr(k(RTA_GATEWAY), gw.bytes) }
        if let oif = e.linkIndex { r.attr(k(RTA_OIF), u32: UInt32(bitPattern: oif)) }
        if let metric = e.metric { r.attr(k(RTA_PRIORITY), u32: metric) }
        if let src = e.preferredSource { r.attr(k(RTA_PREFSRC), src.bytes) }
        if e.table >= 256 { r.attr(k(RTA_TABLE), u32: e.table) }
        if e.mtu != nil || e.advmss != nil {
            r.beginNest(k(RTA_METRICS))
            if let mtu = e.mtu { r.attr(k(RTAX_MTU), u32: UInt32(mtu)) }
            if let mss = e.advmss { r.attr(k(RTAX_ADVMSS), u32: UInt32(mss)) }
            r.endNest()
        }
        return r
    }

    public func ensureRoute(_ e: RouteEntry) throws(NetlinkError) {
        try socket.execute(routeMessage(RTM_NEWROUTE, flags: NLM_F_CREATE | NLM_F_REPLACE, e), "add route \(e.destination)\(e.gateway.map { " via \($0)" } ?? "")")
    }

    public func deleteRoute(_ e: RouteEntry) throws(NetlinkError) {
        try socket.execute(routeMessage(RTM_DELROUTE, flags: 0, e), "delete route \(e.destination)")
    }

    // MARK: neighbours

    public func neighbors(family: IPFamily) throws(NetlinkError) -> [NeighborEntry] {
        var r = NetlinkRequest(type: UInt16(RTM_GETNEIGH), flags: NLM_F_DUMP)
        var m = ndmsg()
        m.ndm_family = UInt8(family == .v4 ? AF_INET : AF_INET6)
        r.appendStruct(m)
        var out: [NeighborEntry] = []
        for msg in try socket.exchange(r, { "list neighbours" }) {
            guard msg.type == UInt16(RTM_NEWNEIGH), let h = msg.header(ndmsg.self) else { continue }
            let a = msg.attributes(after: ndmsg.self)
            guard let dst = a[k(NDA_DST)].flatMap({ IPAddress(bytes: Array($0)) }) else { continue }
            out.append(NeighborEntry(linkIndex: h.ndm_ifindex, address: dst, mac: a[k(NDA_LLADDR)].map(Array.init) ?? [],
                                     permanent: h.ndm_state & UInt16(NUD_PERMANENT) != 0))
        }
        return out
    }

    public func ensureNeighbor(_ n: NeighborEntry) throws(NetlinkError) {
        var r = NetlinkRequest(type: UInt16(RTM_NEWNEIGH), flags: NLM_F_CREATE | NLM_F_REPLACE)
        var m = ndmsg()
        m.ndm_family = UInt8(n.address.family == .v4 ? AF_INET : AF_INET6)
        m.ndm_ifindex = n.linkIndex
        m.ndm_state = UInt16(n.permanent ? NUD_PERMANENT : NUD_REACHABLE)
        r.appendStruct(m)
        r.attr(k(NDA_DST), n.address.bytes)
        r.attr(k(NDA_LLADDR), n.mac)
        try socket.execute(r, "add neighbour \(n.address)")
    }

    public func deleteNeighbor(_ n: NeighborEntry) throws(NetlinkError) {
        var r = NetlinkRequest(type: UInt16(RTM_DELNEIGH), flags: 0)
        var m = ndmsg()
        m.ndm_family = UInt8(n.address.family == .v4 ? AF_INET : AF_INET6)
        m.ndm_ifindex = n.linkIndex
        r.appendStruct(m)
        r.attr(k(NDA_DST), n.address.bytes)
        try socket.execute(r, "delete neighbour \(n.address)")
    }

    // MARK: bridge/VXLAN forwarding database

    public func fdb(index: Int32) throws(NetlinkError) -> [FDBEntry] {
        var r = NetlinkRequest(type: UInt16(RTM_GETNEIGH), flags: NLM_F_DUMP)
        var m = ndmsg()
        m.ndm_family = UInt8(AF_BRIDGE)
        r.appendStruct(m)
        var out: [FDBEntry] = []
        for msg in try socket.exchange(r, { "list fdb" }) {
            guard msg.type == UInt16(RTM_NEWNEIGH), let h = msg.header(ndmsg.self), h.ndm_ifindex == index else { continue }
            let a = msg.attributes(after: ndmsg.self)
            guard let mac = a[k(NDA_LLADDR)].map(Array.init), let dst = a[k(NDA_DST)].flatMap({ IPAddress(bytes: Array($0)) }) else { continue }
            out.append(FDBEntry(linkIndex: index, mac: mac, remote: dst))
        }
        return out
    }

    private func fdbMessage(_ type: some BinaryInteger, flags: Int32, _ e: FDBEntry) -> NetlinkRequest {
        var r = NetlinkRequest(type: type, flags: flags)
        var m = ndmsg()
        m.ndm_family = UInt8(AF_BRIDGE)
        m.ndm_ifindex = e.linkIndex
        m.ndm_state = UInt16(NUD_PERMANENT)
        m.ndm_flags = UInt8(NTF_SELF)
        r.appendStruct(m)
        r.attr(k(NDA_LLADDR), e.mac)
        r.attr(k(NDA_DST), e.remote.bytes)
        return r
    }

    public func ensureFDB(_ e: FDBEntry) throws(NetlinkError) {
        try socket.execute(fdbMessage(RTM_NEWNEIGH, flags: NLM_F_CREATE | NLM_F_REPLACE, e), "add fdb \(formatMAC(e.mac)) -> \(e.remote)")
    }

    public func deleteFDB(_ e: FDBEntry) throws(NetlinkError) {
        try socket.execute(fdbMessage(RTM_DELNEIGH, flags: 0, e), "delete fdb \(formatMAC(e.mac))")
    }
}
