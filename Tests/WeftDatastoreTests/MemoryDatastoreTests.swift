import Synchronization
import Testing
import WeftCore
import WeftOSFakes

private typealias Conformance = DatastoreConformance
private typealias Collector = DatastoreConformance.EventCollector

/// A clock the test moves by hand.
private final class ManualClock: Sendable {
    private let value = Mutex<Double>(1000)
    var now: Double { value.withLock { $0 } }
    func advance(_ seconds: Double) { value.withLock { $0 += seconds } }
}

@Suite struct MemoryDatastoreTests {
    @Test(arguments: DatastoreConformance.caseNames)
    func conformance(_ name: String) async throws {
        try await Conformance.run(name, make: { MemoryDatastore() }, compact: { store, revision in
            (store as! MemoryDatastore).compact(revision: revision)
        })
    }

    @Test func leaseExpiresExactlyAtItsDeadline() async throws {
        let clock = ManualClock()
        let ds = MemoryDatastore(now: { clock.now })
        let lease = try await ds.grantLease(ttlSeconds: 10)
        try await ds.create("/k", value: [1], lease: lease)
        let start = ds.currentRevision
        let watch = Collector(ds.watch(prefix: "/", afterRevision: start))
        defer { watch.stop() }

        clock.advance(9.9)
        #expect(try await ds.get("/k") != nil)
        try await ds.keepAlive(lease: lease)           // deadline now 1019.9
        clock.advance(9.9)
        #expect(try await ds.get("/k") != nil)
        #expect(ds.leaseIDs == [lease])
        clock.advance(0.1)                             // exactly at the deadline
        #expect(try await ds.get("/k") == nil)
        #expect(ds.leaseIDs.isEmpty)
        let events = try await watch.waitUntil { !$0.isEmpty }
        #expect(events.map(Conformance.summary) == ["delete /k"])
        #expect(events[0].kv.modRevision == start + 1)
        #expect(events[0].kv.value == [1])
        #expect(events[0].kv.lease == lease)
        await Conformance.expectError(.leaseNotFound(lease)) { try await ds.keepAlive(lease: lease) }
    }

    /// With no calls at all, an open watch's ticker notices the expiry.
    @Test func openWatchExpiresLeasesWithoutOtherCalls() async throws {
        let clock = ManualClock()
        let ds = MemoryDatastore(now: { clock.now }, tick: 0.01)
        let lease = try await ds.grantLease(ttlSeconds: 5)
        try await ds.create("/a", value: [], lease: lease)
        try await ds.create("/b", value: [], lease: lease)
        let watch = Collector(ds.watch(prefix: "/", afterRevision: ds.currentRevision))
        defer { watch.stop() }
        clock.advance(5)
        let events = try await watch.waitUntil { $0.count == 2 }
        // Each delete of a lease gets its own revision, in key order.
        #expect(events.map(Conformance.summary) == ["delete /a", "delete /b"])
        #expect(events.map(\.kv.modRevision) == [3, 4])
    }

    @Test func compactionBoundary() async throws {
        let ds = MemoryDatastore()
        var rev = try await ds.create("/k", value: [0])
        for i in 1...9 { rev = try await ds.update("/k", value: [UInt8(i)], expectedRevision: rev) }
        #expect(rev == 10)
        ds.compact(revision: 6)
        #expect(ds.compactRevision == 6)

        // afterRevision 5 wants 6 onwards: still there.
        let ok = Collector(ds.watch(prefix: "/", afterRevision: 5))
        defer { ok.stop() }
        let events = try await ok.waitUntil { $0.count == 5 }
        #expect(events.map(\.kv.modRevision) == [6, 7, 8, 9, 10])

        let gone = Collector(ds.watch(prefix: "/", afterRevision: 4))
        let error = try await gone.waitForError()
        #expect(error as? DatastoreError == .compacted(requested: 4, compactRevision: 6))

        // Clamped to the head; never moves back.
        ds.compact(revision: 100)
        #expect(ds.compactRevision == 10)
        ds.compact(revision: 3)
        #expect(ds.compactRevision == 10)
        #expect(try await ds.get("/k")?.value == [9])
    }

    @Test func missingKeyErrors() async throws {
        let ds = MemoryDatastore()
        await Conformance.expectError(.notFound(key: "/x")) { try await ds.update("/x", value: [], expectedRevision: 1) }
        await Conformance.expectError(.notFound(key: "/x")) { try await ds.delete("/x", expectedRevision: 1) }
        try await ds.delete("/x", expectedRevision: nil)
        #expect(ds.currentRevision == 0, "deleting a missing key writes nothing")
    }

    @Test func stoppedWatchesAreForgotten() async throws {
        let ds = MemoryDatastore()
        let w = Collector(ds.watch(prefix: "/", afterRevision: 0))
        #expect(ds.watcherCount == 1)
        w.stop()
        try await Conformance.waitUntil(timeout: 5) { ds.watcherCount == 0 }
    }

    @Test func concurrentIncrementsLoseNothing() async throws {
        let ds = MemoryDatastore()
        try await ds.create("/counter", value: Array("0".utf8))
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<100 {
                group.addTask { try await Conformance.increment(ds, "/counter") }
            }
            try await group.waitForAll()
        }
        let kv = try #require(try await ds.get("/counter"))
        #expect(String(decoding: kv.value, as: UTF8.self) == "100")
    }
}
