import CWeftLinux

/// Builds one netlink request: header, fixed family struct, then attributes (nested allowed).
/// Lengths are patched in when a nest closes, so callers write attributes in order.
struct NetlinkRequest {
    private(set) var bytes: [UInt8] = []
    private var nests: [Int] = []

    /// - ack: ask for an ACK; off in nf_tables batches, where only errors are answered.
    init(type: some BinaryInteger, flags: some BinaryInteger, ack: Bool = true) {
        bytes.reserveCapacity(256)
        append(UInt32(0))                    // nlmsg_len, patched in `finish`
        append(UInt16(truncatingIfNeeded: type))
        append(UInt16(truncatingIfNeeded: k(flags) | NLM_F_REQUEST | (ack ? NLM_F_ACK : 0)))
        append(UInt32(0))                    // seq, set by the socket
        append(UInt32(0))                    // pid: kernel fills
    }

    mutating func append<T: FixedWidthInteger>(_ v: T) {
        withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) }
    }

    /// Appends a C struct as raw bytes (ifinfomsg, ifaddrmsg, rtmsg, ndmsg).
    mutating func appendStruct<T>(_ s: T) {
        withUnsafeBytes(of: s) { bytes.append(contentsOf: $0) }
        pad()
    }

    private mutating func pad() { while bytes.count % 4 != 0 { bytes.append(0) } }

    mutating func attr(_ type: some BinaryInteger, _ payload: [UInt8]) {
        append(UInt16(4 + payload.count))
        append(UInt16(truncatingIfNeeded: type))
        bytes.append(contentsOf: payload)
        pad()
    }

    mutating func attr(_ type: some BinaryInteger, string s: String) { attr(type, Array(s.utf8) + [0]) }
    mutating func attr(_ type: some BinaryInteger, u8 v: UInt8) { attr(type, [v]) }
    mutating func attr(_ type: some BinaryInteger, u16 v: UInt16) { attr(type, withUnsafeBytes(of: v.littleEndian, Array.init)) }
    mutating func attr(_ type: some BinaryInteger, u32 v: UInt32) { attr(type, withUnsafeBytes(of: v.littleEndian, Array.init)) }
    mutating func attr(_ type: some BinaryInteger, be16 v: UInt16) { attr(type, withUnsafeBytes(of: v.bigEndian, Array.init)) }
    mutating func attr(_ type: some BinaryInteger, be32 v: UInt32) { attr(type, withUnsafeBytes(of: v.bigEndian, Array.init)) }
    mutating func attr(_ type: some BinaryInteger, be64 v: UInt64) { attr(type, withUnsafeBytes(of: v.bigEndian, Array.init)) }

    /// `flagged` sets NLA_F_NESTED; iproute2 leaves it off except where the kernel looks at it.
    mutating func beginNest(_ type: some BinaryInteger, flagged: Bool = false) {
        nests.append(bytes.count)
        append(UInt16(0))
        append(UInt16(truncatingIfNeeded: type) | (flagged ? UInt16(NLA_F_NESTED) : 0))
    }

    mutating func endNest() {
        let start = nests.removeLast()
        precondition(bytes.count - start <= Int(UInt16.max), "netlink attribute of \(bytes.count - start) bytes: split it (the length is 16 bits)")
        let len = UInt16(bytes.count - start)
        bytes[start] = UInt8(len & 0xff)
        bytes[start + 1] = UInt8(len >> 8)
    }

    /// Closes the message with `seq`; returns the wire bytes.
    mutating func finish(seq: UInt32) -> [UInt8] {
        precondition(nests.isEmpty, "unclosed netlink nest")
        let len = UInt32(bytes.count)
        for i in 0..<4 { bytes[i] = UInt8(truncatingIfNeeded: len >> (8 * UInt32(i))) }
        for i in 0..<4 { bytes[8 + i] = UInt8(truncatingIfNeeded: seq >> (8 * UInt32(i))) }
        return bytes
    }

    /// `finish(seq:)` appended to `wire`, the message's own bytes given up (a batch of a full
    /// sync is hundreds of megabytes of messages: each is freed once it is on the wire).
    mutating func finish(seq: UInt32, into wire: inout [UInt8]) {
        wire += finish(seq: seq)
        bytes = []
    }
}

/// A received message: its type and payload (after the nlmsghdr).
struct NetlinkMessage {
    var type: UInt16
    var flags: UInt16
    var seq: UInt32
    var payload: ArraySlice<UInt8>

    /// Reads a fixed struct at the start of the payload.
    func header<T>(_: T.Type) -> T? {
        guard payload.count >= MemoryLayout<T>.size else { return nil }
        return payload.withUnsafeBytes { $0.loadUnaligned(as: T.self) }
    }

    /// Attributes following a fixed struct of `T`'s size.
    func attributes<T>(after _: T.Type) -> NetlinkAttributes {
        let off = (MemoryLayout<T>.size + 3) & ~3
        guard payload.count >= off else { return NetlinkAttributes(bytes: []) }
        return NetlinkAttributes(bytes: payload.dropFirst(off))
    }
}

/// A flat view of rtattr TLVs; `nested` descends.
struct NetlinkAttributes {
    var items: [(type: UInt16, data: ArraySlice<UInt8>)] = []

    init(bytes: ArraySlice<UInt8>) {
        var i = bytes.startIndex
        while i + 4 <= bytes.endIndex {
            let len = Int(bytes[i]) | Int(bytes[i + 1]) << 8
            let type = (UInt16(bytes[i + 2]) | UInt16(bytes[i + 3]) << 8) & 0x3fff // NLA_TYPE_MASK: drop NLA_F_NESTED and NLA_F_NET_BYTEORDER
            guard len >= 4, i + len <= bytes.endIndex else { break }
            items.append((type, bytes[(i + 4)..<(i + len)]))
            i += (len + 3) & ~3
        }
    }

    subscript(_ type: some BinaryInteger) -> ArraySlice<UInt8>? { items.first { $0.type == UInt16(truncatingIfNeeded: type) }?.data }

    func string(_ t: some BinaryInteger) -> String? {
        guard let d = self[t] else { return nil }
        return String(decoding: d.prefix { $0 != 0 }, as: UTF8.self)
    }
    func u32(_ t: some BinaryInteger) -> UInt32? {
        guard let d = self[t], d.count >= 4 else { return nil }
        return d.withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) }
    }
    func u8(_ t: some BinaryInteger) -> UInt8? { self[t]?.first }
    func nested(_ t: some BinaryInteger) -> NetlinkAttributes? { self[t].map { NetlinkAttributes(bytes: $0) } }
}

/// Kernel constants arrive as #define ints, anonymous-enum Ints or named C enums depending on
/// the header; `k` turns any of them into the Int32 netlink wants.
@inline(__always) func k(_ v: some BinaryInteger) -> Int32 { Int32(truncatingIfNeeded: v) }
@inline(__always) func k<T: RawRepresentable>(_ v: T) -> Int32 where T.RawValue: BinaryInteger { Int32(truncatingIfNeeded: v.rawValue) }
