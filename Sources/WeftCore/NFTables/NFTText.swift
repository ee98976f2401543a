/// nft's own syntax for the typed layer: scripts libnftables runs (a full replace is one script,
/// one transaction) and the text error messages quote.
extension NFT {
    /// A script of `ops`, one command a line (elements in commands of at most 1,000: one command
    /// per element is slow to parse, one of 100,000 slow to build).
    public static func text(_ ops: [Op]) -> String {
        var s = ""
        for op in ops { append(op, to: &s) }
        return s
    }

    /// One operation as nft commands (several for many elements), without the final newline.
    public static func text(_ op: Op) -> String {
        var s = ""
        append(op, to: &s)
        return s.trimmingTrailingNewline()
    }

    static func append(_ op: Op, to s: inout String) {
        switch op {
        case .addTable(let t): s += "add table inet \(t)\n"
        case .deleteTable(let t): s += "delete table inet \(t)\n"
        case .addCounter(let t, let c): s += "add counter inet \(t) \(c)\n"
        case .addSet(let t, let n, let decl): s += "add \(decl.isMap ? "map" : "set") inet \(t) \(n) \(text(decl))\n"
        case .deleteSet(let t, let n, let decl): s += "delete \(decl.isMap ? "map" : "set") inet \(t) \(n)\n"
        case .addChain(let t, let n, let hook): s += "add chain inet \(t) \(n)\(hook.map { " { \(text($0)) }" } ?? "")\n"
        case .flushChain(let t, let n): s += "flush chain inet \(t) \(n)\n"
        case .deleteChain(let t, let n): s += "delete chain inet \(t) \(n)\n"
        case .addRule(let t, let c, let r): s += "add rule inet \(t) \(c) \(text(r))\n"
        case .addElements(let t, let set, let items):
            elementCommands("add", t, set, items.keys.sorted(by: keyOrder).map { k in items[k]!.map { "\(text(k)) : \(text($0))" } ?? text(k) }, into: &s)
        case .deleteElements(let t, let set, let keys):
            elementCommands("delete", t, set, keys.map(text), into: &s)
        }
    }

    static func elementCommands(_ verb: String, _ table: String, _ set: String, _ items: [String], into s: inout String) {
        var i = 0
        while i < items.count {
            s += "\(verb) element inet \(table) \(set) { \(items[i..<min(i + 1000, items.count)].joined(separator: ", ")) }\n"
            i += 1000
        }
    }

    public static func text(_ h: Hook) -> String { "type \(h.kind.rawValue) hook \(h.point.rawValue) priority \(h.priority) ;" }

    public static func text(_ decl: NamedSet) -> String {
        var s = "{ "
        switch decl.key {
        case .random: s += "typeof numgen random mod 1"
        case .address(let f): s += "type \(addrType(f))"
        case .addressProtoPort(let f): s += "type \(addrType(f)) . inet_proto . inet_service"
        case .protoPort: s += "type inet_proto . inet_service"
        }
        if decl.isMap { s += " : verdict" }
        s += " ; "
        if let t = decl.timeout { s += "flags dynamic,timeout ; timeout \(t)s ; " }
        if let c = decl.comment { s += "comment \(quoted(c)) ; " }
        return s + "}"
    }

    public static func text(_ r: Rule) -> String {
        var s = r.statements.map(text).joined(separator: " ")
        if let c = r.comment { s += (s.isEmpty ? "" : " ") + "comment \(quoted(c))" }
        return s
    }

    public static func text(_ st: Statement) -> String {
        switch st {
        case .family(let f): return "meta nfproto \(f == .v4 ? "ipv4" : "ipv6")"
        case .l4proto(let p): return "meta l4proto \(p)"
        case .address(let field, let a): return "\(ip(a.family)) \(field.text) \(a)"
        case .networks(let field, let nets, let negated):
            // Not in any: one comparison each, as the netlink encoder writes it (no anonymous set).
            if negated { return nets.map { "\(ip($0.family)) \(field.text) != \($0)" }.joined(separator: " ") }
            let value = nets.count == 1 ? nets[0].description : "{ \(nets.map(\.description).joined(separator: ", ")) }"
            return "\(ip(nets[0].family)) \(field.text) \(value)"
        case .addressIn(let field, let f, let set): return "\(ip(f)) \(field.text) @\(set)"
        case .destinationProtoPortIn(let f, let set): return "\(ip(f)) daddr . meta l4proto . th dport @\(set)"
        case .destinationPort(let r): return "th dport \(r.lowerBound == r.upperBound ? "\(r.lowerBound)" : "\(r.lowerBound)-\(r.upperBound)")"
        case .ctState(let states): return "ct state \(states.map(\.rawValue).joined(separator: ","))"
        case .markHas(let bits): return "meta mark & \(hex(bits)) != 0"
        case .inputInterface(let name, let negated): return "iifname \(negated ? "!= " : "")\(quoted(name))"
        case .icmpv6Type(let t):
            switch t {
            case .routerSolicit: return "icmpv6 type nd-router-solicit"
            case .neighborSolicit: return "icmpv6 type nd-neighbor-solicit"
            case .neighborAdvert: return "icmpv6 type nd-neighbor-advert"
            }
        case .toLocalAddress: return "fib daddr type local"
        case .sourceRouteMissing: return "fib saddr . iif oif missing"
        case .setMarkBits(let bits): return "meta mark set meta mark | \(hex(bits))"
        case .flipMarkBits(let bits): return "meta mark set meta mark ^ \(hex(bits))"
        case .counter: return "counter"
        case .namedCounter(let n): return "counter name \(quoted(n))"
        case .limit(let rate, let burst): return "limit rate \(rate)/second burst \(burst) packets"
        case .log(let prefix, let group): return "log prefix \(quoted(prefix)) group \(group)"
        case .addSourceTo(let set, let f): return "update @\(set) { \(ip(f)) saddr }"
        case .dnat(let a, let port): return "dnat \(ip(a.family)) to \(a.family == .v4 ? "\(a)" : "[\(a)]"):\(port)"
        case .masquerade: return "masquerade"
        case .reject: return "reject"
        case .rejectWithTCPReset: return "reject with tcp reset"
        case .lookup(let key, let map): return "\(text(key)) vmap @\(map)"
        case .verdict(let v): return text(v)
        }
    }

    public static func text(_ key: LookupKey) -> String {
        switch key {
        case .address(let field, let f): return "\(ip(f)) \(field.text)"
        case .destinationProtoPort(let f): return "\(ip(f)) daddr . meta l4proto . th dport"
        case .protoPort: return "meta l4proto . th dport"
        case .random(let n): return "numgen random mod \(n)"
        }
    }

    public static func text(_ v: Verdict) -> String {
        switch v {
        case .accept: return "accept"
        case .drop: return "drop"
        case .jump(let c): return "jump \(c)"
        case .goto(let c): return "goto \(c)"
        }
    }

    public static func text(_ k: Key) -> String {
        switch k {
        case .address(let a): return a.description
        case .addressProtoPort(let a, let p, let port): return "\(a) . \(p) . \(port)"
        case .protoPort(let p, let port): return "\(p) . \(port)"
        case .index(let i): return "\(i)"
        }
    }

    static func ip(_ f: IPFamily) -> String { f == .v4 ? "ip" : "ip6" }
    static func addrType(_ f: IPFamily) -> String { f == .v4 ? "ipv4_addr" : "ipv6_addr" }
    static func hex(_ v: UInt32) -> String { "0x" + String(v, radix: 16) }
    /// A quoted nft string (names and comments weft writes hold no quotes).
    static func quoted(_ s: String) -> String { "\"\(s)\"" }
}

extension String {
    func trimmingTrailingNewline() -> String { hasSuffix("\n") ? String(dropLast()) : self }
}
