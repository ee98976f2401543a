import CWeftLinux
#if canImport(Glibc)
import Glibc
#endif
import WeftCore

// Connection tracking over ctnetlink (NETLINK_NETFILTER, subsystem NFNL_SUBSYS_CTNETLINK): what
// kube-proxy does with `conntrack -D` when a Service's endpoints change, without the binary.
//
// UDP has no connection teardown, so a client that keeps sending from one source port keeps
// matching the conntrack entry made by its first datagram, and with it the DNAT target chosen
// then, for as long as it keeps sending. Two cases need the entries cleared:
//   - a Service (VIP:port, or a node port) that had no endpoints gets some: entries created
//     while it rejected would keep the client's datagrams going nowhere;
//   - an endpoint is removed: entries whose reply source (the DNAT target) is that endpoint
//     would keep the client talking to a dead backend.

/// An IP protocol number, as conntrack keys entries by it.
public struct ConntrackProtocol: RawRepresentable, Sendable, Hashable, CustomStringConvertible {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    public static let tcp = ConntrackProtocol(rawValue: 6)
    public static let udp = ConntrackProtocol(rawValue: 17)
    public static let sctp = ConntrackProtocol(rawValue: 132)

    public var description: String {
        switch rawValue {
        case 6: "tcp"
        case 17: "udp"
        case 132: "sctp"
        case 1: "icmp"
        case 58: "icmpv6"
        default: "proto \(rawValue)"
        }
    }
}

/// One direction of a tracked connection. Ports are nil for protocols without them (ICMP).
public struct ConntrackTuple: Sendable, Hashable, CustomStringConvertible {
    public var source: IPAddress
    public var destination: IPAddress
    public var proto: ConntrackProtocol
    public var sourcePort: UInt16?
    public var destinationPort: UInt16?

    public init(source: IPAddress, destination: IPAddress, proto: ConntrackProtocol, sourcePort: UInt16? = nil, destinationPort: UInt16? = nil) {
        self.source = source; self.destination = destination; self.proto = proto
        self.sourcePort = sourcePort; self.destinationPort = destinationPort
    }

    /// "udp 10.0.0.1:40000 -> 10.96.0.10:53", IPv6 in brackets.
    public var description: String {
        func endpoint(_ a: IPAddress, _ p: UInt16?) -> String {
            guard let p else { return a.description }
            return a.family == .v6 ? "[\(a)]:\(p)" : "\(a):\(p)"
        }
        return "\(proto) \(endpoint(source, sourcePort)) -> \(endpoint(destination, destinationPort))"
    }
}

/// A conntrack table entry: the tuple the first packet had, and the tuple replies are expected
/// with (after NAT: for a DNATed Service, the reply source is the endpoint).
public struct ConntrackEntry: Sendable, Hashable, CustomStringConvertible {
    public var original: ConntrackTuple
    public var reply: ConntrackTuple
    /// The conntrack zone (CTA_ZONE); 0 is the default zone.
    public var zone: UInt16
    /// The kernel's id of this entry (CTA_ID); a delete that carries it removes this entry only.
    public var id: UInt32?
    /// Seconds until the entry expires (CTA_TIMEOUT).
    public var timeout: UInt32?
    public var mark: UInt32?

    public init(original: ConntrackTuple, reply: ConntrackTuple, zone: UInt16 = 0, id: UInt32? = nil, timeout: UInt32? = nil, mark: UInt32? = nil) {
        self.original = original; self.reply = reply; self.zone = zone; self.id = id; self.timeout = timeout; self.mark = mark
    }

    public var family: IPFamily { original.source.family }

    public var description: String {
        "\(original) reply \(reply.source)\(reply.sourcePort.map { ":\($0)" } ?? "")" + (zone != 0 ? " zone \(zone)" : "")
    }
}

/// Which entries to list or delete: one family and protocol, narrowed by any of the original
/// destination (a Service VIP or node address, and its port) and the reply source (an endpoint
/// and its port). A field left nil matches anything; every zone matches.
public struct ConntrackFilter: Sendable, Hashable, CustomStringConvertible {
    public var family: IPFamily
    public var proto: ConntrackProtocol
    public var originalDestination: IPAddress?
    public var originalDestinationPort: UInt16?
    public var replySource: IPAddress?
    public var replySourcePort: UInt16?

    public init(family: IPFamily, proto: ConntrackProtocol = .udp, originalDestination: IPAddress? = nil, originalDestinationPort: UInt16? = nil,
                replySource: IPAddress? = nil, replySourcePort: UInt16? = nil) {
        self.family = family; self.proto = proto
        self.originalDestination = originalDestination; self.originalDestinationPort = originalDestinationPort
        self.replySource = replySource; self.replySourcePort = replySourcePort
    }

    public func matches(_ entry: ConntrackEntry) -> Bool {
        guard entry.family == family, entry.original.proto == proto else { return false }
        if let a = originalDestination, entry.original.destination != a { return false }
        if let p = originalDestinationPort, entry.original.destinationPort != p { return false }
        if let a = replySource, entry.reply.source != a { return false }
        if let p = replySourcePort, entry.reply.sourcePort != p { return false }
        return true
    }

    /// An address of the other family could never match: that is a caller's mistake, not "none".
    public func validate() throws(NetlinkError) {
        for (field, address) in [("originalDestination", originalDestination), ("replySource", replySource)] {
            if let address, address.family != family {
                throw NetlinkError(operation: "conntrack filter: \(field) \(address) is \(address.family), but the filter's family is \(family)", errno: EINVAL)
            }
        }
    }

    public var description: String {
        var parts = ["\(family) \(proto)"]
        if let a = originalDestination { parts.append("original destination \(a)") }
        if let p = originalDestinationPort { parts.append("original destination port \(p)") }
        if let a = replySource { parts.append("reply source \(a)") }
        if let p = replySourcePort { parts.append("reply source port \(p)") }
        return parts.joined(separator: ", ")
    }
}

/// The conntrack table of one network namespace.
public protocol ConntrackControl: AnyObject {
    /// Every entry the filter matches.
    func entries(matching filter: ConntrackFilter) throws(NetlinkError) -> [ConntrackEntry]
    /// Deletes every entry the filter matches; returns how many were deleted (entries that
    /// expired meanwhile are not counted, and are not an error).
    func deleteEntries(matching filter: ConntrackFilter) throws(NetlinkError) -> Int
}

/// ctnetlink on a netlink socket opened in the calling thread's network namespace: the
/// conntrack table is per namespace, and the socket keeps talking to the namespace it was
/// opened in whatever thread uses it later (open it inside `NetworkNamespace.run`).
///
/// The dump is filtered here, not in the kernel: kernel-side tuple filtering (CTA_FILTER) needs
/// Linux 5.11 or later, and one code path that works everywhere is worth the bigger dump.
public final class Conntrack: ConntrackControl {
    private let socket: NetlinkSocket

    public init() throws(NetlinkError) {
        socket = try NetlinkSocket(protocol: NETLINK_NETFILTER)
    }

    public func entries(matching filter: ConntrackFilter) throws(NetlinkError) -> [ConntrackEntry] {
        try filter.validate()
        let replies = try socket.exchange(CTNetlink.dumpRequest(family: filter.family)) { "dump the \(filter.family) conntrack table" }
        return replies.compactMap { msg in
            guard msg.type & 0xff == UInt16(CTNetlink.msgNew) else { return nil }
            return CTNetlink.decodeEntry(msg.payload)
        }.filter(filter.matches)
    }

    public func deleteEntries(matching filter: ConntrackFilter) throws(NetlinkError) -> Int {
        let matched = try entries(matching: filter)
        var deleted = 0
        var firstError: NetlinkError?
        // Try every entry: one that cannot be deleted must not shield the others.
        for entry in matched {
            do {
                if try delete(entry) { deleted += 1 }
            } catch {
                if firstError == nil { firstError = error }
            }
        }
        if var e = firstError {
            e.operation = "delete conntrack entries (\(filter)): \(deleted) of \(matched.count) deleted; \(e.operation)"
            throw e
        }
        return deleted
    }

    /// Deletes one entry by its original tuple (and zone and id). False when it was already gone.
    @discardableResult
    public func delete(_ entry: ConntrackEntry) throws(NetlinkError) -> Bool {
        do {
            try socket.execute(CTNetlink.deleteRequest(entry), "delete conntrack entry \(entry)")
            return true
        } catch {
            if error.errno == ENOENT { return false }
            throw error
        }
    }
}

/// The ctnetlink wire format: pure byte work, unit-tested without a kernel. Values from
/// <linux/netfilter/nfnetlink_conntrack.h> (kernel ABI, stable since 2.6).
enum CTNetlink {
    // enum cntl_msg_types
    static let msgNew = 0, msgGet = 1, msgDelete = 2
    // enum ctattr_type
    static let tupleOrig = 1, tupleReply = 2, timeout = 7, mark = 8, id = 12, zone = 18
    // enum ctattr_tuple
    static let tupleIP = 1, tupleProto = 2
    // enum ctattr_ip
    static let ipV4Src = 1, ipV4Dst = 2, ipV6Src = 3, ipV6Dst = 4
    // enum ctattr_l4proto
    static let protoNum = 1, protoSrcPort = 2, protoDstPort = 3

    static func messageType(_ msg: Int) -> Int32 { (k(NFNL_SUBSYS_CTNETLINK) << 8) | Int32(msg) }

    static func addressFamily(_ f: IPFamily) -> UInt8 { UInt8(f == .v4 ? AF_INET : AF_INET6) }

    /// nfgenmsg: family, version, res_id (big-endian 0).
    private static func request(_ msg: Int, flags: Int32, family: IPFamily) -> NetlinkRequest {
        var req = NetlinkRequest(type: messageType(msg), flags: flags)
        req.append(addressFamily(family))
        req.append(UInt8(NFNETLINK_V0))
        req.append(UInt16(0))
        return req
    }

    static func dumpRequest(family: IPFamily) -> NetlinkRequest {
        request(msgGet, flags: k(NLM_F_DUMP), family: family)
    }

    static func deleteRequest(_ entry: ConntrackEntry) -> NetlinkRequest {
        var req = request(msgDelete, flags: 0, family: entry.family)
        encodeTuple(entry.original, as: tupleOrig, into: &req)
        if entry.zone != 0 { req.attr(zone, be16: entry.zone) }
        if let entryID = entry.id { req.attr(id, withUnsafeBytes(of: entryID.bigEndian, Array.init)) }
        return req
    }

    static func encodeTuple(_ t: ConntrackTuple, as type: Int, into req: inout NetlinkRequest) {
        let v4 = t.source.family == .v4
        req.beginNest(type, flagged: true)
        req.beginNest(tupleIP, flagged: true)
        req.attr(v4 ? ipV4Src : ipV6Src, t.source.bytes)
        req.attr(v4 ? ipV4Dst : ipV6Dst, t.destination.bytes)
        req.endNest()
        req.beginNest(tupleProto, flagged: true)
        req.attr(protoNum, u8: t.proto.rawValue)
        if let p = t.sourcePort { req.attr(protoSrcPort, be16: p) }
        if let p = t.destinationPort { req.attr(protoDstPort, be16: p) }
        req.endNest()
        req.endNest()
    }

    /// One entry from an IPCTNL_MSG_CT_NEW payload (nfgenmsg, then attributes); nil when a
    /// tuple is missing or malformed.
    static func decodeEntry(_ payload: ArraySlice<UInt8>) -> ConntrackEntry? {
        guard payload.count >= 4 else { return nil }
        let attrs = NetlinkAttributes(bytes: payload.dropFirst(4))
        guard let orig = attrs.nested(tupleOrig).flatMap(decodeTuple), let reply = attrs.nested(tupleReply).flatMap(decodeTuple) else { return nil }
        return ConntrackEntry(original: orig, reply: reply, zone: be16(attrs[zone]) ?? 0, id: be32(attrs[id]),
                              timeout: be32(attrs[timeout]), mark: be32(attrs[mark]))
    }

    static func decodeTuple(_ attrs: NetlinkAttributes) -> ConntrackTuple? {
        guard let ip = attrs.nested(tupleIP), let proto = attrs.nested(tupleProto), let num = proto.u8(protoNum) else { return nil }
        let src: IPAddress?, dst: IPAddress?
        if let s = ip[ipV4Src] {
            src = IPAddress(bytes: Array(s)); dst = ip[ipV4Dst].flatMap { IPAddress(bytes: Array($0)) }
        } else {
            src = ip[ipV6Src].flatMap { IPAddress(bytes: Array($0)) }; dst = ip[ipV6Dst].flatMap { IPAddress(bytes: Array($0)) }
        }
        guard let src, let dst, src.family == dst.family else { return nil }
        return ConntrackTuple(source: src, destination: dst, proto: ConntrackProtocol(rawValue: num),
                              sourcePort: be16(proto[protoSrcPort]), destinationPort: be16(proto[protoDstPort]))
    }

    static func be16(_ d: ArraySlice<UInt8>?) -> UInt16? {
        guard let d, d.count >= 2 else { return nil }
        return UInt16(d[d.startIndex]) << 8 | UInt16(d[d.startIndex + 1])
    }

    static func be32(_ d: ArraySlice<UInt8>?) -> UInt32? {
        guard let d, d.count >= 4 else { return nil }
        return d.prefix(4).reduce(0) { $0 << 8 | UInt32($1) }
    }
}
