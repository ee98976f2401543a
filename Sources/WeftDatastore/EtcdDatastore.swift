import Foundation
import WeftCore

/// `Datastore` over etcd v3, through its JSON gateway (`/v3/kv/...`, `/v3/watch`, `/v3/lease/...`
/// on the client URL; etcd 3.4 and later) with AsyncHTTPClient.
///
/// - Requests go to one endpoint (the one that answered last) and fail over to the next on a
///   connection error, a timeout or an UNAVAILABLE answer (no leader, request timed out). When
///   no endpoint answers, the call throws `DatastoreError.unavailable` naming every endpoint and
///   why it failed.
/// - `create`/`update`/`delete(expectedRevision:)` are single transactions comparing the key's
///   `create_revision`/`mod_revision`; a failed compare is `.conflict`.
/// - `watch` resumes after a lost connection on the next endpoint from the last revision it
///   delivered, so the stream has no gaps and no repeats; a compacted start revision finishes
///   the stream with `.compacted`. Watches of one prefix share one stream (`EtcdWatchHub`).
///
/// Call `shutdown()` when done: it ends running watches and closes the HTTP client.
public final class EtcdDatastore: Datastore, Sendable {
    public let endpoints: [String]
    let transport: EtcdTransport
    let watchReconnectTimeout: Duration
    let watchProbeInterval: Duration?
    let listPageSize: Int
    let watches = EtcdLocked(WatchRegistry())
    /// One stream per watched prefix, shared by its watches.
    let hub = EtcdWatchHub()
    /// The last 64 watch connections made: which endpoint, from which revision (for tests).
    let watchConnections = EtcdLocked([WatchConnectionRecord]())

    struct WatchRegistry {
        var nextID = 0
        var tasks: [Int: Task<Void, Never>] = [:]
    }

    struct WatchConnectionRecord: Sendable, Equatable {
        var endpoint: String
        var startRevision: Int64
    }

    /// - Parameters:
    ///   - endpoints: etcd client URLs, e.g. `["http://127.0.0.1:2379"]`; tried in this order.
    ///   - requestTimeout: bound on one request to one endpoint (connect, answer and body) before
    ///     moving on to the next endpoint.
    ///   - connectTimeout: bound on opening a TCP connection (capped at `requestTimeout`).
    ///   - watchReconnectTimeout: how long a watch that lost its connection keeps trying the
    ///     endpoints before its stream finishes with `.unavailable`.
    ///   - watchProbeInterval: how often a watch checks that its endpoint still answers (a hung
    ///     member keeps its TCP connection open); two failed checks in a row move the watch to
    ///     the next endpoint. nil disables the probe.
    ///   - listPageSize: `list` reads this many keys per request (at one pinned revision).
    ///   - maxConnectionsPerEndpoint: each running watch holds one connection.
    public init(endpoints: [String],
                requestTimeout: Duration = .seconds(5),
                connectTimeout: Duration = .seconds(2),
                watchReconnectTimeout: Duration = .seconds(30),
                watchProbeInterval: Duration? = .seconds(10),
                listPageSize: Int = 1000,
                maxConnectionsPerEndpoint: Int = 256) {
        self.transport = EtcdTransport(endpoints: endpoints, requestTimeout: requestTimeout,
                                       connectTimeout: connectTimeout,
                                       maxConnectionsPerEndpoint: maxConnectionsPerEndpoint,
                                       maxResponseBytes: 256 << 20)
        self.endpoints = transport.endpoints
        self.watchReconnectTimeout = watchReconnectTimeout
        self.watchProbeInterval = watchProbeInterval
        self.listPageSize = max(1, listPageSize)
    }

    deinit {
        transport.shutdownInBackground()
    }

    /// Ends every running watch (their streams finish with `.unavailable`) and closes the HTTP
    /// client. Calls made afterwards throw `.unavailable`.
    public func shutdown() async throws {
        guard transport.markShutDown() else { return }
        for task in watches.withLock({ Array($0.tasks.values) }) { task.cancel() }
        try await transport.client.shutdown()
    }

    // MARK: Reads

    public func get(_ key: String) async throws -> KeyValue? {
        let response: EtcdRangeResponse = try await call("/v3/kv/range", ["key": EtcdCodec.b64(key)])
        return response.kvs?.first?.keyValue
    }

    public func list(prefix: String) async throws -> (items: [KeyValue], revision: Int64) {
        let (key, rangeEnd) = EtcdCodec.prefixRange(prefix)
        var attempt = 0
        while true {
            do {
                return try await listPages(key: key, rangeEnd: rangeEnd)
            } catch let error as EtcdAPIError {
                // Compacted between two pages of a pinned-revision list: start over.
                guard error.isCompacted, attempt < 3 else { throw DatastoreError.unavailable(error.description) }
                attempt += 1
            }
        }
    }

    private func listPages(key: [UInt8], rangeEnd: [UInt8]) async throws -> (items: [KeyValue], revision: Int64) {
        var items: [KeyValue] = []
        var revision: Int64 = 0
        var from = key
        while true {
            var body: [String: Any] = ["key": EtcdCodec.b64(from), "range_end": EtcdCodec.b64(rangeEnd),
                                       "limit": String(listPageSize)]
            if revision > 0 { body["revision"] = String(revision) }
            let data = try await transport.post("/v3/kv/range", body)
            let page = try decode(EtcdRangeResponse.self, data, "/v3/kv/range")
            if revision == 0 { revision = page.header?.revision.int ?? 0 }
            let kvs = page.kvs ?? []
            items.append(contentsOf: kvs.map(\.keyValue))
            guard page.more == true, let last = kvs.last?.key?.bytes else { break }
            from = last + [0]
        }
        return (items, revision)
    }

    // MARK: Writes

    @discardableResult
    public func create(_ key: String, value: [UInt8], lease: Int64) async throws -> Int64 {
        try await compareAndPut(key, value: value, lease: lease,
                                compare: ["target": "CREATE", "create_revision": "0"])
    }

    @discardableResult
    public func update(_ key: String, value: [UInt8], expectedRevision: Int64, lease: Int64) async throws -> Int64 {
        try await compareAndPut(key, value: value, lease: lease,
                                compare: ["target": "MOD", "mod_revision": String(expectedRevision)])
    }

    private func compareAndPut(_ key: String, value: [UInt8], lease: Int64, compare: [String: Any]) async throws -> Int64 {
        var put: [String: Any] = ["key": EtcdCodec.b64(key), "value": EtcdCodec.b64(value)]
        if lease != 0 { put["lease"] = String(lease) }
        var cmp = compare
        cmp["key"] = EtcdCodec.b64(key)
        cmp["result"] = "EQUAL"
        let response: EtcdTxnResponse = try await call(
            "/v3/kv/txn", ["compare": [cmp], "success": [["request_put": put]]], lease: lease)
        guard response.succeeded == true else { throw DatastoreError.conflict(key: key) }
        return response.header?.revision.int ?? 0
    }

    public func delete(_ key: String, expectedRevision: Int64?) async throws {
        guard let expected = expectedRevision else {
            let _: EtcdTxnResponse = try await call("/v3/kv/deleterange", ["key": EtcdCodec.b64(key)])
            return
        }
        let cmp: [String: Any] = ["key": EtcdCodec.b64(key), "target": "MOD", "result": "EQUAL",
                                  "mod_revision": String(expected)]
        let response: EtcdTxnResponse = try await call(
            "/v3/kv/txn", ["compare": [cmp], "success": [["request_delete_range": ["key": EtcdCodec.b64(key)]]]])
        guard response.succeeded == true else { throw DatastoreError.conflict(key: key) }
    }

    // MARK: Leases

    public func grantLease(ttlSeconds: Int64) async throws -> Int64 {
        let response: EtcdLeaseGrantResponse = try await call("/v3/lease/grant", ["TTL": String(ttlSeconds), "ID": "0"])
        guard let id = response.ID?.value, id != 0 else {
            throw DatastoreError.unavailable("etcd did not grant a lease: \(response.error ?? "no ID in the answer")")
        }
        return id
    }

    public func keepAlive(lease: Int64) async throws {
        let data: Data
        do {
            data = try await transport.post("/v3/lease/keepalive", ["ID": String(lease)])
        } catch let error as EtcdAPIError {
            if error.isLeaseNotFound { throw DatastoreError.leaseNotFound(lease) }
            throw DatastoreError.unavailable(error.description)
        }
        // A streaming endpoint: one {"result": ...} object per line.
        let line = data.split(separator: UInt8(ascii: "\n")).first { !$0.allSatisfy { $0 == 32 || $0 == 13 } }
        let parsed = try decode(EtcdLeaseKeepAliveLine.self, line.map { Data($0) } ?? Data(), "/v3/lease/keepalive")
        if let error = parsed.error {
            if error.grpc_code == 5 { throw DatastoreError.leaseNotFound(lease) }
            throw DatastoreError.unavailable("etcd keepalive of lease \(lease): \(error.message ?? "error")")
        }
        // An expired or unknown lease answers with TTL 0 (or none at all).
        guard (parsed.result?.TTL.int ?? 0) > 0 else { throw DatastoreError.leaseNotFound(lease) }
    }

    public func revokeLease(_ lease: Int64) async throws {
        let _: EtcdTxnResponse = try await call("/v3/lease/revoke", ["ID": String(lease)], lease: lease)
    }

    // MARK: Maintenance

    /// Discards the history before `revision` (`/v3/kv/compaction`): watches from older revisions
    /// then finish with `.compacted`. Compacting to a revision already compacted is a no-op.
    public func compact(revision: Int64, physical: Bool = false) async throws {
        do {
            let _: EtcdTxnResponse = try await call("/v3/kv/compaction",
                                                    ["revision": String(revision), "physical": physical])
        } catch DatastoreError.unavailable(let message) where message.contains("has been compacted") {
            return
        }
    }

    // MARK: Plumbing

    /// POSTs with failover, decodes the answer, and turns etcd's errors into `DatastoreError`s.
    func call<T: Decodable>(_ path: String, _ body: [String: Any], lease: Int64 = 0) async throws -> T {
        do {
            let data = try await transport.post(path, body)
            return try decode(T.self, data, path)
        } catch let error as EtcdAPIError {
            if error.isLeaseNotFound { throw DatastoreError.leaseNotFound(lease) }
            throw DatastoreError.unavailable(error.description)
        }
    }

    func decode<T: Decodable>(_ type: T.Type, _ data: Data, _ path: String) throws -> T {
        do {
            return try JSONDecoder().decode(T.self, from: data)
        } catch {
            let text = String(decoding: data.prefix(300), as: UTF8.self)
            throw DatastoreError.unavailable("unexpected answer from etcd \(path): \(text) (\(error))")
        }
    }
}
