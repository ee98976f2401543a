extension NFT {
    /// One operation of a transaction, on an `inet` table.
    public enum Op: Hashable, Sendable {
        case addTable(String)
        case deleteTable(String)
        case addCounter(table: String, String)
        case addSet(table: String, String, NamedSet)
        case deleteSet(table: String, String, NamedSet)
        case addChain(table: String, String, Hook?)
        /// Empties a chain (its rules go; the chain stays).
        case flushChain(table: String, String)
        case deleteChain(table: String, String)
        case addRule(table: String, chain: String, Rule)
        case addElements(table: String, set: String, [Key: Verdict?])
        case deleteElements(table: String, set: String, [Key])

        public var table: String {
            switch self {
            case .addTable(let t), .deleteTable(let t), .addCounter(let t, _), .addSet(let t, _, _), .deleteSet(let t, _, _),
                 .addChain(let t, _, _), .flushChain(let t, _), .deleteChain(let t, _), .addRule(let t, _, _),
                 .addElements(let t, _, _), .deleteElements(let t, _, _):
                return t
            }
        }
    }

    /// What goes from one state to the next, in one kernel transaction: `update` adds and
    /// rewrites (new sets and chains, changed chains flushed and refilled, elements deleted and
    /// added), so every lookup switches at once; `cleanup` deletes what nothing refers to once
    /// the update is in. As netlink, both are one batch (`ops`: the kernel counts references as
    /// the batch goes); as nft text, two scripts (libnftables checks references against the
    /// table as it was).
    public struct Transaction: Hashable, Sendable {
        public var update: [Op] = []
        public var cleanup: [Op] = []
        public init(update: [Op] = [], cleanup: [Op] = []) { self.update = update; self.cleanup = cleanup }
        public var ops: [Op] { update + cleanup }
        public var isEmpty: Bool { update.isEmpty && cleanup.isEmpty }
        /// The two nft scripts (either may be empty).
        public var scripts: (update: String, cleanup: String) { (NFT.text(update), NFT.text(cleanup)) }
    }

    /// The transaction from `old` to `new` (each whole tables or the same parts of them), looking
    /// at what they hold only: the cost follows their size, so a caller that knows what changed
    /// hands in only that (as the services model does, per changed service). Empty when nothing
    /// changed; nil when only replacing the tables can make the change (a set's definition, a
    /// base chain's hook or the named counters changed).
    public static func transaction(from old: Ruleset, to new: Ruleset) -> Transaction? {
        var deletes: [Op] = [], rest: [Op] = [], cleanup: [Op] = []
        for name in Set(old.tables.keys).union(new.tables.keys).sorted() {
            let o = old[name], n = new[name]
            guard o.counters == n.counters || o.isEmpty || n.isEmpty else { return nil }
            for (s, decl) in n.sets { if let was = o.sets[s], was != decl { return nil } }
            for (c, chain) in n.chains { if let was = o.chains[c], was.hook != chain.hook { return nil } }
            // Every element deleted before any is added, in every table: a key may pass from one
            // owner to another.
            for set in o.elements.keys.sorted() {
                let now = n.elements[set] ?? [:]
                let gone = o.elements[set]!.filter { now[$0.key] != $0.value }.keys.sorted(by: NFT.keyOrder)
                if !gone.isEmpty { deletes.append(.deleteElements(table: name, set: set, gone)) }
            }
            for c in n.counters.subtracting(o.counters).sorted() { rest.append(.addCounter(table: name, c)) }
            for s in n.sets.keys.sorted() where o.sets[s] == nil { rest.append(.addSet(table: name, s, n.sets[s]!)) }
            for c in n.chains.keys.sorted() where o.chains[c] == nil { rest.append(.addChain(table: name, c, n.chains[c]!.hook)) }
            for c in n.chains.keys.sorted() where o.chains[c] != n.chains[c] {
                if o.chains[c] != nil { rest.append(.flushChain(table: name, c)) }
                rest += n.chains[c]!.rules.map { .addRule(table: name, chain: c, $0) }
            }
            // Chains about to go are emptied first, so nothing refers to them or their sets.
            for c in o.chains.keys.sorted() where n.chains[c] == nil { rest.append(.flushChain(table: name, c)) }
            for set in n.elements.keys.sorted() {
                let was = o.elements[set] ?? [:]
                let added = n.elements[set]!.filter { was[$0.key] != $0.value }
                if !added.isEmpty { rest.append(.addElements(table: name, set: set, added)) }
            }
            for c in o.chains.keys.sorted() where n.chains[c] == nil { cleanup.append(.deleteChain(table: name, c)) }
            for s in o.sets.keys.sorted() where n.sets[s] == nil { cleanup.append(.deleteSet(table: name, s, o.sets[s]!)) }
        }
        return Transaction(update: deletes + rest, cleanup: cleanup)
    }

    /// Replaces each table of `ruleset` whole (and deletes the tables `deleting`), in one
    /// transaction: made (so deleting it cannot fail), deleted, made again and filled.
    public static func replacing(_ ruleset: Ruleset, deleting: [String] = []) -> [Op] {
        var ops = deleting.sorted().map { Op.deleteTable($0) }
        for name in ruleset.tables.keys.sorted() {
            let t = ruleset.tables[name]!
            ops += [.addTable(name), .deleteTable(name), .addTable(name)]
            ops += t.counters.sorted().map { .addCounter(table: name, $0) }
            ops += t.sets.keys.sorted().map { .addSet(table: name, $0, t.sets[$0]!) }
            let chains = t.chains.keys.sorted()
            ops += chains.map { .addChain(table: name, $0, t.chains[$0]!.hook) }
            for c in chains { ops += t.chains[c]!.rules.map { .addRule(table: name, chain: c, $0) } }
            for set in t.elements.keys.sorted() where !t.elements[set]!.isEmpty { ops.append(.addElements(table: name, set: set, t.elements[set]!)) }
        }
        return ops
    }

    /// A stable order of keys (for deterministic scripts and messages).
    static func keyOrder(_ a: Key, _ b: Key) -> Bool {
        switch (a, b) {
        case (.index(let x), .index(let y)): return x < y
        case (.address(let x), .address(let y)): return x < y
        default: return NFT.text(a) < NFT.text(b)
        }
    }
}
