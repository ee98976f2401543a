import CWeftLinux
import WeftCore
#if canImport(Glibc)
import Glibc
#endif

@inline(__always) private func u(_ v: some BinaryInteger) -> UInt32 { UInt32(truncatingIfNeeded: v) }
@inline(__always) private func u<T: RawRepresentable>(_ v: T) -> UInt32 where T.RawValue: BinaryInteger { UInt32(truncatingIfNeeded: v.rawValue) }

/// An nf_tables expression as the kernel takes it (what `nft --debug=netlink` prints).
enum NFTExpression {
    case meta(key: UInt32, into: UInt32)
    case setMeta(key: UInt32, from: UInt32)
    /// reg = (reg & mask) ^ xor, over `mask.count` bytes.
    case maskXor(UInt32, mask: [UInt8], xor: [UInt8])
    case compare(UInt32, equal: Bool, [UInt8])
    /// from ≤ reg ≤ to
    case inRange(UInt32, from: [UInt8], to: [UInt8])
    case payload(base: UInt32, offset: UInt32, length: UInt32, into: UInt32)
    case load([UInt8], into: UInt32)
    case verdict(NFT.Verdict)
    /// Looks the register up in a set; into the verdict register for a verdict map.
    case lookup(set: String, from: UInt32, verdictMap: Bool)
    /// Adds or refreshes the register's value in a dynamic set.
    case update(set: String, from: UInt32)
    case random(modulus: UInt32, into: UInt32)
    case dnat(family: UInt32, address: UInt32, port: UInt32)
    case ct(key: UInt32, into: UInt32)
    case fib(flags: UInt32, result: UInt32, into: UInt32)
    case counter
    case namedCounter(String)
    case limit(perSecond: UInt64, burst: UInt32)
    case log(prefix: String, group: UInt16)
    case masquerade
    case reject(type: UInt32, code: UInt8)
}

/// The expressions nft compiles each statement to (in the `inet` family an address match first
/// checks the packet's family).
enum NFTExpressions {
    /// NFT_REG_1 and the 32-bit registers a concatenation fills after it.
    static let reg1: UInt32 = 1, reg2: UInt32 = 2, verdictReg: UInt32 = 0
    static func reg32(_ i: UInt32) -> UInt32 { u(NFT_REG32_00) + i }

    static func nfproto(_ f: IPFamily) -> UInt8 { UInt8(f == .v4 ? NFPROTO_IPV4 : NFPROTO_IPV6) }

    static func family(_ f: IPFamily) -> [NFTExpression] {
        [.meta(key: u(NFT_META_NFPROTO), into: reg1), .compare(reg1, equal: true, [nfproto(f)])]
    }

    /// The rule so far: the family it has checked (nft checks it once, before the first
    /// address; `nft list` shows a second check as a match of its own).
    struct Context { var family: IPFamily? }

    /// The family check (unless made already) and the address into `into`.
    static func address(_ field: NFT.Field, _ f: IPFamily, into: UInt32 = reg1, _ ctx: inout Context) -> [NFTExpression] {
        let offset: UInt32 = f == .v4 ? (field == .source ? 12 : 16) : (field == .source ? 8 : 24)
        let check = ctx.family == f ? [] : family(f)
        ctx.family = f
        return check + [.payload(base: u(NFT_PAYLOAD_NETWORK_HEADER), offset: offset, length: f == .v4 ? 4 : 16, into: into)]
    }

    static func destinationPort(into: UInt32) -> NFTExpression {
        .payload(base: u(NFT_PAYLOAD_TRANSPORT_HEADER), offset: 2, length: 2, into: into)
    }

    /// `ip daddr . meta l4proto . th dport` into consecutive registers from NFT_REG_1.
    static func destinationProtoPort(_ f: IPFamily, _ ctx: inout Context) -> [NFTExpression] {
        let after: UInt32 = f == .v4 ? 1 : 4   // 32-bit registers the address takes
        return address(.destination, f, &ctx) + [.meta(key: u(NFT_META_L4PROTO), into: reg32(after)), destinationPort(into: reg32(after + 1))]
    }

    static func hostOrder(_ v: UInt32) -> [UInt8] { withUnsafeBytes(of: v, Array.init) }

    static func mask(prefix: Int, bytes: Int) -> [UInt8] {
        (0..<bytes).map { i in
            let bits = max(0, min(8, prefix - i * 8))
            return bits == 0 ? 0 : UInt8(truncatingIfNeeded: 0xff << (8 - bits))
        }
    }

    static func compile(_ rule: NFT.Rule) throws(NFTablesError) -> [NFTExpression] {
        var ctx = Context()
        var out: [NFTExpression] = []
        for s in rule.statements { out += try compile(s, &ctx) }
        return out
    }

    static func compile(_ s: NFT.Statement, _ ctx: inout Context) throws(NFTablesError) -> [NFTExpression] {
        switch s {
        case .family(let f):
            ctx.family = f
            return family(f)
        case .l4proto(let p): return [.meta(key: u(NFT_META_L4PROTO), into: reg1), .compare(reg1, equal: true, [p.rawValue])]
        case .address(let field, let a): return address(field, a.family, &ctx) + [.compare(reg1, equal: true, a.bytes)]
        case .networks(let field, let nets, let negated):
            // Not in any of several: one comparison each. In one of several takes an anonymous
            // interval set, which only libnftables writes here.
            guard nets.count == 1 || negated else {
                throw NFTablesError(message: "`\(NFT.text(s))` (an anonymous set) is not written as netlink; write it through libnftables")
            }
            var out: [NFTExpression] = []
            for n in nets {
                let width = n.family == .v4 ? 4 : 16
                out += address(field, n.family, &ctx)
                if n.prefixLength < width * 8 { out.append(.maskXor(reg1, mask: mask(prefix: n.prefixLength, bytes: width), xor: Array(repeating: 0, count: width))) }
                out.append(.compare(reg1, equal: !negated, n.address.bytes))
            }
            return out
        case .addressIn(let field, let f, let set): return address(field, f, &ctx) + [.lookup(set: set, from: reg1, verdictMap: false)]
        case .destinationProtoPortIn(let f, let set): return destinationProtoPort(f, &ctx) + [.lookup(set: set, from: reg1, verdictMap: false)]
        case .destinationPort(let r):
            let from = NFTMessages.be16(r.lowerBound), to = NFTMessages.be16(r.upperBound)
            return [destinationPort(into: reg1), r.lowerBound == r.upperBound ? .compare(reg1, equal: true, from) : .inRange(reg1, from: from, to: to)]
        case .ctState(let states):
            var bits: UInt32 = 0
            for st in states {
                switch st {
                case .established: bits |= 1 << 1
                case .related: bits |= 1 << 2
                case .new: bits |= 1 << 3
                }
            }
            return [.ct(key: u(NFT_CT_STATE), into: reg1), .maskXor(reg1, mask: hostOrder(bits), xor: hostOrder(0)), .compare(reg1, equal: false, hostOrder(0))]
        case .markHas(let bits):
            return [.meta(key: u(NFT_META_MARK), into: reg1), .maskXor(reg1, mask: hostOrder(bits), xor: hostOrder(0)), .compare(reg1, equal: false, hostOrder(0))]
        case .inputInterface(let name, let negated):
            // A trailing `*` compares the prefix only; a whole name with its padding to IFNAMSIZ.
            let data = name.hasSuffix("*") ? Array(name.dropLast().utf8) : Array(name.utf8) + Array(repeating: 0, count: max(0, 16 - name.utf8.count))
            return [.meta(key: u(NFT_META_IIFNAME), into: reg1), .compare(reg1, equal: !negated, data)]
        case .icmpv6Type(let t):
            return [.meta(key: u(NFT_META_L4PROTO), into: reg1), .compare(reg1, equal: true, [UInt8(IPPROTO_ICMPV6)]),
                    .payload(base: u(NFT_PAYLOAD_TRANSPORT_HEADER), offset: 0, length: 1, into: reg1), .compare(reg1, equal: true, [t.rawValue])]
        case .toLocalAddress:
            return [.fib(flags: u(NFTA_FIB_F_DADDR), result: u(NFT_FIB_RESULT_ADDRTYPE), into: reg1), .compare(reg1, equal: true, hostOrder(u(RTN_LOCAL)))]
        case .sourceRouteMissing:
            return [.fib(flags: u(NFTA_FIB_F_SADDR) | u(NFTA_FIB_F_IIF) | u(NFTA_FIB_F_PRESENT), result: u(NFT_FIB_RESULT_OIF), into: reg1),
                    .compare(reg1, equal: true, [0])]
        case .setMarkBits(let bit):
            return [.meta(key: u(NFT_META_MARK), into: reg1), .maskXor(reg1, mask: hostOrder(~bit), xor: hostOrder(bit)), .setMeta(key: u(NFT_META_MARK), from: reg1)]
        case .flipMarkBits(let bit):
            return [.meta(key: u(NFT_META_MARK), into: reg1), .maskXor(reg1, mask: hostOrder(~0), xor: hostOrder(bit)), .setMeta(key: u(NFT_META_MARK), from: reg1)]
        case .counter: return [.counter]
        case .namedCounter(let n): return [.namedCounter(n)]
        case .limit(let rate, let burst): return [.limit(perSecond: UInt64(rate), burst: UInt32(burst))]
        case .log(let prefix, let group): return [.log(prefix: prefix, group: group)]
        case .addSourceTo(let set, let f): return address(.source, f, &ctx) + [.update(set: set, from: reg1)]
        case .dnat(let a, let port):
            return [.load(a.bytes, into: reg1), .load(NFTMessages.be16(port), into: reg2), .dnat(family: u(a.family == .v4 ? NFPROTO_IPV4 : NFPROTO_IPV6), address: reg1, port: reg2)]
        case .masquerade: return [.masquerade]
        case .reject: return [.reject(type: u(NFT_REJECT_ICMPX_UNREACH), code: UInt8(truncatingIfNeeded: u(NFT_REJECT_ICMPX_PORT_UNREACH)))]
        case .rejectWithTCPReset: return [.reject(type: u(NFT_REJECT_TCP_RST), code: 0)]
        case .lookup(let key, let map):
            let load: [NFTExpression]
            switch key {
            case .address(let field, let f): load = address(field, f, &ctx)
            case .destinationProtoPort(let f): load = destinationProtoPort(f, &ctx)
            case .protoPort: load = [.meta(key: u(NFT_META_L4PROTO), into: reg1), destinationPort(into: reg32(1))]
            case .random(let n): load = [.random(modulus: UInt32(n), into: reg1)]
            }
            return load + [.lookup(set: map, from: reg1, verdictMap: true)]
        case .verdict(let v): return [.verdict(v)]
        }
    }

    static func append(_ e: NFTExpression, to m: inout NetlinkRequest) {
        func named(_ name: String, _ body: (inout NetlinkRequest) -> Void) {
            m.beginNest(k(NFTA_LIST_ELEM), flagged: true)
            m.attr(k(NFTA_EXPR_NAME), string: name)
            m.beginNest(k(NFTA_EXPR_DATA), flagged: true)
            body(&m)
            m.endNest()
            m.endNest()
        }
        func value(_ type: Int32, _ bytes: [UInt8], _ m: inout NetlinkRequest) {
            m.beginNest(type, flagged: true)
            m.attr(k(NFTA_DATA_VALUE), bytes)
            m.endNest()
        }
        switch e {
        case .meta(let key, let into):
            named("meta") { $0.attr(k(NFTA_META_DREG), be32: into); $0.attr(k(NFTA_META_KEY), be32: key) }
        case .setMeta(let key, let from):
            named("meta") { $0.attr(k(NFTA_META_KEY), be32: key); $0.attr(k(NFTA_META_SREG), be32: from) }
        case .maskXor(let reg, let mask, let xor):
            named("bitwise") {
                $0.attr(k(NFTA_BITWISE_SREG), be32: reg)
                $0.attr(k(NFTA_BITWISE_DREG), be32: reg)
                $0.attr(k(NFTA_BITWISE_LEN), be32: UInt32(mask.count))
                value(k(NFTA_BITWISE_MASK), mask, &$0)
                value(k(NFTA_BITWISE_XOR), xor, &$0)
            }
        case .compare(let reg, let equal, let data):
            named("cmp") {
                $0.attr(k(NFTA_CMP_SREG), be32: reg)
                $0.attr(k(NFTA_CMP_OP), be32: equal ? u(NFT_CMP_EQ) : u(NFT_CMP_NEQ))
                value(k(NFTA_CMP_DATA), data, &$0)
            }
        case .inRange(let reg, let from, let to):
            named("range") {
                $0.attr(k(NFTA_RANGE_SREG), be32: reg)
                $0.attr(k(NFTA_RANGE_OP), be32: u(NFT_RANGE_EQ))
                value(k(NFTA_RANGE_FROM_DATA), from, &$0)
                value(k(NFTA_RANGE_TO_DATA), to, &$0)
            }
        case .payload(let base, let offset, let length, let into):
            named("payload") {
                $0.attr(k(NFTA_PAYLOAD_DREG), be32: into)
                $0.attr(k(NFTA_PAYLOAD_BASE), be32: base)
                $0.attr(k(NFTA_PAYLOAD_OFFSET), be32: offset)
                $0.attr(k(NFTA_PAYLOAD_LEN), be32: length)
            }
        case .load(let data, let into):
            named("immediate") { $0.attr(k(NFTA_IMMEDIATE_DREG), be32: into); value(k(NFTA_IMMEDIATE_DATA), data, &$0) }
        case .verdict(let v):
            named("immediate") {
                $0.attr(k(NFTA_IMMEDIATE_DREG), be32: verdictReg)
                $0.beginNest(k(NFTA_IMMEDIATE_DATA), flagged: true)
                NFTMessages.verdictData(v, to: &$0)
                $0.endNest()
            }
        case .lookup(let set, let from, let verdictMap):
            named("lookup") {
                $0.attr(k(NFTA_LOOKUP_SET), string: set)
                $0.attr(k(NFTA_LOOKUP_SREG), be32: from)
                if verdictMap { $0.attr(k(NFTA_LOOKUP_DREG), be32: verdictReg) }
            }
        case .update(let set, let from):
            named("dynset") {
                $0.attr(k(NFTA_DYNSET_SET_NAME), string: set)
                $0.attr(k(NFTA_DYNSET_OP), be32: u(NFT_DYNSET_OP_UPDATE))
                $0.attr(k(NFTA_DYNSET_SREG_KEY), be32: from)
            }
        case .random(let modulus, let into):
            named("numgen") {
                $0.attr(k(NFTA_NG_DREG), be32: into)
                $0.attr(k(NFTA_NG_MODULUS), be32: modulus)
                $0.attr(k(NFTA_NG_TYPE), be32: u(NFT_NG_RANDOM))
                $0.attr(k(NFTA_NG_OFFSET), be32: 0)
            }
        case .dnat(let family, let address, let port):
            named("nat") {
                $0.attr(k(NFTA_NAT_TYPE), be32: u(NFT_NAT_DNAT))
                $0.attr(k(NFTA_NAT_FAMILY), be32: family)
                $0.attr(k(NFTA_NAT_REG_ADDR_MIN), be32: address)
                $0.attr(k(NFTA_NAT_REG_PROTO_MIN), be32: port)
                $0.attr(k(NFTA_NAT_FLAGS), be32: 2)   // NF_NAT_RANGE_PROTO_SPECIFIED
            }
        case .ct(let key, let into):
            named("ct") { $0.attr(k(NFTA_CT_DREG), be32: into); $0.attr(k(NFTA_CT_KEY), be32: key) }
        case .fib(let flags, let result, let into):
            named("fib") { $0.attr(k(NFTA_FIB_DREG), be32: into); $0.attr(k(NFTA_FIB_RESULT), be32: result); $0.attr(k(NFTA_FIB_FLAGS), be32: flags) }
        case .counter:
            named("counter") { $0.attr(k(NFTA_COUNTER_BYTES), be64: 0); $0.attr(k(NFTA_COUNTER_PACKETS), be64: 0) }
        case .namedCounter(let name):
            named("objref") { $0.attr(k(NFTA_OBJREF_IMM_TYPE), be32: u(NFT_OBJECT_COUNTER)); $0.attr(k(NFTA_OBJREF_IMM_NAME), string: name) }
        case .limit(let rate, let burst):
            named("limit") {
                $0.attr(k(NFTA_LIMIT_RATE), be64: rate)
                $0.attr(k(NFTA_LIMIT_UNIT), be64: 1)
                $0.attr(k(NFTA_LIMIT_BURST), be32: burst)
                $0.attr(k(NFTA_LIMIT_TYPE), be32: u(NFT_LIMIT_PKTS))
                $0.attr(k(NFTA_LIMIT_FLAGS), be32: 0)
            }
        case .log(let prefix, let group):
            named("log") { $0.attr(k(NFTA_LOG_GROUP), be16: group); $0.attr(k(NFTA_LOG_PREFIX), string: prefix) }
        case .masquerade:
            named("masq") { _ in }
        case .reject(let type, let code):
            named("reject") { $0.attr(k(NFTA_REJECT_TYPE), be32: type); $0.attr(k(NFTA_REJECT_ICMP_CODE), u8: code) }
        }
    }
}
