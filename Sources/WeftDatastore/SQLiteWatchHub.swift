import Foundation
import GRDB
import Synchronization
import WeftCore

/// Every watch of one SQLite file in this process, fed by one poll: one WAL-stamp check, and
/// when the log changed, one query for the rows after the hub's position (all keys), each row
/// dispatched to the watchers whose prefix it falls under. An agent's ~8 watches cost what one
/// did.
///
/// A watcher that starts behind the hub's position (it listed at an older revision) is caught
/// up by one query of its own prefix from the log, in the same read transaction as the poll, so
/// nothing falls between the catch-up and the shared rows; one whose revision is compacted away
/// gets `.compacted`, as a watch did on its own. A watcher ahead of the hub skips the rows up to
/// its revision.
///
/// The hub runs while it has watchers and stops when the last one goes; the next watch of the
/// file starts it again.
final class SQLiteWatchHub: Sendable {
    /// Hubs by database path (as the path resolves, so two spellings of one file share).
    private static let hubs = Mutex<[String: SQLiteWatchHub]>([:])

    static func hub(for store: SQLiteDatastore) -> SQLiteWatchHub {
        let key = URL(fileURLWithPath: store.path).resolvingSymlinksInPath().path
        return hubs.withLock { hubs in
            if let hub = hubs[key] { return hub }
            let hub = SQLiteWatchHub(path: store.path)
            hubs[key] = hub
            return hub
        }
    }

    private struct Watcher {
        var range: SQLiteDatastore.PrefixRange
        var prefixBytes: [UInt8]
        /// The watch's starting point, for the `.compacted` error.
        var requested: Int64
        /// The revision up to which this watcher has everything.
        var position: Int64
        /// Caught up to the hub's position: fed from the shared rows.
        var joined = false
        var continuation: AsyncThrowingStream<WatchEvent, Error>.Continuation
    }

    private struct State {
        var watchers: [Int: Watcher] = [:]
        var nextID = 0
        /// Revision up to which the shared rows were read; nil before the first poll.
        var position: Int64?
        /// The store the poll reads through (the first watcher's) and the shortest poll
        /// interval any watcher's store asked for.
        var store: SQLiteDatastore?
        var pollInterval = 1.0
        var running = false
    }

    let path: String
    private let state = Mutex(State())
    /// Queries the hub ran: shared polls and catch-ups (for tests: one poll per commit, however
    /// many watchers).
    let pollQueries = Atomic<Int>(0)
    let catchUpQueries = Atomic<Int>(0)

    private init(path: String) { self.path = path }

    /// How often a hub woken by commits polls anyway.
    static let fallbackPoll = 0.5

    func watch(_ store: SQLiteDatastore, prefix: String, afterRevision: Int64) -> AsyncThrowingStream<WatchEvent, Error> {
        let (stream, continuation) = AsyncThrowingStream.makeStream(of: WatchEvent.self, throwing: Error.self)
        let (id, start) = state.withLock { s -> (Int, Bool) in
            let id = s.nextID
            s.nextID += 1
            s.watchers[id] = Watcher(range: .init(prefix), prefixBytes: Array(prefix.utf8), requested: afterRevision,
                                     position: afterRevision, continuation: continuation)
            if s.store == nil || !s.running { s.store = store; s.pollInterval = store.pollInterval }
            s.pollInterval = min(s.pollInterval, store.pollInterval)
            defer { s.running = true }
            return (id, !s.running)
        }
        continuation.onTermination = { [weak self] _ in
            _ = self?.state.withLock { $0.watchers.removeValue(forKey: id) }
        }
        // The hub's own task, ended by `run` when no watcher is left; a running one is woken for
        // the newcomer's catch-up.
        if start { Task { await self.run() } } else { WALNotifier.shared(databasePath: path)?.poke() }
        return stream
    }

    private func run() async {
        var lastStamp: WALStamp?
        var lastQuery = ContinuousClock.now
        // Woken at each commit to the key log by any process (`WALNotifier`), so an event reaches
        // the watchers in about a millisecond, not at the next poll; one per hub, so one wake-up
        // and one query per commit per process. Polling stays as the fallback.
        let notifier = WALNotifier.shared(databasePath: path)
        /// Sleeps until the log changes after `seen`, or `interval` passes.
        func pause(_ interval: Double, seen: UInt64?) async {
            if let notifier, let seen {
                // Commits wake it: the poll is only the fallback (a writer that does not touch
                // the marker), so it need not come every 50 ms.
                await notifier.wait(past: seen, timeout: .milliseconds(Int(max(interval, Self.fallbackPoll) * 1000)))
            } else {
                try? await Task.sleep(nanoseconds: UInt64(interval * 1e9))
            }
        }
        while true {
            guard let (store, interval, waiting) = state.withLock({ s -> (SQLiteDatastore, Double, Bool)? in
                guard !s.watchers.isEmpty, let store = s.store else {
                    s.running = false
                    s.position = nil
                    s.store = nil
                    return nil
                }
                return (store, s.pollInterval, s.watchers.values.contains { !$0.joined })
            }) else { return }
            await store.maybeSweep()
            // Both taken before the query: a commit during it changes them again.
            let seen = notifier?.generation
            let stamp = WALStamp(databasePath: path)
            if !waiting, let stamp, stamp == lastStamp, ContinuousClock.now - lastQuery < store.idleQueryInterval {
                await pause(interval, seen: seen)
                continue
            }
            // A burst of commits (lease renewals of many nodes) is read in batches, a query at
            // most every 2 ms, rather than one query per commit.
            let sinceLast = ContinuousClock.now - lastQuery
            if sinceLast < .milliseconds(2) { try? await Task.sleep(for: .milliseconds(2) - sinceLast) }
            lastQuery = ContinuousClock.now
            let full: Bool
            do {
                full = try await poll(store)
                lastStamp = stamp
            } catch {
                // The file cannot be read: every watch ends with the error (their owners relist).
                let ended = state.withLock { s in
                    defer { s.watchers = [:]; s.position = nil }
                    return s.watchers.values.map(\.continuation)
                }
                for c in ended { c.finish(throwing: error) }
                continue
            }
            if !full { await pause(interval, seen: seen) }
        }
    }

    /// One read transaction: catch-ups of the watchers not yet joined, then the shared rows
    /// after the hub's position. Events are yielded under the hub's lock, so a watcher that
    /// leaves or joins meanwhile sees each revision once. Returns true when a batch was full
    /// (poll again at once).
    private func poll(_ store: SQLiteDatastore) async throws -> Bool {
        let plan = state.withLock { s in (s.position, s.watchers.filter { !$0.value.joined }.mapValues { ($0.range, $0.position, $0.requested) }) }
        let batch = SQLiteDatastore.watchBatch
        let result = try await store.read { [self] db -> (head: Int64?, shared: [SQLiteDatastore.KVRow], catchUps: [Int: Result<[SQLiteDatastore.KVRow], DatastoreError>]) in
            let headNow = try SQLiteDatastore.headRevision(db)
            let target = plan.0 ?? headNow
            let compacted = try SQLiteDatastore.compactRevision(db)
            var catchUps: [Int: Result<[SQLiteDatastore.KVRow], DatastoreError>] = [:]
            for (id, (range, position, requested)) in plan.1 {
                if position < compacted - 1 {
                    catchUps[id] = .failure(.compacted(requested: requested, compactRevision: compacted))
                } else if position < target {
                    catchUpQueries.add(1, ordering: .relaxed)
                    catchUps[id] = .success(try Row.fetchAll(db, sql: """
                        SELECT \(SQLiteDatastore.KVRow.columns) FROM kv WHERE id > ? AND id <= ? AND \(range.sql) ORDER BY id LIMIT \(batch)
                        """, arguments: [position, target] + range.arguments).map(SQLiteDatastore.KVRow.init))
                } else {
                    catchUps[id] = .success([])
                }
            }
            guard plan.0 != nil else { return (target, [], catchUps) }
            pollQueries.add(1, ordering: .relaxed)
            let rows = try Row.fetchAll(db, sql: """
                SELECT \(SQLiteDatastore.KVRow.columns) FROM kv WHERE id > ? ORDER BY id LIMIT \(batch)
                """, arguments: [target]).map(SQLiteDatastore.KVRow.init)
            // A full batch: the next poll goes on from its last row; else from this snapshot's head.
            return (rows.count == batch ? rows.last!.id : max(target, headNow), rows, catchUps)
        }
        // Finished after the lock is let go: finishing runs the stream's onTermination, which
        // takes the lock.
        var compacted: [(AsyncThrowingStream<WatchEvent, Error>.Continuation, Error)] = []
        defer { for (c, e) in compacted { c.finish(throwing: e) } }
        return state.withLock { s in
            let base = s.position ?? result.head ?? 0
            for (id, outcome) in result.catchUps {
                guard var w = s.watchers[id] else { continue }
                switch outcome {
                case .failure(let error):
                    s.watchers[id] = nil
                    compacted.append((w.continuation, error))
                    continue
                case .success(let rows):
                    for row in rows { w.continuation.yield(row.event) }
                    if rows.count == batch { w.position = rows.last!.id } else { w.position = max(w.position, base); w.joined = true }
                }
                s.watchers[id] = w
            }
            for row in result.shared {
                let name = Array(row.name.utf8)
                for (id, w) in s.watchers where w.joined && row.id > w.position && name.starts(with: w.prefixBytes) {
                    w.continuation.yield(row.event)
                    s.watchers[id]?.position = row.id
                }
            }
            if let head = result.head { s.position = head }
            for id in Array(s.watchers.keys) where s.watchers[id]!.joined { s.watchers[id]!.position = max(s.watchers[id]!.position, s.position ?? 0) }
            return result.shared.count == batch || result.catchUps.values.contains { if case .success(let r) = $0 { r.count == batch } else { false } }
        }
    }
}
