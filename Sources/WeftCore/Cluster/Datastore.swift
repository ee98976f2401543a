/// The cluster datastore: a revisioned key-value store with watch, compare-and-swap and
/// leases — the subset of etcd's model that Kubernetes and weft rely on. Backends: SQLite (the
/// embedded default, shared by the processes of one machine) and etcd v3.
///
/// Every write bumps one store-wide revision. A key's `modRevision` is the revision of its last
/// write, which is what compare-and-swap compares against.
public struct KeyValue: Sendable, Equatable {
    public var key: String
    public var value: [UInt8]
    public var createRevision: Int64
    public var modRevision: Int64
    /// 0 when the key is not attached to a lease.
    public var lease: Int64
    public init(key: String, value: [UInt8], createRevision: Int64, modRevision: Int64, lease: Int64 = 0) {
        self.key = key; self.value = value; self.createRevision = createRevision; self.modRevision = modRevision; self.lease = lease
    }
}

public struct WatchEvent: Sendable, Equatable {
    public enum Kind: Sendable, Equatable { case put, delete }
    public var kind: Kind
    /// For a delete: the key, the revision of the delete, and the last value if known.
    public var kv: KeyValue
    public init(kind: Kind, kv: KeyValue) { self.kind = kind; self.kv = kv }
}

public enum DatastoreError: Error, Sendable, Equatable, CustomStringConvertible {
    /// compare-and-swap lost: the key changed (or exists / does not exist) since it was read.
    case conflict(key: String)
    case notFound(key: String)
    /// The watch start revision was compacted away: relist, then watch from the list's revision.
    case compacted(requested: Int64, compactRevision: Int64)
    case leaseNotFound(Int64)
    /// The store cannot be reached or failed; the message says which and why.
    case unavailable(String)

    public var description: String {
        switch self {
        case .conflict(let k): "\(k) was changed by someone else; read it again and retry"
        case .notFound(let k): "\(k) does not exist"
        case .compacted(let r, let c): "revision \(r) is compacted (oldest kept is \(c)); relist and watch again"
        case .leaseNotFound(let l): "lease \(l) does not exist or has expired"
        case .unavailable(let m): "datastore unavailable: \(m)"
        }
    }
}

public protocol Datastore: Sendable {
    func get(_ key: String) async throws -> KeyValue?
    /// Every key under `prefix`, and the store revision the list reflects (watch from rev + 1).
    func list(prefix: String) async throws -> (items: [KeyValue], revision: Int64)
    /// Creates `key`; `.conflict` if it exists. Returns the new revision.
    @discardableResult func create(_ key: String, value: [UInt8], lease: Int64) async throws -> Int64
    /// Replaces `key` if its modRevision is still `expectedRevision`; `.conflict` otherwise.
    @discardableResult func update(_ key: String, value: [UInt8], expectedRevision: Int64, lease: Int64) async throws -> Int64
    /// Deletes `key` (if `expectedRevision` is given, only at that revision). Deleting a missing
    /// key without an expected revision succeeds.
    func delete(_ key: String, expectedRevision: Int64?) async throws
    /// Events for keys under `prefix` with revision > `afterRevision`, in order. The stream
    /// throws `.compacted` when it cannot resume from there.
    func watch(prefix: String, afterRevision: Int64) -> AsyncThrowingStream<WatchEvent, Error>
    func grantLease(ttlSeconds: Int64) async throws -> Int64
    /// Extends a lease by its TTL; `.leaseNotFound` once it has expired.
    func keepAlive(lease: Int64) async throws
    func revokeLease(_ lease: Int64) async throws
}

extension Datastore {
    @discardableResult public func create(_ key: String, value: [UInt8]) async throws -> Int64 {
        try await create(key, value: value, lease: 0)
    }
    @discardableResult public func update(_ key: String, value: [UInt8], expectedRevision: Int64) async throws -> Int64 {
        try await update(key, value: value, expectedRevision: expectedRevision, lease: 0)
    }
}
