import Logging
import WeftCore

/// Wakes `wake` once after listing `prefix` and then on every event under it, relisting after
/// a broken watch (compaction, datastore restart). For level-based loops that recompute from a
/// fresh list on each wake-up: bursts coalesce in a `bufferingNewest(1)` stream. A loop that
/// keeps its own copy instead (`ServiceSource`) is handed each list and event before the wake.
func wakeOnChanges(_ store: any Datastore, prefix: String, logger: Logger, metrics: AgentMetrics? = nil, wake: AsyncStream<Void>.Continuation,
                   listed: @Sendable ([KeyValue]) -> Void = { _ in }, event: @Sendable (WatchEvent) -> Void = { _ in }) async throws {
    while !Task.isCancelled {
        do {
            let (items, rev) = try await store.list(prefix: prefix)
            listed(items)
            wake.yield()
            for try await e in store.watch(prefix: prefix, afterRevision: rev) {
                event(e)
                wake.yield()
            }
        } catch is CancellationError { return } catch {
            metrics?.watchRestarted(prefix)
            logger.warning("watch interrupted; relisting", metadata: ["prefix": "\(prefix)", "error": "\(error)"])
            try await Task.sleep(for: .milliseconds(200))
        }
    }
}

/// The wake-ups of a level-based loop, as child tasks of `group`: a watch per prefix (see
/// `wakeOnChanges`) and a tick every `resyncSeconds`. The loop reads the returned stream and
/// recomputes everything on each element, or keeps a copy from what `listed` and `event` are
/// handed.
func changes(of store: any Datastore, prefixes: [String], resyncSeconds: Double, logger: Logger, metrics: AgentMetrics?,
             in group: inout ThrowingTaskGroup<Void, Error>,
             listed: @escaping @Sendable (String, [KeyValue]) -> Void = { _, _ in }, event: @escaping @Sendable (WatchEvent) -> Void = { _ in }) -> AsyncStream<Void> {
    let (changes, wake) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
    for prefix in prefixes {
        group.addTask {
            try await wakeOnChanges(store, prefix: prefix, logger: logger, metrics: metrics, wake: wake,
                                    listed: { listed(prefix, $0) }, event: event)
        }
    }
    group.addTask {
        while !Task.isCancelled {
            try await Task.sleep(for: .milliseconds(Int(resyncSeconds * 1000)))
            wake.yield()
        }
    }
    return changes
}

/// For best-effort tasks in a task group that ends when any child returns: after giving up,
/// they wait here until the group is cancelled instead of ending it.
func waitForCancellation() async {
    while !Task.isCancelled { try? await Task.sleep(for: .seconds(3600)) }
}

/// Renews `lease` at a third of its TTL while `holds()` is true; returns when it is not, and
/// throws `.leaseNotFound` once the lease is lost. For the keys an agent keeps alive with a
/// lease of their own (the EndpointSlice controller's leadership, the DNS endpoint).
func renewLease(_ store: any Datastore, _ lease: Int64, ttl: Int64, while holds: @Sendable () async throws -> Bool = { true }) async throws {
    let period = max(Double(ttl) / 3, 0.5)
    while !Task.isCancelled {
        try await Task.sleep(for: .milliseconds(Int(period * 1000)))
        try await store.keepAlive(lease: lease)
        guard try await holds() else { return }
    }
}
