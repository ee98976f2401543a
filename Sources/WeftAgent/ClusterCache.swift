import Logging
import ServiceLifecycle
import Synchronization
import WeftCore

/// The agent's one copy of the cluster, informer-style: one list and then one watch per kind
/// (a datastore prefix), shared by every loop. A loop subscribes to the prefixes it reads, is
/// woken with the keys that changed since it last looked (bursts coalesce), and reads the
/// cache's copy; no loop lists the datastore on a wake-up. The cache relists a kind only after
/// its watch broke (compaction, a datastore restart), and then tells subscribers the keys that
/// differ.
///
/// It needs nothing but `list` and `watch` of the datastore per kind, which is what the
/// Kubernetes API gives too.
public final class ClusterCache: Service, Sendable {
    let store: any Datastore
    /// The kinds kept, as datastore prefixes.
    public let prefixes: [String]
    let logger: Logger
    let metrics: AgentMetrics?

    private struct Kind {
        var items: [String: KeyValue] = [:]
        var synced = false
    }

    private struct State {
        var kinds: [String: Kind] = [:]
        var subscribers: [Int: Subscription] = [:]
        var nextID = 0
    }

    private let state: Mutex<State>

    /// The kinds every loop of the agent reads.
    public static let agentPrefixes = [Keys.nodes, Keys.nodeLeases, Keys.namespaces, Keys.pods, Keys.services, Keys.endpointSlices,
                                       Keys.networkPolicies, Keys.leaders]

    public convenience init(store: any Datastore, prefixes: [String] = ClusterCache.agentPrefixes, logger: Logger) {
        self.init(store: store, prefixes: prefixes, logger: logger, metrics: nil)
    }

    /// - metrics: counts each broken watch.
    init(store: any Datastore, prefixes: [String] = ClusterCache.agentPrefixes, logger: Logger, metrics: AgentMetrics?) {
        self.store = store; self.prefixes = prefixes; self.logger = logger; self.metrics = metrics
        state = Mutex(State(kinds: Dictionary(uniqueKeysWithValues: prefixes.map { ($0, Kind()) })))
    }

    /// Lists and watches every kind until cancelled (or a graceful shutdown).
    public func run() async throws {
        try await cancelWhenGracefulShutdown {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for prefix in self.prefixes { group.addTask { try await self.follow(prefix) } }
                try await group.waitForAll()
            }
        }
    }

    /// List, then watch from the list's revision; on compaction or a broken stream, relist.
    private func follow(_ prefix: String) async throws {
        while !Task.isCancelled {
            do {
                let (items, revision) = try await store.list(prefix: prefix)
                replace(prefix, items)
                for try await event in store.watch(prefix: prefix, afterRevision: revision) { apply(prefix, event) }
            } catch is CancellationError { return } catch {
                metrics?.watchRestarted(prefix)
                logger.warning("watch interrupted; relisting", metadata: ["prefix": "\(prefix)", "error": "\(error)"])
                try await Task.sleep(for: .milliseconds(200))
            }
        }
    }

    private func replace(_ prefix: String, _ items: [KeyValue]) {
        state.withLock { s in
            var kind = s.kinds[prefix] ?? Kind()
            let now = Dictionary(items.map { ($0.key, $0) }, uniquingKeysWith: { _, b in b })
            // Values compared too: a datastore restored from a snapshot reuses revisions.
            var changed = Set(now.filter { kind.items[$0.key] != $0.value }.keys)
            changed.formUnion(kind.items.keys.filter { now[$0] == nil })
            // A kind listed for the first time: its subscribers have seen none of it.
            if !kind.synced { changed.formUnion(now.keys) }
            kind.items = now
            kind.synced = true
            s.kinds[prefix] = kind
            Self.notify(s, prefix: prefix, keys: changed, kindSynced: true)
        }
    }

    private func apply(_ prefix: String, _ event: WatchEvent) {
        state.withLock { s in
            s.kinds[prefix]?.items[event.kv.key] = event.kind == .put ? event.kv : nil
            Self.notify(s, prefix: prefix, keys: [event.kv.key], kindSynced: false)
        }
    }

    private static func notify(_ s: State, prefix: String, keys: Set<String>, kindSynced: Bool) {
        for sub in s.subscribers.values where sub.prefixes.contains(where: { $0.hasPrefix(prefix) || prefix.hasPrefix($0) }) {
            sub.mark(keys.filter { key in sub.prefixes.contains { key.hasPrefix($0) } }, wake: kindSynced)
        }
    }

    // MARK: Reading

    /// The cached kind that holds `prefix` (a kind's prefix or one under it).
    private static func kind(of prefix: String, in s: State) -> String? {
        s.kinds.keys.filter { prefix.hasPrefix($0) }.max { $0.count < $1.count }
    }

    /// The objects under `prefix` (a kept kind or a prefix under one), in key order.
    public func items(_ prefix: String) -> [KeyValue] {
        state.withLock { s in
            guard let kind = Self.kind(of: prefix, in: s), let items = s.kinds[kind]?.items else { return [] }
            return items.values.filter { $0.key.hasPrefix(prefix) }.sorted { $0.key.utf8.lexicographicallyPrecedes($1.key.utf8) }
        }
    }

    public func get(_ key: String) -> KeyValue? {
        state.withLock { s in Self.kind(of: key, in: s).flatMap { s.kinds[$0]?.items[key] } }
    }

    /// True once every kind holding `prefixes` has been listed.
    public func isSynced(_ prefixes: [String]) -> Bool {
        state.withLock { s in prefixes.allSatisfy { p in Self.kind(of: p, in: s).map { s.kinds[$0]!.synced } ?? false } }
    }

    // MARK: Subscribing

    /// A loop's wake-ups for the keys under `prefixes` (each a kept kind or a prefix under one).
    /// Everything already held counts as changed for its first wake-up.
    public func subscribe(_ prefixes: [String]) -> Subscription {
        state.withLock { s in
            for p in prefixes where Self.kind(of: p, in: s) == nil {
                preconditionFailure("the cluster cache keeps no kind holding \(p); add its prefix to the cache")
            }
            let sub = Subscription(cache: self, prefixes: prefixes)
            s.subscribers[s.nextID] = sub
            s.nextID += 1
            let held = Set(s.kinds.values.flatMap { $0.items.keys }.filter { k in prefixes.contains { k.hasPrefix($0) } })
            sub.mark(held, wake: true)
            return sub
        }
    }

    /// One loop's view of what changed. `next()` waits until every prefix is listed and
    /// something changed (or `poke()` was called: a resync tick), and returns the keys changed
    /// since the previous call. One loop reads it; a cancelled wait leaves it usable (the
    /// EndpointSlice controller waits again at its next leadership).
    public final class Subscription: Sendable {
        public let prefixes: [String]
        private unowned let cache: ClusterCache

        private struct Wake {
            var dirty: Set<String> = []
            /// A wake-up came while nobody waited: the next wait returns at once.
            var pending = false
            var waiter: CheckedContinuation<Void, Never>?
        }
        private let wake = Mutex(Wake())

        init(cache: ClusterCache, prefixes: [String]) {
            self.cache = cache
            self.prefixes = prefixes
        }

        fileprivate func mark(_ keys: Set<String>, wake always: Bool) {
            guard always || !keys.isEmpty else { return }
            let waiter = wake.withLock { w -> CheckedContinuation<Void, Never>? in
                w.dirty.formUnion(keys)
                defer { w.waiter = nil }
                if w.waiter == nil { w.pending = true }
                return w.waiter
            }
            waiter?.resume()
        }

        /// Wakes the loop with nothing changed: it runs its pass again from the cache.
        public func poke() { mark([], wake: true) }

        /// The keys changed since the last call (empty after a poke alone); nil when cancelled.
        public func next() async -> Set<String>? {
            while !Task.isCancelled {
                await waitForWake()
                guard !Task.isCancelled else { return nil }
                guard cache.isSynced(prefixes) else { continue }
                return wake.withLock { w in defer { w.dirty = [] }; return w.dirty }
            }
            return nil
        }

        private func waitForWake() async {
            await withTaskCancellationHandler {
                await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                    let now = wake.withLock { w -> Bool in
                        if w.pending || Task.isCancelled { w.pending = false; return true }
                        w.waiter = c
                        return false
                    }
                    if now { c.resume() }
                }
            } onCancel: {
                wake.withLock { w in defer { w.waiter = nil }; return w.waiter }?.resume()
            }
        }

        /// Pokes every `seconds` until cancelled: the loop's resync from the cache.
        public func tick(every seconds: Double) async {
            while (try? await Task.sleep(for: .milliseconds(Int(seconds * 1000)))) != nil { poke() }
        }
    }
}
