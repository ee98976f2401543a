import Testing
import WeftCore
@testable import WeftOS
#if canImport(Glibc)
import Glibc
#endif

/// The ctnetlink wire format and the filter, without a kernel (no root needed).
@Suite struct ConntrackCodecTests {
    func ip(_ s: String) -> IPAddress { IPAddress(s)! }
    func hex(_ s: String) -> [UInt8] {
        let digits = Array(s.filter { !$0.isWhitespace })
        precondition(digits.count % 2 == 0 && digits.allSatisfy(\.isHexDigit), "bad hex fixture")
        return stride(from: 0, to: digits.count, by: 2).map { UInt8(String(digits[$0...$0 + 1]), radix: 16)! }
    }

    var dnsEntry: ConntrackEntry {
        ConntrackEntry(original: ConntrackTuple(source: ip("10.0.0.1"), destination: ip("10.96.0.10"), proto: .udp, sourcePort: 40000, destinationPort: 53),
                       reply: ConntrackTuple(source: ip("10.244.1.5"), destination: ip("10.0.0.1"), proto: .udp, sourcePort: 5353, destinationPort: 40000),
                       id: 0x0102_0304)
    }

    @Test func deleteRequestIsTheOriginalTupleInNetworkOrder() {
        var req = CTNetlink.deleteRequest(dnsEntry)
        let wire = req.finish(seq: 7)
        #expect(wire == hex("""
            50000000 0201 0500 07000000 00000000
            02000000
            34000180
              14000180 08000100 0a000001 08000200 0a60000a
              1c000280 05000100 11000000 06000200 9c400000 06000300 00350000
            08000c00 01020304
            """))
    }

    @Test func deleteRequestCarriesTheZoneAndIPv6Tuple() {
        var e = dnsEntry
        e.original = ConntrackTuple(source: ip("fd00::1"), destination: ip("fd96::10"), proto: .sctp, sourcePort: 1, destinationPort: 2)
        e.zone = 7
        e.id = nil
        var req = CTNetlink.deleteRequest(e)
        let wire = req.finish(seq: 1)
        let payload = ArraySlice(wire.dropFirst(16))
        #expect(payload.first == UInt8(AF_INET6))
        let attrs = NetlinkAttributes(bytes: payload.dropFirst(4))
        #expect(attrs.nested(CTNetlink.tupleOrig).flatMap(CTNetlink.decodeTuple) == e.original)
        #expect(attrs[CTNetlink.zone].map(Array.init) == [0, 7])
        #expect(attrs[CTNetlink.id] == nil)
        #expect(attrs[CTNetlink.tupleReply] == nil)
    }

    @Test func dumpRequestAsksForOneFamily() {
        var req = CTNetlink.dumpRequest(family: .v6)
        let wire = req.finish(seq: 1)
        #expect(wire.count == 20)
        #expect(wire[4...5] == [0x01, 0x01])                       // CTNETLINK << 8 | IPCTNL_MSG_CT_GET
        #expect(UInt16(wire[6]) | UInt16(wire[7]) << 8 == 0x0305)  // NLM_F_REQUEST | NLM_F_ACK | NLM_F_DUMP
        #expect(Array(wire[16...]) == [UInt8(AF_INET6), 0, 0, 0])
    }

    /// An IPCTNL_MSG_CT_NEW payload as a 6.x kernel dumps it (captured from the kernel test):
    /// udp 10.77.0.1:40000 -> 10.96.77.10:53 DNATed to 10.77.0.2:9000.
    static let kernelPayload = """
        02000000
        34000180 14000180 08000100 0a4d0001 08000200 0a604d0a
                 1c000280 05000100 11000000 06000200 9c400000 06000300 00350000
        34000280 14000180 08000100 0a4d0002 08000200 0a4d0001
                 1c000280 05000100 11000000 06000200 23280000 06000300 9c400000
        08000300 000001aa
        08000800 00000000
        08000c00 7620c5c1
        08000b00 00000001
        08000700 0000001e
        """

    @Test func decodesAnEntryTheKernelDumped() throws {
        let e = try #require(CTNetlink.decodeEntry(ArraySlice(hex(Self.kernelPayload))))
        #expect(e.original == ConntrackTuple(source: ip("10.77.0.1"), destination: ip("10.96.77.10"), proto: .udp, sourcePort: 40000, destinationPort: 53))
        #expect(e.reply == ConntrackTuple(source: ip("10.77.0.2"), destination: ip("10.77.0.1"), proto: .udp, sourcePort: 9000, destinationPort: 40000))
        #expect(e.zone == 0)
        #expect(e.id == 0x7620_c5c1)
        #expect(e.timeout == 30)
        #expect(e.mark == 0)
        #expect(e.description == "udp 10.77.0.1:40000 -> 10.96.77.10:53 reply 10.77.0.2:9000")
    }

    @Test func decodingRoundTripsTheEncodedTuple() {
        for t in [dnsEntry.original, dnsEntry.reply,
                  ConntrackTuple(source: ip("fd00::1"), destination: ip("fd96::a"), proto: .tcp, sourcePort: 443, destinationPort: 65535),
                  ConntrackTuple(source: ip("10.0.0.1"), destination: ip("10.0.0.2"), proto: ConntrackProtocol(rawValue: 1))] {
            var req = NetlinkRequest(type: 0, flags: 0)
            CTNetlink.encodeTuple(t, as: CTNetlink.tupleReply, into: &req)
            let wire = req.finish(seq: 0)
            let attrs = NetlinkAttributes(bytes: ArraySlice(wire.dropFirst(16)))
            #expect(attrs.nested(CTNetlink.tupleReply).flatMap(CTNetlink.decodeTuple) == t)
        }
    }

    @Test func malformedPayloadsDecodeToNil() {
        let good = hex(Self.kernelPayload)
        #expect(CTNetlink.decodeEntry([]) == nil)
        #expect(CTNetlink.decodeEntry(ArraySlice(good.prefix(3))) == nil)
        // No truncation traps; one that decodes has the whole entry's tuples (only trailing
        // optional attributes such as the timeout may be missing).
        let whole = CTNetlink.decodeEntry(ArraySlice(good))
        for n in 0..<good.count {
            let d = CTNetlink.decodeEntry(ArraySlice(good.prefix(n)))
            #expect(d == nil || (d?.original == whole?.original && d?.reply == whole?.reply), "a truncation to \(n) bytes decoded to other tuples")
        }
        // Without its reply tuple (only the nfgenmsg and the original tuple) there is no entry.
        var req = CTNetlink.deleteRequest(dnsEntry)
        #expect(CTNetlink.decodeEntry(ArraySlice(req.finish(seq: 0).dropFirst(16))) == nil)
        // Mixed families in one tuple are refused.
        let mixed = NetlinkAttributes(bytes: ArraySlice(hex("""
            20000100 08000100 0a000001 14000200 fd000000 00000000 00000000 00000001
            0c000200 05000100 11000000
            """)))
        #expect(CTNetlink.decodeTuple(mixed) == nil)
    }

    @Test func filterMatchesEachField() {
        let e = dnsEntry
        #expect(ConntrackFilter(family: .v4).matches(e))
        #expect(!ConntrackFilter(family: .v6).matches(e))
        #expect(!ConntrackFilter(family: .v4, proto: .tcp).matches(e))
        #expect(ConntrackFilter(family: .v4, originalDestination: ip("10.96.0.10"), originalDestinationPort: 53).matches(e))
        #expect(!ConntrackFilter(family: .v4, originalDestination: ip("10.96.0.11")).matches(e))
        #expect(!ConntrackFilter(family: .v4, originalDestination: ip("10.96.0.10"), originalDestinationPort: 54).matches(e))
        #expect(ConntrackFilter(family: .v4, originalDestinationPort: 53).matches(e))   // a node port: any address
        #expect(ConntrackFilter(family: .v4, replySource: ip("10.244.1.5")).matches(e))
        #expect(ConntrackFilter(family: .v4, replySource: ip("10.244.1.5"), replySourcePort: 5353).matches(e))
        #expect(!ConntrackFilter(family: .v4, replySource: ip("10.244.1.5"), replySourcePort: 53).matches(e))
        #expect(!ConntrackFilter(family: .v4, replySource: ip("10.96.0.10")).matches(e))  // the VIP is not the reply source
    }

    @Test func filterOfTheWrongFamilyIsRefusedNamingTheField() throws {
        #expect(throws: Never.self) { try ConntrackFilter(family: .v4, originalDestination: ip("10.0.0.1")).validate() }
        let e = #expect(throws: NetlinkError.self) { try ConntrackFilter(family: .v4, replySource: ip("fd00::5")).validate() }
        #expect(e?.errno == EINVAL)
        #expect(e?.description.contains("replySource fd00::5 is IPv6") == true)
    }
}
