import Synchronization
import WeftCore

/// The watches of one `EtcdDatastore`, one stream per prefix: every watch of a prefix is fed
/// from the same connection, each getting the events after its own revision.
///
/// A watch that joins at or ahead of what the stream has delivered attaches and skips what is
/// not after its revision. One that joins behind (it listed at an older revision) restarts the
/// stream from the oldest revision any of its watches still needs; the others skip the events
/// they already have, so every watch sees each revision once and in order. When etcd answers
/// that the restart revision is compacted, the watches behind the compaction end with
/// `.compacted` and the stream starts again for the rest.
final class EtcdWatchHub: Sendable {
    typealias Continuation = AsyncThrowingStream<WatchEvent, Error>.Continuation

    private struct Subscriber {
        var requested: Int64
        /// Every revision up to this one was delivered to this watch.
        var position: Int64
        var continuation: Continuation
    }

    private struct Stream {
        var subscribers: [Int: Subscriber] = [:]
        /// New at each (re)start: events and endings of an older stream are ignored.
        var generation = 0
        var task: Task<Void, Never>?
        /// The revision up to which the running stream has delivered.
        var delivered: Int64 = 0
    }

    private struct State {
        var streams: [String: Stream] = [:]
        var nextID = 0
    }

    private let state = Mutex(State())

    /// Streams opened, in all (for tests: watches of one prefix share one).
    let streamsOpened = Atomic<Int>(0)
    /// Stream generations, one sequence for every prefix of this hub.
    private let generations = Atomic<Int>(0)

    /// Work to do once the lock is let go: finishing a stream runs its onTermination (which
    /// takes the lock), and cancelling a task runs its cancellation handlers.
    private struct Aftermath {
        var finish: [(Continuation, Error?)] = []
        var cancel: [Task<Void, Never>] = []
        func run() {
            for t in cancel { t.cancel() }
            for (c, e) in finish { c.finish(throwing: e) }
        }
    }

    func join(_ store: EtcdDatastore, prefix: String, afterRevision: Int64, continuation: Continuation) {
        let id = state.withLock { s -> Int in
            defer { s.nextID += 1 }
            return s.nextID
        }
        continuation.onTermination = { [weak self, weak store] _ in
            guard let self, let store else { return }
            self.leave(store, prefix: prefix, id: id)
        }
        var after = Aftermath()
        state.withLock { s in
            var stream = s.streams[prefix] ?? Stream()
            stream.subscribers[id] = Subscriber(requested: afterRevision, position: afterRevision, continuation: continuation)
            if stream.task == nil || afterRevision < stream.delivered {
                restart(store, prefix: prefix, &stream, &after)
            }
            s.streams[prefix] = stream
        }
        after.run()
    }

    private func leave(_ store: EtcdDatastore, prefix: String, id: Int) {
        let task = state.withLock { s -> Task<Void, Never>? in
            guard var stream = s.streams[prefix], stream.subscribers.removeValue(forKey: id) != nil else { return nil }
            guard stream.subscribers.isEmpty else { s.streams[prefix] = stream; return nil }
            s.streams[prefix] = nil
            return stream.task
        }
        task?.cancel()
    }

    /// (Re)opens the prefix's stream from the oldest position among its watches.
    private func restart(_ store: EtcdDatastore, prefix: String, _ stream: inout Stream, _ after: inout Aftermath) {
        if let old = stream.task { after.cancel.append(old) }
        guard let from = stream.subscribers.values.map(\.position).min() else { stream.task = nil; return }
        // Numbered across the hub, not per stream: a prefix's stream made anew after its last
        // watch left must not take the number of the old one, whose ending is still to come.
        stream.generation = generations.add(1, ordering: .relaxed).newValue
        stream.delivered = from
        streamsOpened.add(1, ordering: .relaxed)
        let generation = stream.generation
        stream.task = store.openStream(prefix: prefix, afterRevision: from, sink: .init(
            deliver: { [weak self] events in self?.deliver(events, prefix: prefix, generation: generation) ?? false },
            finish: { [weak self] error in self?.ended(store, prefix: prefix, generation: generation, error: error) }))
    }

    /// Whole revisions, in order: each watch gets those after its position.
    private func deliver(_ events: [WatchEvent], prefix: String, generation: Int) -> Bool {
        guard let newest = events.last?.kv.modRevision else { return true }
        return state.withLock { s in
            guard var stream = s.streams[prefix], stream.generation == generation else { return false }
            stream.delivered = max(stream.delivered, newest)
            for (id, sub) in stream.subscribers where sub.position < newest {
                for event in events where event.kv.modRevision > sub.position { sub.continuation.yield(event) }
                stream.subscribers[id]?.position = newest
            }
            s.streams[prefix] = stream
            return !stream.subscribers.isEmpty
        }
    }

    private func ended(_ store: EtcdDatastore, prefix: String, generation: Int, error: Error?) {
        var after = Aftermath()
        state.withLock { s in
            guard var stream = s.streams[prefix], stream.generation == generation else { return }
            if case .compacted(_, let compactRevision)? = error as? DatastoreError {
                // Those that can still resume go on from a new stream.
                for (id, sub) in stream.subscribers where sub.position + 1 < compactRevision {
                    stream.subscribers[id] = nil
                    after.finish.append((sub.continuation, DatastoreError.compacted(requested: sub.requested, compactRevision: compactRevision)))
                }
                stream.task = nil
                restart(store, prefix: prefix, &stream, &after)
                s.streams[prefix] = stream.subscribers.isEmpty ? nil : stream
            } else {
                after.finish += stream.subscribers.values.map { ($0.continuation, error) }
                s.streams[prefix] = nil
            }
        }
        after.run()
    }
}
