import AsyncHTTPClient
import Foundation
import NIOCore
import WeftCore

// The HTTP side of EtcdDatastore: etcd v3's JSON gateway (grpc-gateway) over HTTP/1.1, the
// endpoint failover, and the JSON shapes. Everything here is internal.

// MARK: - Failover transport

/// A failed attempt against one endpoint that should be retried on the next one: the connection
/// failed or timed out, or etcd said it cannot serve right now (gRPC UNAVAILABLE: no leader,
/// request timed out, leader changed).
struct EtcdEndpointFailure: Error, CustomStringConvertible {
    var endpoint: String
    var reason: String
    var description: String { "\(endpoint): \(reason)" }
}

/// etcd answered with an error that another endpoint would answer the same way (a lease that does
/// not exist, a compacted revision, a malformed request). Not retried.
struct EtcdAPIError: Error, CustomStringConvertible {
    var endpoint: String
    var httpStatus: Int
    /// The gRPC status code (5 NOT_FOUND, 11 OUT_OF_RANGE, 14 UNAVAILABLE, ...), 0 if unknown.
    var code: Int
    var message: String
    var description: String { "etcd at \(endpoint): \(message) (code \(code), HTTP \(httpStatus))" }

    var isLeaseNotFound: Bool { code == 5 && message.contains("lease not found") }
    var isCompacted: Bool { message.contains("compacted") }
}

/// A small lock-protected box: the datastore's mutable state (preferred endpoint, watch tasks).
final class EtcdLocked<Value>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Value
    init(_ value: Value) { self.value = value }
    func withLock<R>(_ body: (inout Value) throws -> R) rethrows -> R {
        lock.lock()
        defer { lock.unlock() }
        return try body(&value)
    }
}

struct EtcdTimeoutError: Error, CustomStringConvertible {
    var after: Duration
    var description: String { "no answer within \(after)" }
}

final class EtcdTransport: Sendable {
    let client: HTTPClient
    let endpoints: [String]
    let requestTimeout: Duration
    let maxResponseBytes: Int
    /// Index of the endpoint that answered last; requests start there.
    private let preferred = EtcdLocked(0)
    private let isShutDown = EtcdLocked(false)

    init(endpoints: [String], requestTimeout: Duration, connectTimeout: Duration, maxConnectionsPerEndpoint: Int,
         maxResponseBytes: Int) {
        self.endpoints = endpoints.map { $0.hasSuffix("/") ? String($0.dropLast()) : $0 }
        self.requestTimeout = requestTimeout
        self.maxResponseBytes = maxResponseBytes
        var config = HTTPClient.Configuration()
        config.httpVersion = .http1Only
        config.timeout = .init(connect: .etcd(min(connectTimeout, requestTimeout)))
        // Watches hold a connection each for as long as they run; the default soft limit of 8
        // per host would queue unary requests behind them.
        config.connectionPool = .init(idleTimeout: .seconds(60),
                                      concurrentHTTP1ConnectionsPerHostSoftLimit: maxConnectionsPerEndpoint)
        // Fail a refused connection at once (and move on to the next endpoint) instead of
        // retrying the same endpoint with backoff until the connect timeout.
        config.connectionPool.retryConnectionEstablishment = false
        config.redirectConfiguration = .disallow
        self.client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: config)
    }

    var shutDown: Bool { isShutDown.withLock { $0 } }

    /// Marks the transport shut down; true the first time.
    func markShutDown() -> Bool {
        isShutDown.withLock { s -> Bool in defer { s = true }; return !s }
    }

    /// Best effort for a datastore dropped without `shutdown()`: AsyncHTTPClient traps in debug
    /// builds when a running client is deinitialized.
    func shutdownInBackground() {
        if markShutDown() { client.shutdown { _ in } }
    }

    var preferredIndex: Int { preferred.withLock { $0 } }

    /// Records that `index` answered (requests now start there).
    func markHealthy(_ index: Int) { preferred.withLock { $0 = index } }

    /// Records that `index` failed: if requests were starting there, they start at the next one.
    func markFailed(_ index: Int) {
        let n = endpoints.count
        preferred.withLock { if $0 == index { $0 = (index + 1) % n } }
    }

    /// POSTs `body` to `path` on the preferred endpoint, failing over to the others in turn on
    /// connection errors, timeouts and UNAVAILABLE answers. Returns the 200 response body.
    func post(_ path: String, _ body: [String: Any]) async throws -> Data {
        let json = try JSONSerialization.data(withJSONObject: body)
        guard !endpoints.isEmpty else { throw DatastoreError.unavailable("no etcd endpoints configured") }
        guard !shutDown else { throw DatastoreError.unavailable("the etcd datastore was shut down") }
        let n = endpoints.count
        let start = preferredIndex
        var failures: [String] = []
        for i in 0..<n {
            let index = (start + i) % n
            let endpoint = endpoints[index]
            try Task.checkCancellation()
            do {
                let (status, data) = try await attempt(endpoint + path, json)
                if status == 200 {
                    markHealthy(index)
                    return data
                }
                let error = Self.apiError(endpoint: endpoint, status: status, body: data)
                if Self.isRetryable(error) {
                    failures.append("\(endpoint): \(error.message)")
                    markFailed(index)
                    continue
                }
                markHealthy(index)
                throw error
            } catch let error as EtcdAPIError {
                throw error
            } catch {
                if Task.isCancelled { throw CancellationError() }
                if shutDown { throw DatastoreError.unavailable("the etcd datastore was shut down") }
                failures.append("\(endpoint): \(describe(error))")
                markFailed(index)
            }
        }
        throw DatastoreError.unavailable(
            "no etcd endpoint answered \(path) [\(endpoints.joined(separator: ", "))]: \(failures.joined(separator: "; "))")
    }

    /// One request to one endpoint, bounded by `requestTimeout` (connect, head and body).
    func attempt(_ url: String, _ json: Data) async throws -> (Int, Data) {
        let client = self.client
        let timeout = requestTimeout
        let maxBytes = maxResponseBytes
        return try await withThrowingTaskGroup(of: (Int, Data)?.self) { group in
            group.addTask {
                var request = HTTPClientRequest(url: url)
                request.method = .POST
                request.headers.add(name: "Content-Type", value: "application/json")
                request.body = .bytes(json)
                let response = try await client.execute(request, deadline: .now() + .etcd(timeout))
                let body = try await response.body.collect(upTo: maxBytes)
                return (Int(response.status.code), Data(body.readableBytesView))
            }
            group.addTask {
                try await Task.sleep(for: timeout)
                return nil
            }
            defer { group.cancelAll() }
            guard let first = try await group.next(), let result = first else {
                throw EtcdTimeoutError(after: timeout)
            }
            return result
        }
    }

    static func isRetryable(_ error: EtcdAPIError) -> Bool {
        // 14 UNAVAILABLE: "no leader", "request timed out", "leader changed"; 4 DEADLINE_EXCEEDED;
        // 502-504 from the gateway when its own gRPC connection is gone.
        error.code == 14 || error.code == 4 || (error.code == 0 && [502, 503, 504].contains(error.httpStatus))
    }

    static func apiError(endpoint: String, status: Int, body: Data) -> EtcdAPIError {
        struct Body: Decodable { var error: String?; var message: String?; var code: Int? }
        if let parsed = try? JSONDecoder().decode(Body.self, from: body) {
            return EtcdAPIError(endpoint: endpoint, httpStatus: status, code: parsed.code ?? 0,
                                message: parsed.message ?? parsed.error ?? "HTTP \(status)")
        }
        let text = String(decoding: body.prefix(200), as: UTF8.self)
        return EtcdAPIError(endpoint: endpoint, httpStatus: status, code: 0, message: "HTTP \(status): \(text)")
    }

    /// A short reason for a failed attempt, e.g. "connection refused", "no answer within 5 seconds".
    func describe(_ error: any Error) -> String {
        if let e = error as? HTTPClientError {
            switch e {
            case .connectTimeout: return "connect timed out"
            case .deadlineExceeded: return "no answer within \(requestTimeout)"
            case .remoteConnectionClosed: return "connection closed"
            default: return "\(e)"
            }
        }
        if let e = error as? IOError {
            return String(cString: strerror(e.errnoCode)).lowercased()
        }
        if error is EtcdTimeoutError { return "no answer within \(requestTimeout)" }
        return "\(error)"
    }
}

extension TimeAmount {
    static func etcd(_ d: Duration) -> TimeAmount {
        let (s, atto) = d.components
        return .nanoseconds(s * 1_000_000_000 + atto / 1_000_000_000)
    }
}

// MARK: - Encoding

enum EtcdCodec {
    static func b64(_ bytes: [UInt8]) -> String { Data(bytes).base64EncodedString() }
    static func b64(_ key: String) -> String { Data(key.utf8).base64EncodedString() }

    /// The range end that selects every key starting with `prefix` (etcd's `WithPrefix`): the
    /// prefix with its last byte incremented, trailing 0xff bytes dropped; "\0" (no upper bound)
    /// when there is nothing left to increment (empty prefix or all 0xff).
    static func prefixRange(_ prefix: String) -> (key: [UInt8], rangeEnd: [UInt8]) {
        let key = Array(prefix.utf8)
        var end = key
        while let last = end.last {
            if last < 0xff {
                end[end.count - 1] = last + 1
                return (key, end)
            }
            end.removeLast()
        }
        return (key.isEmpty ? [0] : key, [0])
    }
}

// MARK: - Decoding (int64 fields are JSON strings; absent fields are proto3 defaults)

struct EtcdInt: Decodable, Sendable {
    var value: Int64
    init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        if let s = try? c.decode(String.self) {
            guard let v = Int64(s) else {
                throw DecodingError.dataCorruptedError(in: c, debugDescription: "not an int64: \(s)")
            }
            value = v
        } else {
            value = try c.decode(Int64.self)
        }
    }
}

extension Optional where Wrapped == EtcdInt {
    var int: Int64 { self?.value ?? 0 }
}

struct EtcdBytes: Decodable, Sendable {
    var bytes: [UInt8]
    init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        let s = try c.decode(String.self)
        guard let d = Data(base64Encoded: s) else {
            throw DecodingError.dataCorruptedError(in: c, debugDescription: "not base64: \(s)")
        }
        bytes = Array(d)
    }
}

/// Only the revision: cluster_id, member_id and raft_term are uint64 (beyond Int64).
struct EtcdHeader: Decodable, Sendable {
    var revision: EtcdInt?
}

struct EtcdKV: Decodable, Sendable {
    var key: EtcdBytes?
    var create_revision: EtcdInt?
    var mod_revision: EtcdInt?
    var value: EtcdBytes?
    var lease: EtcdInt?

    var keyValue: KeyValue {
        KeyValue(key: String(decoding: key?.bytes ?? [], as: UTF8.self), value: value?.bytes ?? [],
                 createRevision: create_revision.int, modRevision: mod_revision.int, lease: lease.int)
    }
}

struct EtcdRangeResponse: Decodable {
    var header: EtcdHeader?
    var kvs: [EtcdKV]?
    var more: Bool?
}

struct EtcdTxnResponse: Decodable {
    var header: EtcdHeader?
    var succeeded: Bool?
}

struct EtcdLeaseGrantResponse: Decodable {
    var ID: EtcdInt?
    var TTL: EtcdInt?
    var error: String?
}

struct EtcdStreamError: Decodable {
    var grpc_code: Int?
    var http_code: Int?
    var message: String?
}

struct EtcdLeaseKeepAliveLine: Decodable {
    struct Result: Decodable { var ID: EtcdInt?; var TTL: EtcdInt? }
    var result: Result?
    var error: EtcdStreamError?
}

struct EtcdWatchLine: Decodable {
    struct Event: Decodable {
        var type: String?
        var kv: EtcdKV?
        var prev_kv: EtcdKV?
    }
    struct Result: Decodable {
        var header: EtcdHeader?
        var created: Bool?
        var canceled: Bool?
        var compact_revision: EtcdInt?
        var cancel_reason: String?
        var events: [Event]?
    }
    var result: Result?
    var error: EtcdStreamError?
}
