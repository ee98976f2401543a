import CWeftLinux
import WeftCore
#if canImport(Glibc)
import Glibc
#endif

/// Writes changes to an `inet` table as raw nf_tables netlink batches: one batch is one
/// transaction, as a script through libnftables is, but nothing is read first. libnftables
/// fills a cache of the whole ruleset before each script, and the kernel answers a dump of
/// chains in time quadratic in their number: 1.2 s for one element at 110,000 chains. Chains,
/// rules, sets and elements are all referred to by name, so no cache is needed. The socket
/// belongs to the network namespace of the thread that makes the first write.
public protocol NFTablesOpsWriter: AnyObject {
    /// Applies `ops` (to `inet` tables) in one transaction: all of them or, on an error, none.
    func apply(_ ops: [ServiceRules.TableOp]) throws(NFTablesError)
}

extension NFTablesOpsWriter {
    public func apply(_ ops: [ServiceRules.Op], table: String) throws(NFTablesError) {
        try apply(ops.map { ServiceRules.TableOp(table: table, op: $0) })
    }
}

public final class NFTablesNetlink: NFTablesOpsWriter {
    private var socket: NetlinkSocket?

    public init() {}

    public func apply(_ ops: [ServiceRules.TableOp]) throws(NFTablesError) {
        guard !ops.isEmpty else { return }
        var messages: [NetlinkRequest] = [], from: [Int] = []
        for (i, op) in ops.enumerated() {
            let m = NFTMessages.encode(op.op, table: op.table, id: UInt32(i + 1))
            messages += m
            from += Array(repeating: i, count: m.count)
        }
        do {
            if socket == nil { socket = try NetlinkSocket(protocol: NETLINK_NETFILTER) }
            try socket!.sendBatch(messages) { ops[from[$0]].text.trimmingTrailingNewlines() }
        } catch {
            socket = nil   // nothing stale from this batch can reach the next one
            throw NFTablesError(message: "\(error)")
        }
    }
}

/// An nf_tables expression as the kernel takes it (what `nft --debug=netlink` prints).
enum NFTExpression {
    case meta(key: Int32, into: UInt32)
    case setMeta(key: Int32, from: UInt32)
    /// reg = (reg & mask) ^ xor, over `mask.count` bytes.
    case maskXor(UInt32, mask: [UInt8], xor: [UInt8])
    case equals(UInt32, [UInt8])
    /// Bytes of the network header.
    case networkHeader(offset: UInt32, length: UInt32, into: UInt32)
    case load([UInt8], into: UInt32)
    case verdict(Int32, chain: String?)
    /// Looks the register up in a set; into the verdict register for a verdict map.
    case lookup(set: String, from: UInt32, verdictMap: Bool)
    /// Adds or refreshes the register's value in a dynamic set.
    case update(set: String, from: UInt32)
    case random(modulus: UInt32, into: UInt32)
    case dnat(family: Int32, address: UInt32, port: UInt32)
}

/// Netlink messages for the services table's operations.
enum NFTMessages {
    static let reg1: UInt32 = 1, reg2: UInt32 = 2, verdictReg: UInt32 = 0

    static func message(_ type: Int32, flags: Int32 = 0) -> NetlinkRequest {
        var m = NetlinkRequest(type: (k(NFNL_SUBSYS_NFTABLES) << 8) | type, flags: flags, ack: false)
        m.append(UInt8(NFPROTO_INET))   // nfgenmsg: family, version, res_id
        m.append(UInt8(NFNETLINK_V0))
        m.append(UInt16(0))
        return m
    }

    /// - id: unique in the batch (the kernel wants an ID on every new set).
    static func encode(_ op: ServiceRules.Op, table: String, id: UInt32) -> [NetlinkRequest] {
        switch op {
        case .addChain(let name):
            var m = message(k(NFT_MSG_NEWCHAIN), flags: k(NLM_F_CREATE))
            m.attr(k(NFTA_CHAIN_TABLE), string: table)
            m.attr(k(NFTA_CHAIN_NAME), string: name)
            return [m]
        case .deleteChain(let name):
            var m = message(k(NFT_MSG_DELCHAIN))
            m.attr(k(NFTA_CHAIN_TABLE), string: table)
            m.attr(k(NFTA_CHAIN_NAME), string: name)
            return [m]
        case .flushChain(let name):
            var m = message(k(NFT_MSG_DELRULE))   // no handle: every rule of the chain
            m.attr(k(NFTA_RULE_TABLE), string: table)
            m.attr(k(NFTA_RULE_CHAIN), string: name)
            return [m]
        case .addRule(let chain, let rule):
            var m = message(k(NFT_MSG_NEWRULE), flags: k(NLM_F_CREATE) | k(NLM_F_APPEND))
            m.attr(k(NFTA_RULE_TABLE), string: table)
            m.attr(k(NFTA_RULE_CHAIN), string: chain)
            m.beginNest(k(NFTA_RULE_EXPRESSIONS), flagged: true)
            for e in expressions(rule) { append(e, to: &m) }
            m.endNest()
            return [m]
        case .addSet(let name, let kind):
            var m = message(k(NFT_MSG_NEWSET), flags: k(NLM_F_CREATE))
            m.attr(k(NFTA_SET_TABLE), string: table)
            m.attr(k(NFTA_SET_NAME), string: name)
            m.attr(k(NFTA_SET_ID), be32: id)
            switch kind {
            case .picker:
                m.attr(k(NFTA_SET_FLAGS), be32: UInt32(NFT_SET_MAP.rawValue))
                m.attr(k(NFTA_SET_KEY_TYPE), be32: 4)           // nft's integer
                m.attr(k(NFTA_SET_KEY_LEN), be32: 4)
                m.attr(k(NFTA_SET_DATA_TYPE), be32: NFT_DATA_VERDICT.rawValue)
                m.attr(k(NFTA_SET_DATA_LEN), be32: 0)
                m.attr(k(NFTA_SET_USERDATA), pickerUserData)
            case .clients(let family, let timeout):
                m.attr(k(NFTA_SET_FLAGS), be32: UInt32(NFT_SET_TIMEOUT.rawValue | NFT_SET_EVAL.rawValue))
                m.attr(k(NFTA_SET_KEY_TYPE), be32: family == .v4 ? 7 : 8)   // nft's ipv4_addr, ipv6_addr
                m.attr(k(NFTA_SET_KEY_LEN), be32: family == .v4 ? 4 : 16)
                m.attr(k(NFTA_SET_TIMEOUT), be64: UInt64(timeout) * 1000)
                m.attr(k(NFTA_SET_USERDATA), [0, 4, 2, 0, 0, 0])   // key byte order: big endian
            }
            return [m]
        case .deleteSet(let name, _):
            var m = message(k(NFT_MSG_DELSET))
            m.attr(k(NFTA_SET_TABLE), string: table)
            m.attr(k(NFTA_SET_NAME), string: name)
            return [m]
        case .addElements(let map, let items):
            return chunks(items.sorted { $0.key.text < $1.key.text }, size: { item in
                let chain: Int
                switch item.value {
                case .goto(let name): chain = name.utf8.count
                case .drop: chain = 0
                }
                return 64 + chain + bytes(item.key).count
            }) { chunk in
                var m = message(k(NFT_MSG_NEWSETELEM), flags: k(NLM_F_CREATE))
                m.attr(k(NFTA_SET_ELEM_LIST_TABLE), string: table)
                m.attr(k(NFTA_SET_ELEM_LIST_SET), string: map)
                m.beginNest(k(NFTA_SET_ELEM_LIST_ELEMENTS), flagged: true)
                for (key, verdict) in chunk {
                    m.beginNest(k(NFTA_LIST_ELEM), flagged: true)
                    m.beginNest(k(NFTA_SET_ELEM_KEY), flagged: true)
                    m.attr(k(NFTA_DATA_VALUE), bytes(key))
                    m.endNest()
                    m.beginNest(k(NFTA_SET_ELEM_DATA), flagged: true)
                    switch verdict {
                    case .goto(let chain): verdictData(k(NFT_GOTO), chain: chain, to: &m)
                    case .drop: verdictData(k(NF_DROP), chain: nil, to: &m)
                    }
                    m.endNest()
                    m.endNest()
                }
                m.endNest()
                return m
            }
        case .deleteElements(let map, let keys):
            return chunks(keys, size: { 32 + bytes($0).count }) { chunk in
                var m = message(k(NFT_MSG_DELSETELEM))
                m.attr(k(NFTA_SET_ELEM_LIST_TABLE), string: table)
                m.attr(k(NFTA_SET_ELEM_LIST_SET), string: map)
                m.beginNest(k(NFTA_SET_ELEM_LIST_ELEMENTS), flagged: true)
                for key in chunk {
                    m.beginNest(k(NFTA_LIST_ELEM), flagged: true)
                    m.beginNest(k(NFTA_SET_ELEM_KEY), flagged: true)
                    m.attr(k(NFTA_DATA_VALUE), bytes(key))
                    m.endNest()
                    m.endNest()
                }
                m.endNest()
                return m
            }
        }
    }

    /// Elements in messages whose element list stays well under 64 KiB (a netlink attribute's
    /// length is 16 bits, and the list is one attribute); `size` bounds one element's encoding.
    static func chunks<T>(_ items: [T], size: (T) -> Int, _ make: (ArraySlice<T>) -> NetlinkRequest) -> [NetlinkRequest] {
        var out: [NetlinkRequest] = [], start = 0, bytes = 0
        for (i, item) in items.enumerated() {
            let n = size(item)
            if bytes + n > 48_000, i > start {
                out.append(make(items[start..<i]))
                start = i
                bytes = 0
            }
            bytes += n
        }
        if start < items.count { out.append(make(items[start...])) }
        return out
    }

    /// What nft stores with `typeof numgen random mod 1 : verdict` (key and data byte order and
    /// the typeof expressions), so `nft list` shows the map as it shows one nft made.
    static let pickerUserData: [UInt8] = [
        0x00, 0x04, 0x01, 0x00, 0x00, 0x00, 0x01, 0x04, 0x00, 0x00, 0x00, 0x00, 0x03, 0x1a, 0x00, 0x04,
        0x17, 0x00, 0x00, 0x00, 0x01, 0x12, 0x00, 0x04, 0x01, 0x00, 0x00, 0x00, 0x01, 0x04, 0x01, 0x00,
        0x00, 0x00, 0x02, 0x04, 0x00, 0x00, 0x00, 0x00, 0x04, 0x08, 0x00, 0x04, 0x01, 0x00, 0x00, 0x00,
        0x01, 0x00, 0x06, 0x04, 0x00, 0x00, 0x00, 0x00,
    ]

    static func verdictData(_ code: Int32, chain: String?, to m: inout NetlinkRequest) {
        m.beginNest(k(NFTA_DATA_VERDICT), flagged: true)
        m.attr(k(NFTA_VERDICT_CODE), be32: UInt32(bitPattern: code))
        if let chain { m.attr(k(NFTA_VERDICT_CHAIN), string: chain) }
        m.endNest()
    }

    /// A map key as nft lays it out: each part of a concatenation padded to 4 bytes; numbers in
    /// network order except the random index, which numgen writes in host order.
    static func bytes(_ key: ServiceRules.Key) -> [UInt8] {
        func padded(_ b: [UInt8]) -> [UInt8] { b + Array(repeating: 0, count: (4 - b.count % 4) % 4) }
        switch key {
        case .address(let a, let p, let port): return a.bytes + padded([protocolNumber(p)]) + padded(be16(port))
        case .nodePort(let p, let port): return padded([protocolNumber(p)]) + padded(be16(port))
        case .index(let i): return withUnsafeBytes(of: UInt32(i), Array.init)
        }
    }

    static func be16(_ v: UInt16) -> [UInt8] { [UInt8(v >> 8), UInt8(v & 0xff)] }

    static func protocolNumber(_ p: String) -> UInt8 {
        switch p.uppercased() {
        case "TCP": return UInt8(IPPROTO_TCP)
        case "UDP": return UInt8(IPPROTO_UDP)
        default: return UInt8(IPPROTO_SCTP)
        }
    }

    static func nfproto(_ f: IPFamily) -> UInt8 { UInt8(f == .v4 ? NFPROTO_IPV4 : NFPROTO_IPV6) }

    /// The expressions nft compiles each rule to (in the `inet` family an address match first
    /// checks the packet's family).
    static func expressions(_ rule: ServiceRules.Rule) -> [NFTExpression] {
        func source(_ f: IPFamily) -> [NFTExpression] {
            [.meta(key: k(NFT_META_NFPROTO), into: reg1), .equals(reg1, [nfproto(f)]),
             .networkHeader(offset: f == .v4 ? 12 : 8, length: f == .v4 ? 4 : 16, into: reg1)]
        }
        switch rule {
        case .masqueradeFrom(let a):
            // meta mark set meta mark | bit: the mark is a host-order u32.
            let bit = ServiceRules.masqMarkBit
            return source(a.family) + [.equals(reg1, a.bytes), .meta(key: k(NFT_META_MARK), into: reg1),
                                       .maskXor(reg1, mask: withUnsafeBytes(of: ~bit, Array.init), xor: withUnsafeBytes(of: bit, Array.init)),
                                       .setMeta(key: k(NFT_META_MARK), from: reg1)]
        case .rememberClient(let set, let f):
            return source(f) + [.update(set: set, from: reg1)]
        case .rememberedClient(let set, let f, let chain):
            return source(f) + [.lookup(set: set, from: reg1, verdictMap: false), .verdict(k(NFT_GOTO), chain: chain)]
        case .dnat(let p, let a, let port):
            return [.meta(key: k(NFT_META_L4PROTO), into: reg1), .equals(reg1, [protocolNumber(p)]),
                    .load(a.bytes, into: reg1), .load(be16(port), into: reg2),
                    .dnat(family: a.family == .v4 ? k(NFPROTO_IPV4) : k(NFPROTO_IPV6), address: reg1, port: reg2)]
        case .pickRandom(let n, let map):
            return [.random(modulus: UInt32(n), into: reg1), .lookup(set: map, from: reg1, verdictMap: true)]
        case .jump(let c): return [.verdict(k(NFT_JUMP), chain: c)]
        case .goto(let c): return [.verdict(k(NFT_GOTO), chain: c)]
        case .gotoIfFamily(let f, let c):
            return [.meta(key: k(NFT_META_NFPROTO), into: reg1), .equals(reg1, [nfproto(f)]), .verdict(k(NFT_GOTO), chain: c)]
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
            named("meta") { $0.attr(k(NFTA_META_DREG), be32: into); $0.attr(k(NFTA_META_KEY), be32: UInt32(key)) }
        case .setMeta(let key, let from):
            named("meta") { $0.attr(k(NFTA_META_KEY), be32: UInt32(key)); $0.attr(k(NFTA_META_SREG), be32: from) }
        case .maskXor(let reg, let mask, let xor):
            named("bitwise") {
                $0.attr(k(NFTA_BITWISE_SREG), be32: reg)
                $0.attr(k(NFTA_BITWISE_DREG), be32: reg)
                $0.attr(k(NFTA_BITWISE_LEN), be32: UInt32(mask.count))
                value(k(NFTA_BITWISE_MASK), mask, &$0)
                value(k(NFTA_BITWISE_XOR), xor, &$0)
            }
        case .equals(let reg, let data):
            named("cmp") { $0.attr(k(NFTA_CMP_SREG), be32: reg); $0.attr(k(NFTA_CMP_OP), be32: UInt32(NFT_CMP_EQ.rawValue)); value(k(NFTA_CMP_DATA), data, &$0) }
        case .networkHeader(let offset, let length, let into):
            named("payload") {
                $0.attr(k(NFTA_PAYLOAD_DREG), be32: into)
                $0.attr(k(NFTA_PAYLOAD_BASE), be32: UInt32(NFT_PAYLOAD_NETWORK_HEADER.rawValue))
                $0.attr(k(NFTA_PAYLOAD_OFFSET), be32: offset)
                $0.attr(k(NFTA_PAYLOAD_LEN), be32: length)
            }
        case .load(let data, let into):
            named("immediate") { $0.attr(k(NFTA_IMMEDIATE_DREG), be32: into); value(k(NFTA_IMMEDIATE_DATA), data, &$0) }
        case .verdict(let code, let chain):
            named("immediate") {
                $0.attr(k(NFTA_IMMEDIATE_DREG), be32: verdictReg)
                $0.beginNest(k(NFTA_IMMEDIATE_DATA), flagged: true)
                verdictData(code, chain: chain, to: &$0)
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
                $0.attr(k(NFTA_DYNSET_OP), be32: UInt32(NFT_DYNSET_OP_UPDATE.rawValue))
                $0.attr(k(NFTA_DYNSET_SREG_KEY), be32: from)
            }
        case .random(let modulus, let into):
            named("numgen") {
                $0.attr(k(NFTA_NG_DREG), be32: into)
                $0.attr(k(NFTA_NG_MODULUS), be32: modulus)
                $0.attr(k(NFTA_NG_TYPE), be32: UInt32(NFT_NG_RANDOM.rawValue))
                $0.attr(k(NFTA_NG_OFFSET), be32: 0)
            }
        case .dnat(let family, let address, let port):
            named("nat") {
                $0.attr(k(NFTA_NAT_TYPE), be32: UInt32(NFT_NAT_DNAT.rawValue))
                $0.attr(k(NFTA_NAT_FAMILY), be32: UInt32(family))
                $0.attr(k(NFTA_NAT_REG_ADDR_MIN), be32: address)
                $0.attr(k(NFTA_NAT_REG_PROTO_MIN), be32: port)
                $0.attr(k(NFTA_NAT_FLAGS), be32: 2)   // NF_NAT_RANGE_PROTO_SPECIFIED
            }
        }
    }
}
