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
private func b(_ s: String) -> [UInt8] { Array(s.utf8) }

// Tests of EtcdDatastore against real, throwaway etcd servers (the `etcd` binary from Debian's
// etcd-server package). Each test starts its own etcd (or 3-member cluster) on 127.0.0.1 with
// random high ports and a temporary data directory, and kills it and removes the directory when
// it ends, passed or failed.

@Suite(.enabled(if: EtcdTestCluster.binary != nil, "no etcd binary (apt-get install etcd-server)"))
struct EtcdDatastoreTests {

    // MARK: The shared conformance suite

    @Test(arguments: DatastoreConformance.caseNames)
    func conformance(_ name: String) async throws {
        try await withEtcd { _, store in
            try await Conformance.run(name, make: { store }, compact: { store, revision in
                try await (store as! EtcdDatastore).compact(revision: revision)
            })
        }
    }

    // MARK: etcd specifics

    @Test func compareAndSwap() async throws {
        try await withEtcd { _, store in
            let r1 = try await store.create("/cas/k", value: b("v1"))
            await Conformance.expectError(.conflict(key: "/cas/k")) { try await store.create("/cas/k", value: b("v2")) }
            #expect(try await store.get("/cas/k") == KeyValue(key: "/cas/k", value: b("v1"), createRevision: r1, modRevision: r1))

            await Conformance.expectError(.conflict(key: "/cas/k")) {
                try await store.update("/cas/k", value: b("x"), expectedRevision: r1 + 1000)
            }
            let r2 = try await store.update("/cas/k", value: b("v2"), expectedRevision: r1)
            #expect(r2 > r1)
            await Conformance.expectError(.conflict(key: "/cas/k")) {
                try await store.update("/cas/k", value: b("stale"), expectedRevision: r1)
            }
            #expect(try await store.get("/cas/k") == KeyValue(key: "/cas/k", value: b("v2"), createRevision: r1, modRevision: r2))

            // Missing keys: etcd's compare cannot tell "missing" from "changed".
            await Conformance.expectError(.conflict(key: "/cas/none")) {
                try await store.update("/cas/none", value: b("x"), expectedRevision: r2)
            }
            await Conformance.expectError(.conflict(key: "/cas/k")) { try await store.delete("/cas/k", expectedRevision: r1) }
            try await store.delete("/cas/k", expectedRevision: r2)
            #expect(try await store.get("/cas/k") == nil)
            try await store.delete("/cas/k", expectedRevision: nil)

            // Two writers racing from the same read: exactly one wins.
            let base = try await store.create("/cas/race", value: b("0"))
            let results = await withTaskGroup(of: Bool.self) { group in
                for i in 0..<8 {
                    group.addTask {
                        (try? await store.update("/cas/race", value: b("\(i)"), expectedRevision: base)) != nil
                    }
                }
                return await group.reduce(into: [Bool]()) { $0.append($1) }
            }
            #expect(results.filter { $0 }.count == 1)
        }
    }

    @Test func listPagesAtOneRevisionAndWatchFromIt() async throws {
        try await withEtcd(options: .init(listPageSize: 3)) { _, store in
            for i in 0..<10 { try await store.create("/l/k\(i)", value: b("\(i)")) }
            try await store.create("/l0", value: b("outside: /l0 sorts after /l/ but is not under it"))
            try await store.create("/k", value: b("outside"))
            let listed = try await store.list(prefix: "/l/")
            #expect(listed.items.map(\.key) == (0..<10).map { "/l/k\($0)" })
            #expect(listed.revision == (try await store.list(prefix: "/").revision))
            #expect(try await store.list(prefix: "").items.count == 12)

            let watch = Collector(store.watch(prefix: "/l/", afterRevision: listed.revision))
            defer { watch.stop() }
            let r1 = try await store.update("/l/k3", value: b("3b"), expectedRevision: listed.items[3].modRevision)
            try await store.delete("/l/k4", expectedRevision: nil)
            try await store.create("/l0/x", value: b("outside"))
            try await store.create("/l/new", value: b("n"))
            let events = try await watch.waitFor(key: "/l/new")
            #expect(events.map(Conformance.summary) == ["put /l/k3 3b", "delete /l/k4", "put /l/new n"])
            #expect(events.first?.kv.modRevision == listed.revision + 1)
            #expect(events[0].kv.modRevision == r1)
            // The delete carries the last value (prev_kv) and the delete's revision.
            #expect(events[1].kv.value == b("4"))
            #expect(events[1].kv.modRevision == r1 + 1)
            #expect(zip(events, events.dropFirst()).allSatisfy { $0.kv.modRevision < $1.kv.modRevision })

            // From revision 0: the whole history of the prefix, in order.
            let history = Collector(store.watch(prefix: "/l/", afterRevision: 0))
            defer { history.stop() }
            let all = try await history.waitFor(key: "/l/new")
            #expect(all.count == 13)
            #expect(all.prefix(10).map(\.kv.key) == (0..<10).map { "/l/k\($0)" })
        }
    }

    @Test func leaseExpiryDeletesKeysWithEvents() async throws {
        try await withEtcd { _, store in
            let lease = try await store.grantLease(ttlSeconds: 4)
            try await store.keepAlive(lease: lease)
            let r = try await store.create("/lease/a", value: b("a"), lease: lease)
            try await store.create("/lease/b", value: b("b"), lease: lease)
            try await store.create("/lease/plain", value: b("p"))
            #expect(try await store.get("/lease/a")?.lease == lease)
            let watch = Collector(store.watch(prefix: "/lease/", afterRevision: r - 1))
            defer { watch.stop() }
            let clock = ContinuousClock()
            let started = clock.now
            let events = try await watch.waitUntil(timeout: 30) { $0.filter { $0.kind == .delete }.count == 2 }
            let waited = clock.now - started
            #expect(waited >= .seconds(1), "the lease lived about its TTL (\(waited))")
            let deletes = events.filter { $0.kind == .delete }
            #expect(Set(deletes.map(\.kv.key)) == ["/lease/a", "/lease/b"])
            #expect(deletes.allSatisfy { $0.kv.lease == lease })
            #expect(try await store.list(prefix: "/lease/").items.map(\.key) == ["/lease/plain"])
            await Conformance.expectError(.leaseNotFound(lease)) { try await store.keepAlive(lease: lease) }
            await Conformance.expectError(.leaseNotFound(lease)) { try await store.revokeLease(lease) }
            await Conformance.expectError(.leaseNotFound(lease)) {
                try await store.create("/lease/c", value: [], lease: lease)
            }
        }
    }

    @Test func compactionFinishesTheWatchWithCompacted() async throws {
        try await withEtcd { _, store in
            let first = try await store.create("/c/k", value: b("0"))
            var rev = first
            for i in 1...5 { rev = try await store.update("/c/k", value: b("\(i)"), expectedRevision: rev) }
            try await store.compact(revision: rev)
            let old = Collector(store.watch(prefix: "/c/", afterRevision: first))
            defer { old.stop() }
            let error = try await old.waitForError(timeout: 5)
            #expect(error as? DatastoreError == .compacted(requested: first, compactRevision: rev))
            // From the compact revision on it works.
            let fresh = Collector(store.watch(prefix: "/c/", afterRevision: rev - 1))
            defer { fresh.stop() }
            let events = try await fresh.waitUntil { !$0.isEmpty }
            #expect(events.map(Conformance.summary) == ["put /c/k 5"])
            try await store.compact(revision: 1)  // older than the compaction: a no-op
        }
    }

    /// The watch is connected to one member (the leader, or a follower); that member is killed
    /// with SIGKILL; writes go through the other two and arrive on the same stream, in order,
    /// with no gap and no repeat.
    @Test(arguments: [true, false])
    func watchSurvivesTheDeathOfItsMember(watchedIsLeader: Bool) async throws {
        try await withEtcd(members: 3) { cluster, _ in
            let leader = try await cluster.leaderIndex()
            let watched = watchedIsLeader ? leader : (leader + 1) % 3
            try await failover(cluster, watched: watched, requestTimeout: .seconds(2), probe: .seconds(10)) {
                cluster.kill(member: watched)
            }
        }
    }

    /// The watched member (the leader) hangs (SIGSTOP): its TCP connections stay open, so only
    /// the watch's health probe can notice; the watch moves to another member and goes on.
    @Test func watchLeavesAHungMember() async throws {
        try await withEtcd(members: 3) { cluster, _ in
            let watched = try await cluster.leaderIndex()
            try await failover(cluster, watched: watched, requestTimeout: .seconds(1), probe: .milliseconds(300)) {
                cluster.signal(member: watched, SIGSTOP)
            }
        }
    }

    /// Starts a watch through `watched` (first in the endpoint list), writes 5 keys, runs `fail`,
    /// writes 10 more, and checks that the stream delivered all 15 exactly once, in order, and
    /// that it resumed elsewhere from the revision after the last one delivered.
    private func failover(_ cluster: EtcdTestCluster, watched: Int, requestTimeout: Duration, probe: Duration,
                          fail: () -> Void) async throws {
        let urls = cluster.clientURLs
        let endpoints = [urls[watched]] + urls.indices.filter { $0 != watched }.map { urls[$0] }
        try await withStore(endpoints: endpoints, requestTimeout: requestTimeout, watchProbeInterval: probe) { store in
            let start = try await store.list(prefix: "/f/").revision
            let watch = Collector(store.watch(prefix: "/f/", afterRevision: start))
            defer { watch.stop() }
            var written: [(key: String, revision: Int64)] = []
            for i in 0..<5 {
                let key = "/f/k\(i)"
                written.append((key, try await store.create(key, value: b("\(i)"))))
            }
            _ = try await watch.waitFor(key: "/f/k4")
            #expect(store.watchConnections.withLock { $0 }.map(\.endpoint) == [urls[watched]])

            fail()
            for i in 5..<15 {
                let key = "/f/k\(i)"
                written.append((key, try await createSurvivingFailover(store, key, value: b("\(i)"))))
            }
            let events = try await watch.waitFor(key: "/f/k14", timeout: 30)
            #expect(events.map(\.kv.key) == written.map(\.key))
            #expect(events.map(\.kv.modRevision) == written.map(\.revision))
            #expect(events.allSatisfy { $0.kind == .put })

            let connections = store.watchConnections.withLock { $0 }
            #expect(connections.count >= 2)
            // Every reconnection asked for the revision after the last one delivered (k4's).
            #expect(connections.dropFirst().allSatisfy { $0.startRevision == written[4].revision + 1 },
                    "\(connections)")
            #expect(connections.last.map { $0.endpoint != urls[watched] } == true)
        }
    }

    @Test func shutdownEndsWatches() async throws {
        try await withEtcd { _, store in
            let watch = Collector(store.watch(prefix: "/s/", afterRevision: 0))
            defer { watch.stop() }
            try await store.create("/s/k", value: [])
            _ = try await watch.waitFor(key: "/s/k")
            try await store.shutdown()
            let error = try await watch.waitForError(timeout: 5)
            #expect(error as? DatastoreError == .unavailable("the etcd datastore was shut down"))
            await Conformance.expectError(.unavailable("the etcd datastore was shut down")) {
                _ = try await store.get("/s/k")
            }
        }
    }

    /// A read through [dead endpoint, live endpoint] fails over to the live one.
    @Test func requestsFailOverToTheNextEndpoint() async throws {
        try await withEtcd { cluster, _ in
            let refused = "http://127.0.0.1:\(try EtcdTestCluster.closedPort())"
            try await withStore(endpoints: [refused, cluster.clientURLs[0]], requestTimeout: .seconds(2)) { store in
                try await store.create("/fo/k", value: b("v"))
                #expect(store.transport.preferredIndex == 1, "later requests start at the endpoint that answered")
                #expect(try await store.get("/fo/k")?.value == b("v"))
                // A watch starts at the preferred endpoint too.
                let watch = Collector(store.watch(prefix: "/fo/", afterRevision: 0))
                defer { watch.stop() }
                #expect(try await watch.waitFor(key: "/fo/k").count == 1)
                #expect(store.watchConnections.withLock { $0 }.map(\.endpoint) == [cluster.clientURLs[0]])
            }
        }
    }
}

/// Needs no etcd: nothing answers, so everything must fail, quickly and clearly.
@Suite struct EtcdUnavailableTests {
    @Test func unreachableEndpointsAreUnavailableQuickly() async throws {
        let refused = "http://127.0.0.1:\(try EtcdTestCluster.closedPort())"
        let silent = try SilentListener()  // accepts connections, never answers
        defer { silent.close() }
        let silentURL = "http://127.0.0.1:\(silent.port)"
        let store = EtcdDatastore(endpoints: [refused, silentURL], requestTimeout: .milliseconds(500),
                                  watchReconnectTimeout: .seconds(1))
        let clock = ContinuousClock()
        do {
            let started = clock.now
            do {
                _ = try await store.get("/k")
                Issue.record("get succeeded with no etcd")
            } catch let error as DatastoreError {
                guard case .unavailable(let message) = error else {
                    Issue.record("expected .unavailable, got \(error)")
                    throw error
                }
                #expect(message.contains(refused) && message.contains(silentURL), "names the endpoints: \(message)")
                // The silent member was given up on after the request timeout, not the default.
                #expect(message.contains("no answer within 0.5 seconds"), "\(message)")
            }
            // Only a hang guard (the default timeouts would take far longer); no timing claim.
            #expect(clock.now - started < .seconds(20))

            let watchStarted = clock.now
            let watch = Collector(store.watch(prefix: "/", afterRevision: 0))
            defer { watch.stop() }
            let error = try await watch.waitForError(timeout: 30)
            guard case DatastoreError.unavailable(let message)? = error as? DatastoreError else {
                Issue.record("expected .unavailable from the watch, got \(String(describing: error))")
                return
            }
            #expect(message.contains(refused) && message.contains(silentURL), "\(message)")
            #expect(clock.now - watchStarted < .seconds(30))
        }
        try await store.shutdown()
        await Conformance.expectError(.unavailable("the etcd datastore was shut down")) { _ = try await store.get("/k") }
    }

    @Test func prefixRanges() {
        #expect(EtcdCodec.prefixRange("/a/") == (Array("/a/".utf8), Array("/a0".utf8)))
        #expect(EtcdCodec.prefixRange("") == ([0], [0]))
        #expect(EtcdCodec.prefixRange("a").rangeEnd == Array("b".utf8))
        // U+10FFFF is F4 8F BF BF: only the last byte is incremented.
        #expect(EtcdCodec.prefixRange("\u{10FFFF}").rangeEnd == [0xF4, 0x8F, 0xBF, 0xC0])
    }
}

/// A create that may meet a leader change: a retry after an ambiguous failure can find the
/// first attempt's write (then `.conflict`, and the key holds our value).
private func createSurvivingFailover(_ store: EtcdDatastore, _ key: String, value: [UInt8]) async throws -> Int64 {
    var lastError: (any Error)?
    for _ in 0..<20 {
        do {
            return try await store.create(key, value: value)
        } catch DatastoreError.conflict {
            let kv = try #require(try await store.get(key))
            #expect(kv.value == value)
            return kv.modRevision
        } catch DatastoreError.unavailable(let message) {
            lastError = DatastoreError.unavailable(message)
            try await Task.sleep(for: .milliseconds(200))
        }
    }
    throw lastError!
}

// MARK: - Throwaway etcd

struct EtcdStoreOptions {
    var requestTimeout: Duration = .seconds(3)
    var listPageSize = 1000
}

/// Starts an etcd (or cluster), makes a store on all its endpoints, runs `body`, and always
/// shuts the store down, kills the etcd processes and removes their data.
private func withEtcd<T>(members: Int = 1, options: EtcdStoreOptions = .init(),
                         _ body: (EtcdTestCluster, EtcdDatastore) async throws -> T) async throws -> T {
    let cluster = try await EtcdTestCluster.start(members: members)
    defer { cluster.stop() }
    return try await withStore(endpoints: cluster.clientURLs, requestTimeout: options.requestTimeout,
                               listPageSize: options.listPageSize) { store in
        try await body(cluster, store)
    }
}

/// Runs `body` with a store, and shuts the store down afterwards, also when `body` throws.
private func withStore<T>(endpoints: [String], requestTimeout: Duration = .seconds(3),
                          watchProbeInterval: Duration? = .seconds(10), listPageSize: Int = 1000,
                          _ body: (EtcdDatastore) async throws -> T) async throws -> T {
    let store = EtcdDatastore(endpoints: endpoints, requestTimeout: requestTimeout,
                              watchProbeInterval: watchProbeInterval, listPageSize: listPageSize)
    do {
        let result = try await body(store)
        try? await store.shutdown()
        return result
    } catch {
        try? await store.shutdown()
        throw error
    }
}

final class EtcdTestCluster: @unchecked Sendable {
    static let binary: String? = {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        return (path.split(separator: ":").map(String.init) + ["/usr/bin", "/usr/local/bin"])
            .map { $0 + "/etcd" }
            .first { FileManager.default.isExecutableFile(atPath: $0) }
    }()

    struct Member {
        var name: String
        var clientURL: String
        var peerURL: String
        var process: Process
    }

    let directory: String
    private(set) var members: [Member] = []
    private let lock = NSLock()
    var clientURLs: [String] { members.map(\.clientURL) }

    private init(directory: String) { self.directory = directory }

    /// Starts `members` etcd processes as one cluster and waits until every member serves a
    /// linearizable read. Retries with other ports if one was taken meanwhile.
    static func start(members count: Int) async throws -> EtcdTestCluster {
        var lastError: (any Error)?
        for _ in 0..<3 {
            var template = Array("/tmp/weft-etcd-test-XXXXXX".utf8CString)
            guard let made = mkdtemp(&template) else { throw POSIXError(.EIO) }
            let cluster = EtcdTestCluster(directory: String(cString: made))
            do {
                try cluster.launch(count)
                try await cluster.waitHealthy(timeout: .seconds(30))
                return cluster
            } catch {
                lastError = error
                cluster.stop()
            }
        }
        throw lastError!
    }

    private func launch(_ count: Int) throws {
        var ports = Set<Int>()
        while ports.count < 2 * count { ports.insert(try Self.freeHighPort()) }
        let portList = Array(ports)
        let token = "weft-test-\(UInt64.random(in: 1...UInt64.max))"
        let planned = (0..<count).map { i in
            (name: "m\(i)", client: "http://127.0.0.1:\(portList[2 * i])", peer: "http://127.0.0.1:\(portList[2 * i + 1])")
        }
        let initialCluster = planned.map { "\($0.name)=\($0.peer)" }.joined(separator: ",")
        for m in planned {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: Self.binary!)
            process.arguments = [
                "--name", m.name, "--data-dir", "\(directory)/\(m.name)",
                "--listen-client-urls", m.client, "--advertise-client-urls", m.client,
                "--listen-peer-urls", m.peer, "--initial-advertise-peer-urls", m.peer,
                "--initial-cluster", initialCluster, "--initial-cluster-state", "new",
                "--initial-cluster-token", token,
                // Quick elections, so that losing the leader costs well under a second.
                "--heartbeat-interval", "50", "--election-timeout", "500",
                "--logger", "zap", "--log-outputs", "\(directory)/\(m.name).log",
            ]
            let devNull = FileHandle(forWritingAtPath: "/dev/null")
            process.standardOutput = devNull
            process.standardError = devNull
            try process.run()
            lock.withLock { members.append(Member(name: m.name, clientURL: m.client, peerURL: m.peer, process: process)) }
        }
    }

    private func waitHealthy(timeout: Duration) async throws {
        let deadline = ContinuousClock.now + timeout
        for member in members {
            let probe = EtcdDatastore(endpoints: [member.clientURL], requestTimeout: .seconds(1),
                                      connectTimeout: .milliseconds(300))
            defer { Task { try? await probe.shutdown() } }
            while true {
                guard member.process.isRunning else {
                    let log = (try? String(contentsOfFile: "\(directory)/\(member.name).log", encoding: .utf8)) ?? ""
                    throw DatastoreError.unavailable("etcd \(member.name) exited: \(log.suffix(1500))")
                }
                do {
                    _ = try await probe.get("/health-probe")
                    break
                } catch {
                    if ContinuousClock.now > deadline {
                        throw DatastoreError.unavailable("etcd \(member.name) not healthy within \(timeout): \(error)")
                    }
                }
                try await Task.sleep(for: .milliseconds(100))
            }
            try? await probe.shutdown()
        }
    }

    /// SIGKILL, as a crash would.
    func kill(member index: Int) {
        let process = members[index].process
        if process.isRunning {
            _ = Glibc.kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }

    /// Sends `signal` (e.g. SIGSTOP to hang the member; `stop()` still kills it).
    func signal(member index: Int, _ signal: Int32) {
        let process = members[index].process
        if process.isRunning { _ = Glibc.kill(process.processIdentifier, signal) }
    }

    /// The index of the member that is the raft leader (from /v3/maintenance/status).
    /// Asks every member for its status, retrying for up to 10 s: under load a member can
    /// still be opening its client port (connection refused) or holding an election.
    func leaderIndex() async throws -> Int {
        var attempt = 0
        while true {
            do { return try await leaderIndexOnce() } catch {
                attempt += 1
                guard attempt < 50 else { throw error }
                try await Task.sleep(for: .milliseconds(200))
            }
        }
    }

    private func leaderIndexOnce() async throws -> Int {
        let probe = EtcdDatastore(endpoints: clientURLs)
        defer { Task { try? await probe.shutdown() } }
        var leader: String?
        var ids: [String] = []
        for url in clientURLs {
            let (status, data) = try await probe.transport.attempt(url + "/v3/maintenance/status", Data("{}".utf8))
            guard status == 200, let json = try JSONSerialization.jsonObject(with: data) as? [String: Any],
                  let header = json["header"] as? [String: Any], let id = header["member_id"] as? String else {
                throw DatastoreError.unavailable("status of \(url): HTTP \(status)")
            }
            ids.append(id)
            leader = leader ?? (json["leader"] as? String)
        }
        guard let leader, let index = ids.firstIndex(of: leader) else {
            throw DatastoreError.unavailable("no leader among \(ids)")
        }
        return index
    }

    /// Kills every member (SIGKILL: nothing to keep) and removes the data directory.
    func stop() {
        for member in lock.withLock({ members }) where member.process.isRunning {
            _ = Glibc.kill(member.process.processIdentifier, SIGKILL)
            member.process.waitUntilExit()
        }
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// A random port in 20000..<32000 (below Linux's ephemeral range, so outgoing connections do
    /// not take it meanwhile) that is free right now.
    static func freeHighPort() throws -> Int {
        for _ in 0..<100 {
            let port = Int.random(in: 20000..<32000)
            if let fd = try? bound(port: port) {
                _ = Glibc.close(fd)
                return port
            }
        }
        throw POSIXError(.EADDRINUSE)
    }

    /// A port nothing listens on (connections are refused).
    static func closedPort() throws -> Int { try freeHighPort() }

    static func bound(port: Int) throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw POSIXError(.EIO) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard rc == 0 else {
            _ = Glibc.close(fd)
            throw POSIXError(.EADDRINUSE)
        }
        return fd
    }
}

/// A TCP listener that lets the kernel accept connections and never reads or answers: a hung
/// server, so requests to it can only end by timing out.
final class SilentListener: @unchecked Sendable {
    let fd: Int32
    let port: Int
    init() throws {
        var lastError: (any Error)?
        for _ in 0..<100 {
            let port = Int.random(in: 20000..<32000)
            do {
                let fd = try EtcdTestCluster.bound(port: port)
                guard listen(fd, 64) == 0 else {
                    _ = Glibc.close(fd)
                    continue
                }
                self.fd = fd
                self.port = port
                return
            } catch { lastError = error }
        }
        throw lastError ?? POSIXError(.EADDRINUSE)
    }
    func close() { _ = Glibc.close(fd) }
}

extension EtcdDatastoreTests {
    /// Watches of one prefix share one stream; one that joins behind what the stream delivered
    /// restarts it from its revision, and the others get no repeats.
    @Test func watchesOfOnePrefixShareOneStream() async throws {
        try await withEtcd { _, store in
            let start = try await store.list(prefix: "/shared/").revision
            let a = Collector(store.watch(prefix: "/shared/", afterRevision: start))
            defer { a.stop() }
            let b2 = Collector(store.watch(prefix: "/shared/", afterRevision: start))
            defer { b2.stop() }
            let r1 = try await store.create("/shared/1", value: b("1"))
            try await store.create("/elsewhere", value: b("x"))
            try await store.create("/shared/2", value: b("2"))
            _ = try await a.waitFor(key: "/shared/2")
            _ = try await b2.waitFor(key: "/shared/2")
            #expect(store.hub.streamsOpened.load(ordering: .relaxed) == 1, "two watches, one stream")
            #expect(store.watchConnections.withLock { $0 }.count == 1)

            // At the stream's position: attaches without a new stream.
            let atHead = Collector(store.watch(prefix: "/shared/", afterRevision: try await store.list(prefix: "/shared/").revision))
            defer { atHead.stop() }
            // Behind it: the stream restarts from r1.
            let late = Collector(store.watch(prefix: "/shared/", afterRevision: r1))
            defer { late.stop() }
            try await store.create("/shared/3", value: b("3"))
            for w in [a, b2, atHead, late] { _ = try await w.waitFor(key: "/shared/3") }
            #expect(a.events.map(\.kv.key) == ["/shared/1", "/shared/2", "/shared/3"])
            #expect(b2.events.map(\.kv.key) == ["/shared/1", "/shared/2", "/shared/3"])
            #expect(atHead.events.map(\.kv.key) == ["/shared/3"])
            #expect(late.events.map(\.kv.key) == ["/shared/2", "/shared/3"])
            #expect(store.hub.streamsOpened.load(ordering: .relaxed) <= 2)
        }
    }
}
