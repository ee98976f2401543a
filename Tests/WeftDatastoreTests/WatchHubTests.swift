#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing
import WeftCore
@testable import WeftDatastore

private typealias Collector = DatastoreConformance.EventCollector
private func b(_ s: String) -> [UInt8] { Array(s.utf8) }

/// The process-wide watch hub of a SQLite file: one query per commit whatever the number of
/// watches, each watch getting exactly the rows under its prefix.
@Suite struct SQLiteWatchHubTests {
    private func withStore<T>(_ body: (SQLiteDatastore) async throws -> T) async throws -> T {
        var template = Array("/tmp/weft-hub-test-XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw POSIXError(.EIO) }
        let dir = String(cString: made)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // No query on a quiet log: only commits cause queries, which is what is counted.
        let store = try SQLiteDatastore(path: dir + "/hub.db", pollInterval: 0.005, idleQueryInterval: .seconds(3600))
        return try await body(store)
    }

    @Test func manyWatchersCostOneQueryPerCommitAndGetTheirPrefixOnly() async throws {
        try await withStore { store in
            try await store.create("/x", value: b("before the watches"))
            let start = try await store.list(prefix: "/").revision
            let prefixes = ["/a/", "/b/", "/c/"]
            var watchers: [(prefix: String, events: Collector)] = []
            for p in prefixes { for _ in 0..<4 { watchers.append((p, Collector(store.watch(prefix: p, afterRevision: start)))) } }
            defer { for w in watchers { w.events.stop() } }
            // Everyone joins the shared poll.
            for p in prefixes { try await store.create(p + "first", value: b("1")) }
            for w in watchers { _ = try await w.events.waitFor(key: w.prefix + "first") }

            let hub = SQLiteWatchHub.hub(for: store)
            let polls = hub.pollQueries.load(ordering: .relaxed), catchUps = hub.catchUpQueries.load(ordering: .relaxed)
            let commits = 9
            for i in 0..<commits {
                let p = prefixes[i % 3]
                try await store.create(p + "k\(i)", value: b("\(i)"))
                for w in watchers where w.prefix == p { _ = try await w.events.waitFor(key: p + "k\(i)") }
            }
            // "/ab" sorts between "/a/" and "/b/" but is under neither.
            try await store.create("/ab", value: b("outside"))
            try await store.create("/a/last", value: b("2"))
            for w in watchers where w.prefix == "/a/" { _ = try await w.events.waitFor(key: "/a/last") }

            let queries = hub.pollQueries.load(ordering: .relaxed) - polls
            #expect(queries >= 1 && queries <= commits + 2, "12 watches, \(commits + 2) commits: \(queries) queries")
            #expect(hub.catchUpQueries.load(ordering: .relaxed) == catchUps, "joined watches need no query of their own")
            for w in watchers {
                let keys = w.events.events.map(\.kv.key)
                var want = [w.prefix + "first"] + (0..<commits).filter { prefixes[$0 % 3] == w.prefix }.map { w.prefix + "k\($0)" }
                if w.prefix == "/a/" { want.append("/a/last") }
                #expect(keys == want, "watch of \(w.prefix)")
            }
        }
    }

    /// Lease keepalives (every node's, several a second in a cluster) write the database but not
    /// the key log: they wake no hub, while a put wakes it at once, poll or no poll.
    @Test func keepalivesWakeNoHubAPutDoes() async throws {
        var template = Array("/tmp/weft-hub-test-XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw POSIXError(.EIO) }
        let dir = String(cString: made)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let store = try SQLiteDatastore(path: dir + "/hub.db", pollInterval: 60, idleQueryInterval: .seconds(3600))
        let lease = try await store.grantLease(ttlSeconds: 60)
        let start = try await store.list(prefix: "/").revision
        let events = Collector(store.watch(prefix: "/a/", afterRevision: start))
        defer { events.stop() }
        try await store.create("/a/first", value: b("1"))
        _ = try await events.waitFor(key: "/a/first")
        try await Task.sleep(for: .milliseconds(300)) // the hub done with that commit, asleep
        let hub = SQLiteWatchHub.hub(for: store)
        let polls = hub.pollQueries.load(ordering: .relaxed)
        for _ in 0..<5 { try await store.keepAlive(lease: lease) }
        try await Task.sleep(for: .milliseconds(300))
        #expect(hub.pollQueries.load(ordering: .relaxed) == polls, "keepalives cause no query")
        try await store.create("/a/second", value: b("2"))
        _ = try await events.waitFor(key: "/a/second")
        #expect(hub.pollQueries.load(ordering: .relaxed) > polls)
    }

    @Test func aWatcherBehindTheHubIsCaughtUpFromTheLog() async throws {
        try await withStore { store in
            let start = try await store.list(prefix: "/").revision
            let first = Collector(store.watch(prefix: "/n/", afterRevision: start))
            defer { first.stop() }
            let r1 = try await store.create("/n/1", value: b("1"))
            try await store.create("/m/1", value: b("other prefix"))
            try await store.create("/n/2", value: b("2"))
            _ = try await first.waitFor(key: "/n/2")
            // Joins behind the hub: the log gives it what it missed, then it shares the poll.
            let late = Collector(store.watch(prefix: "/n/", afterRevision: start))
            defer { late.stop() }
            let fromR1 = Collector(store.watch(prefix: "/n/", afterRevision: r1))
            defer { fromR1.stop() }
            try await store.create("/n/3", value: b("3"))
            _ = try await late.waitFor(key: "/n/3")
            _ = try await fromR1.waitFor(key: "/n/3")
            _ = try await first.waitFor(key: "/n/3")
            #expect(late.events.map(\.kv.key) == ["/n/1", "/n/2", "/n/3"])
            #expect(fromR1.events.map(\.kv.key) == ["/n/2", "/n/3"])
            #expect(first.events.map(\.kv.key) == ["/n/1", "/n/2", "/n/3"], "no repeats for the watch already there")

            // Behind a compaction: `.compacted`, and the others go on.
            try await store.update("/n/1", value: b("1b"), expectedRevision: r1)
            let compactedTo = try await store.compact(keepingLast: 1)
            let stale = Collector(store.watch(prefix: "/n/", afterRevision: start))
            defer { stale.stop() }
            let error = try await stale.waitForError()
            #expect((error as? DatastoreError) == .compacted(requested: start, compactRevision: compactedTo))
            try await store.create("/n/4", value: b("4"))
            _ = try await first.waitFor(key: "/n/4")
        }
    }
}
