/// nftables as typed values, the one description every weft table is written in (services,
/// NetworkPolicy, masquerade): tables with chains (base chains with their hook), named sets and
/// maps with their elements, and rules as lists of typed statements. Nothing here is a string
/// that stands for something else: protocols, address fields, map keys and verdicts are values,
/// so the same rule is rendered as nft text (`NFT.text`, for libnftables and for messages) and
/// encoded as nf_tables netlink expressions (WeftOS' `NFTablesNetlink`) from one definition.
/// Every table is in the `inet` family. Pure.
public enum NFT {}

extension NFT {
    /// A transport protocol, as Kubernetes names it and as nft writes it.
    public enum L4Proto: UInt8, Hashable, Sendable, CaseIterable, CustomStringConvertible {
        case tcp = 6, udp = 17, sctp = 132

        /// From Kubernetes' `TCP`, `UDP`, `SCTP` (any case).
        public init?(kubernetes name: some StringProtocol) {
            switch name.lowercased() {
            case "tcp": self = .tcp
            case "udp": self = .udp
            case "sctp": self = .sctp
            default: return nil
            }
        }

        public var description: String {
            switch self {
            case .tcp: return "tcp"
            case .udp: return "udp"
            case .sctp: return "sctp"
            }
        }
    }

    /// Which address of the packet a match reads.
    public enum Field: Hashable, Sendable {
        case source, destination
        var text: String { self == .source ? "saddr" : "daddr" }
    }

    public enum Verdict: Hashable, Sendable {
        case accept, drop
        case jump(String)
        case goto(String)

        /// The chain it names, if any.
        public var chain: String? {
            switch self {
            case .jump(let c), .goto(let c): return c
            case .accept, .drop: return nil
            }
        }
    }

    public struct Hook: Hashable, Sendable {
        public enum Kind: String, Hashable, Sendable { case filter, nat }
        public enum Point: String, Hashable, Sendable { case prerouting, input, forward, output, postrouting }
        public var kind: Kind
        public var point: Point
        public var priority: Int32
        public init(_ kind: Kind, _ point: Point, priority: Int32) { self.kind = kind; self.point = point; self.priority = priority }
    }

    public struct Chain: Hashable, Sendable {
        /// Set for a base chain (its policy is accept); nil for a chain reached by jumps only.
        public var hook: Hook?
        public var rules: [Rule]
        public init(hook: Hook? = nil, rules: [Rule] = []) { self.hook = hook; self.rules = rules }
    }

    /// What a set's keys are (a concatenation's parts each padded to 4 bytes in the kernel).
    public enum KeyType: Hashable, Sendable {
        /// `ipv4_addr` / `ipv6_addr`
        case address(IPFamily)
        /// `ipv4_addr . inet_proto . inet_service`
        case addressProtoPort(IPFamily)
        /// `inet_proto . inet_service`
        case protoPort
        /// `typeof numgen random mod 1`: the random number a picker draws.
        case random
    }

    /// A named set (plain) or verdict map.
    public struct NamedSet: Hashable, Sendable {
        public var key: KeyType
        /// Elements map to verdicts.
        public var isMap: Bool
        /// Elements added by rules (`update @set`) and expiring after so many seconds.
        public var timeout: Int?
        /// Says what the set holds (shown by `nft list`).
        public var comment: String?
        public init(key: KeyType, isMap: Bool = false, timeout: Int? = nil, comment: String? = nil) {
            self.key = key; self.isMap = isMap; self.timeout = timeout; self.comment = comment
        }
    }

    /// An element's key, shaped as its set's `KeyType`.
    public enum Key: Hashable, Sendable {
        case address(IPAddress)
        case addressProtoPort(IPAddress, NFT.L4Proto, UInt16)
        case protoPort(NFT.L4Proto, UInt16)
        /// A picker's random number.
        case index(Int)
    }

    /// The key a verdict map is looked up by (`… vmap @map`).
    public enum LookupKey: Hashable, Sendable {
        /// `ip saddr`
        case address(Field, IPFamily)
        /// `ip daddr . meta l4proto . th dport`
        case destinationProtoPort(IPFamily)
        /// `meta l4proto . th dport`
        case protoPort
        /// `numgen random mod N`
        case random(modulus: Int)
    }

    public enum CtState: String, Hashable, Sendable { case new, established, related }

    /// The ICMPv6 types of neighbour discovery with the node.
    public enum ICMPv6Type: UInt8, Hashable, Sendable {
        case routerSolicit = 133, neighborSolicit = 135, neighborAdvert = 136
    }

    /// One match or statement of a rule, in the order nft writes it.
    public enum Statement: Hashable, Sendable {
        // Matches.
        /// `meta nfproto ipv4`
        case family(IPFamily)
        /// `meta l4proto tcp`
        case l4proto(L4Proto)
        /// `ip saddr 10.0.0.1`
        case address(Field, IPAddress)
        /// `ip saddr 10.0.0.0/8`, `ip daddr != 10.1.0.0/16`, `ip saddr { a, b }` (at least one network, one family).
        case networks(Field, [IPNetwork], negated: Bool)
        /// `ip saddr @set`
        case addressIn(Field, IPFamily, set: String)
        /// `ip daddr . meta l4proto . th dport @set`
        case destinationProtoPortIn(IPFamily, set: String)
        /// `th dport 80`, `th dport 8000-8080`
        case destinationPort(ClosedRange<UInt16>)
        /// `ct state established,related`
        case ctState([CtState])
        /// `meta mark & 0x4000 != 0`
        case markHas(UInt32)
        /// `iifname "weft*"` (a trailing `*` matches any suffix), `iifname != "…"`
        case inputInterface(String, negated: Bool)
        /// `icmpv6 type nd-neighbor-solicit`
        case icmpv6Type(ICMPv6Type)
        /// `fib daddr type local`: the packet is for an address of this node.
        case toLocalAddress
        /// `fib saddr . iif oif missing`: the source does not route back through the input interface.
        case sourceRouteMissing
        // Statements.
        /// `meta mark set meta mark | 0x4000`
        case setMarkBits(UInt32)
        /// `meta mark set meta mark ^ 0x4000`
        case flipMarkBits(UInt32)
        /// `counter`
        case counter
        /// `counter name "x"`: the table's named counter.
        case namedCounter(String)
        /// `limit rate 50/second burst 50 packets`
        case limit(perSecond: Int, burst: Int)
        /// `log prefix "…" group 4210`
        case log(prefix: String, group: UInt16)
        /// `update @set { ip saddr }`
        case addSourceTo(set: String, IPFamily)
        /// `dnat ip to 10.0.0.1:8080`
        case dnat(IPAddress, port: UInt16)
        /// `masquerade`
        case masquerade
        /// `reject` (ICMP port unreachable)
        case reject
        /// `reject with tcp reset`
        case rejectWithTCPReset
        /// `… vmap @map`
        case lookup(LookupKey, map: String)
        case verdict(Verdict)
    }

    public struct Rule: Hashable, Sendable {
        public var statements: [Statement]
        public var comment: String?
        public init(_ statements: [Statement], comment: String? = nil) { self.statements = statements; self.comment = comment }
        public init(_ statements: Statement..., comment: String? = nil) { self.init(statements, comment: comment) }
    }

    /// A table, or the part of one an owner describes (a service's chains and its elements of
    /// the shared maps): chains, sets and maps, their elements (nil value: a plain set's
    /// element), named counters.
    public struct Table: Hashable, Sendable {
        public var chains: [String: Chain] = [:]
        public var sets: [String: NamedSet] = [:]
        public var elements: [String: [Key: Verdict?]] = [:]
        public var counters: Set<String> = []
        public init() {}

        public var isEmpty: Bool { chains.isEmpty && sets.isEmpty && elements.isEmpty && counters.isEmpty }
        public var ruleCount: Int { chains.values.reduce(0) { $0 + $1.rules.count } }
        public var elementCount: Int { elements.values.reduce(0) { $0 + $1.count } }

        /// Adds what `other` holds; where both hold a name or key, this one's stays.
        public mutating func merge(_ other: Table) {
            chains.merge(other.chains) { a, _ in a }
            sets.merge(other.sets) { a, _ in a }
            for (set, items) in other.elements { elements[set, default: [:]].merge(items) { a, _ in a } }
            counters.formUnion(other.counters)
        }
    }

    /// Tables by name (all `inet`), whole or in part.
    public struct Ruleset: Hashable, Sendable {
        public var tables: [String: Table]
        public init(_ tables: [String: Table] = [:]) { self.tables = tables }

        public subscript(table: String) -> Table {
            get { tables[table] ?? Table() }
            set { tables[table] = newValue }
        }

        public mutating func merge(_ other: Ruleset) {
            for (name, t) in other.tables { tables[name, default: Table()].merge(t) }
        }

        /// Table → chain → rule count (what `weft doctor` compares with the kernel).
        public var ruleCounts: [String: [String: Int]] { tables.mapValues { $0.chains.mapValues(\.rules.count) } }
    }
}
