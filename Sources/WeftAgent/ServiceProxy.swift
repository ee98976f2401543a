import Logging
import WeftCore
import WeftOS

/// The agent's kube-proxy: follows Services and EndpointSlices (weft's own and any other
/// controller's) in the cluster cache and keeps the node's services tables (`inet weft-services`
/// and its shards, see `ServiceRules`) equal to what they describe. A copy of both kept from
/// the watch (`ServiceSource`) hands each pass the services that changed (bursts coalesce);
/// the model is updated with those and only the difference is written (a changed endpoint
/// touches its service's chains and elements).
/// At start, after a failed update, and every `resyncSeconds` the whole table is replaced in one transaction, which repairs any drift. Neither
/// touches conntrack, so established connections keep their NAT across updates and agent
/// restarts.
struct ServiceProxy: Sendable {
    let cache: ClusterCache
    let logger: Logger
    /// This node's name: Local traffic policies keep to its endpoints.
    let node: String
    /// The load balancer addresses this node announces; nil when the cluster has no ranges.
    var addresses: LoadBalancerAddresses?
    var healthChecks: HealthCheckServer
    /// The node's resolver, given the zone each pass computes; nil when DNS is off.
    var dns: DNSServer?
    var clusterDomain: DNSName = "cluster.local"
    /// Opens the node's conntrack table (a fake in tests).
    var conntrack: @Sendable () throws -> ConntrackControl = { try Conntrack() }
    var resyncSeconds: Double = 300
    var metrics = AgentMetrics()
    /// Told the services' addresses, to name flows.
    var flows: FlowRecorder?

    func run() async throws {
        // Services and slices are parsed into `source` as they change; node leases (who
        // announces each load balancer address) and the resync tick only wake the loop.
        let changes = cache.subscribe([Keys.services, Keys.endpointSlices, Keys.nodeLeases])
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await changes.tick(every: resyncSeconds) }
            group.addTask { try await apply(changes, source: ServiceSource()) }
            try await group.next()
            group.cancelAll()
        }
    }

    private func apply(_ changes: ClusterCache.Subscription, source: ServiceSource) async throws {
        // The whole table through libnftables; changes as netlink batches, which need no cache
        // of the table and so cost what they change (see `NFTablesNetlink`).
        let nft = LibNFTables(), netlink = NFTablesNetlink()
        var table = TableWriter(resyncSeconds: resyncSeconds)
        // Updated in place each pass (a copy per pass would cost what the table holds).
        var model = ServiceRules.Model(node: node)
        // For stale conntrack entries: what each service changed since the last successful
        // write had then (nil: it did not exist); nil before the first write.
        var writtenBefore: [String: ServiceRules.Entry?]?
        // DNS and flow names follow every change, whether or not the rules could be written.
        var namesStale = true
        // Woken once the cache has listed all three prefixes, then with what changed.
        while let keys = await changes.next() {
            source.update(keys, from: cache)
            let started = ContinuousClock.now
            let delta = source.take { o in
                logger.warning("skipping a service the datastore holds but weft cannot read", metadata: ["service": "\(o.namespace ?? "default")/\(o.name)"])
            }
            if writtenBefore != nil {
                for k in delta.changed.map(\.key) + delta.removed where writtenBefore?[k] == nil { writtenBefore?[k] = .some(delta.previous[k]) }
            }
            do {
                // The rules first: everything else in the pass can wait for them.
                let outcome = try table.write(update: {
                    guard let change = model.update(changed: delta.changed, removed: delta.removed) else { return false }
                    try netlink.apply(change.ops)
                    return true
                }, replace: {
                    // Built afresh from every entry: a resync repairs the model too.
                    model = ServiceRules.model(source.entries, node: node)
                    try nft.run(ServiceRules.fullScript(model, replacing: try nft.tableNames()))
                }, onIncrementalFailure: { error in
                    logger.warning("incremental services update failed; replacing the table", metadata: ["error": "\(error)"])
                })
                // Only once the rules are in: stale UDP entries deleted before would be made
                // again by the old rules, and a failed write must leave them for the next pass.
                if let was = writtenBefore {
                    clearStale(ServiceRules.staleConntrack(from: was.values.compactMap { $0 }, to: was.keys.compactMap { source.entry($0) }))
                }
                writtenBefore = [:]
                metrics.reconciled("services", took: ContinuousClock.now - started, failed: false)
                metrics.nftables(table: ServiceRules.frontTable, rules: model.ruleCount, elements: model.elementCount)
                let meta: Logger.Metadata = ["services": "\(model.serviceCount)", "changed": "\(delta.changed.count + delta.removed.count)"]
                switch outcome {
                case .unchanged: break
                case .updated: logger.info("services updated", metadata: meta)
                case .replaced: logger.info("services programmed (full sync)", metadata: meta)
                }
            } catch {
                table.forget()
                metrics.reconciled("services", took: ContinuousClock.now - started, failed: true)
                logger.error("programming services failed; retrying at the next change or resync", metadata: ["error": "\(error)"])
            }
            // After the rules, and whatever became of them.
            let entries = source.entries
            if namesStale || !delta.isEmpty {
                dns?.update(ClusterDNS(domain: clusterDomain, entries: entries))
                flows?.updateServices(entries)
                namesStale = false
            }
            await announce(entries)
        }
    }

    /// Load balancer addresses and health-check node ports follow the services; a failure
    /// here is logged and retried at the next change, without holding up the rules.
    private func announce(_ entries: [ServiceRules.Entry]) async {
        await healthChecks.update(LoadBalancing.healthChecks(node: node, entries: entries))
        guard let addresses else { return }
        do {
            let live = Set(cache.items(Keys.nodeLeases).map { String($0.key.dropFirst(Keys.nodeLeases.count)) })
            try addresses.reconcile(LoadBalancing.addresses(announcedBy: node, entries: entries, liveNodes: live))
        } catch {
            logger.error("reconciling load balancer addresses failed", metadata: ["error": "\(error)"])
        }
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
}
