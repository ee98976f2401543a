import Prometheus
import Synchronization
import WeftCore

/// Every metric the agent exports on `/metrics` (Prometheus text format), in one place with its
/// help text; docs/metrics.md lists them with what to do about each. Values are recorded as
/// things happen (reconcile passes, CNI invocations read from the plugin's event log, denials)
/// or by the collector's periodic reads (IPAM, conntrack, nftables counters), so a scrape only
/// serialises: its cost does not grow with the number of pods.
final class AgentMetrics: Sendable {
    let registry = PrometheusCollectorRegistry()

    static let latencyBuckets: [Duration] = [.milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10), .milliseconds(20),
                                             .milliseconds(50), .milliseconds(100), .milliseconds(200), .milliseconds(500),
                                             .seconds(1), .seconds(2), .seconds(5), .seconds(10)]

    // MARK: CNI (from the plugin's event log)

    func cni(_ e: CNIEvent) {
        registry.makeDurationHistogram(descriptor: d("weft_cni_operation_duration_seconds", "Time the weft CNI plugin took per invocation, by command (ADD, DEL, CHECK, GC, STATUS), errors included."), labels: [("command", e.command)], buckets: Self.latencyBuckets)
            .record(.nanoseconds(Int64(e.seconds * 1e9)))
        if e.code != 0 {
            registry.makeCounter(descriptor: d("weft_cni_operation_errors_total", "CNI invocations that failed, by command and CNI error code (see the README's table of codes)."), labels: [("command", e.command), ("code", "\(e.code)")]).increment()
        }
    }

    // MARK: IPAM

    func ipam(range: String, capacity: Int, allocated: Int) {
        registry.makeGauge(descriptor: d("weft_ipam_addresses", "Addresses the node's pod range can give to pods."), labels: [("range", range)]).set(Double(capacity))
        registry.makeGauge(descriptor: d("weft_ipam_addresses_allocated", "Addresses of the node's pod range held by pods (IPAM store records)."), labels: [("range", range)]).set(Double(allocated))
    }

    // MARK: reconcile loops

    /// - loop: routes, services or policy.
    func reconciled(_ loop: String, took: Duration, failed: Bool) {
        registry.makeDurationHistogram(descriptor: d("weft_reconcile_duration_seconds", "Time of one reconcile pass (read desired state, write the kernel), by loop: routes, services, policy."), labels: [("loop", loop)], buckets: Self.latencyBuckets)
            .record(took)
        if failed {
            registry.makeCounter(descriptor: d("weft_reconcile_errors_total", "Reconcile passes that failed (retried at the next change or resync), by loop."), labels: [("loop", loop)]).increment()
        }
    }

    func routesProgrammed(_ n: Int) {
        registry.makeGauge(descriptor: d("weft_routes_programmed", "Routes the agent keeps to peer nodes' pod ranges.")).set(Double(n))
    }

    /// What a dataplane holds, per object it counts (nftables: per table).
    func programmed(_ counts: [DataplaneCount]) {
        for c in counts { nftables(table: c.name, rules: c.rules, elements: c.elements) }
    }

    func nftables(table: String, rules: Int, elements: Int) {
        registry.makeGauge(descriptor: d("weft_nftables_rules_programmed", "Rules in the agent's nftables table, as last written, by table."), labels: [("table", table)]).set(Double(rules))
        registry.makeGauge(descriptor: d("weft_nftables_set_elements_programmed", "Elements of the sets and maps of the agent's nftables table, as last written, by table."), labels: [("table", table)]).set(Double(elements))
    }

    // MARK: drops

    private let lastCounters = Mutex([String: UInt64]())

    /// Kernel counters are absolute; the exported counter grows by the difference (a table
    /// replaced from scratch restarts its counters, and then grows by the new value).
    func dropped(reason: String, packets: UInt64) {
        let delta = lastCounters.withLock { last -> UInt64 in
            let before = last[reason] ?? 0
            last[reason] = packets
            return packets >= before ? packets - before : packets
        }
        let c = registry.makeCounter(descriptor: d("weft_dropped_packets_total", "Packets the node dropped, by reason: policy-ingress, policy-egress (no NetworkPolicy allows them), spoofed (source not the pod's)."), labels: [("reason", reason)])
        if delta > 0 { c.increment(by: Int64(delta)) }
    }

    func denialLogged(_ v: PolicyVerdict) {
        for p in v.policies.isEmpty ? ["none"] : v.policies {
            registry.makeCounter(descriptor: d("weft_policy_denials_logged_total", "Denied packets logged and explained (at most 50 a second per node), by direction and by each policy isolating the pod."), labels: [("direction", v.direction), ("policy", p)])
                .increment()
        }
    }

    // MARK: conntrack

    func conntrack(entries: Int, limit: Int) {
        registry.makeGauge(descriptor: d("weft_conntrack_entries", "Connection-tracking entries in the node's network namespace.")).set(Double(entries))
        registry.makeGauge(descriptor: d("weft_conntrack_entries_limit", "nf_conntrack_max: when entries reach it, new connections are dropped.")).set(Double(limit))
    }

    // MARK: datastore

    func watchRestarted(_ prefix: String) {
        registry.makeCounter(descriptor: d("weft_datastore_watch_restarts_total", "Watches that broke (datastore restart, compaction, network) and were re-established by a fresh list, by key prefix."), labels: [("prefix", prefix)]).increment()
    }

    func watchLag(_ lag: Duration) {
        registry.makeDurationHistogram(descriptor: d("weft_datastore_watch_lag_seconds", "From the agent writing its heartbeat key to its watch delivering the write: how far behind the agent sees the cluster."), buckets: Self.latencyBuckets)
            .record(lag)
    }

    func datastoreErrors() {
        registry.makeCounter(descriptor: d("weft_datastore_errors_total", "Datastore requests that failed (unreachable, timed out).")).increment()
    }

    func text() -> [UInt8] { registry.emitToBuffer() }

    private func d(_ name: String, _ help: String) -> MetricNameDescriptor { MetricNameDescriptor(metricName: name, unitName: "", helpText: help) }
}
