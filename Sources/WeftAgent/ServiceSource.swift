import Synchronization
import WeftCore

/// The Services and EndpointSlices the service proxy programs, parsed from the cluster cache's
/// copy (or fed a list and watch events directly), and the entries they make, rebuilt only for
/// the services a change touched. A pass then costs what changed, not what the datastore
/// holds: at 10,000 services, listing both prefixes again took ~190 ms of every pass.
public final class ServiceSource: Sendable {
    /// What changed since the last `take`.
    public struct Delta: Sendable {
        /// New or different entries.
        public var changed: [ServiceRules.Entry] = []
        /// Services ("namespace/name") no longer there, or no longer readable.
        public var removed: Set<String> = []
        /// The entries the changed and removed services had before (none: they are new).
        public var previous: [String: ServiceRules.Entry] = [:]
        public var isEmpty: Bool { changed.isEmpty && removed.isEmpty }
        public init() {}
    }

    private struct State {
        /// "namespace/name" → the Service's record.
        var services: [String: KeyValue] = [:]
        /// Datastore key → the slice, parsed (nil: unreadable, or names no service).
        var slices: [String: DesiredState.ServiceSlice?] = [:]
        /// "namespace/name" → the keys of the slices naming it.
        var slicesOf: [String: Set<String>] = [:]
        var entries: [String: ServiceRules.Entry] = [:]
        /// Services an event touched since the last `take`.
        var dirty: Set<String> = []
        var listed: Set<String> = []
    }
    private let state = Mutex(State())

    public init() {}

    /// True once both prefixes have been listed: before, a pass would see part of the services
    /// and remove the rest.
    public var isSynced: Bool { state.withLock { $0.listed.isSuperset(of: [Keys.services, Keys.endpointSlices]) } }

    /// A (re)list of `prefix`: what differs from what is held counts as changed. Other
    /// prefixes are not the source's and are ignored. Slices are parsed before the lock is
    /// taken (10,000 of them at start), so watch events are not held up meanwhile.
    public func replace(prefix: String, with items: [KeyValue]) {
        guard prefix == Keys.services || prefix == Keys.endpointSlices else { return }
        var parsed: [String: DesiredState.ServiceSlice?] = [:]
        if prefix == Keys.endpointSlices {
            let held = state.withLock { s in s.slices.mapValues { $0?.revision } }
            for kv in items where held[kv.key] != .some(kv.modRevision) { parsed[kv.key] = .some(DesiredState.ServiceSlice(kv)) }
        }
        state.withLock { s in
            if prefix == Keys.services {
                let now = Dictionary(items.map { (String($0.key.dropFirst(Keys.services.count)), $0) }, uniquingKeysWith: { _, b in b })
                for (k, kv) in now where s.services[k]?.modRevision != kv.modRevision { s.dirty.insert(k) }
                for k in s.services.keys where now[k] == nil { s.dirty.insert(k) }
                s.services = now
            } else {
                let now = Dictionary(items.map { ($0.key, $0) }, uniquingKeysWith: { _, b in b })
                for k in Array(s.slices.keys) where now[k] == nil { Self.removeSlice(k, &s) }
                for kv in now.values { Self.putSlice(kv, parsed: parsed[kv.key], &s) }
            }
            s.listed.insert(prefix)
        }
    }

    /// One watch event under either prefix.
    public func apply(_ event: WatchEvent) {
        let key = event.kv.key
        let slice = event.kind == .put && key.hasPrefix(Keys.endpointSlices) ? DesiredState.ServiceSlice(event.kv) : nil
        state.withLock { s in
            if key.hasPrefix(Keys.services) {
                let k = String(key.dropFirst(Keys.services.count))
                s.services[k] = event.kind == .put ? event.kv : nil
                s.dirty.insert(k)
            } else if key.hasPrefix(Keys.endpointSlices) {
                if event.kind == .put { Self.putSlice(event.kv, parsed: .some(slice), &s) } else { Self.removeSlice(key, &s) }
            }
        }
    }

    /// The keys the cluster cache says changed, read from its copy: a key it holds is put, one
    /// it does not is deleted. Called on the cache's wake-ups, which come once both prefixes
    /// are listed.
    public func update(_ keys: Set<String>, from cache: ClusterCache) {
        for key in keys.sorted() where key.hasPrefix(Keys.services) || key.hasPrefix(Keys.endpointSlices) {
            apply(cache.get(key).map { WatchEvent(kind: .put, kv: $0) }
                  ?? WatchEvent(kind: .delete, kv: KeyValue(key: key, value: [], createRevision: 0, modRevision: 0)))
        }
        state.withLock { $0.listed.formUnion([Keys.services, Keys.endpointSlices]) }
    }

    /// - parsed: the slice already parsed from `kv` (nil: parse it here).
    private static func putSlice(_ kv: KeyValue, parsed: DesiredState.ServiceSlice??, _ s: inout State) {
        if let held = s.slices[kv.key], held?.revision == kv.modRevision { return }
        removeSlice(kv.key, &s)
        let slice = parsed ?? DesiredState.ServiceSlice(kv)
        s.slices[kv.key] = .some(slice)
        if let slice {
            s.slicesOf[slice.service, default: []].insert(kv.key)
            s.dirty.insert(slice.service)
        }
    }

    private static func removeSlice(_ key: String, _ s: inout State) {
        guard let held = s.slices.removeValue(forKey: key) else { return }
        if let service = held?.service {
            s.slicesOf[service]?.remove(key)
            if s.slicesOf[service]?.isEmpty == true { s.slicesOf[service] = nil }
            s.dirty.insert(service)
        }
    }

    /// Rebuilds the entries of the services touched since the last call and returns the change.
    /// The entries are built outside the lock; a service an event touches meanwhile is dirty
    /// again and rebuilt by the next call.
    public func take(skipped: (KubeObject) -> Void = { _ in }) -> Delta {
        let work = state.withLock { s in
            defer { s.dirty = [] }
            return s.dirty.sorted().map { k in
                (key: k, service: s.services[k], slices: (s.slicesOf[k] ?? []).compactMap { s.slices[$0] ?? nil }, before: s.entries[k])
            }
        }
        var delta = Delta()
        var built: [(key: String, entry: ServiceRules.Entry?)] = []
        for w in work {
            let now = w.service.flatMap { DesiredState.serviceEntry($0, slices: w.slices, skipped: skipped) }
            if let now {
                guard w.before?.source != now.source else { continue }
                delta.changed.append(now)
            } else {
                guard w.before != nil else { continue }
                delta.removed.insert(w.key)
            }
            if let before = w.before { delta.previous[w.key] = before }
            built.append((w.key, now))
        }
        state.withLock { s in for b in built { s.entries[b.key] = b.entry } }
        return delta
    }

    /// Every service's entry, as of the last `take`.
    public var entries: [ServiceRules.Entry] { state.withLock { s in s.entries.keys.sorted().map { s.entries[$0]! } } }

    public func entry(_ service: String) -> ServiceRules.Entry? { state.withLock { $0.entries[service] } }
}
