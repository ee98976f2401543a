import CWeftLinux
#if canImport(Glibc)
import Glibc
#endif
import Synchronization
import WeftCore

// Packets logged by nftables' `log group N` (nfnetlink_log, "NFLOG"), read over NETLINK_NETFILTER
// (subsystem NFNL_SUBSYS_ULOG): the agent's policy rules log what they deny, rate-limited, so
// each denied packet can be explained. Best effort: a socket overrun loses packets, not the
// subscription.

/// One packet the kernel logged to an nflog group.
public struct LoggedPacket: Sendable, Equatable {
    public var prefix: String             // NFULA_PREFIX without the trailing NUL
    public var family: IPFamily           // from the IP header version
    public var source: IPAddress
    public var destination: IPAddress
    public var proto: UInt8               // IP protocol; for IPv6 after the extension headers that could be followed
    public var sourcePort: UInt16?        // TCP/UDP/SCTP only
    public var destinationPort: UInt16?
    public var inInterface: UInt32?       // NFULA_IFINDEX_INDEV
    public var outInterface: UInt32?      // NFULA_IFINDEX_OUTDEV

    public init(prefix: String, family: IPFamily, source: IPAddress, destination: IPAddress, proto: UInt8,
                sourcePort: UInt16? = nil, destinationPort: UInt16? = nil, inInterface: UInt32? = nil, outInterface: UInt32? = nil) {
        self.prefix = prefix; self.family = family; self.source = source; self.destination = destination; self.proto = proto
        self.sourcePort = sourcePort; self.destinationPort = destinationPort
        self.inInterface = inInterface; self.outInterface = outInterface
    }

    /// Decodes an IP packet (payload starting at the IP header); nil when it is not IPv4/IPv6 or too short.
    /// The payload may be cut short by the copy range: then the ports (or a deep IPv6 header
    /// chain) are missing, and the packet is still returned with what could be read.
    public static func decode(prefix: String, payload: [UInt8], inInterface: UInt32?, outInterface: UInt32?) -> LoggedPacket? {
        guard let first = payload.first else { return nil }
        let family: IPFamily
        var proto: UInt8
        var l4: Int?  // offset of the transport header; nil for a non-first fragment
        let src: IPAddress?, dst: IPAddress?
        switch first >> 4 {
        case 4:
            let ihl = Int(first & 0x0f) * 4
            guard payload.count >= 20, ihl >= 20 else { return nil }
            family = .v4
            proto = payload[9]
            src = IPAddress(bytes: Array(payload[12..<16])); dst = IPAddress(bytes: Array(payload[16..<20]))
            let fragmentOffset = (UInt16(payload[6]) << 8 | UInt16(payload[7])) & 0x1fff
            l4 = fragmentOffset == 0 ? ihl : nil
        case 6:
            guard payload.count >= 40 else { return nil }
            family = .v6
            src = IPAddress(bytes: Array(payload[8..<24])); dst = IPAddress(bytes: Array(payload[24..<40]))
            (proto, l4) = skipIPv6Extensions(payload, next: payload[6])
        default:
            return nil
        }
        guard let src, let dst else { return nil }
        var packet = LoggedPacket(prefix: prefix, family: family, source: src, destination: dst, proto: proto,
                                  inInterface: inInterface, outInterface: outInterface)
        // TCP, UDP and SCTP all start with source port, destination port.
        if [6, 17, 132].contains(proto), let l4, payload.count >= l4 + 4 {
            packet.sourcePort = UInt16(payload[l4]) << 8 | UInt16(payload[l4 + 1])
            packet.destinationPort = UInt16(payload[l4 + 2]) << 8 | UInt16(payload[l4 + 3])
        }
        return packet
    }

    /// Follows hop-by-hop, routing, destination options, fragment and AH headers. Returns the
    /// last next-header value reached and where its header starts (nil after a non-first
    /// fragment, whose payload has no transport header, or when the chain runs past the copy).
    static func skipIPv6Extensions(_ p: [UInt8], next: UInt8) -> (UInt8, Int?) {
        var next = next, off = 40
        for _ in 0..<8 {  // a real chain is short; bound the walk on hostile input
            let length: Int
            switch next {
            case 0, 43, 60:  // hop-by-hop, routing, destination options: (len + 1) * 8
                guard p.count >= off + 2 else { return (next, nil) }
                length = (Int(p[off + 1]) + 1) * 8
            case 44:  // fragment: fixed 8 bytes; only the first fragment carries the transport header
                guard p.count >= off + 8 else { return (next, nil) }
                if (UInt16(p[off + 2]) << 8 | UInt16(p[off + 3])) >> 3 != 0 { return (p[off], nil) }
                length = 8
            case 51:  // AH: (len + 2) * 4
                guard p.count >= off + 2 else { return (next, nil) }
                length = (Int(p[off + 1]) + 2) * 4
            default:
                return (next, off)
            }
            next = p[off]
            off += length
        }
        return (next, nil)
    }
}

/// A subscription to one nflog group in the calling thread's network namespace (open it inside
/// `NetworkNamespace.run`; the socket stays bound to that namespace). One socket per group per
/// namespace: the kernel refuses a second binder until the first socket is closed.
public final class NFLog: @unchecked Sendable {
    public let group: UInt16
    private let receiver: MulticastReceiver

    /// Times the socket overran (ENOBUFS): packets arrived faster than they were read and the
    /// kernel dropped some. Not an error: the logging is rate-limited and best effort.
    public var overruns: Int { receiver.overruns }

    /// Binds the group and asks for the first `copyBytes` of each packet (the IP and transport
    /// headers fit in 128).
    public init(group: UInt16, copyBytes: UInt32 = 128) throws {
        self.group = group
        let socket = try NetlinkSocket(protocol: NETLINK_NETFILTER)
        // Before 3.17 a packet reached nfnetlink_log only if it was bound as its family's logger.
        // Later kernels route `log group` there anyway, and binding would replace the namespace's
        // default logger (what other LOG users rely on), so it is done only where needed.
        if NFULNetlink.needsFamilyBinding(kernelRelease: NFULNetlink.kernelRelease()) {
            for family in [IPFamily.v4, .v6] {
                _ = try? socket.execute(NFULNetlink.familyRequest(command: NFULNetlink.cmdPFUnbind, family: family), "")
                try socket.execute(NFULNetlink.familyRequest(command: NFULNetlink.cmdPFBind, family: family),
                                   "bind nfnetlink_log as the \(family) logger")
            }
        }
        try NFULNetlink.bind(socket, group: group, copyBytes: copyBytes)
        receiver = MulticastReceiver(socket, what: "nflog group \(group)")
    }

    deinit { close() }

    /// Closes the socket; the kernel then unbinds the group. A `receive` already waiting keeps
    /// the socket until its timeout.
    public func close() { receiver.close() }

    /// Blocks until at least one packet arrives or `timeoutMilliseconds` passes (then returns []);
    /// returns every packet in the datagrams read. A negative timeout waits indefinitely.
    public func receive(timeoutMilliseconds: Int32) throws -> [LoggedPacket] {
        try receiver.receive(timeoutMilliseconds: timeoutMilliseconds, batch: 64, decode: NFULNetlink.packets(inDatagram:))
    }
}

/// The nfnetlink_log wire format: pure byte work, unit-tested without a kernel. Values from
/// <linux/netfilter/nfnetlink_log.h> (kernel ABI, stable since 2.6.14).
enum NFULNetlink {
    // enum nfulnl_msg_types
    static let msgPacket = 0, msgConfig = 1
    // enum nfulnl_attr_type
    static let attrPacketHeader = 1, attrInDevice = 4, attrOutDevice = 5, attrPayload = 9, attrPrefix = 10
    // enum nfulnl_attr_config
    static let cfgCommand = 1, cfgMode = 2, cfgQueueThreshold = 5
    // enum nfulnl_msg_config_cmds
    static let cmdBind: UInt8 = 1, cmdPFBind: UInt8 = 3, cmdPFUnbind: UInt8 = 4
    static let copyPacket: UInt8 = 2

    static func messageType(_ msg: Int) -> Int32 { (k(NFNL_SUBSYS_ULOG) << 8) | Int32(msg) }

    /// nfgenmsg: family, version, res_id (the group, big-endian).
    private static func request(_ type: Int32, family: UInt8, group: UInt16) -> NetlinkRequest {
        var req = NetlinkRequest(type: type, flags: 0)
        req.append(family)
        req.append(UInt8(NFNETLINK_V0))
        req.append(group.bigEndian)
        return req
    }

    static func familyRequest(command: UInt8, family: IPFamily) -> NetlinkRequest {
        var req = request(messageType(msgConfig), family: CTNetlink.addressFamily(family), group: 0)
        req.attr(cfgCommand, u8: command)
        return req
    }

    /// BIND, copy mode and queue threshold in one message: the kernel creates the instance and
    /// configures it in one step, so no packet arrives unconfigured. A threshold of 1 sends each
    /// packet at once instead of batching for up to a second.
    static func bindRequest(group: UInt16, copyBytes: UInt32) -> NetlinkRequest {
        var req = request(messageType(msgConfig), family: UInt8(AF_UNSPEC), group: group)
        req.attr(cfgCommand, u8: cmdBind)
        // struct nfulnl_msg_config_mode (packed): __be32 copy_range, __u8 copy_mode, __u8 _pad.
        req.attr(cfgMode, withUnsafeBytes(of: copyBytes.bigEndian, Array.init) + [copyPacket, 0])
        req.attr(cfgQueueThreshold, withUnsafeBytes(of: UInt32(1).bigEndian, Array.init))
        return req
    }

    static func bind(_ socket: NetlinkSocket, group: UInt16, copyBytes: UInt32) throws(NetlinkError) {
        do {
            try socket.execute(bindRequest(group: group, copyBytes: copyBytes), "bind nflog group \(group)")
        } catch {
            guard error.errno == EPERM || error.errno == EBUSY else { throw error }
            // EPERM is both "bound by another socket" and "no CAP_NET_ADMIN"; the probe tells them apart.
            if error.errno == EPERM, !hasNetAdmin(socket) {
                throw NetlinkError(operation: "bind nflog group \(group): needs CAP_NET_ADMIN in this network namespace", errno: EPERM)
            }
            throw NetlinkError(operation: "bind nflog group \(group): group \(group) is already bound by another process", errno: EBUSY)
        }
    }

    /// nfnetlink checks CAP_NET_ADMIN before it looks at the message type, so a message type
    /// the subsystem does not have fails with EPERM without it and EINVAL with it.
    static func hasNetAdmin(_ socket: NetlinkSocket) -> Bool {
        let probe = request(messageType(0xff), family: UInt8(AF_UNSPEC), group: 0)
        do { try socket.execute(probe, "") } catch { return error.errno != EPERM }
        return true
    }

    /// Every logged packet in one datagram (one message, or several ending in NLMSG_DONE).
    static func packets(inDatagram d: ArraySlice<UInt8>) -> [LoggedPacket] {
        var out: [LoggedPacket] = []
        var i = d.startIndex
        while i + 16 <= d.endIndex {
            let len = Int(le32(d, i))
            let type = UInt16(d[i + 4]) | UInt16(d[i + 5]) << 8
            guard len >= 16, i + len <= d.endIndex else { break }
            if Int32(type) == messageType(msgPacket), let p = decodePacket(d[(i + 16)..<(i + len)]) { out.append(p) }
            i += (len + 3) & ~3
        }
        return out
    }

    /// One NFULNL_MSG_PACKET payload: nfgenmsg, then attributes. Ifindexes are __be32.
    static func decodePacket(_ payload: ArraySlice<UInt8>) -> LoggedPacket? {
        guard payload.count >= 4 else { return nil }
        let attrs = NetlinkAttributes(bytes: payload.dropFirst(4))
        guard let data = attrs[attrPayload] else { return nil }
        return LoggedPacket.decode(prefix: attrs.string(attrPrefix) ?? "", payload: Array(data),
                                   inInterface: CTNetlink.be32(attrs[attrInDevice]), outInterface: CTNetlink.be32(attrs[attrOutDevice]))
    }

    private static func le32(_ d: ArraySlice<UInt8>, _ i: Int) -> UInt32 {
        (0..<4).reduce(0) { $0 | UInt32(d[i + $1]) << (8 * UInt32($1)) }
    }

    /// True before 3.17 (see `NFLog.init`); an unparsable release is taken as new.
    static func needsFamilyBinding(kernelRelease: String) -> Bool {
        let parts = kernelRelease.split(whereSeparator: { !$0.isNumber }).prefix(2).compactMap { Int($0) }
        guard parts.count == 2 else { return false }
        return (parts[0], parts[1]) < (3, 17)
    }

    static func kernelRelease() -> String {
        var u = utsname()
        guard uname(&u) == 0 else { return "" }
        return withUnsafeBytes(of: &u.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
    }

    static func monotonicMilliseconds() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Int64(ts.tv_sec) * 1000 + Int64(ts.tv_nsec) / 1_000_000
    }
}
