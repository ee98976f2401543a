/// An nftables table weft owns, as data: chains (base chains with their hook), named sets and
/// maps with their elements. `fullScript` replaces the whole table in one transaction;
/// `update(from:to:)` writes only the difference, so a change costs what it touches (a pod
/// changing labels adds and deletes set elements; a policy change rewrites that policy's chains).
/// Pure: the agent runs the scripts.
public struct TableModel: Sendable, Equatable {
    public struct Chain: Sendable, Equatable {
        /// `type filter hook forward priority 0 ; policy accept ;` for a base chain; nil otherwise.
        public var hook: String?
        public var rules: [String]
        public init(hook: String? = nil, rules: [String] = []) { self.hook = hook; self.rules = rules }
    }

    public struct NamedSet: Sendable, Equatable {
        /// The declaration inside braces, e.g. `type ipv4_addr ;` or `type ipv4_addr : verdict ;`.
        public var spec: String
        public var isMap: Bool
        /// key → value (maps) or key → "" (sets).
        public var elements: [String: String]
        public init(spec: String, isMap: Bool = false, elements: [String: String] = [:]) { self.spec = spec; self.isMap = isMap; self.elements = elements }
    }

    public var family: String
    public var name: String
    public var chains: [String: Chain] = [:]
    public var sets: [String: NamedSet] = [:]
    /// Named counters (read back for the verdict counts).
    public var counters: Set<String> = []

    public init(family: String = "inet", name: String) { self.family = family; self.name = name }

    var table: String { "\(family) \(name)" }

    static func quoted(_ name: String) -> String { "\"\(name)\"" }

    func elementText(_ set: NamedSet, _ keys: [String]) -> String {
        keys.map { set.isMap ? "\($0) : \(set.elements[$0]!)" : $0 }.joined(separator: ", ")
    }

    /// The whole table, replacing whatever is there, in one transaction.
    public var fullScript: String {
        var s = "add table \(table)\ndelete table \(table)\nadd table \(table)\n"
        for c in counters.sorted() { s += "add counter \(table) \(c)\n" }
        for n in sets.keys.sorted() { s += "add \(sets[n]!.isMap ? "map" : "set") \(table) \(n) { \(sets[n]!.spec) }\n" }
        for n in chains.keys.sorted() { s += "add chain \(table) \(n)\(chains[n]!.hook.map { " { \($0) }" } ?? "")\n" }
        for n in chains.keys.sorted() { for r in chains[n]!.rules { s += "add rule \(table) \(n) \(r)\n" } }
        for n in sets.keys.sorted() where !sets[n]!.elements.isEmpty {
            s += elementLines("add", n, sets[n]!, sets[n]!.elements.keys.sorted())
        }
        return s
    }

    /// Elements in statements of at most 1,000 (one statement per element is slow to parse;
    /// one for 100,000 is slow to build).
    func elementLines(_ verb: String, _ set: String, _ s: NamedSet, _ keys: [String]) -> String {
        var out = ""
        var i = 0
        while i < keys.count {
            let chunk = Array(keys[i..<min(i + 1000, keys.count)])
            out += "\(verb) element \(table) \(set) { \(verb == "delete" ? chunk.joined(separator: ", ") : elementText(s, chunk)) }\n"
            i += 1000
        }
        return out
    }

    public enum Update: Sendable, Equatable {
        case none
        /// Two transactions: the first adds and rewrites (new sets and chains, changed chains
        /// flushed and refilled, elements deleted and added), so every lookup switches at once;
        /// the second deletes what nothing refers to any more.
        case incremental(update: String, cleanup: String)
        /// A set's type or a base chain's hook changed: only replacing the table does that.
        case full
    }

    public static func update(from old: TableModel, to new: TableModel) -> Update {
        guard old != new else { return .none }
        guard old.table == new.table, old.counters == new.counters else { return .full }
        for (n, s) in new.sets { if let o = old.sets[n], o.spec != s.spec || o.isMap != s.isMap { return .full } }
        for (n, c) in new.chains { if let o = old.chains[n], o.hook != c.hook { return .full } }
        let t = new.table
        var s = ""
        for n in old.sets.keys.sorted() {
            guard let now = new.sets[n] else { continue }
            let was = old.sets[n]!
            let gone = was.elements.filter { now.elements[$0.key] != $0.value }.keys.sorted()
            if !gone.isEmpty { s += new.elementLines("delete", n, was, gone) }
        }
        for n in new.sets.keys.sorted() where old.sets[n] == nil { s += "add \(new.sets[n]!.isMap ? "map" : "set") \(t) \(n) { \(new.sets[n]!.spec) }\n" }
        for n in new.chains.keys.sorted() where old.chains[n] == nil { s += "add chain \(t) \(n)\(new.chains[n]!.hook.map { " { \($0) }" } ?? "")\n" }
        for n in new.chains.keys.sorted() where old.chains[n] != new.chains[n] {
            if old.chains[n] != nil { s += "flush chain \(t) \(n)\n" }
            for r in new.chains[n]!.rules { s += "add rule \(t) \(n) \(r)\n" }
        }
        // Chains about to go are emptied first, so nothing refers to them or their sets.
        for n in old.chains.keys.sorted() where new.chains[n] == nil { s += "flush chain \(t) \(n)\n" }
        for n in new.sets.keys.sorted() {
            let was = old.sets[n]?.elements ?? [:]
            let added = new.sets[n]!.elements.filter { was[$0.key] != $0.value }.keys.sorted()
            if !added.isEmpty { s += new.elementLines("add", n, new.sets[n]!, added) }
        }
        var cleanup = ""
        for n in old.chains.keys.sorted() where new.chains[n] == nil { cleanup += "delete chain \(t) \(n)\n" }
        for n in old.sets.keys.sorted() where new.sets[n] == nil { cleanup += "delete \(old.sets[n]!.isMap ? "map" : "set") \(t) \(n)\n" }
        return .incremental(update: s, cleanup: cleanup)
    }
}
