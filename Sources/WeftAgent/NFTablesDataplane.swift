import Logging
import Synchronization
import WeftCore
import WeftOS

/// What the nftables dataplane needs of libnftables (a recorder stands in for it in tests).
protocol NFTablesKernel: AnyObject {
    func run(_ script: String) throws(NFTablesError)
    func tableNames() throws(NFTablesError) -> [String]
    func ruleCounts(tables: [String]) throws(NFTablesError) -> [String: [String: Int]]
    func counters(table: String) throws(NFTablesError) -> [String: (packets: UInt64, bytes: UInt64)]
}

extension LibNFTables: NFTablesKernel {}

/// The `Dataplane` as nftables tables in the node's network namespace: services in
/// `inet weft-services` and its shards (`ServiceRules`), NetworkPolicy in `inet weft-policy`
/// (`PolicyRules`), both described in the typed nftables layer (`NFT`). Every write, a change or
/// the whole tables (first write, resync, a change that failed), goes as one nf_tables netlink
/// batch: no cache of the tables is read first, so a change costs what it changes, and a full
/// sync skips libnftables' parse of a script of tens of megabytes. Stale UDP conntrack entries are deleted once the rules
/// that make new ones right are in. The only place that knows these tables' names and keys.
///
/// Each part (services, policy) has its own lock and its own libnftables context (neither is
/// safe to share across threads): the services loop and the policy loop program at once, and the
/// agent's HTTP endpoint reads through the same locks.
public final class NFTablesDataplane: Dataplane {
    public let kind = DataplaneKind.nftables
    public let node: String
    let logger: Logger
    /// Opens the node's conntrack table (a fake in tests).
    let conntrack: @Sendable () throws -> ConntrackControl

    struct Services {
        let nft: any NFTablesKernel
        let netlink: any NFTablesOpsWriter
        var table = TableWriter()
        /// Updated in place each pass (a copy per pass would cost what the table holds).
        var model: ServiceRules.Model
        /// What the dataplane was given, by "namespace/name".
        var entries: [String: ServiceRules.Entry] = [:]
        /// For stale conntrack entries: what each service changed since the last successful
        /// write had then (nil: it did not exist); nil before the first write.
        var writtenBefore: [String: ServiceRules.Entry?]?
        var given = false
    }

    struct Policy {
        let nft: any NFTablesKernel
        let netlink: any NFTablesOpsWriter
        var table = TableWriter()
        var input: PolicyRules.Input?
        /// What the last successful write left in the kernel.
        var applied: NFT.Ruleset?
        /// What the dataplane means to hold.
        var want: NFT.Ruleset?
    }

    let services: Mutex<Services>
    let policy: Mutex<Policy>

    public convenience init(node: String, logger: Logger) {
        self.init(node: node, logger: logger, kernel: { LibNFTables() }, netlink: { NFTablesNetlink() }, conntrack: { try Conntrack() })
    }

    init(node: String, logger: Logger, kernel: () -> any NFTablesKernel, netlink: () -> any NFTablesOpsWriter,
         conntrack: @escaping @Sendable () throws -> ConntrackControl) {
        self.node = node; self.logger = logger; self.conntrack = conntrack
        services = Mutex(Services(nft: kernel(), netlink: netlink(), model: ServiceRules.Model(node: node)))
        policy = Mutex(Policy(nft: kernel(), netlink: netlink()))
    }

    // MARK: services

    public func programServices(_ update: ServiceUpdate) throws -> DataplaneWrite {
        let node = node, logger = logger
        return try services.withLock { s in
            var whole = false
            var change: (changed: [ServiceRules.Entry], removed: Set<String>)?
            // What the changed services were at the last successful write, for stale conntrack.
            func remember(_ keys: some Sequence<String>) {
                guard s.writtenBefore != nil else { return }
                for k in keys where s.writtenBefore?[k] == nil { s.writtenBefore?[k] = .some(s.entries[k]) }
            }
            switch update {
            case .all(let all):
                var next: [String: ServiceRules.Entry] = [:]
                for e in all { next[e.key] = e }
                if s.writtenBefore != nil {
                    remember(next.filter { k, e in !(s.entries[k].map { Self.same($0, e) } ?? false) }.keys)
                    remember(s.entries.keys.filter { next[$0] == nil })
                }
                s.entries = next
                whole = true
            case .change(let changed, let removed):
                remember(changed.map(\.key) + removed)
                // In place: a copy of every entry per pass would cost what the table holds.
                for k in removed { s.entries[k] = nil }
                for e in changed { s.entries[e.key] = e }
                change = (changed, removed)
            }
            s.given = true
            var table = s.table
            defer { s.table = table }
            // Moved out, not copied (a copy would cost what the table holds), and back after.
            var model = ServiceRules.Model(node: node)
            swap(&model, &s.model)
            defer { swap(&model, &s.model) }
            let (nft, netlink, entries) = (s.nft, s.netlink, s.entries)
            let outcome: DataplaneWrite
            do {
                outcome = try table.write(whole: whole, update: {
                    guard let change else { return nil }
                    // nil: only replacing the tables makes the change.
                    guard let tx = model.update(changed: change.changed, removed: change.removed) else { return nil }
                    guard !tx.isEmpty else { return false }
                    try netlink.apply(tx.ops)
                    return true
                }, replace: {
                    // Built afresh from every entry: a whole write repairs the model too.
                    model = ServiceRules.model(Array(entries.values), node: node)
                    try netlink.apply(ServiceRules.fullSync(model, replacing: try nft.tableNames()))
                }, onIncrementalFailure: { error in
                    logger.warning("incremental services update failed; replacing the table", metadata: ["error": "\(error)"])
                })
            } catch {
                table.forget()
                throw error
            }
            // Only once the rules are in: stale UDP entries deleted before would be made again
            // by the old rules, and a failed write must leave them for the next call.
            if let was = s.writtenBefore {
                clearStale(ServiceRules.staleConntrack(from: was.values.compactMap { $0 }, to: was.keys.compactMap { entries[$0] }))
            }
            s.writtenBefore = [:]
            return outcome
        }
    }

    /// The same entry: by source when both have one (see `ServiceRules.Entry.source`), else field by field.
    static func same(_ a: ServiceRules.Entry, _ b: ServiceRules.Entry) -> Bool {
        if let x = a.source, let y = b.source { return x == y }
        return a == b
    }

    /// Deletes the conntrack entries a change left stale (see `ServiceRules.staleConntrack`).
    private func clearStale(_ stale: Set<StaleConntrack>) {
        guard !stale.isEmpty else { return }
        do {
            let ct = try conntrack()
            var deleted = 0
            for s in stale {
                let proto: ConntrackProtocol = s.proto == "SCTP" ? .sctp : (s.proto == "TCP" ? .tcp : .udp)
                deleted += try ct.deleteEntries(matching: ConntrackFilter(family: s.family, proto: proto, originalDestination: s.destination,
                                                                          originalDestinationPort: s.destinationPort, replySource: s.replySource,
                                                                          replySourcePort: s.replySourcePort))
            }
            if deleted > 0 { logger.info("stale UDP conntrack entries deleted", metadata: ["entries": "\(deleted)"]) }
        } catch {
            logger.warning("deleting stale UDP conntrack entries failed; those clients keep their old endpoint until the entries time out",
                           metadata: ["error": "\(error)"])
        }
    }

    // MARK: policy

    public func programPolicy(_ input: PolicyRules.Input, resync: Bool) throws -> DataplaneWrite {
        let node = node, logger = logger
        return try policy.withLock { p in
            let want = PolicyRules.ruleset(input, node: node)
            p.input = input
            p.want = want
            var table = p.table
            defer { p.table = table }
            let (netlink, applied) = (p.netlink, p.applied)
            do {
                let outcome = try table.write(whole: resync, update: {
                    // nil: only replacing the table makes the change.
                    guard let have = applied, let tx = NFT.transaction(from: have, to: want) else { return nil }
                    guard !tx.isEmpty else { return false }
                    try netlink.apply(tx.ops)
                    return true
                }, replace: { try netlink.apply(NFT.replacing(want)) }, onIncrementalFailure: { error in
                    logger.warning("incremental policy update failed; replacing the table", metadata: ["error": "\(error)"])
                })
                p.applied = want
                return outcome
            } catch {
                table.forget()
                throw error
            }
        }
    }

    // MARK: observing

    public func dump() -> String {
        let entries = services.withLock { Array($0.entries.values) }
        let input = policy.withLock { $0.input }
        return DataplaneView.dump(services: entries, policy: input, node: node)
    }

    public func traceService(address: IPAddress, port: UInt16, proto: String) -> ServiceTrace? {
        let node = node
        return services.withLock { s -> ServiceTrace? in
            guard let f = DataplaneView.frontend(s.entries.values, node: node, address: address, port: port, proto: proto),
                  let e = s.entries[f.service] else { return nil }
            let shard = ServiceRules.table(for: e.service)
            let key = "\(address) . \(proto.lowercased()) . \(port)"
            let v6 = address.family == .v6
            let element = (try? s.nft.run("get element inet \(shard) \(v6 ? "service-ips6" : "service-ips") { \(key) }")) != nil
            let noEndpoint = (try? s.nft.run("get element inet \(ServiceRules.frontTable) \(v6 ? "no-endpoint-services6" : "no-endpoint-services") { \(key) }")) != nil
            let live = DataplaneLive(text: element ? "service-ips has \(key)" : (noEndpoint ? "no-endpoint-services has \(key) (reject)" : "no element for \(key)"),
                                     agrees: f.action == .reject ? noEndpoint : element)
            return ServiceTrace(frontend: f, place: "DNAT in inet \(shard)", live: live)
        }
    }

    public func tracePolicy(_ d: NetworkPolicy.Direction, pod: IPAddress, peer: IPAddress, port: UInt16?, proto: String) -> PolicyTrace {
        let node = node
        return policy.withLock { p in
            var t = p.input.map { DataplaneView.policyTrace($0, node: node, d, pod: pod, peer: peer, port: port, proto: proto) }
                ?? PolicyTrace(pod: nil, allowed: true, isolatedBy: [], allowedBy: [])
            let map = "\(d.word)-pods\(pod.family == .v4 ? "4" : "6")"
            let mapped = (try? p.nft.run("get element inet \(PolicyRules.table) \(map) { \(pod) }")) != nil
            t.live = DataplaneLive(text: mapped ? "\(pod) is in \(d.word)-pods (isolated)" : "\(pod) is not in \(d.word)-pods (not isolated)",
                                   agrees: mapped == !t.isolatedBy.isEmpty)
            return t
        }
    }

    public func counts(_ part: DataplanePart) -> [DataplaneCount] {
        switch part {
        case .services:
            return services.withLock { s in [DataplaneCount(part: .services, name: ServiceRules.frontTable, rules: s.model.ruleCount, elements: s.model.elementCount)] }
        case .policy:
            return policy.withLock { p in
                guard let m = p.applied else { return [] }
                return [DataplaneCount(part: .policy, name: PolicyRules.table, rules: m[PolicyRules.table].ruleCount, elements: m[PolicyRules.table].elementCount)]
            }
        }
    }

    public func drops() throws -> [DropReason: UInt64] {
        let counters = try policy.withLock { p throws(NFTablesError) in try p.nft.counters(table: PolicyRules.table) }
        var out: [DropReason: UInt64] = [:]
        for (name, reason) in [("denied-ingress", DropReason.policyIngress), ("denied-egress", .policyEgress), ("spoofed", .spoofed)] {
            if let c = counters[name] { out[reason] = c.packets }
        }
        return out
    }

    /// Rules per chain of each table, meant against the kernel's. The meant counts come from the
    /// whole tables the dataplane would write now (so they follow any layout change).
    public func check() throws -> [DataplaneDrift] {
        var want = services.withLock { s in s.given ? ServiceRules.ruleset(s.model).ruleCounts : [:] }
        if let p = policy.withLock({ $0.want }) { want.merge(p.ruleCounts) { a, _ in a } }
        guard !want.isEmpty else { return [] }
        let tables = Array(want.keys)
        let kernel = try services.withLock { s throws(NFTablesError) in try s.nft.ruleCounts(tables: tables) }
        return Self.drift(want: want, kernel: kernel)
    }

    static func drift(want: [String: [String: Int]], kernel: [String: [String: Int]]) -> [DataplaneDrift] {
        var out: [DataplaneDrift] = []
        for table in want.keys.sorted() {
            let wanted = want[table]!
            guard let have = kernel[table] else {
                out.append(DataplaneDrift(object: "table inet \(table)", missing: true))
                continue
            }
            var diffs: [String] = []
            for chain in wanted.keys.sorted() where have[chain] != wanted[chain] {
                diffs.append(have[chain] == nil ? "chain \(chain) missing" : "chain \(chain): \(have[chain]!) rule(s), \(wanted[chain]!) meant")
            }
            for chain in have.keys.sorted() where wanted[chain] == nil { diffs.append("chain \(chain) is not weft's") }
            if !diffs.isEmpty { out.append(DataplaneDrift(object: "table inet \(table)", missing: false, differences: diffs)) }
        }
        return out
    }
}
