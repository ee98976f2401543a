import Synchronization

extension ServiceRules {
    static let revisions = Atomic<Int>(0)
    static func nextRevision() -> Int { revisions.add(1, ordering: .relaxed).newValue }

    /// A map key one service holds: two services naming one external address and port cannot
    /// both have it, whichever shards they are in (a map of a name is one map over the shards).
    struct Claim: Hashable {
        var map: String
        var key: NFT.Key
    }

    /// What the tables hold beyond their fixed part, per service. Updated in place, rebuilding
    /// only the services whose entry changed, and each update returns the transaction that
    /// takes the kernel from the model before to the model after: the diff looks at the
    /// rebuilt services' fragments only, so a change costs what it touches, not the table.
    public struct Model: Sendable {
        struct Built: Sendable {
            var entry: Entry
            var fragment: NFT.Ruleset
            /// Unique to each build of a fragment (across models): the diff compares these, not fragments.
            var revision: Int
        }
        /// The node the table is for (Local traffic policies keep to its endpoints).
        public let node: String?
        var services: [String: Built] = [:]
        /// This model, and the one it was updated from with the services rebuilt or gone since:
        /// the diff between the two looks at those only.
        var generation = ServiceRules.nextRevision()
        var parent: Int?
        var changedKeys: Set<String> = []
        /// Each service's entry source (see `Entry.source`), apart so checking it copies nothing.
        var sources: [String: String] = [:]
        /// Which service holds each contested key; the one that had it keeps it, and the others
        /// wait for it (`waiting`), rebuilt when it is freed.
        var claims: [Claim: String] = [:]
        var waiting: [Claim: Set<String>] = [:]

        public init(node: String? = nil) { self.node = node }

        /// The model for `entries`, rebuilding only the services whose entry changed.
        public func updated(with entries: [Entry]) -> Model {
            var m = self
            _ = m.rebuild(with: entries)
            return m
        }

        /// Brings the model to `entries` in place, rebuilding only the services whose entry
        /// changed, and returns the transaction that makes the change (empty: nothing changed;
        /// nil: only a full replace can). In place, so a pass over 10,000 unchanged services
        /// copies none of them.
        public mutating func update(with entries: [Entry]) -> NFT.Transaction? {
            let before = rebuild(with: entries)
            return change(since: before)
        }

        /// The same for a reader that knows what changed: `changed` entries (new or different)
        /// and `removed` services ("namespace/name"); every other service stays as it is, and
        /// none of them is looked at, so the cost follows the change, not the table.
        public mutating func update(changed: [Entry], removed: Set<String>) -> NFT.Transaction? {
            var byKey: [String: Entry] = [:]
            for e in changed { byKey[e.key] = e }
            let gone = removed.filter { byKey[$0] == nil && services[$0] != nil }
            let todo = byKey.values.filter { e in !(services[e.key].map { $0.entry.same(as: e) } ?? false) }.map(\.key)
            let before = rebuild(gone: gone, todo: todo) { k, built in byKey[k] ?? built[k]?.entry }
            return change(since: before)
        }

        private func change(since before: [String: Built]) -> NFT.Transaction? {
            let keys = changedKeys.sorted()
            return ServiceRules.transaction(from: keys.compactMap { before[$0] }, to: keys.compactMap { services[$0] })
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
            generation = ServiceRules.nextRevision()
            var before: [String: Built] = [:], changed: Set<String> = []
            // Services gone first, so what they held is free for the others in this same pass.
            var freed: Set<Claim> = []
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
                    services[k] = Built(entry: e, fragment: claim(k, ServiceRules.fragment(e, node: node)), revision: ServiceRules.nextRevision())
                }
                todo = []
            }
            changedKeys = changed
            return before
        }

        /// `fragment` without the keys another service holds (`service` waits for those).
        private mutating func claim(_ service: String, _ fragment: NFT.Ruleset) -> NFT.Ruleset {
            var f = fragment
            for (table, t) in fragment.tables {
                for (map, items) in t.elements {
                    for key in items.keys {
                        let c = Claim(map: map, key: key)
                        if let owner = claims[c], owner != service {
                            f.tables[table]!.elements[map]![key] = nil
                            waiting[c, default: []].insert(service)
                        } else {
                            claims[c] = service
                        }
                    }
                    if f.tables[table]!.elements[map]!.isEmpty { f.tables[table]!.elements[map] = nil }
                }
            }
            return f
        }

        /// Gives up `service`'s claims; returns the claims now free.
        private mutating func release(_ service: String, _ f: NFT.Ruleset) -> Set<Claim> {
            var freed: Set<Claim> = []
            for t in f.tables.values {
                for (map, items) in t.elements {
                    for key in items.keys {
                        let c = Claim(map: map, key: key)
                        if claims[c] == service {
                            claims[c] = nil
                            freed.insert(c)
                        }
                    }
                }
            }
            return freed
        }

        /// The build of `service` ("namespace/name") the model holds: equal in two models when
        /// the second kept the first's fragment.
        public func revision(of service: String) -> Int? { services[service]?.revision }
        /// Every service's part of the tables, merged.
        public var fragments: NFT.Ruleset {
            var r = NFT.Ruleset()
            for k in services.keys.sorted() { r.merge(services[k]!.fragment) }
            return r
        }
        public var serviceCount: Int { services.count }
        public var ruleCount: Int { services.values.reduce(0) { $0 + $1.fragment.tables.values.reduce(0) { $0 + $1.ruleCount } } }
        public var elementCount: Int { services.values.reduce(0) { $0 + $1.fragment.tables.values.reduce(0) { $0 + $1.elementCount } } }
    }

    /// - node: the node the table is for (Local traffic policies keep to its endpoints).
    public static func model(_ entries: [Entry], node: String? = nil) -> Model { Model(node: node).updated(with: entries) }

    /// The transaction from `old` to `new`: only the services whose fragment was rebuilt are
    /// looked at, so its cost follows the change, not the table. Empty when nothing changed.
    public static func transaction(from old: Model, to new: Model) -> NFT.Transaction? {
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
        return transaction(from: was, to: now)
    }

    /// From the builds `was` (gone or replaced) to `now` (new or replacing them), through the
    /// one diff of the typed layer.
    static func transaction(from was: [Model.Built], to now: [Model.Built]) -> NFT.Transaction? {
        var old = NFT.Ruleset(), new = NFT.Ruleset()
        for b in was { old.merge(b.fragment) }
        for b in now { new.merge(b.fragment) }
        return NFT.transaction(from: old, to: new)
    }
}
