import Testing
import WeftCore
@testable import WeftOS
#if canImport(Glibc)
import Glibc
#endif

/// Decoding ctnetlink event messages, without a kernel (no root needed).
@Suite struct ConntrackEventsCodecTests {
    func ip(_ s: String) -> IPAddress { IPAddress(s)! }
    func hex(_ s: String) -> [UInt8] {
        let digits = Array(s.filter { !$0.isWhitespace })
        precondition(digits.count % 2 == 0 && digits.allSatisfy(\.isHexDigit), "bad hex fixture")
        return stride(from: 0, to: digits.count, by: 2).map { UInt8(String(digits[$0...$0 + 1]), radix: 16)! }
    }

    /// nfgenmsg and attributes of tcp 127.0.0.1:40000 -> 127.0.0.1:8080, as ctnetlink sends it:
    /// tuples, status, timeout, mark, id.
    static let entryPayload = """
        02000000
        34000180 14000180 08000100 7f000001 08000200 7f000001
                 1c000280 05000100 06000000 06000200 9c400000 06000300 1f900000
        34000280 14000180 08000100 7f000001 08000200 7f000001
                 1c000280 05000100 06000000 06000200 1f900000 06000300 9c400000
        08000300 00000008
        08000700 00000078
        08000800 0000002a
        08000c00 deadbeef
        """
    /// CTA_COUNTERS_ORIG and _REPLY as a DESTROY carries them: be64 values, each after a
    /// CTA_COUNTERS_PAD that aligns it; the reply bytes need more than 32 bits.
    static let counters = """
        24000980 04000500 0c000100 0000000000000005 04000500 0c000200 000000000000012c
        24000a80 04000500 0c000100 0000000000000004 04000500 0c000200 0000000100000010
        """

    /// A netlink message around `payload`: nlmsghdr with ctnetlink's subsystem and `msg`.
    func message(msg: UInt8, subsystem: UInt8 = 1, flags: UInt16, payload: [UInt8]) -> [UInt8] {
        let len = UInt32(16 + payload.count)
        return withUnsafeBytes(of: len.littleEndian, Array.init) + [msg, subsystem] + withUnsafeBytes(of: flags.littleEndian, Array.init)
            + [UInt8](repeating: 0, count: 8) + payload
    }

    var entry: ConntrackEntry {
        ConntrackEntry(original: ConntrackTuple(source: ip("127.0.0.1"), destination: ip("127.0.0.1"), proto: .tcp, sourcePort: 40000, destinationPort: 8080),
                       reply: ConntrackTuple(source: ip("127.0.0.1"), destination: ip("127.0.0.1"), proto: .tcp, sourcePort: 8080, destinationPort: 40000),
                       id: 0xdead_beef, timeout: 120, mark: 42)
    }

    @Test func decodesAHandBuiltNewMessage() throws {
        // IPCTNL_MSG_CT_NEW with NLM_F_CREATE | NLM_F_EXCL (0x400 | 0x200).
        let events = CTNetlink.events(inDatagram: ArraySlice(message(msg: 0, flags: 0x0600, payload: hex(Self.entryPayload))))
        #expect(events == [ConntrackEvent(kind: .new, entry: entry)])
    }

    @Test func flagsAndTypeDecideTheKind() {
        let payload = hex(Self.entryPayload)
        // NEW without CREATE|EXCL is an update (only EXCL is not enough).
        #expect(CTNetlink.events(inDatagram: ArraySlice(message(msg: 0, flags: 0, payload: payload))).map(\.kind) == [.update])
        #expect(CTNetlink.events(inDatagram: ArraySlice(message(msg: 0, flags: 0x0200, payload: payload))).map(\.kind) == [.update])
        #expect(CTNetlink.events(inDatagram: ArraySlice(message(msg: 2, flags: 0, payload: payload))).map(\.kind) == [.destroy])
        // GET, an expectation (subsystem 2) and NLMSG_DONE are not events.
        #expect(CTNetlink.events(inDatagram: ArraySlice(message(msg: 1, flags: 0, payload: payload))).isEmpty)
        #expect(CTNetlink.events(inDatagram: ArraySlice(message(msg: 0, subsystem: 2, flags: 0x0600, payload: payload))).isEmpty)
        #expect(CTNetlink.events(inDatagram: ArraySlice(message(msg: 3, subsystem: 0, flags: 0, payload: [0, 0, 0, 0]))).isEmpty)
        // A message without its reply tuple is dropped; the next one in the datagram still counts.
        let broken = message(msg: 0, flags: 0x0600, payload: Array(payload.prefix(4 + 0x34)))
        #expect(CTNetlink.events(inDatagram: ArraySlice(broken + message(msg: 2, flags: 0, payload: payload))).map(\.kind) == [.destroy])
    }

    @Test func destroyCarriesCounters() throws {
        let events = CTNetlink.events(inDatagram: ArraySlice(message(msg: 2, flags: 0, payload: hex(Self.entryPayload) + hex(Self.counters))))
        #expect(events == [ConntrackEvent(kind: .destroy, entry: entry, originalPackets: 5, originalBytes: 300, replyPackets: 4, replyBytes: 0x1_0000_0010)])
    }

    @Test func subscribingToNothingIsRefused() {
        let e = #expect(throws: NetlinkError.self) { _ = try ConntrackEvents(new: false, destroy: false, update: false) }
        #expect(e?.errno == EINVAL)
    }
}

/// A real kernel: in a fresh namespace, a TCP connection and a UDP datagram on 127.0.0.1 each
/// produce a NEW event; the TCP one, once closed and expired, a DESTROY with its counters.
@Suite(.serialized, .enabled(if: isRoot, "needs root to create network namespaces"))
struct ConntrackEventsKernelTests {
    static let localhost = IPAddress("127.0.0.1")!
    static let tcpFlow = ConntrackTuple(source: localhost, destination: localhost, proto: .tcp, sourcePort: 40100, destinationPort: 8080)
    static let udpFlow = ConntrackTuple(source: localhost, destination: localhost, proto: .udp, sourcePort: 40101, destinationPort: 9999)

    @Test func reportsNewUpdateAndDestroyWithCounters() throws {
        let lab = try KernelLab()  // its namespace has lo up; removed in close(), also on failure
        defer { lab.close() }
        // Accounting (for the DESTROY's counters) and short TCP close timeouts (so the entry
        // expires in seconds, not TIME_WAIT's 120) apply to entries created afterwards.
        for setting in ["nf_conntrack_acct=1", "nf_conntrack_tcp_timeout_time_wait=1", "nf_conntrack_tcp_timeout_close=1"] {
            try check(lab.inNode(["sysctl", "-w", "net.netfilter.\(setting)"]))
        }
        // Conntrack hooks a namespace only once something there uses it: this rule does.
        let rules = """
            table inet t {
                chain o { type filter hook output priority 0; ct state new counter; }
            }
            """
        try check(sh(["ip", "netns", "exec", lab.node, "nft", "-f", "-"], stdin: rules))

        let ns = try NetworkNamespace(path: "/run/netns/\(lab.node)")
        let all = try ns.run { try ConntrackEvents(update: true) }
        defer { all.close() }
        let defaults = try ns.run { try ConntrackEvents() }
        defer { defaults.close() }

        // TCP: connect, one exchange each way, client closes first.
        let listener = try ns.run { try TCPSocket(listen: Self.localhost, port: 8080) }
        let client = try ns.run { try TCPSocket(connectFrom: Self.localhost, port: 40100, to: Self.localhost, port: 8080) }
        let server = try listener.accept()
        try client.send(Array("ping".utf8))
        #expect(try server.receive() == Array("ping".utf8))
        try server.send(Array("pong".utf8))
        #expect(try client.receive() == Array("pong".utf8))
        client.close()
        #expect(try server.receive().isEmpty)  // the FIN
        server.close()
        listener.close()

        // UDP: one datagram to a bound receiver.
        let receiver = try ns.run { () throws(SystemError) -> UDPSocket in try UDPSocket(bind: Self.localhost, port: 9999, name: "receiver") }
        let sender = try ns.run { () throws(SystemError) -> UDPSocket in try UDPSocket(bind: Self.localhost, port: 40101, name: "sender") }
        try sender.send(Array("hello".utf8), to: UDPSocket.address(Self.localhost, 9999))
        _ = try receiver.receive()

        // The DESTROY comes when the garbage collector finds the expired entry; a dump evicts
        // expired entries it walks past, so one each round keeps this from waiting on the
        // collector's schedule (up to a minute when the host table is big).
        let conntrack = try ns.run { () throws(NetlinkError) -> Conntrack in try Conntrack() }
        var seen: [ConntrackEvent] = []
        var seenByDefaults: [ConntrackEvent] = []
        let deadline = NFULNetlink.monotonicMilliseconds() + 30_000
        while NFULNetlink.monotonicMilliseconds() < deadline, !seen.contains(where: { $0.kind == .destroy && $0.entry.original == Self.tcpFlow }) {
            seen += try all.receive(timeoutMilliseconds: 500)
            _ = try conntrack.entries(matching: ConntrackFilter(family: .v4, proto: .tcp))
        }
        seenByDefaults += try defaults.receive(timeoutMilliseconds: 100)
        let tcp = seen.filter { $0.entry.original == Self.tcpFlow }

        let new = try #require(tcp.first { $0.kind == .new }, "no NEW for \(Self.tcpFlow) in \(seen)")
        #expect(new.entry.reply == ConntrackTuple(source: Self.localhost, destination: Self.localhost, proto: .tcp, sourcePort: 8080, destinationPort: 40100))
        #expect(new.entry.id != nil)
        #expect(new.originalPackets == nil)
        // TCP state changes (established, closing) are updates.
        #expect(tcp.contains { $0.kind == .update }, "\(tcp)")

        let destroy = try #require(tcp.first { $0.kind == .destroy }, "no DESTROY for \(Self.tcpFlow) in \(seen)")
        #expect(destroy.entry.id == new.entry.id)
        #expect(destroy.entry.reply == new.entry.reply)
        // At least, client: SYN, ACK, data, FIN, last ACK; server: SYN-ACK, data, FIN (its ACKs may ride along).
        #expect((destroy.originalPackets ?? 0) >= 5, "\(destroy)")
        #expect((destroy.replyPackets ?? 0) >= 3, "\(destroy)")
        #expect((destroy.originalBytes ?? 0) > 5 * 40 && (destroy.replyBytes ?? 0) > 3 * 40, "\(destroy)")

        let udp = try #require(seen.first { $0.kind == .new && $0.entry.original.proto == .udp }, "no UDP NEW in \(seen)")
        #expect(udp.entry.original == Self.udpFlow)
        #expect(udp.entry.reply == ConntrackTuple(source: Self.localhost, destination: Self.localhost, proto: .udp, sourcePort: 9999, destinationPort: 40101))

        // The default subscription: the same NEW and DESTROY, no updates.
        let defaultTCP = seenByDefaults.filter { $0.entry.original == Self.tcpFlow }
        #expect(defaultTCP.map(\.kind) == [.new, .destroy], "\(seenByDefaults)")
        #expect(seenByDefaults.contains { $0.kind == .new && $0.entry.original == Self.udpFlow })
        #expect(all.overruns == 0 && defaults.overruns == 0)

        // Nothing more is pending; a closed subscription refuses to receive.
        #expect(try defaults.receive(timeoutMilliseconds: 100).isEmpty)
        defaults.close()
        #expect(throws: NetlinkError.self) { _ = try defaults.receive(timeoutMilliseconds: 0) }
    }

    func check(_ r: CommandResult) throws {
        guard r.status == 0 else { throw LabError("command failed (\(r.status)): \(r.stderr)") }
    }
}

/// A blocking IPv4 TCP socket with a 3 s receive timeout (so a lost packet fails, not hangs).
private final class TCPSocket {
    private(set) var fd: Int32

    private init(fd: Int32) {
        self.fd = fd
        var tv = timeval(tv_sec: 3, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    private static func bound(_ address: IPAddress, _ port: UInt16) throws -> TCPSocket {
        let s = TCPSocket(fd: socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0))
        guard s.fd >= 0 else { throw SystemError("socket") }
        var one: Int32 = 1
        setsockopt(s.fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var ss = UDPSocket.address(address, port)
        guard withUnsafePointer(to: &ss.0, { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(s.fd, $0, ss.1) } }) == 0 else {
            throw SystemError("bind \(address) port \(port)")
        }
        return s
    }

    convenience init(listen address: IPAddress, port: UInt16) throws {
        let s = try TCPSocket.bound(address, port)
        guard Glibc.listen(s.fd, 4) == 0 else { throw SystemError("listen") }
        self.init(fd: s.fd); s.fd = -1
    }

    convenience init(connectFrom source: IPAddress, port sourcePort: UInt16, to address: IPAddress, port: UInt16) throws {
        let s = try TCPSocket.bound(source, sourcePort)
        var ss = UDPSocket.address(address, port)
        guard withUnsafePointer(to: &ss.0, { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(s.fd, $0, ss.1) } }) == 0 else {
            throw SystemError("connect \(address) port \(port)")
        }
        self.init(fd: s.fd); s.fd = -1
    }

    func accept() throws -> TCPSocket {
        var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&pfd, 1, 3000) == 1 else { throw LabError("no connection to accept") }
        let c = Glibc.accept(fd, nil, nil)
        guard c >= 0 else { throw SystemError("accept") }
        return TCPSocket(fd: c)
    }

    func send(_ bytes: [UInt8]) throws {
        guard bytes.withUnsafeBytes({ Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }) == bytes.count else { throw SystemError("send") }
    }

    /// Up to 512 bytes; [] at end of stream.
    func receive() throws -> [UInt8] {
        var buf = [UInt8](repeating: 0, count: 512)
        let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        guard n >= 0 else { throw SystemError("receive") }
        return Array(buf[0..<n])
    }

    func close() {
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
    }

    deinit { close() }
}
