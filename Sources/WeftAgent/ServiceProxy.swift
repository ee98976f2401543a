import Logging
import WeftCore
import WeftOS

/// The agent's kube-proxy: follows Services and EndpointSlices (weft's own and any other
/// controller's) in the cluster cache and keeps the node's dataplane holding what they
/// describe. A copy of both kept from the cache (`ServiceSource`) hands each pass the services
/// that changed (bursts coalesce), and only those are handed to the dataplane. At start and
/// every `resyncSeconds` the dataplane is given every service, which repairs any drift. How the
/// rules are written, and which conntrack entries a change leaves stale, is the dataplane's
/// business (`Dataplane`); established connections keep their NAT across updates and agent
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
    /// Where the services are programmed (nftables in the agent, a fake in tests).
    let dataplane: any Dataplane
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
        // DNS and flow names follow every change, whether or not the rules could be written.
        var namesStale = true
        // The last time the dataplane was given every service; nil: not yet.
        var resynced: ContinuousClock.Instant?
        // Woken once the cache has listed all three prefixes, then with what changed.
        while let keys = await changes.next() {
            source.update(keys, from: cache)
            let started = ContinuousClock.now
            let resync = resynced.map { started - $0 >= .milliseconds(Int(resyncSeconds * 1000)) } ?? true
            let delta = source.take { o in
                logger.warning("skipping a service the datastore holds but weft cannot read", metadata: ["service": "\(o.namespace ?? "default")/\(o.name)"])
            }
            // The rules first: everything else in the pass can wait for them.
            let all = resync ? source.entries : nil
            do {
                // Whatever becomes of the write: the dataplane keeps what it is given and
                // writes it whole at the next call if this one fails.
                if resync { resynced = started }
                let outcome = try dataplane.programServices(all.map { .all($0) } ?? .change(changed: delta.changed, removed: delta.removed))
                metrics.reconciled("services", took: ContinuousClock.now - started, failed: false)
                metrics.programmed(dataplane.counts(.services))
                let meta: Logger.Metadata = ["changed": "\(delta.changed.count + delta.removed.count)"]
                switch outcome {
                case .unchanged: break
                case .updated: logger.info("services updated", metadata: meta)
                case .replaced: logger.info("services programmed (full sync)", metadata: meta.merging(["services": "\(all?.count ?? 0)"]) { a, _ in a })
                }
            } catch {
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
}
