import AsyncHTTPClient
import Foundation
import NIOCore
import WeftCore

// EtcdDatastore.watch: one streaming POST /v3/watch per connection; on a lost connection the
// watch reconnects (next endpoint first) from the revision after the last one it delivered.
//
// No gaps, no repeats: etcd sends every event of one revision in the same watch response (it
// only splits a revision when the watcher asks for `fragment`, which we do not), each response
// is one line, and a line's events are yielded together before the next read. So when the
// connection breaks, every revision up to `lastDelivered` has been delivered in full and none
// after it, and `start_revision = lastDelivered + 1` on the next connection continues exactly.

extension EtcdDatastore {
    /// Served by the datastore's hub: one watch stream per prefix, shared by every watch of it
    /// (see `EtcdWatchHub`).
    public func watch(prefix: String, afterRevision: Int64) -> AsyncThrowingStream<WatchEvent, Error> {
        let (stream, continuation) = AsyncThrowingStream<WatchEvent, Error>.makeStream()
        guard !transport.shutDown else {
            continuation.finish(throwing: DatastoreError.unavailable("the etcd datastore was shut down"))
            return stream
        }
        hub.join(self, prefix: prefix, afterRevision: afterRevision, continuation: continuation)
        return stream
    }

    /// One stream of `prefix` from `afterRevision` on its own connection, reconnecting as
    /// `runWatch` does; what it reads goes to `sink`. Cancel the task to stop it.
    func openStream(prefix: String, afterRevision: Int64, sink: WatchSink) -> Task<Void, Never> {
        watches.withLock { registry -> Task<Void, Never> in
            let id = registry.nextID
            registry.nextID += 1
            let task = Task {
                await self.runWatch(prefix: prefix, afterRevision: afterRevision, sink: sink)
                _ = self.watches.withLock { $0.tasks.removeValue(forKey: id) }
            }
            registry.tasks[id] = task
            return task
        }
    }

    /// Where a stream's events go: `deliver` is handed whole revisions (one response's events)
    /// and returns false when nobody wants more; `finish` is called once, with nil when the
    /// stream was stopped.
    struct WatchSink: Sendable {
        var deliver: @Sendable ([WatchEvent]) -> Bool
        var finish: @Sendable (Error?) -> Void
    }

    enum WatchOutcome: Sendable {
        case compacted(requested: Int64, compactRevision: Int64)
        /// The connection failed, stopped answering, or etcd ended the watch: reconnect.
        case failed(String)
        /// Cancelled (the consumer went away or the datastore shut down).
        case stopped
    }

    struct WatchProgress: Sendable {
        var lastDelivered: Int64
        /// etcd confirmed the current connection's watch (`created`).
        var connected = false
    }

    private func runWatch(prefix: String, afterRevision: Int64, sink continuation: WatchSink) async {
        let endpoints = transport.endpoints
        guard !endpoints.isEmpty else {
            continuation.finish(DatastoreError.unavailable("no etcd endpoints configured"))
            return
        }
        let (key, rangeEnd) = EtcdCodec.prefixRange(prefix)
        let progress = EtcdLocked(WatchProgress(lastDelivered: afterRevision))
        var index = transport.preferredIndex
        var failingSince: ContinuousClock.Instant?
        var lastFailure: [String: String] = [:]  // endpoint -> why its last attempt failed
        var triesThisRound = 0
        var backoff = Duration.milliseconds(50)

        while true {
            if transport.shutDown {
                continuation.finish(DatastoreError.unavailable("the etcd datastore was shut down"))
                return
            }
            if Task.isCancelled {
                continuation.finish(nil)
                return
            }
            let endpoint = endpoints[index]
            progress.withLock { $0.connected = false }
            let connectedAt = ContinuousClock.now
            let outcome = await watchConnection(endpoint: endpoint, key: key, rangeEnd: rangeEnd,
                                                progress: progress, continuation: continuation)
            switch outcome {
            case .compacted(let requested, let compactRevision):
                continuation.finish(DatastoreError.compacted(requested: requested,
                                                                       compactRevision: compactRevision))
                return
            case .stopped:
                if transport.shutDown {
                    continuation.finish(DatastoreError.unavailable("the etcd datastore was shut down"))
                } else {
                    continuation.finish(nil)
                }
                return
            case .failed(let reason):
                transport.markFailed(index)
                if progress.withLock({ $0.connected }) && ContinuousClock.now - connectedAt >= .seconds(1) {
                    // It worked for a while, then broke (typically the member died): start a
                    // fresh round. (A connection that breaks at once counts as a failure, so
                    // a member that accepts and drops watches cannot make us spin.)
                    failingSince = nil
                    lastFailure = [:]
                    triesThisRound = 0
                    backoff = .milliseconds(50)
                }
                lastFailure[endpoint] = reason
                index = (index + 1) % endpoints.count
                let now = ContinuousClock.now
                if let since = failingSince {
                    if now - since >= watchReconnectTimeout {
                        let reasons = endpoints.compactMap { e in lastFailure[e].map { "\(e): \($0)" } }
                        continuation.finish(DatastoreError.unavailable(
                            "watch of \"\(prefix)\" from revision \(progress.withLock { $0.lastDelivered } + 1): "
                                + "no etcd endpoint answered for \(watchReconnectTimeout) "
                                + "[\(endpoints.joined(separator: ", "))]: \(reasons.joined(separator: "; "))"))
                        return
                    }
                } else {
                    failingSince = now
                }
                triesThisRound += 1
                if triesThisRound >= endpoints.count {
                    // Every endpoint failed once in a row: wait before the next round.
                    triesThisRound = 0
                    try? await Task.sleep(for: backoff)
                    backoff = min(backoff * 2, .seconds(2))
                }
            }
        }
    }

    /// One watch connection: reads it until it fails, is cancelled, or etcd reports compaction.
    /// Alongside, a probe checks that a quiet endpoint still answers.
    private func watchConnection(endpoint: String, key: [UInt8], rangeEnd: [UInt8],
                                 progress: EtcdLocked<WatchProgress>,
                                 continuation: WatchSink) async -> WatchOutcome {
        await withTaskGroup(of: WatchOutcome?.self) { group in
            group.addTask {
                await self.readWatch(endpoint: endpoint, key: key, rangeEnd: rangeEnd,
                                     progress: progress, continuation: continuation)
            }
            if let interval = watchProbeInterval {
                group.addTask { await self.probe(endpoint: endpoint, every: interval) }
            }
            defer { group.cancelAll() }
            while let next = await group.next() {
                if let outcome = next { return outcome }
            }
            return .stopped
        }
    }

    private func readWatch(endpoint: String, key: [UInt8], rangeEnd: [UInt8],
                           progress: EtcdLocked<WatchProgress>,
                           continuation: WatchSink) async -> WatchOutcome {
        let start = progress.withLock { $0.lastDelivered } + 1
        watchConnections.withLock {
            $0.append(WatchConnectionRecord(endpoint: endpoint, startRevision: start))
            if $0.count > 64 { $0.removeFirst() }
        }
        let body: [String: Any] = ["create_request": [
            "key": EtcdCodec.b64(key), "range_end": EtcdCodec.b64(rangeEnd),
            "start_revision": String(start), "prev_kv": true,
        ]]
        var request = HTTPClientRequest(url: endpoint + "/v3/watch")
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json")
        // gRPC metadata through the gateway: etcd cancels the watch when its member loses the
        // leader (partitioned from the quorum) instead of keeping a stale stream open.
        request.headers.add(name: "Grpc-Metadata-hasleader", value: "true")
        request.body = .bytes((try? JSONSerialization.data(withJSONObject: body)) ?? Data())

        let response: HTTPClientResponse
        do {
            response = try await transport.client.execute(request, deadline: .now() + .etcd(transport.requestTimeout))
        } catch {
            return Task.isCancelled ? .stopped : .failed(transport.describe(error))
        }
        guard response.status.code == 200 else {
            let data = (try? await response.body.collect(upTo: 1 << 20)).map { Data($0.readableBytesView) } ?? Data()
            return .failed(EtcdTransport.apiError(endpoint: endpoint, status: Int(response.status.code), body: data).message)
        }

        let decoder = JSONDecoder()
        var buffer: [UInt8] = []
        do {
            for try await chunk in response.body {
                buffer.append(contentsOf: chunk.readableBytesView)
                while let newline = buffer.firstIndex(of: UInt8(ascii: "\n")) {
                    let line = Data(buffer[..<newline])
                    buffer.removeSubrange(...newline)
                    if line.allSatisfy({ $0 == 32 || $0 == 13 || $0 == 9 }) { continue }
                    guard let message = try? decoder.decode(EtcdWatchLine.self, from: line) else {
                        return .failed("unreadable watch response: \(String(decoding: line.prefix(200), as: UTF8.self))")
                    }
                    if let error = message.error {
                        return .failed(error.message ?? "watch error (gRPC code \(error.grpc_code ?? 0))")
                    }
                    guard let result = message.result else { continue }
                    if result.compact_revision.int > 0 {
                        // `requested` is the afterRevision this connection resumed from.
                        return .compacted(requested: start - 1, compactRevision: result.compact_revision.int)
                    }
                    if result.canceled == true {
                        return .failed("etcd canceled the watch: \(result.cancel_reason ?? "no reason given")")
                    }
                    if result.created == true { progress.withLock { $0.connected = true } }
                    // A line holds whole revisions: handed on together, so a revision is never split.
                    let events = (result.events ?? []).compactMap(Self.watchEvent).filter { $0.kv.modRevision >= start }
                    guard let newest = events.last?.kv.modRevision else { continue }
                    progress.withLock { $0.lastDelivered = max($0.lastDelivered, newest) }
                    if !continuation.deliver(events) { return .stopped }
                }
            }
        } catch {
            return Task.isCancelled ? .stopped : .failed(transport.describe(error))
        }
        return Task.isCancelled ? .stopped : .failed("etcd closed the watch stream")
    }

    /// Returns `.failed` once `endpoint` stops answering (two failed status requests in a row);
    /// nil when cancelled.
    private func probe(endpoint: String, every interval: Duration) async -> WatchOutcome? {
        var failedOnce = false
        while true {
            do { try await Task.sleep(for: interval) } catch { return nil }
            do {
                let (status, _) = try await transport.attempt(endpoint + "/v3/maintenance/status", Data("{}".utf8))
                if status == 200 { failedOnce = false; continue }
                if failedOnce { return .failed("health probe: HTTP \(status)") }
            } catch {
                if Task.isCancelled { return nil }
                if failedOnce { return .failed("health probe: \(transport.describe(error))") }
            }
            failedOnce = true
        }
    }

    static func watchEvent(_ event: EtcdWatchLine.Event) -> WatchEvent? {
        guard let kv = event.kv else { return nil }
        if event.type == "DELETE" {
            // The deleted key's kv carries only the key and the delete's revision; the last value
            // comes from prev_kv.
            let prev = event.prev_kv
            return WatchEvent(kind: .delete, kv: KeyValue(
                key: String(decoding: kv.key?.bytes ?? [], as: UTF8.self),
                value: prev?.value?.bytes ?? [],
                createRevision: prev?.create_revision.int ?? 0,
                modRevision: kv.mod_revision.int,
                lease: prev?.lease.int ?? 0))
        }
        return WatchEvent(kind: .put, kv: kv.keyValue)
    }
}
