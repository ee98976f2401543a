import Testing
import WeftCore
@testable import WeftOS
#if canImport(Glibc)
import Glibc
#endif

/// Decoding logged packets and the nfnetlink_log wire format, without a kernel (no root needed).
@Suite struct NFLogCodecTests {
    func ip(_ s: String) -> IPAddress { IPAddress(s)! }
    func hex(_ s: String) -> [UInt8] {
        let digits = Array(s.filter { !$0.isWhitespace })
        precondition(digits.count % 2 == 0 && digits.allSatisfy(\.isHexDigit), "bad hex fixture")
        return stride(from: 0, to: digits.count, by: 2).map { UInt8(String(digits[$0...$0 + 1]), radix: 16)! }
    }

    /// 10.0.0.1:40000 -> 10.96.0.10:80 TCP SYN, no options.
    static let ipv4TCP = """
        45000028 1234 4000 40 06 0000 0a000001 0a60000a
        9c40 0050 00000001 00000000 5002 ffff 0000 0000
        """
    /// 10.0.0.1:40000 -> 10.96.0.10:53 UDP, 4 bytes of data.
    static let ipv4UDP = """
        4500 0020 0001 0000 40 11 0000 0a000001 0a60000a
        9c40 0035 000c 0000 61626364
        """
    /// fd00::1:40000 -> fd96::10:53 UDP.
    static let ipv6UDP = """
        60000000 000c 11 40
        fd000000000000000000000000000001
        fd960000000000000000000000000010
        9c40 0035 000c 0000 61626364
        """
    /// 10.0.0.1 -> 10.0.0.2 echo request.
    static let ipv4ICMP = """
        4500 001c 0001 0000 40 01 0000 0a000001 0a000002
        0800 f7ff 0000 0000
        """

    @Test func decodesIPv4TCP() throws {
        let p = try #require(LoggedPacket.decode(prefix: "weft-policy ingress", payload: hex(Self.ipv4TCP), inInterface: 3, outInterface: nil))
        #expect(p == LoggedPacket(prefix: "weft-policy ingress", family: .v4, source: ip("10.0.0.1"), destination: ip("10.96.0.10"), proto: 6,
                                  sourcePort: 40000, destinationPort: 80, inInterface: 3, outInterface: nil))
    }

    @Test func decodesIPv4UDP() throws {
        let p = try #require(LoggedPacket.decode(prefix: "x", payload: hex(Self.ipv4UDP), inInterface: nil, outInterface: 7))
        #expect(p.family == .v4 && p.proto == 17 && p.sourcePort == 40000 && p.destinationPort == 53 && p.outInterface == 7)
        #expect(p.source == ip("10.0.0.1") && p.destination == ip("10.96.0.10"))
    }

    @Test func decodesIPv6UDP() throws {
        let p = try #require(LoggedPacket.decode(prefix: "", payload: hex(Self.ipv6UDP), inInterface: nil, outInterface: nil))
        #expect(p == LoggedPacket(prefix: "", family: .v6, source: ip("fd00::1"), destination: ip("fd96::10"), proto: 17,
                                  sourcePort: 40000, destinationPort: 53))
    }

    @Test func followsIPv6ExtensionHeaders() throws {
        // Hop-by-hop (8 bytes, next: fragment), first fragment (next: TCP), then TCP.
        var v6 = hex(Self.ipv6UDP)
        v6[6] = 0
        v6.replaceSubrange(40..., with: hex("2c00 0000 00000000  06 00 0001 00000001  9c40 0050 00000001"))
        var p = try #require(LoggedPacket.decode(prefix: "", payload: v6, inInterface: nil, outInterface: nil))
        #expect(p.proto == 6 && p.sourcePort == 40000 && p.destinationPort == 80)
        // A later fragment: the protocol is known, the ports are not there.
        v6[50] = 0x05; v6[51] = 0x01
        p = try #require(LoggedPacket.decode(prefix: "", payload: v6, inInterface: nil, outInterface: nil))
        #expect(p.proto == 6 && p.sourcePort == nil && p.destinationPort == nil)
        // ESP cannot be looked into: its number is the protocol.
        v6[48] = 50
        v6[50] = 0; v6[51] = 1
        p = try #require(LoggedPacket.decode(prefix: "", payload: v6, inInterface: nil, outInterface: nil))
        #expect(p.proto == 50 && p.sourcePort == nil)
    }

    @Test func decodesICMPWithoutPorts() throws {
        let p = try #require(LoggedPacket.decode(prefix: "", payload: hex(Self.ipv4ICMP), inInterface: nil, outInterface: nil))
        #expect(p.proto == 1 && p.sourcePort == nil && p.destinationPort == nil && p.destination == ip("10.0.0.2"))
    }

    @Test func nonFirstIPv4FragmentHasNoPorts() throws {
        var b = hex(Self.ipv4UDP)
        b[6] = 0x00; b[7] = 0x10  // fragment offset 16 (x8 bytes)
        let p = try #require(LoggedPacket.decode(prefix: "", payload: b, inInterface: nil, outInterface: nil))
        #expect(p.proto == 17 && p.sourcePort == nil)
    }

    @Test func truncatedOrNotIPIsNil() {
        #expect(LoggedPacket.decode(prefix: "", payload: [], inInterface: nil, outInterface: nil) == nil)
        #expect(LoggedPacket.decode(prefix: "", payload: Array(hex(Self.ipv4UDP).prefix(19)), inInterface: nil, outInterface: nil) == nil)
        #expect(LoggedPacket.decode(prefix: "", payload: Array(hex(Self.ipv6UDP).prefix(39)), inInterface: nil, outInterface: nil) == nil)
        var notIP = hex(Self.ipv4UDP); notIP[0] = 0x55
        #expect(LoggedPacket.decode(prefix: "", payload: notIP, inInterface: nil, outInterface: nil) == nil)
        var badIHL = hex(Self.ipv4UDP); badIHL[0] = 0x44
        #expect(LoggedPacket.decode(prefix: "", payload: badIHL, inInterface: nil, outInterface: nil) == nil)
        // Cut inside the UDP header (a small copy range): addresses yes, ports no.
        let cut = LoggedPacket.decode(prefix: "", payload: Array(hex(Self.ipv4UDP).prefix(22)), inInterface: nil, outInterface: nil)
        #expect(cut?.proto == 17 && cut?.sourcePort == nil)
    }

    @Test func bindRequestCarriesGroupModeAndThreshold() {
        var req = NFULNetlink.bindRequest(group: 4210, copyBytes: 128)
        #expect(req.finish(seq: 1) == hex("""
            30000000 0104 0500 01000000 00000000
            00 00 1072
            05000100 01000000
            0a000200 00000080 0200 0000
            08000500 00000001
            """))
    }

    /// A batched datagram as the kernel sends it: two NFULNL_MSG_PACKETs (NLM_F_MULTI) and
    /// NLMSG_DONE; ifindexes big-endian, the prefix NUL-terminated.
    @Test func decodesPacketsFromADatagram() {
        func packetMessage(prefix: String, inDev: UInt32, payload: [UInt8]) -> [UInt8] {
            var body: [UInt8] = [UInt8(AF_INET), 0, 0x10, 0x72]
            func attr(_ type: UInt16, _ data: [UInt8]) {
                let len = UInt16(4 + data.count)
                body += [UInt8(len & 0xff), UInt8(len >> 8), UInt8(type & 0xff), UInt8(type >> 8)] + data
                while body.count % 4 != 0 { body.append(0) }
            }
            attr(1, [0x08, 0x00, 1, 0])                               // NFULA_PACKET_HDR
            attr(4, withUnsafeBytes(of: inDev.bigEndian, Array.init))  // NFULA_IFINDEX_INDEV
            attr(9, payload)                                          // NFULA_PAYLOAD
            attr(10, Array(prefix.utf8) + [0])                        // NFULA_PREFIX
            let len = UInt32(16 + body.count)
            return withUnsafeBytes(of: len.littleEndian, Array.init) + [0x00, 0x04, 0x02, 0x00] + [UInt8](repeating: 0, count: 8) + body
        }
        let done: [UInt8] = [20, 0, 0, 0, 3, 0, 2, 0] + [UInt8](repeating: 0, count: 12)
        let datagram = packetMessage(prefix: "weft-policy ingress", inDev: 0x0102, payload: hex(Self.ipv4TCP))
            + packetMessage(prefix: "b", inDev: 5, payload: hex(Self.ipv4ICMP)) + done
        let packets = NFULNetlink.packets(inDatagram: ArraySlice(datagram))
        #expect(packets.count == 2)
        #expect(packets.first?.prefix == "weft-policy ingress")
        #expect(packets.first?.inInterface == 0x0102)
        #expect(packets.first?.outInterface == nil)
        #expect(packets.first?.destinationPort == 80)
        #expect(packets.last?.prefix == "b" && packets.last?.proto == 1 && packets.last?.inInterface == 5)
    }

    @Test func familyBindingOnlyBefore3_17() {
        #expect(NFULNetlink.needsFamilyBinding(kernelRelease: "3.10.0-1160.el7.x86_64"))
        #expect(NFULNetlink.needsFamilyBinding(kernelRelease: "2.6.32"))
        #expect(!NFULNetlink.needsFamilyBinding(kernelRelease: "3.17.0"))
        #expect(!NFULNetlink.needsFamilyBinding(kernelRelease: "6.18.44-fc-v669"))
        #expect(!NFULNetlink.needsFamilyBinding(kernelRelease: ""))
    }
}

/// A real kernel: an nftables rule in a fresh namespace logs UDP to port 9999; NFLog, opened
/// in that namespace, reads the IPv4 and IPv6 datagrams; the group admits one subscriber.
@Suite(.serialized, .enabled(if: isRoot, "needs root to create network namespaces"))
struct NFLogKernelTests {
    static let group: UInt16 = 4299
    static let rules = """
        table inet nflogtest {
            chain out {
                type filter hook output priority 0;
                udp dport 9999 log group \(group) prefix "weft-test"
            }
        }
        """

    @Test func readsPacketsLoggedByNftables() throws {
        let lab = try KernelLab()  // its namespace has lo up; removed in close(), also on failure
        defer { lab.close() }
        let r = try sh(["ip", "netns", "exec", lab.node, "nft", "-f", "-"], stdin: Self.rules)
        guard r.status == 0 else { throw LabError("nft: \(r.stderr)") }
        let ns = try NetworkNamespace(path: "/run/netns/\(lab.node)")

        var log: NFLog? = try ns.run { try NFLog(group: Self.group) }
        defer { log?.close() }

        // One subscriber per group: a second socket is refused, naming the group.
        let refused = #expect(throws: NetlinkError.self) { _ = try ns.run { try NFLog(group: Self.group) } }
        #expect(refused?.description.contains("group \(Self.group) is already bound by another process") == true, "\(String(describing: refused))")

        for (address, port) in [(IPAddress("127.0.0.1")!, UInt16(40999)), (IPAddress("::1")!, UInt16(40998))] {
            let sender = try ns.run { () throws(SystemError) -> UDPSocket in try UDPSocket(bind: address, port: port, name: "sender") }
            try sender.send(Array("hello".utf8), to: UDPSocket.address(address, 9999))
            let packets = try receive(log!, atLeast: 1)
            #expect(packets.count == 1, "\(packets)")
            let p = try #require(packets.first)
            #expect(p == LoggedPacket(prefix: "weft-test", family: address.family, source: address, destination: address, proto: 17,
                                      sourcePort: port, destinationPort: 9999, inInterface: nil, outInterface: 1))  // lo is ifindex 1
        }
        #expect(log!.overruns == 0)
        #expect(try log!.receive(timeoutMilliseconds: 100).isEmpty)

        // A flood nobody reads overruns the socket: counted, not fatal, and logging goes on.
        let flooder = try ns.run { () throws(SystemError) -> UDPSocket in try UDPSocket(bind: IPAddress("127.0.0.1")!, port: 40997, name: "flood") }
        for _ in 0..<5000 { try flooder.send([0], to: UDPSocket.address(IPAddress("127.0.0.1")!, 9999)) }
        var drained = 0
        while case let batch = try log!.receive(timeoutMilliseconds: 200), !batch.isEmpty { drained += batch.count }
        #expect(log!.overruns >= 1)
        #expect(drained > 0 && drained < 5000, "drained \(drained)")
        try flooder.send([0], to: UDPSocket.address(IPAddress("127.0.0.1")!, 9999))
        #expect(try receive(log!, atLeast: 1).map(\.sourcePort) == [40997])

        // Closing releases the group: another subscriber may bind it.
        log!.close()
        #expect(throws: NetlinkError.self) { _ = try log!.receive(timeoutMilliseconds: 0) }
        // (The kernel drops the binding as it releases the socket, which under load can lag the close.)
        #expect(eventually(5) {
            log = try? ns.run { try NFLog(group: Self.group) }
            return log != nil
        }, "the group is free again after close")
    }

    /// Packets until at least `n` arrived, for up to 5 s.
    func receive(_ log: NFLog, atLeast n: Int) throws -> [LoggedPacket] {
        var all: [LoggedPacket] = []
        for _ in 0..<10 where all.count < n { all += try log.receive(timeoutMilliseconds: 500) }
        return all
    }
}
