import Synchronization

/// The services dataplane as one nftables table, laid out as kube-proxy's nftables mode does:
/// fixed chains whose lookups go through verdict maps keyed by address · protocol · port (so
/// the cost of a lookup does not grow with the number of services), one chain per service port
/// that picks an endpoint at random, one chain per endpoint that DNATs to it.
///
/// - `service-ips` / `service-ips6`: VIP · proto · port → the service port's chain.
/// - `service-nodeports`: proto · port → the NodePort chain (which masquerades, then goes to
///   the service port's chain), for packets addressed to any local address of the node.
/// - `no-endpoint-services` / `no-endpoint-nodeports`: the same keys → reject, checked for new
///   connections in the filter hooks, so a service with no ready endpoint refuses at once.
/// - The services are spread over `shardCount` tables of that layout (`weft-services-0` …), each
///   hooked into NAT: the kernel validates the whole jump graph of every table a transaction
///   touches, so a change costs the walk of one shard, not of every service. A new connection
///   looks its address up in the shards until one DNATs it (the kernel stops at the first NAT).
///   The front table `weft-services` holds what is not per service: the filter hooks with the
///   no-endpoint maps, and the masquerade of marked traffic.
/// - A service port's chain picks an endpoint with `numgen random mod N vmap @<chain>/pick`: a
///   named map, not an inline one, because the kernel binds each anonymous set by walking the
///   whole transaction, which made a 10,000-service table take minutes to load.
/// - An endpoint that reaches itself through its service (hairpin) is masqueraded, or the
///   reply would skip the DNAT's reversal.
///
/// The model is kept per service (`Model.updated(with:)` rebuilds only the services whose
/// entry changed) and its rules, keys and verdicts are typed, so the same model is written as
/// nft text (`fullScript`: the whole table in one transaction, through libnftables) or as
/// nf_tables netlink operations (`changes(from:to:)`: only what changed, written without the
/// cache libnftables would first fill with the whole table). Chain names are nftables
/// identifiers built from Kubernetes names, protocols, ports and addresses (`:` written `_`).
/// Pure: the agent writes the table in the node.
public enum ServiceRules {
    /// The front table (see above); the services' own chains are in `shardTable(_:)`s.
    public static let frontTable = "weft-services"
    public static let shardCount = 32
    public static func shardTable(_ i: Int) -> String { "weft-services-\(i)" }
    /// Every table the services dataplane writes.
    public static var tables: [String] { [frontTable] + (0..<shardCount).map(shardTable) }
    /// The table holding a service's chains and its elements of `service-ips(6)` and `service-nodeports`.
    public static func table(for service: ClusterService) -> String { table(forKey: "\(service.namespace)/\(service.name)") }
    static func table(forKey key: String) -> String { shardTable(Int(fnv1a64(key) % UInt64(shardCount))) }
    /// Maps in the front table; every other map is in the service's shard.
    static func inFront(_ map: String) -> Bool { map.hasPrefix("no-endpoint-") }
    static let revisions = Atomic<Int>(0)
    static let masqMark = "0x4000"
    /// The same, as a number (netlink writes it).
    public static let masqMarkBit: UInt32 = 0x4000

    public struct Entry: Sendable, Equatable {
        public let service: ClusterService
        public let endpoints: [ServiceEndpoint]
        /// What the entry was derived from, when the reader knows (the datastore revisions of the
        /// Service and its EndpointSlices): two entries with the same source are the same entry,
        /// which spares comparing them field by field.
        public var source: String?
        public init(service: ClusterService, endpoints: [ServiceEndpoint], source: String? = nil) {
            self.service = service; self.endpoints = endpoints; self.source = source
            key = "\(service.namespace)/\(service.name)"
        }
        /// "namespace/name", made once (the model looks every entry up by it on every pass).
        public let key: String
        /// The same as `other`: by source when both have one, else field by field.
        func same(as other: Entry) -> Bool {
            if let a = source, let b = other.source { return a == b }
            return service == other.service && endpoints == other.endpoints
        }
    }

    static func proto(_ p: String) -> String { p.lowercased() }

    static func chainName(_ s: ClusterService, _ p: ClusterService.Port) -> String {
        "svc-\(s.namespace)/\(s.name)/\(proto(p.proto))/\(p.port)"
    }

    /// A rule of a per-service chain.
    public enum Rule: Hashable, Sendable {
        /// `ip saddr A meta mark set meta mark | 0x4000`: an endpoint reaching itself (hairpin) is
        /// masqueraded. The mark is set inline, not by a jump: the kernel walks every jump of a
        /// table at each commit, and there is one such rule per endpoint.
        case masqueradeFrom(IPAddress)
        /// `update @set { ip saddr }`: the endpoint remembers its client (session affinity).
        case rememberClient(set: String, family: IPFamily)
        /// `ip saddr @set goto chain`: a remembered client goes back to its endpoint.
        case rememberedClient(set: String, family: IPFamily, chain: String)
        /// `meta l4proto tcp dnat ip to A:P`
        case dnat(proto: String, address: IPAddress, port: UInt16)
        /// `numgen random mod N vmap @map`
        case pickRandom(count: Int, map: String)
        case jump(String)
        case goto(String)
        /// `meta nfproto ipv4 goto chain`
        case gotoIfFamily(IPFamily, String)

        public var text: String {
            func ip(_ f: IPFamily) -> String { f == .v4 ? "ip" : "ip6" }
            switch self {
            case .masqueradeFrom(let a): return "\(ip(a.family)) saddr \(a) meta mark set meta mark | \(ServiceRules.masqMark)"
            case .rememberClient(let set, let f): return "update @\(set) { \(ip(f)) saddr }"
            case .rememberedClient(let set, let f, let chain): return "\(ip(f)) saddr @\(set) goto \(chain)"
            case .dnat(let p, let a, let port):
                return "meta l4proto \(ServiceRules.proto(p)) dnat \(ip(a.family)) to \(a.family == .v4 ? "\(a)" : "[\(a)]"):\(port)"
            case .pickRandom(let n, let map): return "numgen random mod \(n) vmap @\(map)"
            case .jump(let c): return "jump \(c)"
            case .goto(let c): return "goto \(c)"
            case .gotoIfFamily(let f, let c): return "meta nfproto \(f == .v4 ? "ipv4" : "ipv6") goto \(c)"
            }
        }
    }

    public enum Verdict: Hashable, Sendable {
        case goto(String)
        case drop
        public var text: String {
            switch self {
            case .goto(let c): return "goto \(c)"
            case .drop: return "drop"
            }
        }
    }

    /// A key of one of the table's maps.
    public enum Key: Hashable, Sendable {
        /// `service-ips(6)`, `no-endpoint-services(6)`: address · protocol · port.
        case address(IPAddress, proto: String, port: UInt16)
        /// `service-nodeports`, `no-endpoint-nodeports`: protocol · port.
        case nodePort(proto: String, port: UInt16)
        /// A picker map: the random number.
        case index(Int)
        public var text: String {
            switch self {
            case .address(let a, let p, let port): return "\(a) . \(ServiceRules.proto(p)) . \(port)"
            case .nodePort(let p, let port): return "\(ServiceRules.proto(p)) . \(port)"
            case .index(let i): return "\(i)"
            }
        }
    }

    /// A named set or map of one service.
    public enum SetKind: Hashable, Sendable {
        /// random number → endpoint chain.
        case picker
        /// The client addresses an endpoint has under session affinity, each for `timeout` seconds.
        case clients(IPFamily, timeout: Int)
        public var text: String {
            switch self {
            case .picker: return "{ typeof numgen random mod 1 : verdict ; }"
            case .clients(let f, let t): return "{ type \(f == .v4 ? "ipv4_addr" : "ipv6_addr") ; flags dynamic,timeout ; timeout \(t)s ; }"
            }
        }
        var isMap: Bool { self == .picker }
    }

    /// What one service puts in the table: its chains (name → rules, in order), its own sets and
    /// maps, and its elements of every map (map → key → verdict).
    public struct Fragment: Sendable, Equatable {
        /// The shard table its chains, sets and (but for the no-endpoint maps') elements are in.
        public var table: String
        public var chains: [String: [Rule]] = [:]
        public var sets: [String: SetKind] = [:]
        public var elements: [String: [Key: Verdict]] = [:]
        public init(table: String) { self.table = table }
    }

    /// What the table holds beyond its fixed part, per service.
    public struct Model: Sendable {
        struct Built: Sendable {
            var entry: Entry
            var fragment: Fragment
            /// Unique to each build of a fragment (across models): the diff compares these, not fragments.
            var revision: Int
        }
        /// The node the table is for (Local traffic policies keep to its endpoints).
        public let node: String?
        var services: [String: Built] = [:]
        /// This model, and the one it was updated from with the services rebuilt or gone since:
        /// the diff between the two looks at those only.
        var generation = ServiceRules.revisions.add(1, ordering: .relaxed).newValue
        var parent: Int?
        var changedKeys: Set<String> = []
        /// Each service's entry source (see `Entry.source`), apart so checking it copies nothing.
        var sources: [String: String] = [:]
        /// Which service holds each map key: two services naming one external address and port
        /// cannot both have it; the one that had it keeps it, and the others wait for it
        /// (`waiting`), rebuilt when it is freed.
        var claims: [String: String] = [:]
        var waiting: [String: Set<String>] = [:]

        public init(node: String? = nil) { self.node = node }

        /// The model for `entries`, rebuilding only the services whose entry changed.
        public func updated(with entries: [Entry]) -> Model {
            var m = self
            _ = m.rebuild(with: entries)
            return m
        }

        /// Brings the model to `entries` in place, rebuilding only the services whose entry
        /// changed, and returns what that changes in the tables (nil: nothing). In place, so a
        /// pass over 10,000 unchanged services copies none of them.
        public mutating func update(with entries: [Entry]) -> Change? {
            let before = rebuild(with: entries)
            return change(since: before)
        }

        /// The same for a reader that knows what changed: `changed` entries (new or different)
        /// and `removed` services ("namespace/name"); every other service stays as it is, and
        /// none of them is looked at, so the cost follows the change, not the table.
        public mutating func update(changed: [Entry], removed: Set<String>) -> Change? {
            var byKey: [String: Entry] = [:]
            for e in changed { byKey[e.key] = e }
            let gone = removed.filter { byKey[$0] == nil && services[$0] != nil }
            let todo = byKey.values.filter { e in !(services[e.key].map { $0.entry.same(as: e) } ?? false) }.map(\.key)
            let before = rebuild(gone: gone, todo: todo) { k, built in byKey[k] ?? built[k]?.entry }
            return change(since: before)
        }

        private func change(since before: [String: Built]) -> Change? {
            let keys = changedKeys.sorted()
            return ServiceRules.changes(from: keys.compactMap { before[$0] }, to: keys.compactMap { services[$0] })
        }

        /// `update(with:)` without working out the change; returns the builds it replaced or removed.
        private mutating func rebuild(with entries: [Entry]) -> [String: Built] {
            // Entry by key (positions, not copies: an entry is large); the last of a key wins.
            var byKey: [String: Int] = [:]
            byKey.reserveCapacity(entries.count)
            for (i, e) in entries.enumerated() { byKey[e.key] = i }
            var todo: [String] = []
            for (k, i) in byKey {
                let e = entries[i]
                // By source first: a string compare, no copy of the service's build.
                if let src = e.source, let had = sources[k] {
                    if had == src { continue }
                } else if let b = services[k], b.entry.same(as: e) {
                    continue
                }
                todo.append(k)
            }
            return rebuild(gone: services.keys.filter { byKey[$0] == nil }, todo: todo) { k, _ in byKey[k].map { entries[$0] } }
        }

        /// Removes `gone`, rebuilds `todo` from `entry(key, builds)` (nil: the service is not
        /// there), and then the services waiting for a map key one of them freed.
        private mutating func rebuild(gone: some Sequence<String>, todo initial: [String], entry: (String, [String: Built]) -> Entry?) -> [String: Built] {
            parent = generation
            generation = ServiceRules.revisions.add(1, ordering: .relaxed).newValue
            var before: [String: Built] = [:], changed: Set<String> = []
            // Services gone first, so what they held is free for the others in this same pass.
            var freed: Set<String> = []
            for k in gone {
                guard let b = services.removeValue(forKey: k) else { continue }
                sources[k] = nil
                freed.formUnion(release(k, b.fragment))
                before[k] = b
                changed.insert(k)
            }
            var todo = initial
            // Rebuild; a service refused a key another held is rebuilt when that key is freed.
            while true {
                // Only keys nobody took again: a rebuilt service gives up and retakes its own.
                todo += freed.filter { claims[$0] == nil }.flatMap { waiting.removeValue(forKey: $0) ?? [] }
                freed = []
                guard !todo.isEmpty else { break }
                for k in Set(todo).sorted() {
                    guard let e = entry(k, services) else { continue }
                    changed.insert(k)
                    sources[k] = e.source
                    if let b = services.removeValue(forKey: k) {
                        freed.formUnion(release(k, b.fragment))
                        if before[k] == nil { before[k] = b }
                    }
                    var f = ServiceRules.fragment(e, node: node)
                    for (map, items) in f.elements {
                        for key in items.keys {
                            let claim = "\(map) \(key.text)"
                            if let owner = claims[claim], owner != k {
                                f.elements[map]![key] = nil
                                waiting[claim, default: []].insert(k)
                            } else {
                                claims[claim] = k
                            }
                        }
                        if f.elements[map]!.isEmpty { f.elements[map] = nil }
                    }
                    services[k] = Built(entry: e, fragment: f, revision: ServiceRules.revisions.add(1, ordering: .relaxed).newValue)
                }
                todo = []
            }
            changedKeys = changed
            return before
        }

        /// Gives up `service`'s claims; returns the claims now free.
        private mutating func release(_ service: String, _ f: Fragment) -> Set<String> {
            var freed: Set<String> = []
            for (map, items) in f.elements {
                for key in items.keys where claims["\(map) \(key.text)"] == service {
                    claims["\(map) \(key.text)"] = nil
                    freed.insert("\(map) \(key.text)")
                }
            }
            return freed
        }

        /// The build of `service` ("namespace/name") the model holds: equal in two models when
        /// the second kept the first's fragment.
        public func revision(of service: String) -> Int? { services[service]?.revision }
        public var fragments: [Fragment] { services.keys.sorted().map { services[$0]!.fragment } }
        public var serviceCount: Int { services.count }
        public var ruleCount: Int { services.values.reduce(0) { $0 + $1.fragment.chains.values.reduce(0) { $0 + $1.count } } }
        public var elementCount: Int { services.values.reduce(0) { $0 + $1.fragment.elements.values.reduce(0) { $0 + $1.count } } }
    }

    /// - node: the node the table is for (Local traffic policies keep to its endpoints).
    public static func model(_ entries: [Entry], node: String? = nil) -> Model { Model(node: node).updated(with: entries) }

    /// What one service puts in the table.
    static func fragment(_ e: Entry, node: String?) -> Fragment {
        var f = Fragment(table: table(forKey: e.key))
        func element(_ map: String, _ key: Key, _ verdict: Verdict) { f.elements[map, default: [:]][key] = verdict }
        let svc = e.service
        guard !svc.headless, svc.kind != .externalName else { return f }
        for p in svc.ports {
            // Per family the service has an address in (a DNAT cannot change the family):
            // the chain traffic from inside takes (`internal`) and the one traffic from
            // outside takes (`external`: node ports, external IPs).
            var external: [(IPFamily, String)] = []
            for family in [IPFamily.v4, .v6] {
                let vips = svc.clusterIPs.filter { $0.family == family }
                // External IPs and load balancer addresses: traffic from outside.
                let extIPs = (svc.externalIPs + svc.loadBalancerIPs).filter { $0.family == family }
                guard !vips.isEmpty || !extIPs.isEmpty || p.nodePort != nil else { continue }
                let base = chainName(svc, p) + (family == .v6 ? "/v6" : "")
                let candidates = e.endpoints.filter { $0.address.family == family }.compactMap { ep in ep.port(for: p).map { (ep, $0) } }
                let ready = usable(candidates)
                if ready.isEmpty {
                    for ip in vips + extIPs {
                        element(family == .v4 ? "no-endpoint-services" : "no-endpoint-services6", .address(ip, proto: p.proto, port: p.port), .goto("reject-chain"))
                    }
                    continue
                }
                let local = usable(candidates.filter { $0.0.nodeName != nil && $0.0.nodeName == node })
                // A chain choosing at random among `backends` (session affinity first); nil
                // when there is none, and then the traffic is dropped, as Kubernetes does
                // for a Local policy without a local endpoint.
                func picker(_ name: String, _ backends: [(ServiceEndpoint, UInt16)]) -> String? {
                    guard !backends.isEmpty else { return nil }
                    var sticky: [Rule] = []
                    let map = "\(name)/pick"
                    f.sets[map] = .picker
                    for (i, (ep, port)) in backends.enumerated() {
                        let ec = endpointChain(svc, p, ep, port, into: &f)
                        if let t = svc.affinityTimeout { sticky.append(.rememberedClient(set: "\(ec)/affinity/\(t)", family: family, chain: ec)) }
                        element(map, .index(i), .goto(ec))
                    }
                    f.chains[name] = sticky + [.pickRandom(count: backends.count, map: map)]
                    return name
                }
                let all = picker(base, ready)!
                let inside = svc.internalLocal ? picker(base + "/local", local) : all
                let outside: String?
                if p.nodePort == nil && extIPs.isEmpty {
                    outside = nil   // no traffic from outside
                } else if svc.externalLocal {
                    outside = picker(base + "/local", local)
                } else {
                    // Traffic from outside comes back through this node only if masqueraded.
                    f.chains[base + "/external"] = [.jump("mark-for-masquerade"), .goto(all)]
                    outside = base + "/external"
                }
                let map = family == .v4 ? "service-ips" : "service-ips6"
                for ip in vips { element(map, .address(ip, proto: p.proto, port: p.port), inside.map { .goto($0) } ?? .drop) }
                for ip in extIPs { element(map, .address(ip, proto: p.proto, port: p.port), outside.map { .goto($0) } ?? .drop) }
                if p.nodePort != nil { external.append((family, outside ?? "drop-chain")) }
            }
            if let np = p.nodePort {
                if external.isEmpty {
                    element("no-endpoint-nodeports", .nodePort(proto: p.proto, port: np), .goto("reject-chain"))
                } else {
                    let nc = "\(chainName(svc, p))/nodeport"
                    f.chains[nc] = external.map { Rule.gotoIfFamily($0.0, $0.1) } + [.goto("reject-chain")]
                    element("service-nodeports", .nodePort(proto: p.proto, port: np), .goto(nc))
                }
            }
        }
        return f
    }

    /// The endpoints traffic goes to (see `ServiceEndpoint.takingTraffic`).
    static func usable(_ endpoints: [(ServiceEndpoint, UInt16)]) -> [(ServiceEndpoint, UInt16)] {
        ServiceEndpoint.takingTraffic(endpoints) { $0.0 }
    }

    /// The chain that DNATs to one endpoint (and remembers its clients under session
    /// affinity). Named by address and port, so it stays while other endpoints come and go.
    static func endpointChain(_ svc: ClusterService, _ p: ClusterService.Port, _ ep: ServiceEndpoint, _ port: UInt16, into f: inout Fragment) -> String {
        let ec = "\(chainName(svc, p))/ep/\(ep.address.description.replacingColons())/\(port)"
        var rules: [Rule] = [.masqueradeFrom(ep.address)]   // hairpin
        if let timeout = svc.affinityTimeout {
            // Session affinity as kube-proxy does it: each endpoint remembers its clients for
            // the timeout; a remembered client goes straight back (see `picker`).
            // The timeout is in the name: a set cannot be redefined in place on every kernel
            // (before 6.5 the new timeout is ignored), so a new timeout makes a new set.
            f.sets["\(ec)/affinity/\(timeout)"] = .clients(ep.address.family, timeout: timeout)
            rules.append(.rememberClient(set: "\(ec)/affinity/\(timeout)", family: ep.address.family))
        }
        rules.append(.dnat(proto: p.proto, address: ep.address, port: port))
        f.chains[ec] = rules
        return ec
    }

    /// One change to the table's per-service part.
    public enum Op: Hashable, Sendable {
        case addSet(String, SetKind)
        case addChain(String)
        /// Empties a chain (its rules go; the chain stays).
        case flushChain(String)
        case addRule(chain: String, Rule)
        case addElements(map: String, [Key: Verdict])
        case deleteElements(map: String, [Key])
        case deleteChain(String)
        case deleteSet(String, SetKind)

        /// As an nft command (after `add`/`delete` … the table); elements in statements of at
        /// most 1,000 (one statement per element is slow to parse; one of 100,000 slow to build).
        public func text(table t: String) -> String {
            switch self {
            case .addSet(let n, let kind): return "add \(kind.isMap ? "map" : "set") \(t) \(n) \(kind.text)\n"
            case .addChain(let n): return "add chain \(t) \(n)\n"
            case .flushChain(let n): return "flush chain \(t) \(n)\n"
            case .addRule(let c, let r): return "add rule \(t) \(c) \(r.text)\n"
            case .addElements(let map, let items):
                let all = items.map { "\($0.key.text) : \($0.value.text)" }.sorted()
                return stride(from: 0, to: all.count, by: 1000).map { "add element \(t) \(map) { \(all[$0..<min($0 + 1000, all.count)].joined(separator: ", ")) }\n" }.joined()
            case .deleteElements(let map, let keys):
                let all = keys.map(\.text).sorted()
                return stride(from: 0, to: all.count, by: 1000).map { "delete element \(t) \(map) { \(all[$0..<min($0 + 1000, all.count)].joined(separator: ", ")) }\n" }.joined()
            case .deleteChain(let n): return "delete chain \(t) \(n)\n"
            case .deleteSet(let n, let kind): return "delete \(kind.isMap ? "map" : "set") \(t) \(n)\n"
            }
        }
    }

    /// An operation on one of the tables.
    public struct TableOp: Hashable, Sendable {
        public var table: String
        public var op: Op
        public init(table: String, op: Op) { self.table = table; self.op = op }
        public var text: String { op.text(table: "inet \(table)") }
    }

    /// A change: `update` adds and rewrites (new sets and chains, changed chains flushed and
    /// refilled, elements deleted and added), `cleanup` deletes the chains and sets nothing
    /// refers to any more once the update is in. As netlink, both are one transaction (`ops`:
    /// the kernel counts references as the batch goes, and each commit walks every chain of the
    /// namespace, so one commit is half the cost of two); as nft scripts, two (libnftables
    /// checks references against the table as it was).
    public struct Change: Sendable, Equatable {
        public var update: [TableOp] = []
        public var cleanup: [TableOp] = []
        public var ops: [TableOp] { update + cleanup }
        public var isEmpty: Bool { update.isEmpty && cleanup.isEmpty }
        public func text() -> (update: String, cleanup: String) {
            (update.map(\.text).joined(), cleanup.map(\.text).joined())
        }
    }

    /// The same, within one table.
    struct TableChange {
        var update: [Op] = []
        var cleanup: [Op] = []
    }

    /// What goes from `old` to `new`: only the services whose fragment was rebuilt are looked
    /// at, so its cost follows the change, not the table. Nil when nothing changed.
    public static func changes(from old: Model, to new: Model) -> Change? {
        var was: [Model.Built] = [], now: [Model.Built] = []
        if new.parent == old.generation {
            // `new` was updated from `old`: only what it rebuilt can differ.
            for k in new.changedKeys {
                let o = old.services[k], n = new.services[k]
                guard o?.revision != n?.revision else { continue }
                if let o { was.append(o) }
                if let n { now.append(n) }
            }
        } else {
            for (k, b) in old.services where new.services[k]?.revision != b.revision { was.append(b) }
            for (k, b) in new.services where old.services[k]?.revision != b.revision { now.append(b) }
        }
        return changes(from: was, to: now)
    }

    /// From the builds `was` (gone or replaced) to `now` (new or replacing them).
    static func changes(from was: [Model.Built], to now: [Model.Built]) -> Change? {
        var old: [String: Fragment] = [:], new: [String: Fragment] = [:]
        for b in was { merge(b.fragment, into: &old[b.fragment.table, default: Fragment(table: b.fragment.table)]) }
        for b in now { merge(b.fragment, into: &new[b.fragment.table, default: Fragment(table: b.fragment.table)]) }
        var deletes: [TableOp] = [], rest: [TableOp] = [], cleanup: [TableOp] = []
        for t in Set(old.keys).union(new.keys).sorted() {
            let c = changes(from: old[t] ?? Fragment(table: t), to: new[t] ?? Fragment(table: t))
            for op in c.update {
                if case .deleteElements = op { deletes.append(placed(op, t)) } else { rest.append(placed(op, t)) }
            }
            cleanup += c.cleanup.map { placed($0, t) }
        }
        // Every element deleted before any is added: a key may pass from one service to another.
        let c = Change(update: deletes + rest, cleanup: cleanup)
        return c.isEmpty ? nil : c
    }

    static func placed(_ op: Op, _ shard: String) -> TableOp {
        switch op {
        case .addElements(let map, _), .deleteElements(let map, _): return TableOp(table: inFront(map) ? frontTable : shard, op: op)
        default: return TableOp(table: shard, op: op)
        }
    }

    static func merge(_ f: Fragment, into m: inout Fragment) {
        m.chains.merge(f.chains) { a, _ in a }
        m.sets.merge(f.sets) { a, _ in a }
        for (map, items) in f.elements { m.elements[map, default: [:]].merge(items) { a, _ in a } }
    }

    static func changes(from old: Fragment, to new: Fragment) -> TableChange {
        var c = TableChange()
        for map in old.elements.keys.sorted() {
            let now = new.elements[map] ?? [:]
            let gone = old.elements[map]!.filter { now[$0.key] != $0.value }.keys.sorted { $0.text < $1.text }
            if !gone.isEmpty { c.update.append(.deleteElements(map: map, gone)) }
        }
        // Sets are named by what defines them (see `endpointChain`): one that changed is new.
        for n in new.sets.keys.sorted() where old.sets[n] != new.sets[n] { c.update.append(.addSet(n, new.sets[n]!)) }
        for n in new.chains.keys.sorted() where old.chains[n] == nil { c.update.append(.addChain(n)) }
        for n in new.chains.keys.sorted() where old.chains[n] != new.chains[n] {
            if old.chains[n] != nil { c.update.append(.flushChain(n)) }
            c.update += new.chains[n]!.map { .addRule(chain: n, $0) }
        }
        // Chains about to go are emptied first, so nothing refers to them or their sets.
        for n in old.chains.keys.sorted() where new.chains[n] == nil { c.update.append(.flushChain(n)) }
        for map in new.elements.keys.sorted() {
            let was = old.elements[map] ?? [:]
            let added = new.elements[map]!.filter { was[$0.key] != $0.value }
            if !added.isEmpty { c.update.append(.addElements(map: map, added)) }
        }
        for n in old.chains.keys.sorted() where new.chains[n] == nil { c.cleanup.append(.deleteChain(n)) }
        for n in old.sets.keys.sorted() where new.sets[n] == nil { c.cleanup.append(.deleteSet(n, old.sets[n]!)) }
        return c
    }

    /// The whole table, replacing whatever is there, in one transaction.
    public static func script(_ entries: [Entry]) -> String { fullScript(model(entries)) }

    /// - replacing: the namespace's `inet` tables; shards of another layout among them (an agent
    ///   of another version ran here) are deleted in the same transaction.
    public static func fullScript(_ m: Model, replacing existing: [String] = []) -> String {
        let t = "inet \(frontTable)"
        var s = existing.filter { $0.hasPrefix(frontTable + "-") && !tables.contains($0) }.sorted().map { "delete table inet \($0)\n" }.joined()
        s += """
        add table \(t)
        delete table \(t)
        add table \(t)
        add map \(t) no-endpoint-services { type ipv4_addr . inet_proto . inet_service : verdict ; }
        add map \(t) no-endpoint-services6 { type ipv6_addr . inet_proto . inet_service : verdict ; }
        add map \(t) no-endpoint-nodeports { type inet_proto . inet_service : verdict ; }
        add chain \(t) nat-postrouting { type nat hook postrouting priority srcnat ; }
        add rule \(t) nat-postrouting meta mark & \(masqMark) != 0 meta mark set meta mark ^ \(masqMark) masquerade
        add chain \(t) reject-chain
        add rule \(t) reject-chain meta l4proto tcp reject with tcp reset
        add rule \(t) reject-chain reject
        add chain \(t) endpoints-check
        add rule \(t) endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services
        add rule \(t) endpoints-check ip6 daddr . meta l4proto . th dport vmap @no-endpoint-services6
        add rule \(t) endpoints-check fib daddr type local meta l4proto . th dport vmap @no-endpoint-nodeports

        """
        for hook in ["input", "forward", "output"] {
            s += "add chain \(t) filter-\(hook) { type filter hook \(hook) priority -110 ; }\n"
            s += "add rule \(t) filter-\(hook) ct state new jump endpoints-check\n"
        }
        var shards: [String: Fragment] = [:]
        for f in m.fragments { merge(f, into: &shards[f.table, default: Fragment(table: f.table)]) }
        var front: [Op] = []
        for i in 0..<shardCount {
            let st = shardTable(i), t = "inet \(st)"
            s += """
            add table \(t)
            delete table \(t)
            add table \(t)
            add map \(t) service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; }
            add map \(t) service-ips6 { type ipv6_addr . inet_proto . inet_service : verdict ; }
            add map \(t) service-nodeports { type inet_proto . inet_service : verdict ; }
            add chain \(t) services
            add rule \(t) services ip daddr . meta l4proto . th dport vmap @service-ips
            add rule \(t) services ip6 daddr . meta l4proto . th dport vmap @service-ips6
            add rule \(t) services fib daddr type local meta l4proto . th dport vmap @service-nodeports
            add chain \(t) nat-prerouting { type nat hook prerouting priority dstnat ; }
            add rule \(t) nat-prerouting jump services
            add chain \(t) nat-output { type nat hook output priority -100 ; }
            add rule \(t) nat-output jump services
            add chain \(t) mark-for-masquerade
            add rule \(t) mark-for-masquerade meta mark set meta mark | \(masqMark)
            add chain \(t) reject-chain
            add rule \(t) reject-chain meta l4proto tcp reject with tcp reset
            add rule \(t) reject-chain reject
            add chain \(t) drop-chain
            add rule \(t) drop-chain drop

            """
            guard let f = shards[st] else { continue }
            for op in changes(from: Fragment(table: st), to: f).update {
                if case .addElements(let map, _) = op, inFront(map) { front.append(op) } else { s += op.text(table: t) }
            }
        }
        s += front.map { $0.text(table: t) }.joined()
        return s
    }
}

extension String {
    func replacingColons() -> String { String(map { $0 == ":" ? "_" : $0 }) }
}

/// Connection-tracking entries a service change leaves stale. UDP has no connection to end, so
/// the kernel keeps NATing a client's datagrams by the entry it made first: to a removed
/// endpoint, or (made while the service had none) to the reject. kube-proxy deletes them; so
/// does the agent, with these filters. A nil field matches anything.
public struct StaleConntrack: Sendable, Hashable {
    public var family: IPFamily
    public var proto: String
    public var destination: IPAddress?
    public var destinationPort: UInt16?
    public var replySource: IPAddress?
    public var replySourcePort: UInt16?
    public init(family: IPFamily, proto: String, destination: IPAddress? = nil, destinationPort: UInt16? = nil,
                replySource: IPAddress? = nil, replySourcePort: UInt16? = nil) {
        self.family = family; self.proto = proto; self.destination = destination; self.destinationPort = destinationPort
        self.replySource = replySource; self.replySourcePort = replySourcePort
    }
}

extension ServiceRules {
    /// What to delete after going from `old` to `new`, per UDP service port and family: every
    /// entry to its addresses and node port when it gains endpoints after having none (or is
    /// new), and those answered by an endpoint that no longer takes its traffic.
    public static func staleConntrack(from old: [Entry], to new: [Entry]) -> Set<StaleConntrack> {
        var out = Set<StaleConntrack>()
        let before = Dictionary(old.map { ("\($0.service.namespace)/\($0.service.name)", $0) }, uniquingKeysWith: { a, _ in a })
        for e in new {
            // A service new since `old` counts as having had no endpoints: datagrams sent to its
            // address before it was programmed were routed un-NATed, and their entries would
            // keep every later datagram of the flow from being NATed.
            let was = before["\(e.service.namespace)/\(e.service.name)"]
            for p in e.service.ports where p.proto == "UDP" {
                for family in [IPFamily.v4, .v6] {
                    func backends(_ entry: Entry?) -> Set<String> {
                        guard let entry else { return [] }
                        let c = entry.endpoints.filter { $0.address.family == family }.compactMap { ep in ep.port(for: p).map { (ep, $0) } }
                        return Set(usable(c).map { "\($0.0.address)|\($0.1)" })
                    }
                    let had = backends(was), has = backends(e)
                    let addresses = (e.service.clusterIPs + e.service.externalIPs + e.service.loadBalancerIPs).filter { $0.family == family }
                    if had.isEmpty && !has.isEmpty {
                        for ip in addresses { out.insert(StaleConntrack(family: family, proto: "UDP", destination: ip, destinationPort: p.port)) }
                        if let np = p.nodePort { out.insert(StaleConntrack(family: family, proto: "UDP", destinationPort: np)) }
                    }
                    for gone in had.subtracting(has) {
                        let parts = gone.split(separator: "|")
                        guard let ip = IPAddress(String(parts[0])), let port = UInt16(parts[1]) else { continue }
                        for vip in addresses {
                            out.insert(StaleConntrack(family: family, proto: "UDP", destination: vip, destinationPort: p.port, replySource: ip, replySourcePort: port))
                        }
                        if let np = p.nodePort {
                            out.insert(StaleConntrack(family: family, proto: "UDP", destinationPort: np, replySource: ip, replySourcePort: port))
                        }
                    }
                }
            }
        }
        return out
    }
}
