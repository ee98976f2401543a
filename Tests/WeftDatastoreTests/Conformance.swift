// Datastore conformance: the behaviour every `Datastore` backend must share, written once and
// run against MemoryDatastore (MemoryDatastoreTests.swift), SQLiteDatastore
// (SQLiteDatastoreTests.swift) and, by reusing it, etcd.
//
// How to run it against a backend (e.g. from an etcd test file in this target):
//
//     @Test(arguments: DatastoreConformance.caseNames)
//     func etcdConformance(_ name: String) async throws {
//         try await DatastoreConformance.run(name,
//             make: { try await EtcdDatastore(...) },            // a store per case, or a shared one
//             compact: { store, rev in try await (store as! EtcdDatastore).compact(revision: rev) })
//     }
//
// or `try await DatastoreConformance.runAll(make: ..., compact: ...)` in one test, or a single
// case such as `try await DatastoreConformance.leaseExpiry(ctx)`.
//
// `make` is called once per case; cases may also share one store: every case writes
// only under its own random namespace ("/conformance-<random>/"), and assumes nothing about
// absolute revision numbers, so a shared etcd server with other traffic is fine.
// `compact(store, r)` must make revisions below `r` unwatchable (etcd's compact at `r`); pass
// nil when the backend cannot compact, and the compaction case is skipped. Note that the
// compaction case compacts the whole store at its head revision: on a store shared by cases
// that run in parallel, run it on its own (its store) or last, or the other cases' watches
// from older revisions may fail with .compacted.
//
// Helpers for backend-specific tests live in `extension DatastoreConformance` below
// (`EventCollector` to drain a watch and wait for events, `expectError`, `waitUntil`, ...).
//
// Behaviour fixed here (beyond the protocol's doc comments):
// - update / delete(expectedRevision:) of a missing key throw `.notFound` or `.conflict`
//   (either is accepted: etcd's compare cannot tell them apart without another read);
// - every successful write returns a revision higher than any earlier one, and watch events
//   arrive in non-decreasing revision order (a multi-key lease delete may share one revision);
// - a delete event's kv has the key and the revision of the delete (as modRevision);
// - writes that name a missing lease throw `.leaseNotFound`, as do keepAlive and revoke of an
//   expired, revoked or never-granted lease;
// - lease expiry (TTL 1 s; etcd may raise it to its minimum) deletes the attached keys with
//   delete events within 10 s.
// Time-based checks only use generous deadlines, except `keepAliveExtends`, which needs
// keepAlives 1 s apart to keep a 3 s lease alive for 4 s.

import Synchronization
import Testing
import WeftCore

enum DatastoreConformance {
    typealias Factory = @Sendable () async throws -> any Datastore
    typealias Compactor = @Sendable (any Datastore, Int64) async throws -> Void

    struct Context: Sendable {
        var make: Factory
        var compact: Compactor?
        /// This case's key namespace, ending in "/".
        var ns: String
    }

    static let cases: [(name: String, body: @Sendable (Context) async throws -> Void)] = [
        ("createGetList", createGetList),
        ("createConflict", createConflict),
        ("updateCAS", updateCAS),
        ("deleteCAS", deleteCAS),
        ("revisionsIncrease", revisionsIncrease),
        ("listThenWatch", listThenWatch),
        ("watchPrefix", watchPrefix),
        ("watchLive", watchLive),
        ("leaseAttachAndMissingLease", leaseAttachAndMissingLease),
        ("leaseExpiry", leaseExpiry),
        ("keepAliveExtends", keepAliveExtends),
        ("keepAliveAfterExpiry", keepAliveAfterExpiry),
        ("revoke", revoke),
        ("compaction", compaction),
    ]
    static var caseNames: [String] { cases.map(\.name) }

    static func run(_ name: String, make: @escaping Factory, compact: Compactor?) async throws {
        guard let c = cases.first(where: { $0.name == name }) else {
            Issue.record("no conformance case named \(name)")
            return
        }
        try await c.body(Context(make: make, compact: compact, ns: newNamespace()))
    }

    static func runAll(make: @escaping Factory, compact: Compactor?) async throws {
        for c in cases {
            try await c.body(Context(make: make, compact: compact, ns: newNamespace()))
        }
    }

    static func newNamespace() -> String { "/conformance-\(UInt64.random(in: 1...UInt64.max))/" }

    // MARK: Cases

    static func createGetList(_ ctx: Context) async throws {
        let ds = try await ctx.make()
        let a = ctx.ns + "a/", ab = ctx.ns + "ab/"
        #expect(try await ds.get(a + "1") == nil)
        let r1 = try await ds.create(a + "2", value: b("two"))
        let r2 = try await ds.create(a + "1", value: b("one"))
        let r3 = try await ds.create(ab + "1", value: b("other"))
        let r4 = try await ds.create(ctx.ns + "a", value: b("bare"))

        let got = try #require(try await ds.get(a + "1"))
        #expect(got == KeyValue(key: a + "1", value: b("one"), createRevision: r2, modRevision: r2, lease: 0))

        let listA = try await ds.list(prefix: a)
        #expect(listA.items.map(\.key) == [a + "1", a + "2"], "sorted by key, and /a/ excludes /ab/ and /a")
        #expect(listA.items.map(\.value) == [b("one"), b("two")])
        #expect(listA.items[1].modRevision == r1)
        #expect(listA.revision >= r4)
        let listAB = try await ds.list(prefix: ab)
        #expect(listAB.items.map(\.key) == [ab + "1"])
        #expect(listAB.items.first?.createRevision == r3)
        let all = try await ds.list(prefix: ctx.ns)
        #expect(all.items.map(\.key) == [ctx.ns + "a", a + "1", a + "2", ab + "1"])
        #expect(try await ds.list(prefix: ctx.ns + "none/").items.isEmpty)

        // Values are bytes: empty and non-UTF-8 values round-trip.
        try await ds.create(ctx.ns + "empty", value: [])
        try await ds.create(ctx.ns + "binary", value: [0, 0xFF, 0x80, 10])
        #expect(try await ds.get(ctx.ns + "empty")?.value == [])
        #expect(try await ds.get(ctx.ns + "binary")?.value == [0, 0xFF, 0x80, 10])
        // Keys with LIKE wildcards are plain characters.
        try await ds.create(ctx.ns + "w%/x", value: b("pct"))
        try await ds.create(ctx.ns + "w_/x", value: b("under"))
        try await ds.create(ctx.ns + "wa/x", value: b("plain"))
        #expect(try await ds.list(prefix: ctx.ns + "w%/").items.map(\.key) == [ctx.ns + "w%/x"])
        #expect(try await ds.list(prefix: ctx.ns + "w_/").items.map(\.key) == [ctx.ns + "w_/x"])
    }

    static func createConflict(_ ctx: Context) async throws {
        let ds = try await ctx.make()
        let k = ctx.ns + "k"
        let r1 = try await ds.create(k, value: b("v1"))
        await expectError(.conflict(key: k)) { try await ds.create(k, value: b("v2")) }
        #expect(try await ds.get(k)?.value == b("v1"))
        // After a delete the key can be created again, with a new createRevision.
        try await ds.delete(k, expectedRevision: nil)
        let r2 = try await ds.create(k, value: b("v3"))
        #expect(r2 > r1)
        let kv = try #require(try await ds.get(k))
        #expect(kv.createRevision == r2 && kv.modRevision == r2 && kv.value == b("v3"))
    }

    static func updateCAS(_ ctx: Context) async throws {
        let ds = try await ctx.make()
        let k = ctx.ns + "k"
        let r1 = try await ds.create(k, value: b("v1"))
        let r2 = try await ds.update(k, value: b("v2"), expectedRevision: r1)
        #expect(r2 > r1)
        #expect(try await ds.get(k) == KeyValue(key: k, value: b("v2"), createRevision: r1, modRevision: r2))
        // A stale revision loses and changes nothing.
        await expectError(.conflict(key: k)) { try await ds.update(k, value: b("stale"), expectedRevision: r1) }
        #expect(try await ds.get(k)?.value == b("v2"))
        let r3 = try await ds.update(k, value: b("v3"), expectedRevision: r2)
        #expect(r3 > r2)
        #expect(try await ds.get(k)?.createRevision == r1)
        // Missing key.
        await expectMissing(ctx.ns + "missing") { try await ds.update(ctx.ns + "missing", value: b("x"), expectedRevision: r3) }
        #expect(try await ds.get(ctx.ns + "missing") == nil)
    }

    static func deleteCAS(_ ctx: Context) async throws {
        let ds = try await ctx.make()
        let k = ctx.ns + "k"
        let r1 = try await ds.create(k, value: b("v1"))
        let r2 = try await ds.update(k, value: b("v2"), expectedRevision: r1)
        await expectError(.conflict(key: k)) { try await ds.delete(k, expectedRevision: r1) }
        #expect(try await ds.get(k)?.value == b("v2"))
        try await ds.delete(k, expectedRevision: r2)
        #expect(try await ds.get(k) == nil)
        #expect(try await ds.list(prefix: ctx.ns).items.isEmpty)
        // Deleting a missing key: fine without an expected revision, an error with one.
        try await ds.delete(k, expectedRevision: nil)
        try await ds.delete(ctx.ns + "never", expectedRevision: nil)
        await expectMissing(k) { try await ds.delete(k, expectedRevision: r2) }
        // Unconditional delete of a present key.
        try await ds.create(k, value: b("v3"))
        try await ds.delete(k, expectedRevision: nil)
        #expect(try await ds.get(k) == nil)
    }

    static func revisionsIncrease(_ ctx: Context) async throws {
        let ds = try await ctx.make()
        var last = try await ds.list(prefix: ctx.ns).revision
        for i in 0..<5 {
            let k = ctx.ns + "k\(i)"
            let c = try await ds.create(k, value: b("c"))
            #expect(c > last)
            let u = try await ds.update(k, value: b("u"), expectedRevision: c)
            #expect(u > c)
            last = u
            let listed = try await ds.list(prefix: ctx.ns)
            #expect(listed.revision >= u)
            try await ds.delete(k, expectedRevision: u)
            let after = try await ds.list(prefix: ctx.ns).revision
            #expect(after > u, "a delete takes a revision too")
            last = after
        }
    }

    /// The list → watch(from list revision) pattern: the watch replays exactly the writes after
    /// the list, in order, and nothing from before it.
    static func listThenWatch(_ ctx: Context) async throws {
        let ds = try await ctx.make()
        let p = ctx.ns + "p/"
        let ra = try await ds.create(p + "a", value: b("a1"))
        try await ds.create(p + "b", value: b("b1"))
        let listed = try await ds.list(prefix: p)
        #expect(listed.items.map(\.key) == [p + "a", p + "b"])

        // Writes after the list, before the watch starts (replayed from history)...
        let ra2 = try await ds.update(p + "a", value: b("a2"), expectedRevision: ra)
        let rc = try await ds.create(p + "c", value: b("c1"))
        try await ds.delete(p + "b", expectedRevision: nil)
        let watch = EventCollector(ds.watch(prefix: p, afterRevision: listed.revision))
        defer { watch.stop() }
        // ...and after it starts (live).
        try await ds.delete(p + "a", expectedRevision: ra2)
        let rc2 = try await ds.update(p + "c", value: b("c2"), expectedRevision: rc)
        let sentinel = try await ds.create(p + "zz-sentinel", value: [])

        let events = try await watch.waitFor(key: p + "zz-sentinel")
        #expect(events.map(summary) == [
            "put \(p)a a2", "put \(p)c c1", "delete \(p)b", "delete \(p)a", "put \(p)c c2", "put \(p)zz-sentinel ",
        ])
        #expect(events.map(\.kv.modRevision) == events.map(\.kv.modRevision).sorted())
        #expect(events.allSatisfy { $0.kv.modRevision > listed.revision })
        #expect(events[0].kv.modRevision == ra2)
        #expect(events[0].kv.createRevision == ra)
        #expect(events[1].kv.modRevision == rc)
        #expect(events[4].kv.modRevision == rc2)
        #expect(events[5].kv.modRevision == sentinel)
        #expect(events[2].kv.modRevision < events[3].kv.modRevision)
    }

    static func watchPrefix(_ ctx: Context) async throws {
        let ds = try await ctx.make()
        let start = try await ds.list(prefix: ctx.ns).revision
        let a = ctx.ns + "a/"
        let watch = EventCollector(ds.watch(prefix: a, afterRevision: start))
        defer { watch.stop() }
        try await ds.create(ctx.ns + "ab/x", value: b("ab"))
        try await ds.create(ctx.ns + "a", value: b("bare"))
        try await ds.create(ctx.ns + "b/x", value: b("b"))
        try await ds.create(a + "x", value: b("ax"))
        try await ds.delete(ctx.ns + "ab/x", expectedRevision: nil)
        try await ds.create(a + "y/z", value: b("deep"))
        let events = try await watch.waitFor(key: a + "y/z")
        #expect(events.map(summary) == ["put \(a)x ax", "put \(a)y/z deep"])
    }

    /// A watch from the current revision sees only what is written after it started.
    static func watchLive(_ ctx: Context) async throws {
        let ds = try await ctx.make()
        try await ds.create(ctx.ns + "before", value: b("0"))
        let start = try await ds.list(prefix: ctx.ns).revision
        let watch = EventCollector(ds.watch(prefix: ctx.ns, afterRevision: start))
        defer { watch.stop() }
        var expected: [String] = []
        for i in 0..<20 {
            try await ds.create(ctx.ns + "k\(i)", value: b("\(i)"))
            expected.append("put \(ctx.ns)k\(i) \(i)")
        }
        let events = try await watch.waitFor(key: ctx.ns + "k19")
        #expect(events.map(summary) == expected)
    }

    static func leaseAttachAndMissingLease(_ ctx: Context) async throws {
        let ds = try await ctx.make()
        let lease = try await ds.grantLease(ttlSeconds: 60)
        #expect(lease != 0)
        let r = try await ds.create(ctx.ns + "leased", value: b("v"), lease: lease)
        #expect(try await ds.get(ctx.ns + "leased")?.lease == lease)
        // An update may detach the key (lease 0) or keep it.
        let r2 = try await ds.update(ctx.ns + "leased", value: b("v2"), expectedRevision: r, lease: 0)
        #expect(try await ds.get(ctx.ns + "leased")?.lease == 0)
        try await ds.update(ctx.ns + "leased", value: b("v3"), expectedRevision: r2, lease: lease)
        #expect(try await ds.get(ctx.ns + "leased")?.lease == lease)

        let missing = try await ds.grantLease(ttlSeconds: 60)
        try await ds.revokeLease(missing)
        await expectError(.leaseNotFound(missing)) { try await ds.create(ctx.ns + "x", value: [], lease: missing) }
        #expect(try await ds.get(ctx.ns + "x") == nil)
        try await ds.revokeLease(lease)
        #expect(try await ds.get(ctx.ns + "leased") == nil)
    }

    static func leaseExpiry(_ ctx: Context) async throws {
        let ds = try await ctx.make()
        let start = try await ds.list(prefix: ctx.ns).revision
        let watch = EventCollector(ds.watch(prefix: ctx.ns, afterRevision: start))
        defer { watch.stop() }
        // TTLs here are seconds, not one: a loaded machine can stall a task for over a second.
        let lease = try await ds.grantLease(ttlSeconds: 3)
        try await ds.create(ctx.ns + "keep", value: b("k"))
        try await ds.create(ctx.ns + "leased1", value: b("l1"), lease: lease)
        try await ds.create(ctx.ns + "leased2", value: b("l2"), lease: lease)
        let events = try await watch.waitUntil(timeout: 30) { events in
            Set(events.filter { $0.kind == .delete }.map(\.kv.key)) == [ctx.ns + "leased1", ctx.ns + "leased2"]
        }
        let deletes = events.filter { $0.kind == .delete }
        #expect(deletes.count == 2)
        #expect(deletes.allSatisfy { $0.kv.modRevision > start })
        #expect(try await ds.get(ctx.ns + "leased1") == nil)
        #expect(try await ds.get(ctx.ns + "leased2") == nil)
        #expect(try await ds.get(ctx.ns + "keep")?.value == b("k"))
        #expect(try await ds.list(prefix: ctx.ns).items.map(\.key) == [ctx.ns + "keep"])
    }

    static func keepAliveExtends(_ ctx: Context) async throws {
        let ds = try await ctx.make()
        let lease = try await ds.grantLease(ttlSeconds: 6)
        try await ds.create(ctx.ns + "leased", value: b("v"), lease: lease)
        // 8 s in all, longer than the TTL, with a keepAlive every 2 s (room for a stalled task).
        for _ in 0..<4 {
            try await Task.sleep(nanoseconds: 2_000_000_000)
            try await ds.keepAlive(lease: lease)
        }
        #expect(try await ds.get(ctx.ns + "leased")?.lease == lease)
        try await ds.revokeLease(lease)
        #expect(try await ds.get(ctx.ns + "leased") == nil)
    }

    static func keepAliveAfterExpiry(_ ctx: Context) async throws {
        let ds = try await ctx.make()
        let lease = try await ds.grantLease(ttlSeconds: 3)
        try await ds.create(ctx.ns + "leased", value: b("v"), lease: lease)
        try await waitUntil(timeout: 30) { try await ds.get(ctx.ns + "leased") == nil }
        await expectError(.leaseNotFound(lease)) { try await ds.keepAlive(lease: lease) }
        await expectError(.leaseNotFound(lease)) { try await ds.revokeLease(lease) }
        await expectError(.leaseNotFound(lease)) { try await ds.create(ctx.ns + "again", value: [], lease: lease) }
        // A lease that was never granted.
        let bogus: Int64 = 0x5eed_0000_0000 + Int64.random(in: 1...0xFFFF_FFFF)
        await expectError(.leaseNotFound(bogus)) { try await ds.keepAlive(lease: bogus) }
    }

    static func revoke(_ ctx: Context) async throws {
        let ds = try await ctx.make()
        let lease = try await ds.grantLease(ttlSeconds: 60)
        let other = try await ds.grantLease(ttlSeconds: 60)
        try await ds.create(ctx.ns + "l1", value: b("1"), lease: lease)
        try await ds.create(ctx.ns + "l2", value: b("2"), lease: lease)
        try await ds.create(ctx.ns + "other", value: b("o"), lease: other)
        let start = try await ds.list(prefix: ctx.ns).revision
        let watch = EventCollector(ds.watch(prefix: ctx.ns, afterRevision: start))
        defer { watch.stop() }
        try await ds.revokeLease(lease)
        #expect(try await ds.get(ctx.ns + "l1") == nil)
        #expect(try await ds.get(ctx.ns + "l2") == nil)
        #expect(try await ds.get(ctx.ns + "other")?.lease == other)
        let events = try await watch.waitUntil(timeout: 5) { $0.count >= 2 }
        #expect(Set(events.map(summary)) == ["delete \(ctx.ns)l1", "delete \(ctx.ns)l2"])
        await expectError(.leaseNotFound(lease)) { try await ds.keepAlive(lease: lease) }
        await expectError(.leaseNotFound(lease)) { try await ds.revokeLease(lease) }
        try await ds.keepAlive(lease: other)
        try await ds.revokeLease(other)
        #expect(try await ds.list(prefix: ctx.ns).items.isEmpty)
    }

    static func compaction(_ ctx: Context) async throws {
        guard let compact = ctx.compact else { return }
        let ds = try await ctx.make()
        let k = ctx.ns + "k"
        let early = try await ds.list(prefix: ctx.ns).revision
        var rev = try await ds.create(k, value: b("0"))
        for i in 1...5 { rev = try await ds.update(k, value: b("\(i)"), expectedRevision: rev) }
        try await ds.create(ctx.ns + "gone", value: b("g"))
        try await ds.delete(ctx.ns + "gone", expectedRevision: nil)
        let head = try await ds.update(k, value: b("last"), expectedRevision: rev)
        try await compact(ds, head)

        // The current state survives.
        let listed = try await ds.list(prefix: ctx.ns)
        #expect(listed.items.map(\.key) == [k])
        #expect(listed.items.first?.value == b("last"))
        #expect(listed.items.first?.modRevision == head)

        // Watching from before the compaction fails with .compacted...
        let old = EventCollector(ds.watch(prefix: ctx.ns, afterRevision: early))
        defer { old.stop() }
        let error = try await old.waitForError(timeout: 5)
        guard case DatastoreError.compacted(_, let compactRevision)? = error as? DatastoreError else {
            Issue.record("expected .compacted, got \(String(describing: error))")
            return
        }
        #expect(compactRevision > early)
        #expect(compactRevision <= head)

        // ...while watching from the compact revision on works: the relist-and-rewatch path.
        let fresh = EventCollector(ds.watch(prefix: ctx.ns, afterRevision: listed.revision))
        defer { fresh.stop() }
        let next = try await ds.update(k, value: b("after"), expectedRevision: head)
        let events = try await fresh.waitFor(key: k)
        #expect(events.map(summary) == ["put \(k) after"])
        #expect(events.first?.kv.modRevision == next)
        // Compacting at an older revision again changes nothing.
        try await compact(ds, early)
        #expect(try await ds.get(k)?.value == b("after"))
    }
}

// MARK: Helpers

extension DatastoreConformance {

    static func b(_ s: String) -> [UInt8] { Array(s.utf8) }

    /// "put key value" or "delete key".
    static func summary(_ e: WatchEvent) -> String {
        switch e.kind {
        case .put: "put \(e.kv.key) \(String(decoding: e.kv.value, as: UTF8.self))"
        case .delete: "delete \(e.kv.key)"
        }
    }

    struct Timeout: Error, CustomStringConvertible {
        var description: String
    }

    /// Expects `body` to throw exactly `expected`.
    static func expectError(_ expected: DatastoreError, sourceLocation: SourceLocation = #_sourceLocation,
                     _ body: () async throws -> Void) async {
        do {
            try await body()
            Issue.record("expected \(expected), but it succeeded", sourceLocation: sourceLocation)
        } catch let error as DatastoreError {
            #expect(error == expected, sourceLocation: sourceLocation)
        } catch {
            Issue.record("expected \(expected), got \(error)", sourceLocation: sourceLocation)
        }
    }

    /// Expects `.notFound(key)` or `.conflict(key)`.
    static func expectMissing(_ key: String, sourceLocation: SourceLocation = #_sourceLocation,
                       _ body: () async throws -> Void) async {
        do {
            try await body()
            Issue.record("expected notFound or conflict for \(key), but it succeeded", sourceLocation: sourceLocation)
        } catch let error as DatastoreError {
            #expect(error == .notFound(key: key) || error == .conflict(key: key), sourceLocation: sourceLocation)
        } catch {
            Issue.record("expected notFound or conflict, got \(error)", sourceLocation: sourceLocation)
        }
    }

    /// Polls `condition` every 20 ms until it holds; throws `Timeout` after `timeout` seconds.
    static func waitUntil(timeout: Double, _ condition: () async throws -> Bool) async throws {
        let deadline = ContinuousClock.now + .milliseconds(Int(timeout * 1000))
        while try await !condition() {
            if ContinuousClock.now > deadline { throw Timeout(description: "condition not met within \(timeout) s") }
            try await Task.sleep(nanoseconds: 20_000_000)
        }
    }

    /// Drains a watch stream in the background so that tests can wait for what it delivered.
    final class EventCollector: Sendable {
        private struct State {
            var events: [WatchEvent] = []
            var error: (any Error)?
            var finished = false
        }
        private let state = Mutex(State())
        private let task = Mutex<Task<Void, Never>?>(nil)

        init(_ stream: AsyncThrowingStream<WatchEvent, Error>) {
            let t = Task { [self] in
                do {
                    for try await event in stream { state.withLock { $0.events.append(event) } }
                    state.withLock { $0.finished = true }
                } catch {
                    state.withLock { $0.error = error; $0.finished = true }
                }
            }
            task.withLock { $0 = t }
        }

        var events: [WatchEvent] { state.withLock { $0.events } }

        /// Cancels the consumer, which terminates the stream (and the backend's watch).
        func stop() { task.withLock { $0?.cancel() } }

        /// Waits until `condition(events)` holds; throws `Timeout` (listing what arrived) or the
        /// stream's error.
        @discardableResult
        func waitUntil(timeout: Double = 5, _ condition: ([WatchEvent]) -> Bool) async throws -> [WatchEvent] {
            let deadline = ContinuousClock.now + .milliseconds(Int(timeout * 1000))
            while true {
                let (events, error, finished) = state.withLock { ($0.events, $0.error, $0.finished) }
                if condition(events) { return events }
                if let error { throw error }
                if finished { throw Timeout(description: "watch ended; got \(events.map(summary))") }
                if ContinuousClock.now > deadline {
                    throw Timeout(description: "watch condition not met within \(timeout) s; got \(events.map(summary))")
                }
                try await Task.sleep(nanoseconds: 10_000_000)
            }
        }

        /// Waits for an event on `key` and returns every event up to and including it.
        func waitFor(key: String, timeout: Double = 5) async throws -> [WatchEvent] {
            let events = try await waitUntil(timeout: timeout) { $0.contains { $0.kv.key == key } }
            let i = events.firstIndex { $0.kv.key == key }!
            return Array(events[...i])
        }

        /// Waits for the stream to fail; nil if it ended cleanly.
        func waitForError(timeout: Double = 5) async throws -> (any Error)? {
            let deadline = ContinuousClock.now + .milliseconds(Int(timeout * 1000))
            while true {
                let (events, error, finished) = state.withLock { ($0.events, $0.error, $0.finished) }
                if finished { return error }
                if ContinuousClock.now > deadline {
                    throw Timeout(description: "watch did not fail within \(timeout) s; got \(events.map(summary))")
                }
                try await Task.sleep(nanoseconds: 10_000_000)
            }
        }
    }

    /// Read-modify-write of a decimal counter, retrying on conflict.
    static func increment(_ ds: any Datastore, _ key: String) async throws {
        while true {
            let kv = try #require(try await ds.get(key))
            let n = Int(String(decoding: kv.value, as: UTF8.self))! + 1
            do {
                try await ds.update(key, value: Array(String(n).utf8), expectedRevision: kv.modRevision)
                return
            } catch DatastoreError.conflict {
                continue
            }
        }
    }
}
