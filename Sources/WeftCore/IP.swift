/// IP addresses and networks, IPv4 and IPv6, as plain values.
///
/// One type for both families keeps allocation and routing code family-agnostic: the value
/// is held in a `UInt128` (IPv4 in the low 32 bits), so ranges are integer arithmetic.

public enum IPFamily: Sendable, Hashable, CustomStringConvertible {
    case v4, v6
    public var bitWidth: Int { self == .v4 ? 32 : 128 }
    public var description: String { self == .v4 ? "IPv4" : "IPv6" }
    /// The CNI 0.3/0.4 `ips[].version` string.
    public var cniVersionString: String { self == .v4 ? "4" : "6" }
}

public struct IPAddress: Sendable, Hashable, Comparable, CustomStringConvertible {
    public let family: IPFamily
    public let value: UInt128

    public init(family: IPFamily, value: UInt128) {
        self.family = family
        self.value = family == .v4 ? value & 0xffff_ffff : value
    }

    /// Network-order bytes (4 or 16).
    public init?(bytes: [UInt8]) {
        guard bytes.count == 4 || bytes.count == 16 else { return nil }
        var v: UInt128 = 0
        for b in bytes { v = (v << 8) | UInt128(b) }
        self.init(family: bytes.count == 4 ? .v4 : .v6, value: v)
    }

    public var bytes: [UInt8] {
        let n = family == .v4 ? 4 : 16
        return (0..<n).map { UInt8(truncatingIfNeeded: value >> UInt128(8 * (n - 1 - $0))) }
    }

    public init?(_ text: some StringProtocol) {
        let s = String(text)
        if s.contains(":") {
            guard let v = IPAddress.parseV6(s) else { return nil }
            self.init(family: .v6, value: v)
        } else {
            guard let v = IPAddress.parseV4(s) else { return nil }
            self.init(family: .v4, value: UInt128(v))
        }
    }

    public static func < (a: IPAddress, b: IPAddress) -> Bool {
        a.family == b.family ? a.value < b.value : a.family == .v4
    }

    /// The address `n` after this one, or nil past the end of the family's space.
    public func advanced(by n: Int) -> IPAddress? {
        let max: UInt128 = family == .v4 ? 0xffff_ffff : .max
        // n.magnitude: -Int.min is not an Int. Compare against the room left, never `max - d`,
        // which underflows when the step is wider than the IPv4 space.
        let d = UInt128(n.magnitude)
        if n >= 0 {
            guard d <= max - value else { return nil }
            return IPAddress(family: family, value: value + d)
        }
        guard value >= d else { return nil }
        return IPAddress(family: family, value: value - d)
    }

    public var isLinkLocal: Bool {
        family == .v4 ? (value >> 16) == 0xa9fe : (value >> 118) == 0x3fa
    }

    public var description: String {
        family == .v4 ? IPAddress.formatV4(UInt32(value)) : IPAddress.formatV6(value)
    }

    // MARK: parsing and formatting

    static func parseV4(_ s: String) -> UInt32? {
        let parts = s.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var v: UInt32 = 0
        for p in parts {
            // Reject leading zeros ("010") as Go's net.ParseIP does: they are ambiguous (octal).
            guard !p.isEmpty, p.count <= 3, p.allSatisfy(\.isASCII), p.allSatisfy(\.isNumber),
                  p.count == 1 || p.first != "0", let o = UInt32(p), o <= 255 else { return nil }
            v = (v << 8) | o
        }
        return v
    }

    static func parseV6(_ s: String) -> UInt128? {
        var str = Substring(s)
        var tailV4: UInt32?
        // An embedded IPv4 tail (::ffff:1.2.3.4) counts as two groups.
        if let lastColon = str.lastIndex(of: ":"), str[lastColon...].contains(".") {
            guard let v4 = parseV4(String(str[str.index(after: lastColon)...])) else { return nil }
            tailV4 = v4
            str = str[...lastColon]
            if str.hasSuffix(":") && !str.hasSuffix("::") { str = str.dropLast() }
        }
        var halves: [String] = []
        if let r = str.firstRange(of: "::") {
            halves = [String(str[..<r.lowerBound]), String(str[r.upperBound...])]
            guard !halves[1].contains("::") else { return nil }
        } else {
            halves = [String(str)]
        }
        func groups(_ h: String) -> [UInt16]? {
            if h.isEmpty { return [] }
            var out: [UInt16] = []
            for g in h.split(separator: ":", omittingEmptySubsequences: false) {
                // Hex digits only: UInt16(_:radix:) alone would also take a sign ("+1", "-0").
                guard !g.isEmpty, g.count <= 4, g.allSatisfy(\.isHexDigit),
                      let n = UInt16(g, radix: 16) else { return nil }
                out.append(n)
            }
            return out
        }
        guard let head = groups(halves[0]) else { return nil }
        let tail = halves.count == 2 ? groups(halves[1]) : []
        guard let tail else { return nil }
        var all = head
        let v4Groups = tailV4 == nil ? 0 : 2
        let total = head.count + tail.count + v4Groups
        if halves.count == 2 {
            guard total < 8 else { return nil }
            all += Array(repeating: 0, count: 8 - total)
        } else {
            guard total == 8 else { return nil }
        }
        all += tail
        if let t = tailV4 { all += [UInt16(t >> 16), UInt16(t & 0xffff)] }
        return all.reduce(UInt128(0)) { ($0 << 16) | UInt128($1) }
    }

    static func formatV4(_ v: UInt32) -> String {
        "\(v >> 24).\((v >> 16) & 0xff).\((v >> 8) & 0xff).\(v & 0xff)"
    }

    /// RFC 5952: lowercase, longest run (≥ 2) of zero groups compressed, first run on a tie;
    /// IPv4-mapped addresses (::ffff:0:0/96) in mixed notation, "::ffff:1.2.3.4" (§5).
    static func formatV6(_ v: UInt128) -> String {
        if v >> 32 == 0xffff { return "::ffff:" + formatV4(UInt32(truncatingIfNeeded: v)) }
        let g = (0..<8).map { UInt16(truncatingIfNeeded: v >> UInt128(16 * (7 - $0))) }
        var bestStart = -1, bestLen = 0, i = 0
        while i < 8 {
            if g[i] == 0 {
                var j = i
                while j < 8 && g[j] == 0 { j += 1 }
                if j - i > bestLen && j - i >= 2 { bestStart = i; bestLen = j - i }
                i = j
            } else { i += 1 }
        }
        func hex(_ r: ArraySlice<UInt16>) -> String { r.map { String($0, radix: 16) }.joined(separator: ":") }
        if bestStart < 0 { return hex(g[...]) }
        return hex(g[0..<bestStart]) + "::" + hex(g[(bestStart + bestLen)...])
    }
}

/// An address with a prefix length, as written in CNI results ("10.1.0.5/24"): the host part
/// is kept. `network` gives the masked prefix.
public struct IPInterfaceAddress: Sendable, Hashable, CustomStringConvertible {
    public let address: IPAddress
    public let prefixLength: Int

    public init(address: IPAddress, prefixLength: Int) {
        self.address = address
        self.prefixLength = prefixLength
    }

    public init?(_ text: some StringProtocol) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let a = IPAddress(parts[0]),
              parts[1].allSatisfy(\.isNumber), let p = Int(parts[1]), p >= 0, p <= a.family.bitWidth
        else { return nil }
        self.init(address: a, prefixLength: p)
    }

    public var network: IPNetwork { IPNetwork(containing: address, prefixLength: prefixLength) }
    public var description: String { "\(address)/\(prefixLength)" }
}

/// A CIDR prefix. Always held in canonical (masked) form.
public struct IPNetwork: Sendable, Hashable, CustomStringConvertible {
    public let address: IPAddress
    public let prefixLength: Int

    public init(containing a: IPAddress, prefixLength: Int) {
        let mask = IPNetwork.mask(family: a.family, prefixLength: prefixLength)
        self.address = IPAddress(family: a.family, value: a.value & mask)
        self.prefixLength = prefixLength
    }

    /// Parses "10.0.0.0/16". Like Go's net.ParseCIDR, host bits are allowed and masked off.
    public init?(_ text: some StringProtocol) {
        guard let i = IPInterfaceAddress(text) else { return nil }
        self = i.network
    }

    public var family: IPFamily { address.family }
    public var first: IPAddress { address }
    public var last: IPAddress {
        let hostMask = ~IPNetwork.mask(family: family, prefixLength: prefixLength)
        let width: UInt128 = family == .v4 ? 0xffff_ffff : .max
        return IPAddress(family: family, value: address.value | (hostMask & width))
    }
    /// Number of addresses, saturating at UInt128.max.
    public var size: UInt128 {
        let hostBits = family.bitWidth - prefixLength
        return hostBits >= 128 ? .max : (UInt128(1) << UInt128(hostBits))
    }

    public func contains(_ a: IPAddress) -> Bool {
        a.family == family && (a.value & IPNetwork.mask(family: family, prefixLength: prefixLength)) == address.value
    }

    public func overlaps(_ o: IPNetwork) -> Bool {
        family == o.family && (contains(o.address) || o.contains(address))
    }

    public var description: String { "\(address)/\(prefixLength)" }

    static func mask(family: IPFamily, prefixLength: Int) -> UInt128 {
        guard prefixLength > 0 else { return 0 }
        let width = family.bitWidth
        let ones: UInt128 = width == 128 ? .max : (UInt128(1) << UInt128(width)) - 1
        return (ones >> UInt128(width - prefixLength)) << UInt128(width - prefixLength) & ones
    }

    public static let defaultV4 = IPNetwork("0.0.0.0/0")!
    public static let defaultV6 = IPNetwork("::/0")!
}
