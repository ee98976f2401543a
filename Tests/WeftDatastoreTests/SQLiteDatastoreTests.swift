#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation
import Testing
import WeftCore
@testable import WeftDatastore

private typealias Conformance = DatastoreConformance
private typealias Collector = DatastoreConformance.EventCollector

/// A fresh directory under /tmp, removed after `body`.
private func withTemporaryDirectory<T>(_ body: (String) async throws -> T) async throws -> T {
    var template = Array("/tmp/weft-sqlite-test-XXXXXX".utf8CString)
    guard let made = mkdtemp(&template) else { throw POSIXError(.EIO) }
    let dir = String(cString: made)
    defer { try? FileManager.default.removeItem(atPath: dir) }
    return try await body(dir)
}

@Suite struct SQLiteDatastoreTests {
    @Test(arguments: DatastoreConformance.caseNames)
    func conformance(_ name: String) async throws {
        try await withTemporaryDirectory { dir in
            // A new file per store; each case makes one store.
            let counter = Counter()
            try await Conformance.run(name, make: {
                try SQLiteDatastore(path: "\(dir)/store-\(counter.next()).db", pollInterval: 0.02)
            }, compact: { store, revision in
                try await (store as! SQLiteDatastore).compact(before: revision)
            })
        }
    }

    /// Two stores on one file stand for two processes (each has its own connections).
    @Test func twoInstancesSeeEachOthersWritesAndWatches() async throws {
        try await withTemporaryDirectory { dir in
            let path = dir + "/shared.db"
            let a = try SQLiteDatastore(path: path)
            let b = try SQLiteDatastore(path: path)
            let start = try await b.list(prefix: "/").revision
            let watchB = Collector(b.watch(prefix: "/nodes/", afterRevision: start))
            defer { watchB.stop() }
            let watchA = Collector(a.watch(prefix: "/nodes/", afterRevision: start))
            defer { watchA.stop() }

            let r1 = try await a.create("/nodes/n1", value: Conformance.b("from a"))
            #expect(try await b.get("/nodes/n1")?.modRevision == r1)
            let r2 = try await b.update("/nodes/n1", value: Conformance.b("from b"), expectedRevision: r1)
            #expect(r2 > r1)
            // CAS across instances: a's revision is stale now.
            await Conformance.expectError(.conflict(key: "/nodes/n1")) {
                try await a.update("/nodes/n1", value: Conformance.b("stale"), expectedRevision: r1)
            }
            try await a.create("/nodes/n2", value: Conformance.b("a2"))
            try await b.delete("/nodes/n1", expectedRevision: r2)
            try await a.create("/other", value: [])

            let expected = ["put /nodes/n1 from a", "put /nodes/n1 from b", "put /nodes/n2 a2", "delete /nodes/n1"]
            let seenByB = try await watchB.waitUntil(timeout: 5) { $0.count >= 4 }
            let seenByA = try await watchA.waitUntil(timeout: 5) { $0.count >= 4 }
            #expect(seenByB.map(Conformance.summary) == expected)
            #expect(seenByA.map(Conformance.summary) == expected)
            #expect(seenByA.map(\.kv.modRevision) == seenByB.map(\.kv.modRevision))
            #expect(try await a.list(prefix: "/").items.map(\.key) == ["/nodes/n2", "/other"])
            #expect(try await a.currentRevision() == b.currentRevision())
        }
    }

    /// A commit wakes the watch hub of every process on the file at once, not at their next
    /// poll: with a poll interval of 60 s, the event still arrives (within the 10 s allowed).
    @Test func aCommitWakesWatchesWithoutWaitingForAPoll() async throws {
        try await withTemporaryDirectory { dir in
            let path = dir + "/shared.db"
            let writer = try SQLiteDatastore(path: path, pollInterval: 60)
            let reader = try SQLiteDatastore(path: path, pollInterval: 60)
            let start = try await reader.list(prefix: "/").revision
            let watch = Collector(reader.watch(prefix: "/services/", afterRevision: start))
            defer { watch.stop() }
            // Time for the watch to make its first poll (at once when it starts) and go to sleep.
            try await Task.sleep(for: .milliseconds(200))
            try await writer.create("/services/a", value: Conformance.b("one"))
            try await writer.create("/services/b", value: Conformance.b("two"))
            let seen = try await watch.waitUntil(timeout: 10) { $0.count >= 2 }
            #expect(seen.map(Conformance.summary) == ["put /services/a one", "put /services/b two"])
        }
    }

    @Test func concurrentIncrementsFromTwoInstancesLoseNothing() async throws {
        try await withTemporaryDirectory { dir in
            let path = dir + "/counter.db"
            let a = try SQLiteDatastore(path: path)
            let b = try SQLiteDatastore(path: path)
            try await a.create("/counter", value: Array("0".utf8))
            try await withThrowingTaskGroup(of: Void.self) { group in
                for i in 0..<100 {
                    let store = i.isMultiple(of: 2) ? a : b
                    group.addTask { try await Conformance.increment(store, "/counter") }
                }
                try await group.waitForAll()
            }
            let kv = try #require(try await b.get("/counter"))
            #expect(String(decoding: kv.value, as: UTF8.self) == "100")
        }
    }

    /// The process that owns a lease dies (stops calling); another process's watcher sweeps
    /// the expired lease and every watcher sees the deletes.
    @Test func anotherInstanceSweepsExpiredLeases() async throws {
        try await withTemporaryDirectory { dir in
            let path = dir + "/lease.db"
            let owner = try SQLiteDatastore(path: path)
            let lease = try await owner.grantLease(ttlSeconds: 3)
            try await owner.create("/nodes/dying", value: [1], lease: lease)
            try await owner.create("/nodes/staying", value: [2])
            let start = try await owner.currentRevision()

            let other = try SQLiteDatastore(path: path)
            let watch = Collector(other.watch(prefix: "/nodes/", afterRevision: start))
            defer { watch.stop() }
            let events = try await watch.waitUntil(timeout: 30) { !$0.isEmpty }
            #expect(events.map(Conformance.summary) == ["delete /nodes/dying"])
            #expect(events.first?.kv.value == [1])
            #expect(events.first?.kv.lease == lease)
            #expect(try await owner.get("/nodes/dying") == nil)
            await Conformance.expectError(.leaseNotFound(lease)) { try await owner.keepAlive(lease: lease) }
            #expect(try await owner.list(prefix: "/nodes/").items.map(\.key) == ["/nodes/staying"])
        }
    }

    @Test func compactionIsSeenByOtherInstances() async throws {
        try await withTemporaryDirectory { dir in
            let path = dir + "/compact.db"
            let a = try SQLiteDatastore(path: path)
            let b = try SQLiteDatastore(path: path)
            var rev = try await a.create("/k", value: [0])
            for i in 1...9 { rev = try await a.update("/k", value: [UInt8(i)], expectedRevision: rev) }
            try await a.create("/gone", value: [])
            try await a.delete("/gone", expectedRevision: nil)           // revisions 11, 12
            #expect(try await a.compact(before: 6) == 6)
            #expect(try await b.compactRevision() == 6)

            let ok = Collector(b.watch(prefix: "/", afterRevision: 5))
            defer { ok.stop() }
            let events = try await ok.waitUntil { $0.count == 7 }
            #expect(events.map(\.kv.modRevision) == [6, 7, 8, 9, 10, 11, 12])

            let gone = Collector(b.watch(prefix: "/", afterRevision: 4))
            #expect(try await gone.waitForError() as? DatastoreError == .compacted(requested: 4, compactRevision: 6))

            // keepingLast: 1 keeps only the head watchable; the state is untouched.
            #expect(try await b.compact(keepingLast: 1) == 12)
            #expect(try await a.get("/k")?.value == [9])
            #expect(try await a.get("/k")?.createRevision == 1)
            #expect(try await a.get("/gone") == nil)
            #expect(try await a.currentRevision() == 12)
            // Revisions are not reused after compaction.
            #expect(try await a.create("/new", value: []) == 13)
        }
    }

    /// Two real OS processes (this test binary re-run with a filter selecting
    /// `childProcessIncrements`) and this one share the file: 3 × 50 increments of one counter
    /// lose nothing, and this process's watch sees the children's writes.
    @Test func threeProcessesShareOneFile() async throws {
        try await withTemporaryDirectory { dir in
            let path = dir + "/procs.db"
            let ds = try SQLiteDatastore(path: path)
            try await ds.create("/counter", value: Array("0".utf8))
            let watch = Collector(ds.watch(prefix: "/children/", afterRevision: try await ds.currentRevision()))
            defer { watch.stop() }

            var children: [Process] = []
            for name in ["c1", "c2"] {
                let child = Process()
                child.executableURL = URL(fileURLWithPath: "/proc/self/exe")
                child.arguments = ["--testing-library", "swift-testing", "--filter", "SQLiteDatastoreTests/childProcessIncrements"]
                var env = ProcessInfo.processInfo.environment
                env[childDatabaseVariable] = path
                env[childNameVariable] = name
                child.environment = env
                _ = FileManager.default.createFile(atPath: "\(dir)/\(name).log", contents: nil)
                let log = try FileHandle(forWritingTo: URL(fileURLWithPath: "\(dir)/\(name).log"))
                child.standardOutput = log
                child.standardError = log
                try child.run()
                children.append(child)
            }
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<50 { group.addTask { try await Conformance.increment(ds, "/counter") } }
                try await group.waitForAll()
            }
            for (child, name) in zip(children, ["c1", "c2"]) {
                try await Conformance.waitUntil(timeout: 60) { !child.isRunning }
                let log = (try? String(contentsOfFile: "\(dir)/\(name).log", encoding: .utf8)) ?? ""
                #expect(child.terminationStatus == 0, "child \(name) failed:\n\(log)")
                #expect(log.contains("childProcessIncrements"), "the child did not run the helper test:\n\(log)")
            }
            let events = try await watch.waitUntil(timeout: 5) { $0.count >= 2 }
            #expect(Set(events.map(Conformance.summary)) == ["put /children/c1 done", "put /children/c2 done"])
            let kv = try #require(try await ds.get("/counter"))
            #expect(String(decoding: kv.value, as: UTF8.self) == "150")
        }
    }

    /// Runs only as a child of `threeProcessesShareOneFile` (skipped otherwise).
    @Test(.enabled(if: ProcessInfo.processInfo.environment[childDatabaseVariable] != nil))
    func childProcessIncrements() async throws {
        let env = ProcessInfo.processInfo.environment
        let ds = try SQLiteDatastore(path: try #require(env[childDatabaseVariable]))
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<50 { group.addTask { try await Conformance.increment(ds, "/counter") } }
            try await group.waitForAll()
        }
        try await ds.create("/children/\(try #require(env[childNameVariable]))", value: Conformance.b("done"))
    }

    /// Agents starting together all create the schema and switch the file to WAL at once.
    @Test func concurrentOpensOfAFreshFile() async throws {
        try await withTemporaryDirectory { dir in
            let path = dir + "/fresh.db"
            let stores = try await withThrowingTaskGroup(of: SQLiteDatastore.self) { group in
                for _ in 0..<8 { group.addTask { try SQLiteDatastore(path: path) } }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            try await withThrowingTaskGroup(of: Void.self) { group in
                for (i, store) in stores.enumerated() {
                    group.addTask { try await store.create("/k\(i)", value: []) }
                }
                try await group.waitForAll()
            }
            #expect(try await stores[0].list(prefix: "/k").items.count == 8)
            #expect(try await stores[7].currentRevision() == 8)
        }
    }

    @Test func missingKeyErrors() async throws {
        try await withTemporaryDirectory { dir in
            let ds = try SQLiteDatastore(path: dir + "/m.db")
            await Conformance.expectError(.notFound(key: "/x")) { try await ds.update("/x", value: [], expectedRevision: 1) }
            await Conformance.expectError(.notFound(key: "/x")) { try await ds.delete("/x", expectedRevision: 1) }
            try await ds.delete("/x", expectedRevision: nil)
            #expect(try await ds.currentRevision() == 0, "deleting a missing key writes nothing")
        }
    }

    @Test func reopeningKeepsTheData() async throws {
        try await withTemporaryDirectory { dir in
            let path = dir + "/persist.db"
            do {
                let ds = try SQLiteDatastore(path: path)
                try await ds.create("/k", value: [42])
            }
            let again = try SQLiteDatastore(path: path)
            #expect(try await again.get("/k")?.value == [42])
            #expect(try await again.currentRevision() == 1)
        }
    }

    @Test func openErrorsNameThePath() async throws {
        try await withTemporaryDirectory { dir in
            let missingDir = dir + "/no/such/dir/weft.db"
            expectUnavailable(path: missingDir, mentioning: "does not exist")

            expectUnavailable(path: dir, mentioning: "directory")

            let garbage = dir + "/garbage.db"
            try Array(repeating: "this is not a database\n", count: 200).joined()
                .write(toFile: garbage, atomically: false, encoding: .utf8)
            expectUnavailable(path: garbage, mentioning: "not a usable SQLite database")

            // A directory that exists but where nobody (not even root) can create files.
            expectUnavailable(path: "/proc/weft-datastore-test.db", mentioning: "check that this user can read and write")
        }
    }

    private func expectUnavailable(path: String, mentioning hint: String, sourceLocation: SourceLocation = #_sourceLocation) {
        do {
            _ = try SQLiteDatastore(path: path)
            Issue.record("opening \(path) succeeded", sourceLocation: sourceLocation)
        } catch DatastoreError.unavailable(let message) {
            #expect(message.contains(path), "\(message)", sourceLocation: sourceLocation)
            #expect(message.contains(hint), "\(message)", sourceLocation: sourceLocation)
        } catch {
            Issue.record("expected .unavailable, got \(error)", sourceLocation: sourceLocation)
        }
    }
}

private let childDatabaseVariable = "WEFT_DATASTORE_TEST_CHILD_DB"
private let childNameVariable = "WEFT_DATASTORE_TEST_CHILD_NAME"

private final class Counter: @unchecked Sendable {
    private let lock = NSLock()
    private var n = 0
    func next() -> Int { lock.withLock { n += 1; return n } }
}
