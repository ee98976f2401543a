import Testing
import WeftCore

@Suite struct IPAddressParsingTests {
    @Test(arguments: [
        ("10.1.2.3", UInt128(0x0a01_0203)),
        ("0.0.0.0", 0),
        ("255.255.255.255", 0xffff_ffff),
        ("192.168.0.10", 0xc0a8_000a),
        ("1.0.0.0", 0x0100_0000),
    ])
    func parsesIPv4(text: String, value: UInt128) throws {
        let a = try #require(IPAddress(text))
        #expect(a.family == .v4)
        #expect(a.value == value)
        #expect(a.description == text)
    }

    @Test(arguments: [
        // input, expected value, canonical RFC 5952 text
        ("::", UInt128(0), "::"),
        ("::1", 1, "::1"),
        ("1::", UInt128(1) << 112, "1::"),
        ("2001:db8::1", 0x2001_0db8_0000_0000_0000_0000_0000_0001, "2001:db8::1"),
        ("2001:DB8:0:0:0:0:0:1", 0x2001_0db8_0000_0000_0000_0000_0000_0001, "2001:db8::1"),
        ("2001:0db8:0000:0000:0000:ff00:0042:8329", 0x2001_0db8_0000_0000_0000_ff00_0042_8329, "2001:db8::ff00:42:8329"),
        // Longest zero run is compressed, not the first one.
        ("2001:0:0:1:0:0:0:1", 0x2001_0000_0000_0001_0000_0000_0000_0001, "2001:0:0:1::1"),
        // Equal runs: the first is compressed.
        ("2001:db8:0:0:1:0:0:1", 0x2001_0db8_0000_0000_0001_0000_0000_0001, "2001:db8::1:0:0:1"),
        // A single zero group is never compressed.
        ("2001:db8:0:1:1:1:1:1", 0x2001_0db8_0000_0001_0001_0001_0001_0001, "2001:db8:0:1:1:1:1:1"),
        ("1:2:3:4:5:6:7::", 0x0001_0002_0003_0004_0005_0006_0007_0000, "1:2:3:4:5:6:7:0"),
        ("::2:3:4:5:6:7:8", 0x0000_0002_0003_0004_0005_0006_0007_0008, "0:2:3:4:5:6:7:8"),
        ("fe80::a:B:c", 0xfe80_0000_0000_0000_0000_000a_000b_000c, "fe80::a:b:c"),
        ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", .max, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
        // Embedded IPv4: IPv4-mapped addresses are written in mixed notation (RFC 5952 §5).
        ("::ffff:1.2.3.4", 0xffff_0102_0304, "::ffff:1.2.3.4"),
        ("::FFFF:10.0.0.1", 0xffff_0a00_0001, "::ffff:10.0.0.1"),
        ("0:0:0:0:0:ffff:102:304", 0xffff_0102_0304, "::ffff:1.2.3.4"),
        ("::1.2.3.4", 0x0102_0304, "::102:304"),
        ("64:ff9b::192.0.2.33", 0x0064_ff9b_0000_0000_0000_0000_c000_0221, "64:ff9b::c000:221"),
        ("1:2:3:4:5:6:1.2.3.4", 0x0001_0002_0003_0004_0005_0006_0102_0304, "1:2:3:4:5:6:102:304"),
        ("1:2::3:4:1.2.3.4", 0x0001_0002_0000_0000_0003_0004_0102_0304, "1:2::3:4:102:304"),
    ])
    func parsesAndFormatsIPv6(text: String, value: UInt128, canonical: String) throws {
        let a = try #require(IPAddress(text))
        #expect(a.family == .v6)
        #expect(a.value == value)
        #expect(a.description == canonical)
        // The canonical form parses back to the same address.
        #expect(IPAddress(canonical) == a)
    }

    @Test(arguments: [
        "", "1.2.3", "256.1.1.1", "01.2.3.4", "1.2.3.04", "1.2.3.4.5", "1.2.3.", ".1.2.3", "1..2.3", "a.b.c.d",
        "1.2.3.-4", "1.2.3.+4", " 1.2.3.4", "1.2.3.4 ", "1.2.3.4/32", "１.2.3.4", "1234.1.1.1",
        "1::2::3", ":::", "12345::", "1:2:3:4:5:6:7", "1:2:3:4:5:6:7:8:9", "1:2:3:4:5:6:7:8::", "::1:2:3:4:5:6:7:8",
        "g::1", ":1::", "1::2:", ":1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8:", "+1::", "::-0", "::+f", " ::1", "::1%eth0",
        "::ffff:1.2.3", "::ffff:256.1.1.1", "::ffff:01.2.3.4", "::1.2.3.4:5", "1.2.3.4::", "::ffff::1.2.3.4",
        "1:2:3:4:5:6:7:1.2.3.4", "1:2:3:4:5:6::1.2.3.4", "ffff:1.2.3.4", "1.2.3.4:1::",
    ])
    func rejects(text: String) {
        #expect(IPAddress(text) == nil, "\"\(text)\" should not parse")
    }

    @Test func bytesRoundTrip() throws {
        let v4 = ip("10.1.2.3")
        #expect(v4.bytes == [10, 1, 2, 3])
        #expect(IPAddress(bytes: [10, 1, 2, 3]) == v4)

        let v6 = ip("2001:db8::ff00:42:8329")
        #expect(v6.bytes == [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0xff, 0x00, 0x00, 0x42, 0x83, 0x29])
        #expect(IPAddress(bytes: v6.bytes) == v6)

        for text in ["0.0.0.0", "255.255.255.255", "::", "::1", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "::ffff:1.2.3.4"] {
            let a = ip(text)
            #expect(a.bytes.count == (a.family == .v4 ? 4 : 16))
            #expect(IPAddress(bytes: a.bytes) == a)
        }
        // 16 bytes are IPv6 even when they hold an IPv4-mapped address.
        #expect(IPAddress(bytes: ip("::ffff:1.2.3.4").bytes)?.family == .v6)
        for n in [0, 1, 3, 5, 15, 17, 32] { #expect(IPAddress(bytes: Array(repeating: 1, count: n)) == nil) }
    }

    @Test func v4ValueIsMaskedTo32Bits() {
        let a = IPAddress(family: .v4, value: 0x1_0a00_0001)
        #expect(a.value == 0x0a00_0001)
        #expect(a == ip("10.0.0.1"))
    }

    @Test func advanced() {
        #expect(ip("10.0.0.255").advanced(by: 1) == ip("10.0.1.0"))
        #expect(ip("10.0.1.0").advanced(by: -1) == ip("10.0.0.255"))
        #expect(ip("10.0.0.1").advanced(by: 0) == ip("10.0.0.1"))
        #expect(ip("10.0.0.1").advanced(by: 65536) == ip("10.1.0.1"))
        #expect(ip("255.255.255.254").advanced(by: 1) == ip("255.255.255.255"))
        #expect(ip("fd00::ffff").advanced(by: 1) == ip("fd00::1:0"))
        #expect(ip("fd00::1:0").advanced(by: -1) == ip("fd00::ffff"))
        // The result keeps the family (no spill from IPv4 into a wider value).
        #expect(ip("10.0.0.1").advanced(by: 1)?.family == .v4)
    }

    @Test func advancedPastTheEndIsNil() {
        #expect(ip("255.255.255.255").advanced(by: 1) == nil)
        #expect(ip("0.0.0.0").advanced(by: -1) == nil)
        #expect(ip("::").advanced(by: -1) == nil)
        #expect(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff").advanced(by: 1) == nil)
        #expect(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff").advanced(by: .max) == nil)
        // Steps larger than the whole IPv4 space, and the most negative step, must not trap.
        #expect(ip("10.0.0.1").advanced(by: 1 << 33) == nil)
        #expect(ip("10.0.0.1").advanced(by: .max) == nil)
        #expect(ip("10.0.0.1").advanced(by: -(1 << 33)) == nil)
        #expect(ip("10.0.0.1").advanced(by: .min) == nil)
        #expect(ip("::").advanced(by: .min) == nil)
        #expect(ip("::ffff:ffff:ffff:ffff").advanced(by: .min) == ip("::7fff:ffff:ffff:ffff"))
        #expect(ip("::").advanced(by: .max) == ip("::7fff:ffff:ffff:ffff"))
    }

    @Test func ordering() {
        #expect(ip("10.0.0.2") < ip("10.0.0.10"))
        #expect(!(ip("10.0.0.10") < ip("10.0.0.2")))
        #expect(ip("fd00::2") < ip("fd00::10"))
        // Every IPv4 address sorts before every IPv6 one, whatever the numeric value.
        #expect(ip("255.255.255.255") < ip("::"))
        #expect(!(ip("::") < ip("0.0.0.0")))
        // Same numeric value, different family: distinct.
        #expect(ip("::a00:1") != ip("10.0.0.1"))
        #expect(ip("::a00:1").value == ip("10.0.0.1").value)
    }

    @Test func linkLocal() {
        #expect(ip("169.254.1.1").isLinkLocal)
        #expect(ip("169.254.255.255").isLinkLocal)
        #expect(!ip("169.253.1.1").isLinkLocal)
        #expect(!ip("10.0.0.1").isLinkLocal)
        #expect(ip("fe80::1").isLinkLocal)
        #expect(ip("febf::1").isLinkLocal)
        #expect(!ip("fec0::1").isLinkLocal)
        #expect(!ip("fd00::1").isLinkLocal)
    }

    @Test func familyStrings() {
        #expect(IPFamily.v4.cniVersionString == "4")
        #expect(IPFamily.v6.cniVersionString == "6")
        #expect(IPFamily.v4.bitWidth == 32)
        #expect(IPFamily.v6.bitWidth == 128)
        #expect(IPFamily.v4.description == "IPv4")
        #expect(IPFamily.v6.description == "IPv6")
    }
}

@Suite struct IPNetworkTests {
    @Test func parseMasksHostBits() throws {
        let n = try #require(IPNetwork("10.1.2.3/16"))
        #expect(n.address == ip("10.1.0.0"))
        #expect(n.prefixLength == 16)
        #expect(n.description == "10.1.0.0/16")
        #expect(n.family == .v4)

        let m = try #require(IPNetwork("fd00:1:2:3:4:5:6:7/64"))
        #expect(m.address == ip("fd00:1:2:3::"))
        #expect(m.description == "fd00:1:2:3::/64")
        #expect(m.family == .v6)

        #expect(IPNetwork("10.1.2.3/32")?.address == ip("10.1.2.3"))
        #expect(IPNetwork("10.1.2.3/0")?.address == ip("0.0.0.0"))
        #expect(IPNetwork("10.1.2.255/25")?.address == ip("10.1.2.128"))
        #expect(IPNetwork("fd00::ffff/127")?.address == ip("fd00::fffe"))
    }

    @Test(arguments: [
        "10.0.0.0", "10.0.0.0/", "10.0.0.0/33", "10.0.0.0/-1", "10.0.0.0/+8", "/8", "10.0.0.0/8/8", "10.0.0.0/ 8",
        "10.0.0/8", "fd00::/129", "fd00::", "fd00::/x", "", "10.0.0.0/８",
    ])
    func rejects(text: String) {
        #expect(IPNetwork(text) == nil, "\"\(text)\" should not parse")
        #expect(IPInterfaceAddress(text) == nil, "\"\(text)\" should not parse")
    }

    @Test func masksForEveryPrefixLength() throws {
        for p in 0...32 {
            let n = try #require(IPNetwork("255.255.255.255/\(p)"))
            let expected: UInt128 = p == 0 ? 0 : (UInt128(0xffff_ffff) << UInt128(32 - p)) & 0xffff_ffff
            #expect(n.address.value == expected, "/\(p)")
            #expect(n.size == UInt128(1) << UInt128(32 - p), "/\(p)")
            #expect(n.last == ip("255.255.255.255"), "/\(p)")
        }
        for p in 0...128 {
            let n = try #require(IPNetwork("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/\(p)"))
            let expected: UInt128 = p == 0 ? 0 : UInt128.max << UInt128(128 - p)
            #expect(n.address.value == expected, "/\(p)")
            #expect(n.last.value == .max, "/\(p)")
        }
    }

    @Test func containsChecksPrefixAndFamily() {
        let n = net("10.1.0.0/16")
        #expect(n.contains(ip("10.1.0.0")))
        #expect(n.contains(ip("10.1.255.255")))
        #expect(n.contains(ip("10.1.7.9")))
        #expect(!n.contains(ip("10.2.0.0")))
        #expect(!n.contains(ip("10.0.255.255")))
        // Same low 32 bits but IPv6: not inside an IPv4 network.
        #expect(!n.contains(ip("::a01:5")))
        #expect(IPNetwork.defaultV4.contains(ip("203.0.113.9")))
        #expect(!IPNetwork.defaultV4.contains(ip("::1")))
        #expect(IPNetwork.defaultV6.contains(ip("fd00::1")))
        #expect(!IPNetwork.defaultV6.contains(ip("0.0.0.0")))
        let six = net("fd00:22::/64")
        #expect(six.contains(ip("fd00:22::ffff:ffff:ffff:ffff")))
        #expect(!six.contains(ip("fd00:22:0:1::")))
        #expect(net("10.0.0.5/32").contains(ip("10.0.0.5")))
        #expect(!net("10.0.0.5/32").contains(ip("10.0.0.6")))
    }

    @Test func overlaps() {
        #expect(net("10.0.0.0/8").overlaps(net("10.1.0.0/16")))
        #expect(net("10.1.0.0/16").overlaps(net("10.0.0.0/8")))
        #expect(net("10.1.0.0/16").overlaps(net("10.1.0.0/16")))
        #expect(!net("10.0.0.0/16").overlaps(net("10.1.0.0/16")))
        #expect(!net("10.0.0.0/25").overlaps(net("10.0.0.128/25")))
        #expect(!net("0.0.0.0/0").overlaps(net("::/0")))
        #expect(net("fd00::/48").overlaps(net("fd00:0:0:5::/64")))
        #expect(!net("fd00::/64").overlaps(net("fd00:0:0:1::/64")))
    }

    @Test func lastAndSize() {
        #expect(net("10.1.0.0/16").last == ip("10.1.255.255"))
        #expect(net("10.1.0.0/16").size == 65536)
        #expect(net("10.0.0.0/24").size == 256)
        #expect(net("10.0.0.7/32").last == ip("10.0.0.7"))
        #expect(net("10.0.0.7/32").size == 1)
        #expect(net("0.0.0.0/0").last == ip("255.255.255.255"))
        #expect(net("0.0.0.0/0").size == UInt128(1) << 32)
        #expect(net("fd00::/64").last == ip("fd00::ffff:ffff:ffff:ffff"))
        #expect(net("fd00::/64").size == UInt128(1) << 64)
        #expect(net("fd00::/120").last == ip("fd00::ff"))
        #expect(net("::/1").size == UInt128(1) << 127)
        #expect(net("::/0").last == ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"))
        #expect(net("::/0").size == .max) // saturates
        #expect(net("fd00::1/128").size == 1)
        #expect(net("10.0.0.0/24").first == ip("10.0.0.0"))
    }

    @Test func interfaceAddressKeepsHostPart() throws {
        let a = try #require(IPInterfaceAddress("10.1.2.3/24"))
        #expect(a.address == ip("10.1.2.3"))
        #expect(a.prefixLength == 24)
        #expect(a.description == "10.1.2.3/24")
        #expect(a.network == net("10.1.2.0/24"))
        #expect(a.network.description == "10.1.2.0/24")

        let b = try #require(IPInterfaceAddress("FD00:22::5/64"))
        #expect(b.address == ip("fd00:22::5"))
        #expect(b.description == "fd00:22::5/64")
        #expect(b.network == net("fd00:22::/64"))

        #expect(IPInterfaceAddress("10.1.2.3/33") == nil)
        #expect(IPInterfaceAddress("fd00::1/128")?.prefixLength == 128)
        #expect(IPInterfaceAddress(address: ip("10.0.0.9"), prefixLength: 8).network == net("10.0.0.0/8"))
    }

    @Test func defaults() {
        #expect(IPNetwork.defaultV4.description == "0.0.0.0/0")
        #expect(IPNetwork.defaultV6.description == "::/0")
    }
}
