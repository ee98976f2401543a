import CWeftLinux
import WeftCore
#if canImport(Glibc)
import Glibc
#endif

/// Writes transactions of the typed nftables layer (`NFT.Op`s on `inet` tables) as raw
/// nf_tables netlink batches: one batch is one transaction, as a script through libnftables is,
/// but nothing is read first. libnftables fills a cache of the whole ruleset before each
/// script, and the kernel answers a dump of chains in time quadratic in their number: 1.2 s for
/// one element at 110,000 chains. Chains, rules, sets and elements are all referred to by name,
/// so no cache is needed. The socket belongs to the network namespace of the thread that makes
/// the first write.
public protocol NFTablesOpsWriter: AnyObject {
    /// Applies `ops` in one transaction: all of them or, on an error, none.
    func apply(_ ops: [NFT.Op]) throws(NFTablesError)
}

public final class NFTablesNetlink: NFTablesOpsWriter {
    private var socket: NetlinkSocket?

    public init() {}

    public func apply(_ ops: [NFT.Op]) throws(NFTablesError) {
        guard !ops.isEmpty else { return }
        var messages: [NetlinkRequest] = [], from: [Int] = []
        for (i, op) in ops.enumerated() {
            let m = try NFTMessages.encode(op, id: UInt32(i + 1))
            messages += m
            from += Array(repeating: i, count: m.count)
        }
        do {
            if socket == nil { socket = try NetlinkSocket(protocol: NETLINK_NETFILTER) }
            try socket!.sendBatch(consume messages) { NFTMessages.describe(ops[from[$0]]) }
        } catch {
            socket = nil   // nothing stale from this batch can reach the next one
            throw NFTablesError(message: "\(error)")
        }
    }
}

@inline(__always) private func u(_ v: some BinaryInteger) -> UInt32 { UInt32(truncatingIfNeeded: v) }
@inline(__always) private func u<T: RawRepresentable>(_ v: T) -> UInt32 where T.RawValue: BinaryInteger { UInt32(truncatingIfNeeded: v.rawValue) }

/// Netlink messages for the typed layer's operations.
enum NFTMessages {
    static func message(_ type: Int32, flags: Int32 = 0) -> NetlinkRequest {
        var m = NetlinkRequest(type: (k(NFNL_SUBSYS_NFTABLES) << 8) | type, flags: flags, ack: false)
        m.append(UInt8(NFPROTO_INET))   // nfgenmsg: family, version, res_id
        m.append(UInt8(NFNETLINK_V0))
        m.append(UInt16(0))
        return m
    }

    /// An operation as an error names it: its nft text, cut short for long element lists.
    static func describe(_ op: NFT.Op) -> String {
        let t = NFT.text(op)
        return t.utf8.count <= 400 ? t : String(t.prefix(400)) + " …"
    }

    /// - id: unique in the batch (the kernel wants an ID on every new set).
    static func encode(_ op: NFT.Op, id: UInt32) throws(NFTablesError) -> [NetlinkRequest] {
        switch op {
        case .addTable(let t):
            var m = message(k(NFT_MSG_NEWTABLE), flags: k(NLM_F_CREATE))
            m.attr(k(NFTA_TABLE_NAME), string: t)
            m.attr(k(NFTA_TABLE_FLAGS), be32: 0)
            return [m]
        case .deleteTable(let t):
            var m = message(k(NFT_MSG_DELTABLE))
            m.attr(k(NFTA_TABLE_NAME), string: t)
            return [m]
        case .addCounter(let t, let name):
            var m = message(k(NFT_MSG_NEWOBJ), flags: k(NLM_F_CREATE))
            m.attr(k(NFTA_OBJ_TABLE), string: t)
            m.attr(k(NFTA_OBJ_NAME), string: name)
            m.attr(k(NFTA_OBJ_TYPE), be32: u(NFT_OBJECT_COUNTER))
            m.beginNest(k(NFTA_OBJ_DATA), flagged: true)
            m.attr(k(NFTA_COUNTER_BYTES), be64: 0)
            m.attr(k(NFTA_COUNTER_PACKETS), be64: 0)
            m.endNest()
            return [m]
        case .addChain(let t, let name, let hook):
            var m = message(k(NFT_MSG_NEWCHAIN), flags: k(NLM_F_CREATE))
            m.attr(k(NFTA_CHAIN_TABLE), string: t)
            m.attr(k(NFTA_CHAIN_NAME), string: name)
            if let hook {
                m.beginNest(k(NFTA_CHAIN_HOOK), flagged: true)
                m.attr(k(NFTA_HOOK_HOOKNUM), be32: hookNumber(hook.point))
                m.attr(k(NFTA_HOOK_PRIORITY), be32: UInt32(bitPattern: hook.priority))
                m.endNest()
                m.attr(k(NFTA_CHAIN_POLICY), be32: u(NF_ACCEPT))
                m.attr(k(NFTA_CHAIN_TYPE), string: hook.kind.rawValue)
            }
            return [m]
        case .deleteChain(let t, let name):
            var m = message(k(NFT_MSG_DELCHAIN))
            m.attr(k(NFTA_CHAIN_TABLE), string: t)
            m.attr(k(NFTA_CHAIN_NAME), string: name)
            return [m]
        case .flushChain(let t, let name):
            var m = message(k(NFT_MSG_DELRULE))   // no handle: every rule of the chain
            m.attr(k(NFTA_RULE_TABLE), string: t)
            m.attr(k(NFTA_RULE_CHAIN), string: name)
            return [m]
        case .addRule(let t, let chain, let rule):
            var m = message(k(NFT_MSG_NEWRULE), flags: k(NLM_F_CREATE) | k(NLM_F_APPEND))
            m.attr(k(NFTA_RULE_TABLE), string: t)
            m.attr(k(NFTA_RULE_CHAIN), string: chain)
            m.beginNest(k(NFTA_RULE_EXPRESSIONS), flagged: true)
            for e in try NFTExpressions.compile(rule) { NFTExpressions.append(e, to: &m) }
            m.endNest()
            if let c = rule.comment { m.attr(k(NFTA_RULE_USERDATA), userData(0, Array(c.utf8) + [0])) }
            return [m]
        case .addSet(let t, let name, let decl):
            return [addSet(t, name, decl, id: id)]
        case .deleteSet(let t, let name, _):
            var m = message(k(NFT_MSG_DELSET))
            m.attr(k(NFTA_SET_TABLE), string: t)
            m.attr(k(NFTA_SET_NAME), string: name)
            return [m]
        case .addElements(let t, let set, let items):
            let sorted = items.keys.sorted { NFT.text($0) < NFT.text($1) }
            return chunks(sorted, size: { 64 + (items[$0]!?.chain?.utf8.count ?? 0) + bytes($0).count }) { chunk in
                elements(k(NFT_MSG_NEWSETELEM), flags: k(NLM_F_CREATE), t, set, chunk) { items[$0]! }
            }
        case .deleteElements(let t, let set, let keys):
            return chunks(keys, size: { 32 + bytes($0).count }) { chunk in
                elements(k(NFT_MSG_DELSETELEM), flags: 0, t, set, chunk) { _ in nil }
            }
        }
    }

    static func hookNumber(_ p: NFT.Hook.Point) -> UInt32 {
        switch p {
        case .prerouting: return u(NF_INET_PRE_ROUTING)
        case .input: return u(NF_INET_LOCAL_IN)
        case .forward: return u(NF_INET_FORWARD)
        case .output: return u(NF_INET_LOCAL_OUT)
        case .postrouting: return u(NF_INET_POST_ROUTING)
        }
    }

    /// nft's data types (its `datatype.h`); a concatenation's type is its parts' types, 6 bits each.
    static let ipv4Type: UInt32 = 7, ipv6Type: UInt32 = 8, protoType: UInt32 = 12, serviceType: UInt32 = 13, integerType: UInt32 = 4

    static func addSet(_ t: String, _ name: String, _ decl: NFT.NamedSet, id: UInt32) -> NetlinkRequest {
        var m = message(k(NFT_MSG_NEWSET), flags: k(NLM_F_CREATE))
        m.attr(k(NFTA_SET_TABLE), string: t)
        m.attr(k(NFTA_SET_NAME), string: name)
        m.attr(k(NFTA_SET_ID), be32: id)
        var flags: UInt32 = decl.isMap ? u(NFT_SET_MAP) : 0
        if decl.timeout != nil { flags |= u(NFT_SET_TIMEOUT) | u(NFT_SET_EVAL) }
        m.attr(k(NFTA_SET_FLAGS), be32: flags)
        // Key type, length, and the byte order nft records for listing it (1: host, 2: network).
        let (type, length, order): (UInt32, UInt32, UInt32)
        switch decl.key {
        case .random: (type, length, order) = (integerType, 4, 1)
        case .address(let f): (type, length, order) = (f == .v4 ? ipv4Type : ipv6Type, f == .v4 ? 4 : 16, 2)
        case .addressProtoPort(let f): (type, length, order) = ((((f == .v4 ? ipv4Type : ipv6Type) << 6) | protoType) << 6 | serviceType, f == .v4 ? 12 : 24, 0)
        case .protoPort: (type, length, order) = ((protoType << 6) | serviceType, 8, 0)
        }
        m.attr(k(NFTA_SET_KEY_TYPE), be32: type)
        m.attr(k(NFTA_SET_KEY_LEN), be32: length)
        if decl.isMap {
            m.attr(k(NFTA_SET_DATA_TYPE), be32: NFT_DATA_VERDICT.rawValue)
            m.attr(k(NFTA_SET_DATA_LEN), be32: 0)
        }
        if let timeout = decl.timeout { m.attr(k(NFTA_SET_TIMEOUT), be64: UInt64(timeout) * 1000) }
        if decl.key == .random {
            m.attr(k(NFTA_SET_USERDATA), pickerUserData)
        } else {
            var ud = userData(0, withUnsafeBytes(of: order, Array.init))   // key byte order
            if decl.isMap { ud += userData(1, [0, 0, 0, 0]) }              // data byte order: a verdict has none
            if let c = decl.comment { ud += userData(7, Array(c.utf8) + [0]) }
            m.attr(k(NFTA_SET_USERDATA), ud)
        }
        return m
    }

    /// One libnftnl user data record: type, length, value.
    static func userData(_ type: UInt8, _ value: [UInt8]) -> [UInt8] { [type, UInt8(value.count)] + value }

    /// One message of set elements: each key, and its verdict where `value` gives one (maps).
    static func elements(_ type: Int32, flags: Int32, _ table: String, _ set: String, _ keys: ArraySlice<NFT.Key>,
                         value: (NFT.Key) -> NFT.Verdict?) -> NetlinkRequest {
        var m = message(type, flags: flags)
        m.attr(k(NFTA_SET_ELEM_LIST_TABLE), string: table)
        m.attr(k(NFTA_SET_ELEM_LIST_SET), string: set)
        m.beginNest(k(NFTA_SET_ELEM_LIST_ELEMENTS), flagged: true)
        for key in keys {
            m.beginNest(k(NFTA_LIST_ELEM), flagged: true)
            m.beginNest(k(NFTA_SET_ELEM_KEY), flagged: true)
            m.attr(k(NFTA_DATA_VALUE), bytes(key))
            m.endNest()
            if let v = value(key) {
                m.beginNest(k(NFTA_SET_ELEM_DATA), flagged: true)
                verdictData(v, to: &m)
                m.endNest()
            }
            m.endNest()
        }
        m.endNest()
        return m
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

    static func verdictData(_ v: NFT.Verdict, to m: inout NetlinkRequest) {
        m.beginNest(k(NFTA_DATA_VERDICT), flagged: true)
        let code: Int32
        switch v {
        case .accept: code = k(NF_ACCEPT)
        case .drop: code = k(NF_DROP)
        case .jump: code = k(NFT_JUMP)
        case .goto: code = k(NFT_GOTO)
        }
        m.attr(k(NFTA_VERDICT_CODE), be32: UInt32(bitPattern: code))
        if let chain = v.chain { m.attr(k(NFTA_VERDICT_CHAIN), string: chain) }
        m.endNest()
    }

    /// A key as nft lays it out: each part of a concatenation padded to 4 bytes; numbers in
    /// network order except the random index, which numgen writes in host order.
    static func bytes(_ key: NFT.Key) -> [UInt8] {
        func padded(_ b: [UInt8]) -> [UInt8] { b + Array(repeating: 0, count: (4 - b.count % 4) % 4) }
        switch key {
        case .address(let a): return a.bytes
        case .addressProtoPort(let a, let p, let port): return a.bytes + padded([p.rawValue]) + padded(be16(port))
        case .protoPort(let p, let port): return padded([p.rawValue]) + padded(be16(port))
        case .index(let i): return withUnsafeBytes(of: UInt32(i), Array.init)
        }
    }

    static func be16(_ v: UInt16) -> [UInt8] { [UInt8(v >> 8), UInt8(v & 0xff)] }
}
