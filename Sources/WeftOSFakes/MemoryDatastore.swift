#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Synchronization
import WeftCore

/// An exact in-memory `Datastore`: one store-wide revision, compare-and-swap writes, a full
/// event history (until `compact(revision:)`), watches replayed from that history and then fed
/// live, and leases that expire against an injectable clock.
///
/// Semantics (shared with `SQLiteDatastore` and checked by the conformance tests):
/// - every successful write takes the next revision; a write that deletes several keys (a lease
///   expiry or revoke) gives each delete its own revision, in key order;
/// - `update` and `delete(expectedRevision:)` of a missing key throw `.notFound`; a present key
///   at another revision throws `.conflict`; `delete(expectedRevision: nil)` of a missing key
///   succeeds without writing anything;
/// - a delete event carries the key's last value, createRevision and lease, with
///   `modRevision` = the revision of the delete;
/// - writing with a lease that does not exist (or has expired) throws `.leaseNotFound`;
///   writing a key with lease 0 detaches it from its previous lease;
/// - `watch(afterRevision: r)` throws `.compacted` when `r + 1 < compactRevision`;
/// - keys and prefixes compare as UTF-8 bytes (etcd's order), not as Swift `String`s.
///
/// Leases expire when the clock passes `grant/keepAlive time + ttl`. The clock is only
/// consulted, never waited on: every operation first expires what is due, and each open watch
/// also checks every 50 ms, so a test can move `now` forward and then either call any method or
/// wait for the delete events on a watch. `expireLeases()` forces the check.
public final class MemoryDatastore: Datastore, Sendable {
    private struct Lease {
        var ttl: Int64
        var expires: Double
        var keys: Set<String> = []
    }

    private struct Watcher {
        var prefix: [UInt8]
        var continuation: AsyncThrowingStream<WatchEvent, Error>.Continuation
    }

    private struct State {
        var revision: Int64 = 0
        var compactRevision: Int64 = 0
        var current: [String: KeyValue] = [:]
        /// Every write since the last compaction, in revision order.
        var history: [WatchEvent] = []
        var leases: [Int64: Lease] = [:]
        /// Lease ids are far from revision numbers so that mixing the two up fails loudly.
        var nextLease: Int64 = 7_000_000_001
        var watchers: [Int: Watcher] = [:]
        var nextWatcher = 0
    }

    private let state = Mutex(State())
    private let now: @Sendable () -> Double
    /// How often an open watch checks for expired leases, in seconds.
    private let tick: Double

    /// - Parameter now: the clock leases expire against, in seconds (any epoch). Defaults to
    ///   the monotonic clock; tests pass a closure over a value they move forward.
    public init(now: @escaping @Sendable () -> Double = MemoryDatastore.monotonicSeconds, tick: Double = 0.05) {
        self.now = now
        self.tick = tick
    }

    /// CLOCK_MONOTONIC in seconds.
    public static func monotonicSeconds() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }

    // MARK: Inspection and test hooks

    /// The revision of the latest write (0 for an empty store).
    public var currentRevision: Int64 { state.withLock { $0.revision } }
    /// Watches must start after `compactRevision - 1`; 0 when never compacted.
    public var compactRevision: Int64 { state.withLock { $0.compactRevision } }
    /// Leases that exist (not yet expired or revoked), as of the last expiry check.
    public var leaseIDs: [Int64] { state.withLock { $0.leases.keys.sorted() } }
    /// Open watches.
    public var watcherCount: Int { state.withLock { $0.watchers.count } }

    /// Forgets the history before `revision` (clamped to the current revision): a watch whose
    /// first wanted revision (`afterRevision + 1`) is below it then throws `.compacted`.
    /// Compacting below an earlier compaction does nothing.
    public func compact(revision: Int64) {
        state.withLock { s in
            let target = min(revision, s.revision)
            guard target > s.compactRevision else { return }
            s.compactRevision = target
            s.history.removeAll { $0.kv.modRevision < target }
        }
    }

    /// Expires every lease whose deadline has passed now (deleting its keys).
    public func expireLeases() {
        let t = now()
        state.withLock { Self.expire(&$0, now: t) }
    }

    // MARK: Datastore

    public func get(_ key: String) async throws -> KeyValue? {
        let t = now()
        return state.withLock { s in
            Self.expire(&s, now: t)
            return s.current[key]
        }
    }

    public func list(prefix: String) async throws -> (items: [KeyValue], revision: Int64) {
        let t = now()
        let p = Array(prefix.utf8)
        return state.withLock { s in
            Self.expire(&s, now: t)
            let items = s.current.values
                .filter { $0.key.utf8.starts(with: p) }
                .sorted { $0.key.utf8.lexicographicallyPrecedes($1.key.utf8) }
            return (items, s.revision)
        }
    }

    @discardableResult
    public func create(_ key: String, value: [UInt8], lease: Int64) async throws -> Int64 {
        let t = now()
        return try state.withLock { s in
            Self.expire(&s, now: t)
            if s.current[key] != nil { throw DatastoreError.conflict(key: key) }
            if lease != 0, s.leases[lease] == nil { throw DatastoreError.leaseNotFound(lease) }
            let rev = s.revision + 1
            Self.put(&s, KeyValue(key: key, value: value, createRevision: rev, modRevision: rev, lease: lease))
            return rev
        }
    }

    @discardableResult
    public func update(_ key: String, value: [UInt8], expectedRevision: Int64, lease: Int64) async throws -> Int64 {
        let t = now()
        return try state.withLock { s in
            Self.expire(&s, now: t)
            guard let old = s.current[key] else { throw DatastoreError.notFound(key: key) }
            if old.modRevision != expectedRevision { throw DatastoreError.conflict(key: key) }
            if lease != 0, s.leases[lease] == nil { throw DatastoreError.leaseNotFound(lease) }
            let rev = s.revision + 1
            Self.put(&s, KeyValue(key: key, value: value, createRevision: old.createRevision, modRevision: rev, lease: lease))
            return rev
        }
    }

    public func delete(_ key: String, expectedRevision: Int64?) async throws {
        let t = now()
        try state.withLock { s in
            Self.expire(&s, now: t)
            guard let old = s.current[key] else {
                if expectedRevision != nil { throw DatastoreError.notFound(key: key) }
                return
            }
            if let expectedRevision, old.modRevision != expectedRevision { throw DatastoreError.conflict(key: key) }
            Self.remove(&s, key)
        }
    }

    public func watch(prefix: String, afterRevision: Int64) -> AsyncThrowingStream<WatchEvent, Error> {
        let (stream, continuation) = AsyncThrowingStream.makeStream(of: WatchEvent.self, throwing: Error.self)
        let p = Array(prefix.utf8)
        let t = now()
        // Replay and registration happen under one lock hold, so no write falls in between.
        let registered: Result<Int, DatastoreError> = state.withLock { s in
            Self.expire(&s, now: t)
            if afterRevision < s.compactRevision - 1 {
                return .failure(.compacted(requested: afterRevision, compactRevision: s.compactRevision))
            }
            for event in s.history where event.kv.modRevision > afterRevision && event.kv.key.utf8.starts(with: p) {
                continuation.yield(event)
            }
            let id = s.nextWatcher
            s.nextWatcher += 1
            s.watchers[id] = Watcher(prefix: p, continuation: continuation)
            return .success(id)
        }
        switch registered {
        case .failure(let error):
            // Outside the lock: finishing runs onTermination synchronously.
            continuation.finish(throwing: error)
        case .success(let id):
            let tick = self.tick
            let ticker = Task { [weak self] in
                while !Task.isCancelled {
                    try? await Task.sleep(nanoseconds: UInt64(tick * 1e9))
                    guard let self else { return }
                    self.expireLeases()
                }
            }
            continuation.onTermination = { [weak self] _ in
                ticker.cancel()
                _ = self?.state.withLock { $0.watchers.removeValue(forKey: id) }
            }
        }
        return stream
    }

    public func grantLease(ttlSeconds: Int64) async throws -> Int64 {
        let t = now()
        return state.withLock { s in
            Self.expire(&s, now: t)
            let id = s.nextLease
            s.nextLease += 1
            let ttl = max(ttlSeconds, 1)
            s.leases[id] = Lease(ttl: ttl, expires: t + Double(ttl))
            return id
        }
    }

    public func keepAlive(lease: Int64) async throws {
        let t = now()
        try state.withLock { s in
            Self.expire(&s, now: t)
            guard var l = s.leases[lease] else { throw DatastoreError.leaseNotFound(lease) }
            l.expires = t + Double(l.ttl)
            s.leases[lease] = l
        }
    }

    public func revokeLease(_ lease: Int64) async throws {
        let t = now()
        try state.withLock { s in
            Self.expire(&s, now: t)
            guard s.leases[lease] != nil else { throw DatastoreError.leaseNotFound(lease) }
            Self.dropLease(&s, lease)
        }
    }

    // MARK: State transitions (all called with the lock held)

    private static func put(_ s: inout State, _ kv: KeyValue) {
        if let old = s.current[kv.key], old.lease != 0, old.lease != kv.lease {
            s.leases[old.lease]?.keys.remove(kv.key)
        }
        if kv.lease != 0 { s.leases[kv.lease]?.keys.insert(kv.key) }
        s.revision = kv.modRevision
        s.current[kv.key] = kv
        publish(&s, WatchEvent(kind: .put, kv: kv))
    }

    private static func remove(_ s: inout State, _ key: String) {
        guard var kv = s.current.removeValue(forKey: key) else { return }
        if kv.lease != 0 { s.leases[kv.lease]?.keys.remove(key) }
        s.revision += 1
        kv.modRevision = s.revision
        publish(&s, WatchEvent(kind: .delete, kv: kv))
    }

    private static func publish(_ s: inout State, _ event: WatchEvent) {
        s.history.append(event)
        var gone: [Int] = []
        for (id, w) in s.watchers where event.kv.key.utf8.starts(with: w.prefix) {
            if case .terminated = w.continuation.yield(event) { gone.append(id) }
        }
        for id in gone { s.watchers.removeValue(forKey: id) }
    }

    private static func dropLease(_ s: inout State, _ lease: Int64) {
        guard let l = s.leases.removeValue(forKey: lease) else { return }
        for key in l.keys.sorted(by: { $0.utf8.lexicographicallyPrecedes($1.utf8) }) {
            remove(&s, key)
        }
    }

    private static func expire(_ s: inout State, now: Double) {
        let due = s.leases.filter { $0.value.expires <= now }.map(\.key).sorted()
        for id in due { dropLease(&s, id) }
    }
}
