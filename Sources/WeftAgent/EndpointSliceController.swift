import Logging
import WeftCore

/// Kubernetes' EndpointSlice controller, run by one agent of the cluster at a time: it keeps
/// the slices of every service with a selector equal to what the service's pods give
/// (`EndpointSlices.desired`), and deletes its own slices of services that are gone or lost
/// their selector. Slices of other controllers are never touched.
///
/// Leadership is a key bound to a lease of the controller's own, taken by compare-and-swap:
/// the agent holding it leads until its lease runs out (the agent died or lost the datastore);
/// the others follow the key in the cluster cache and try again when it is deleted. Services,
/// pods and slices are read from the cache; only the writes go to the datastore.
struct EndpointSliceController: Sendable {
    let store: any Datastore
    let cache: ClusterCache
    let logger: Logger
    let node: String
    var leaseTTL: Int64 = 10

    static let leaderKey = Keys.leaders + "endpointslice-controller"

    func run() async throws {
        let leader = cache.subscribe([Self.leaderKey])
        let changes = cache.subscribe([Keys.services, Keys.pods, Keys.endpointSlices])
        while !Task.isCancelled {
            do {
                let lease = try await store.grantLease(ttlSeconds: leaseTTL)
                if try await acquire(lease: lease) {
                    logger.info("leading the EndpointSlice controller", metadata: ["node": "\(node)"])
                    defer { logger.info("stopped leading the EndpointSlice controller", metadata: ["node": "\(node)"]) }
                    try await withThrowingTaskGroup(of: Void.self) { group in
                        // Throws when the lease is lost, which ends the leadership.
                        group.addTask { try await renewLease(store, lease, ttl: leaseTTL) }
                        group.addTask { try await reconcileLoop(changes) }
                        try await group.next()
                        group.cancelAll()
                    }
                } else {
                    try? await store.revokeLease(lease)
                    try await waitForVacancy(leader)
                }
            } catch is CancellationError {
                return
            } catch {
                logger.warning("EndpointSlice controller interrupted; trying again", metadata: ["error": "\(error)"])
                try await Task.sleep(for: .seconds(1))
            }
        }
    }

    /// Takes the leader key; false when another agent holds it.
    private func acquire(lease: Int64) async throws -> Bool {
        do {
            try await store.create(Self.leaderKey, value: Array(node.utf8), lease: lease)
            return true
        } catch DatastoreError.conflict {
            // This agent's previous run may still hold it until its lease expires: take it over.
            guard let kv = try await store.get(Self.leaderKey), String(decoding: kv.value, as: UTF8.self) == node else { return false }
            do {
                try await store.update(Self.leaderKey, value: Array(node.utf8), expectedRevision: kv.modRevision, lease: lease)
                return true
            } catch DatastoreError.conflict { return false } catch DatastoreError.notFound { return false }
        }
    }

    /// Returns when the leader key is gone (its holder's lease expired or it stepped down).
    private func waitForVacancy(_ leader: ClusterCache.Subscription) async throws {
        // At least one wake-up: the first comes once the cache has listed the key's kind
        // (before, the key would look vacant), and each after it is a change of the key.
        repeat {
            guard await leader.next() != nil else { throw CancellationError() }
        } while cache.get(Self.leaderKey) != nil
    }

    /// A pass on every change of services, pods or slices (the first one with everything the
    /// cache holds, so a new leader starts from a full pass).
    private func reconcileLoop(_ changes: ClusterCache.Subscription) async throws {
        changes.poke()
        while await changes.next() != nil {
            do { try await reconcile() } catch is CancellationError { return } catch {
                logger.warning("EndpointSlice sync failed; retrying at the next change", metadata: ["error": "\(error)"])
                try await Task.sleep(for: .milliseconds(500))
                changes.poke()
            }
        }
    }

    /// One level-based pass: create, update or delete weft's slices so they match the services
    /// and pods as the cache holds them. Every write is a compare-and-swap on what was read; a
    /// conflict means something changed meanwhile (or the cache is behind), and that change
    /// wakes another pass when it reaches the cache.
    func reconcile() async throws {
        let services = cache.items(Keys.services).compactMap { try? KubeObject(bytes: $0.value) }
        let pods = cache.items(Keys.pods).compactMap { try? KubeObject(bytes: $0.value) }
        var existing: [String: (KeyValue, KubeObject)] = [:]
        for kv in cache.items(Keys.endpointSlices) {
            if let o = try? KubeObject(bytes: kv.value), EndpointSlices.isManaged(o) { existing[kv.key] = (kv, o) }
        }
        var wanted: [String: KubeObject] = [:]
        for o in services {
            guard let s = try? ClusterService(o) else { continue }
            for slice in EndpointSlices.desired(for: s, endpoints: s.endpoints(from: pods)) {
                wanted[try Keys.key(for: slice)] = slice
            }
        }
        var writes = 0
        do {
            for (key, slice) in wanted.sorted(by: { $0.key < $1.key }) {
                if let (kv, have) = existing[key] {
                    guard have != slice else { continue }
                    try await store.update(key, value: slice.bytes, expectedRevision: kv.modRevision)
                } else {
                    try await store.create(key, value: slice.bytes)
                }
                writes += 1
            }
            for (key, (kv, _)) in existing where wanted[key] == nil {
                try await store.delete(key, expectedRevision: kv.modRevision)
                writes += 1
            }
        } catch DatastoreError.conflict, DatastoreError.notFound {
            return // changed under us: the watch brings the next pass
        }
        if writes > 0 { logger.debug("EndpointSlices written", metadata: ["writes": "\(writes)"]) }
    }
}
