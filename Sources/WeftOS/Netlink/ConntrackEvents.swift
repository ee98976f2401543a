import CWeftLinux
#if canImport(Glibc)
import Glibc
#endif
import Synchronization
import WeftCore

// Conntrack events (ctnetlink multicast groups on NETLINK_NETFILTER): flow records without
// polling the table. Best effort like NFLog: an overrun loses events, not the subscription.

/// One conntrack event: an entry was created, changed (TCP state, assured, mark...) or removed.
public struct ConntrackEvent: Sendable, Equatable {
    public enum Kind: Sendable, Equatable { case new, update, destroy }
    public var kind: Kind
    public var entry: ConntrackEntry
    /// Counters when the kernel reports them (DESTROY with nf_conntrack_acct=1): packets/bytes per direction.
    public var originalPackets: UInt64?, originalBytes: UInt64?, replyPackets: UInt64?, replyBytes: UInt64?

    public init(kind: Kind, entry: ConntrackEntry, originalPackets: UInt64? = nil, originalBytes: UInt64? = nil,
                replyPackets: UInt64? = nil, replyBytes: UInt64? = nil) {
        self.kind = kind; self.entry = entry
        self.originalPackets = originalPackets; self.originalBytes = originalBytes
        self.replyPackets = replyPackets; self.replyBytes = replyBytes
    }
}

/// Conntrack events of the calling thread's network namespace (open it inside
/// `NetworkNamespace.run`; the socket stays bound to that namespace). Needs CAP_NET_ADMIN there.
///
/// Events flow only for traffic conntrack sees: a namespace tracks nothing until something
/// (a NAT or `ct` rule) asks for conntrack there.
public final class ConntrackEvents: @unchecked Sendable {
    private let receiver: MulticastReceiver

    /// Times the socket overran (ENOBUFS): events came faster than they were read and the kernel
    /// dropped some. Not an error: the caller's records have a gap, the subscription goes on.
    public var overruns: Int { receiver.overruns }

    /// Joins the chosen groups. UPDATE is off by default: every TCP state change is one, which
    /// flow records rarely need.
    public init(new: Bool = true, destroy: Bool = true, update: Bool = false) throws {
        let groups = (new ? [CTNetlink.groupNew] : []) + (update ? [CTNetlink.groupUpdate] : []) + (destroy ? [CTNetlink.groupDestroy] : [])
        guard !groups.isEmpty else {
            throw NetlinkError(operation: "subscribe to conntrack events: no event kind chosen", errno: EINVAL)
        }
        let socket = try NetlinkSocket(protocol: NETLINK_NETFILTER)
        let fd = socket.fd
        // Events come in bursts (a connection storm, a table flush); a big buffer rides them out.
        // SO_RCVBUFFORCE passes net.core.rmem_max but needs CAP_NET_ADMIN.
        var size: Int32 = 4 << 20
        if setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, socklen_t(MemoryLayout<Int32>.size)) != 0 {
            _ = setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        }
        for group in groups { try socket.join(group: group, "conntrack event group \(group)") }
        receiver = MulticastReceiver(socket, what: "conntrack events")
    }

    deinit { close() }

    /// Closes the socket. A `receive` already waiting keeps the socket until its timeout.
    public func close() { receiver.close() }

    /// Blocks until at least one event arrives or `timeoutMilliseconds` passes (then returns []);
    /// returns every event in the datagrams read. A negative timeout waits indefinitely.
    public func receive(timeoutMilliseconds: Int32) throws -> [ConntrackEvent] {
        try receiver.receive(timeoutMilliseconds: timeoutMilliseconds, batch: 256, decode: CTNetlink.events(inDatagram:))
    }
}

/// The event side of the ctnetlink wire format. Values from <linux/netfilter/nfnetlink.h> and
/// <linux/netfilter/nfnetlink_conntrack.h> (kernel ABI).
extension CTNetlink {
    // enum nfnetlink_groups
    static let groupNew: Int32 = 1, groupUpdate: Int32 = 2, groupDestroy: Int32 = 3
    // enum ctattr_type
    static let countersOrig = 9, countersReply = 10
    // enum ctattr_counters: 64-bit, and the old 32-bit ones a kernel may still send
    static let counterPackets = 1, counterBytes = 2, counter32Packets = 3, counter32Bytes = 4

    /// Every conntrack event in one datagram; messages of other subsystems or types are skipped.
    static func events(inDatagram d: ArraySlice<UInt8>) -> [ConntrackEvent] {
        var out: [ConntrackEvent] = []
        var i = d.startIndex
        while i + 16 <= d.endIndex {
            let len = Int(d[i]) | Int(d[i + 1]) << 8 | Int(d[i + 2]) << 16 | Int(d[i + 3]) << 24
            let type = UInt16(d[i + 4]) | UInt16(d[i + 5]) << 8
            let flags = UInt16(d[i + 6]) | UInt16(d[i + 7]) << 8
            guard len >= 16, i + len <= d.endIndex else { break }
            if let e = decodeEvent(type: type, flags: flags, payload: d[(i + 16)..<(i + len)]) { out.append(e) }
            i += (len + 3) & ~3
        }
        return out
    }

    /// One event message: NEW with NLM_F_CREATE|NLM_F_EXCL is a new entry, NEW without is an
    /// update, DELETE is a destroy (what ctnetlink_conntrack_event sends).
    static func decodeEvent(type: UInt16, flags: UInt16, payload: ArraySlice<UInt8>) -> ConntrackEvent? {
        guard Int32(type >> 8) == k(NFNL_SUBSYS_CTNETLINK) else { return nil }
        let kind: ConntrackEvent.Kind
        switch Int(type & 0xff) {
        case msgNew:
            let created = UInt16(truncatingIfNeeded: k(NLM_F_CREATE) | k(NLM_F_EXCL))
            kind = flags & created == created ? .new : .update
        case msgDelete:
            kind = .destroy
        default:
            return nil
        }
        guard let entry = decodeEntry(payload) else { return nil }
        var event = ConntrackEvent(kind: kind, entry: entry)
        let attrs = NetlinkAttributes(bytes: payload.dropFirst(4))
        if let c = attrs.nested(countersOrig) {
            (event.originalPackets, event.originalBytes) = (counter(c, counterPackets, counter32Packets), counter(c, counterBytes, counter32Bytes))
        }
        if let c = attrs.nested(countersReply) {
            (event.replyPackets, event.replyBytes) = (counter(c, counterPackets, counter32Packets), counter(c, counterBytes, counter32Bytes))
        }
        return event
    }

    private static func counter(_ attrs: NetlinkAttributes, _ wide: Int, _ narrow: Int) -> UInt64? {
        be64(attrs[wide]) ?? be32(attrs[narrow]).map(UInt64.init)
    }

    static func be64(_ d: ArraySlice<UInt8>?) -> UInt64? {
        guard let d, d.count >= 8 else { return nil }
        return d.prefix(8).reduce(0) { $0 << 8 | UInt64($1) }
    }
}
