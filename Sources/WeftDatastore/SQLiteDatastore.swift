#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation
import GRDB
import Synchronization
import WeftCore

/// The embedded datastore: one SQLite file shared by every weft process of a machine (the node
/// agents and the CLI each open it), in the style of k3s's kine.
///
/// Storage is a log: table `kv` gets one row per write, its `id` (AUTOINCREMENT, never reused)
/// being the store revision. A key's current state is its newest row, unless that row is a
/// delete (`deleted = 1`). A write is one `BEGIN IMMEDIATE` transaction that checks its
/// compare-and-swap condition against the newest row and inserts a new one, so writers in
/// different processes are serialized by SQLite's write lock and CAS holds across processes.
/// Because transactions are serialized, ids become visible in order: a reader never sees
/// revision n + 1 without n.
///
/// Watches are served by one hub per file per process (`SQLiteWatchHub`), which polls (every
/// `pollInterval` seconds) for rows with an id above the last one it read and hands each to the
/// watchers whose prefix (a byte range, so `%` and `_` in keys are plain characters) holds it:
/// one query per commit however many watches the process has. A poll first looks at the
/// write-ahead log's size, time and header (`WALStamp`): every commit appends to the log or
/// restarts it with new salts, so an unchanged stamp means nothing was written and the query is
/// skipped. An idle process costs a few syscalls per poll, not a read transaction; a full query
/// still runs every `idleQueryInterval` (1 s) whatever the stamp says.
///
/// Leases live in table `leases(id, ttl, expires)`, `expires` being wall-clock (Unix) seconds
/// so that every process agrees. Any process sweeps: each write transaction first expires what
/// is due, and reads and watch polls check (at most every 250 ms per store instance) and sweep
/// if needed. A sweep writes a delete row for every key still attached to an expired lease, so
/// every watcher in every process sees the deletes, then removes the lease. A key can therefore
/// outlive its lease by up to a poll interval plus 250 ms when nobody writes.
///
/// Compaction (`compact(before:)`, `compact(keepingLast:)`) deletes rows below a revision that
/// are superseded or are deletes, and records the revision in table `meta`; a watch that wants
/// a revision below it throws `.compacted`. Nothing compacts automatically.
///
/// Semantics shared with `MemoryDatastore` (see there): `update`/`delete(expectedRevision:)` of
/// a missing key throw `.notFound`; a write naming a missing lease throws `.leaseNotFound`;
/// each delete of a multi-key sweep or revoke gets its own revision.
public final class SQLiteDatastore: Datastore, Sendable {
    public let path: String
    public let pollInterval: Double
    let idleQueryInterval: Duration
    private let pool: DatabasePool
    /// When this instance last checked for expired leases (wall-clock seconds).
    private let lastSweepCheck = Mutex<Double>(0)

    /// How often reads and watch polls look for expired leases.
    static let sweepCheckInterval = 0.25
    /// How long a connection waits for another process's write lock before giving up.
    static let busyTimeout = 10.0
    static let schemaVersion = 1
    /// Rows read per watch poll; a full batch is followed by another poll without sleeping.
    static let watchBatch = 1000

    /// Opens (creating if needed) the database at `path`.
    /// - Throws: `DatastoreError.unavailable` naming the path when it cannot be opened or
    ///   created, or is not a weft SQLite database.
    public convenience init(path: String, pollInterval: Double = 0.05) throws {
        try self.init(path: path, pollInterval: pollInterval, idleQueryInterval: .seconds(1))
    }

    /// - idleQueryInterval: how often the watch poll queries although the log looks unchanged
    ///   (tests make it long, to count the queries commits cause).
    init(path: String, pollInterval: Double, idleQueryInterval: Duration) throws {
        self.path = path
        self.pollInterval = max(pollInterval, 0.001)
        self.idleQueryInterval = idleQueryInterval
        var config = Configuration()
        config.label = "weft-datastore"
        config.busyMode = .callback(Self.busyCallback(timeout: Self.busyTimeout))
        config.maximumReaderCount = 4
        do {
            pool = try Self.open(path: path, configuration: config)
        } catch let error as DatastoreError {
            throw Self.annotate(error, path: path)
        } catch {
            throw DatastoreError.unavailable(Self.openFailureMessage(path: path, error: error))
        }
    }

    /// Opens the pool and brings the schema up to date. Several processes opening a file at
    /// once (agents and runtimes of a node starting together) can get SQLITE_BUSY without the
    /// busy handler ever running: SQLite returns it at once where waiting could deadlock (a
    /// connection upgrading its read lock while switching a new file to WAL) and while another
    /// connection recovers or cleans up the write-ahead log. Those are transient: the whole
    /// open is retried until `busyTimeout` has passed.
    private static func open(path: String, configuration: Configuration) throws -> DatabasePool {
        let deadline = Date().addingTimeInterval(busyTimeout)
        while true {
            do {
                let pool = try DatabasePool(path: path, configuration: configuration)
                try pool.write { db in try migrate(db) }
                return pool
            } catch let e as DatabaseError where (e.resultCode == .SQLITE_BUSY || e.resultCode == .SQLITE_LOCKED) && Date() < deadline {
                usleep(UInt32.random(in: 5_000...25_000))
            }
        }
    }

    // MARK: Schema

    static let schema = """
        CREATE TABLE IF NOT EXISTS kv (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL,
            created INTEGER NOT NULL DEFAULT 0,
            deleted INTEGER NOT NULL DEFAULT 0,
            create_revision INTEGER NOT NULL DEFAULT 0,
            prev_revision INTEGER NOT NULL DEFAULT 0,
            lease INTEGER NOT NULL DEFAULT 0,
            value BLOB
        );
        CREATE INDEX IF NOT EXISTS kv_name_id ON kv (name, id);
        CREATE INDEX IF NOT EXISTS kv_lease ON kv (lease) WHERE lease != 0;
        CREATE TABLE IF NOT EXISTS leases (
            id INTEGER PRIMARY KEY,
            ttl INTEGER NOT NULL,
            expires REAL NOT NULL
        );
        CREATE INDEX IF NOT EXISTS leases_expires ON leases (expires);
        CREATE TABLE IF NOT EXISTS meta (
            key TEXT PRIMARY KEY,
            value INTEGER NOT NULL
        );
        """

    private static func migrate(_ db: Database) throws {
        let version = try Int.fetchOne(db, sql: "PRAGMA user_version") ?? 0
        if version > schemaVersion {
            throw DatastoreError.unavailable(
                "the database has schema version \(version), newer than this weft understands (\(schemaVersion)); upgrade weft")
        }
        if version < schemaVersion {
            try db.execute(sql: schema)
            try db.execute(sql: "PRAGMA user_version = \(schemaVersion)")
        }
    }

    // MARK: Inspection and maintenance

    /// The latest revision (0 for an empty store).
    public func currentRevision() async throws -> Int64 {
        try await read { db in try Self.headRevision(db) }
    }

    /// Watches must start after `compactRevision - 1`; 0 when never compacted.
    public func compactRevision() async throws -> Int64 {
        try await read { db in try Self.compactRevision(db) }
    }

    /// Deletes the rows below `revision` (clamped to the current revision) that are superseded
    /// by a later row of their key, or are deletes. The current state is untouched; a watch
    /// whose first wanted revision (`afterRevision + 1`) is below `revision` then throws
    /// `.compacted`. Compacting below an earlier compaction does nothing.
    /// - Returns: the compact revision now in effect.
    @discardableResult
    public func compact(before revision: Int64) async throws -> Int64 {
        try await write { db in
            let head = try Self.headRevision(db)
            let done = try Self.compactRevision(db)
            let target = min(revision, head)
            guard target > done else { return done }
            try db.execute(sql: """
                DELETE FROM kv WHERE id < ?1
                  AND EXISTS (SELECT 1 FROM kv AS later WHERE later.name = kv.name AND later.id > kv.id)
                """, arguments: [target])
            try db.execute(sql: "DELETE FROM kv WHERE id < ? AND deleted = 1", arguments: [target])
            try db.execute(sql: "INSERT OR REPLACE INTO meta (key, value) VALUES ('compact_revision', ?)", arguments: [target])
            return target
        }
    }

    /// Compacts so that the last `count` revisions stay watchable.
    @discardableResult
    public func compact(keepingLast count: Int64) async throws -> Int64 {
        let head = try await currentRevision()
        return try await compact(before: head - max(count, 0) + 1)
    }

    /// Expires every lease that is due now, whatever the 250 ms rate limit.
    public func expireLeases() async throws {
        try await write { db in try Self.sweep(db, now: Self.wallClock()) }
    }

    // MARK: Datastore

    public func get(_ key: String) async throws -> KeyValue? {
        await maybeSweep()
        return try await read { db in
            guard let row = try Self.newest(db, key), !row.deleted else { return nil }
            return row.keyValue
        }
    }

    public func list(prefix: String) async throws -> (items: [KeyValue], revision: Int64) {
        await maybeSweep()
        let range = PrefixRange(prefix)
        return try await read { db in
            let rows = try Row.fetchAll(db, sql: """
                SELECT \(KVRow.columns) FROM kv
                JOIN (SELECT MAX(id) AS newest FROM kv WHERE \(range.sql) GROUP BY name) ON id = newest
                WHERE deleted = 0 ORDER BY name
                """, arguments: range.arguments)
            return (rows.map { KVRow($0).keyValue }, try Self.headRevision(db))
        }
    }

    @discardableResult
    public func create(_ key: String, value: [UInt8], lease: Int64) async throws -> Int64 {
        try await write { db in
            try Self.sweep(db, now: Self.wallClock())
            let old = try Self.newest(db, key)
            if let old, !old.deleted { throw DatastoreError.conflict(key: key) }
            try Self.requireLease(db, lease)
            return try Self.insert(db, name: key, created: true, deleted: false, createRevision: 0,
                                   prevRevision: old?.id ?? 0, lease: lease, value: value)
        }
    }

    @discardableResult
    public func update(_ key: String, value: [UInt8], expectedRevision: Int64, lease: Int64) async throws -> Int64 {
        try await write { db in
            try Self.sweep(db, now: Self.wallClock())
            guard let old = try Self.newest(db, key), !old.deleted else { throw DatastoreError.notFound(key: key) }
            if old.id != expectedRevision { throw DatastoreError.conflict(key: key) }
            try Self.requireLease(db, lease)
            return try Self.insert(db, name: key, created: false, deleted: false, createRevision: old.createRevision,
                                   prevRevision: old.id, lease: lease, value: value)
        }
    }

    public func delete(_ key: String, expectedRevision: Int64?) async throws {
        try await write { db in
            try Self.sweep(db, now: Self.wallClock())
            guard let old = try Self.newest(db, key), !old.deleted else {
                if expectedRevision != nil { throw DatastoreError.notFound(key: key) }
                return
            }
            if let expectedRevision, old.id != expectedRevision { throw DatastoreError.conflict(key: key) }
            try Self.tombstone(db, old)
        }
    }

    /// Served by the process's hub for this file (`SQLiteWatchHub`): one poll for every watch.
    public func watch(prefix: String, afterRevision: Int64) -> AsyncThrowingStream<WatchEvent, Error> {
        SQLiteWatchHub.hub(for: self).watch(self, prefix: prefix, afterRevision: afterRevision)
    }

    public func grantLease(ttlSeconds: Int64) async throws -> Int64 {
        let ttl = max(ttlSeconds, 1)
        return try await write { db in
            let now = Self.wallClock()
            try Self.sweep(db, now: now)
            while true {
                // Random ids (as etcd's) so that a stale holder of a revoked lease can never
                // extend a new one that happens to reuse its number.
                let id = Int64.random(in: 1...Int64.max)
                guard try Int64.fetchOne(db, sql: "SELECT id FROM leases WHERE id = ?", arguments: [id]) == nil else { continue }
                try db.execute(sql: "INSERT INTO leases (id, ttl, expires) VALUES (?, ?, ?)",
                               arguments: [id, ttl, now + Double(ttl)])
                return id
            }
        }
    }

    public func keepAlive(lease: Int64) async throws {
        let found = try await write { db -> Bool in
            let now = Self.wallClock()
            try Self.sweep(db, now: now)
            try db.execute(sql: "UPDATE leases SET expires = ? + ttl WHERE id = ?", arguments: [now, lease])
            return db.changesCount > 0
        }
        if !found { throw DatastoreError.leaseNotFound(lease) }
    }

    public func revokeLease(_ lease: Int64) async throws {
        let found = try await write { db -> Bool in
            try Self.sweep(db, now: Self.wallClock())
            guard try Int64.fetchOne(db, sql: "SELECT id FROM leases WHERE id = ?", arguments: [lease]) != nil else {
                return false
            }
            try Self.dropLease(db, lease)
            return true
        }
        if !found { throw DatastoreError.leaseNotFound(lease) }
    }

    // MARK: Rows

    struct KVRow {
        static let columns = "id, name, created, deleted, create_revision, prev_revision, lease, value"
        var id: Int64
        var name: String
        var created: Bool
        var deleted: Bool
        /// Effective: a create row stores 0 and means itself.
        var createRevision: Int64
        var prevRevision: Int64
        var lease: Int64
        var value: [UInt8]

        init(_ row: Row) {
            id = row[0]
            name = row[1]
            created = row[2]
            deleted = row[3]
            let stored: Int64 = row[4]
            createRevision = created ? id : stored
            prevRevision = row[5]
            lease = row[6]
            let data: Data? = row[7]
            value = data.map { [UInt8]($0) } ?? []
        }

        var keyValue: KeyValue {
            KeyValue(key: name, value: value, createRevision: createRevision, modRevision: id, lease: lease)
        }
        var event: WatchEvent { WatchEvent(kind: deleted ? .delete : .put, kv: keyValue) }
    }

    /// Keys under a prefix as a byte range `[prefix, successor)`, successor being the prefix
    /// with its last byte below 0xFF incremented (and what follows dropped). SQLite compares
    /// TEXT with memcmp, so this is exactly "starts with these UTF-8 bytes", and it can use the
    /// (name, id) index. The successor may not be valid UTF-8, so it is bound as a blob and
    /// cast to TEXT in SQL.
    struct PrefixRange: Sendable {
        var sql: String
        var arguments: StatementArguments

        init(_ prefix: String) {
            var upper = Array(prefix.utf8)
            while let last = upper.last, last == 0xFF { upper.removeLast() }
            if prefix.isEmpty {
                sql = "1"
                arguments = []
            } else if upper.isEmpty {
                sql = "name >= ?"
                arguments = [prefix]
            } else {
                upper[upper.count - 1] += 1
                sql = "name >= ? AND name < CAST(? AS TEXT)"
                arguments = [prefix, Data(upper)]
            }
        }
    }

    private static func newest(_ db: Database, _ name: String) throws -> KVRow? {
        try Row.fetchOne(db, sql: "SELECT \(KVRow.columns) FROM kv WHERE name = ? ORDER BY id DESC LIMIT 1",
                         arguments: [name]).map(KVRow.init)
    }

    private static func insert(_ db: Database, name: String, created: Bool, deleted: Bool, createRevision: Int64,
                               prevRevision: Int64, lease: Int64, value: [UInt8]) throws -> Int64 {
        try db.execute(sql: """
            INSERT INTO kv (name, created, deleted, create_revision, prev_revision, lease, value)
            VALUES (?, ?, ?, ?, ?, ?, ?)
            """, arguments: [name, created, deleted, created ? 0 : createRevision, prevRevision, lease, Data(value)])
        return db.lastInsertedRowID
    }

    /// A delete row carrying the key's last value, create revision and lease.
    @discardableResult
    private static func tombstone(_ db: Database, _ old: KVRow) throws -> Int64 {
        try insert(db, name: old.name, created: false, deleted: true, createRevision: old.createRevision,
                   prevRevision: old.id, lease: old.lease, value: old.value)
    }

    /// The newest revision ever written; AUTOINCREMENT's sequence survives compaction.
    static func headRevision(_ db: Database) throws -> Int64 {
        try Int64.fetchOne(db, sql: "SELECT seq FROM sqlite_sequence WHERE name = 'kv'") ?? 0
    }

    static func compactRevision(_ db: Database) throws -> Int64 {
        try Int64.fetchOne(db, sql: "SELECT value FROM meta WHERE key = 'compact_revision'") ?? 0
    }

    private static func requireLease(_ db: Database, _ lease: Int64) throws {
        guard lease != 0 else { return }
        if try Int64.fetchOne(db, sql: "SELECT id FROM leases WHERE id = ?", arguments: [lease]) == nil {
            throw DatastoreError.leaseNotFound(lease)
        }
    }

    // MARK: Leases

    /// Deletes the keys of every lease due at `now`, then the leases. Inside a write transaction.
    private static func sweep(_ db: Database, now: Double) throws {
        let due = try Int64.fetchAll(db, sql: "SELECT id FROM leases WHERE expires <= ? ORDER BY id", arguments: [now])
        for lease in due { try dropLease(db, lease) }
    }

    private static func dropLease(_ db: Database, _ lease: Int64) throws {
        let rows = try Row.fetchAll(db, sql: """
            SELECT \(KVRow.columns) FROM kv AS k
            WHERE lease = ? AND deleted = 0 AND id = (SELECT MAX(id) FROM kv WHERE name = k.name)
            ORDER BY name
            """, arguments: [lease]).map(KVRow.init)
        for row in rows { try tombstone(db, row) }
        try db.execute(sql: "DELETE FROM leases WHERE id = ?", arguments: [lease])
    }

    /// Rate-limited (per instance) check for expired leases, from reads and watch polls. A
    /// failure (say, the write lock stayed busy) is left for the next check.
    func maybeSweep() async {
        let now = Self.wallClock()
        let due = lastSweepCheck.withLock { last -> Bool in
            guard now - last >= Self.sweepCheckInterval else { return false }
            last = now
            return true
        }
        guard due else { return }
        do {
            let expired = try await pool.read { db in
                try Bool.fetchOne(db, sql: "SELECT EXISTS (SELECT 1 FROM leases WHERE expires <= ?)", arguments: [now]) ?? false
            }
            if expired { try await expireLeases() }
        } catch {
            // Not fatal: the next check (or any write) sweeps.
        }
    }

    // MARK: Access and errors

    func read<T: Sendable>(_ body: @escaping @Sendable (Database) throws -> T) async throws -> T {
        try await retryingBusy { try await self.pool.read(body) }
    }

    /// A write transaction is IMMEDIATE (GRDB's default for writes), so a busy error leaves
    /// nothing done and the body can run again.
    ///
    /// A write that added rows to the key log (a put, a delete, a lease's keys swept) touches the
    /// file's change marker once it is committed (`WALNotifier`), so the watch hubs of every
    /// process read it at once; a write of leases alone (a keepalive) wakes nobody.
    private func write<T: Sendable>(_ body: @escaping @Sendable (Database) throws -> T) async throws -> T {
        let (result, logged) = try await retryingBusy {
            try await self.pool.write { db -> (T, Bool) in
                let before = try Self.headRevision(db)
                let result = try body(db)
                return (result, try Self.headRevision(db) != before)
            }
        }
        if logged { WALNotifier.markChanged(databasePath: path) }
        return result
    }

    /// Runs `access` again on the SQLITE_BUSY that SQLite returns without waiting (see `open`)
    /// until `busyTimeout` has passed; a busy error after the handler's full wait is final.
    private func retryingBusy<T: Sendable>(_ access: () async throws -> T) async throws -> T {
        let deadline = Date().addingTimeInterval(Self.busyTimeout)
        while true {
            do {
                return try await access()
            } catch let e as DatabaseError where (e.resultCode == .SQLITE_BUSY || e.resultCode == .SQLITE_LOCKED) && Date() < deadline {
                try await Task.sleep(for: .milliseconds(Int.random(in: 5...25)))
            } catch {
                throw mapError(error)
            }
        }
    }

    private func mapError(_ error: Error) -> Error {
        switch error {
        case let e as DatastoreError: return e
        case is CancellationError: return error
        case let e as DatabaseError:
            switch e.resultCode {
            case .SQLITE_BUSY, .SQLITE_LOCKED:
                return DatastoreError.unavailable(
                    "\(path) stayed locked by another process for more than \(Int(Self.busyTimeout)) s (\(e.message ?? "database is locked")); retry, and check for a hung weft process holding it")
            case .SQLITE_FULL:
                return DatastoreError.unavailable("\(path): the disk is full; free space and retry")
            case .SQLITE_READONLY:
                return DatastoreError.unavailable("\(path) is read-only for this process; check its permissions and those of its directory")
            case .SQLITE_CORRUPT, .SQLITE_NOTADB:
                return DatastoreError.unavailable("\(path) is damaged (\(e.message ?? "corrupt")); restore it from a backup or move it aside to start empty")
            default:
                return DatastoreError.unavailable("\(path): \(e.message ?? "\(e)") (SQLite error \(e.extendedResultCode.rawValue))")
            }
        default:
            return DatastoreError.unavailable("\(path): \(error)")
        }
    }

    private static func annotate(_ error: DatastoreError, path: String) -> DatastoreError {
        if case .unavailable(let message) = error { return .unavailable("\(path): \(message)") }
        return error
    }

    private static func openFailureMessage(path: String, error: Error) -> String {
        let directory: String = {
            guard let slash = path.lastIndex(of: "/") else { return "." }
            return slash == path.startIndex ? "/" : String(path[..<slash])
        }()
        var st = stat()
        if stat(directory, &st) != 0 || (st.st_mode & S_IFMT) != S_IFDIR {
            return "cannot create the database \(path): directory \(directory) does not exist; create it (mkdir -p \(directory)) or choose another path"
        }
        if stat(path, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR {
            return "cannot open the database \(path): it is a directory; give the path of a file inside it"
        }
        guard let e = error as? DatabaseError else {
            return "cannot open the database \(path): \(error)"
        }
        let detail = e.message ?? "SQLite error \(e.extendedResultCode.rawValue)"
        switch e.resultCode {
        case .SQLITE_NOTADB, .SQLITE_CORRUPT:
            return "\(path) is not a usable SQLite database (\(detail)); move it aside (weft creates a new one) or choose another path"
        case .SQLITE_CANTOPEN, .SQLITE_PERM, .SQLITE_READONLY, .SQLITE_IOERR, .SQLITE_AUTH:
            return "cannot open the database \(path) (\(detail)); check that this user can read and write it and its directory \(directory) (SQLite also creates \(path)-wal and \(path)-shm there)"
        case .SQLITE_BUSY, .SQLITE_LOCKED:
            return "\(path) stayed locked by another process for more than \(Int(busyTimeout)) s while opening; retry, and check for a hung weft process holding it"
        default:
            return "cannot open the database \(path): \(detail)"
        }
    }

    /// Waits for another connection's lock in short, jittered sleeps (1-10 ms, growing) rather
    /// than SQLite's default schedule (up to 100 ms), so that writers of different processes
    /// take turns fairly; gives up (SQLITE_BUSY) after about `timeout` seconds.
    private static func busyCallback(timeout: Double) -> Database.BusyCallback {
        // tries 0..<100 sleep ~1..10 ms (about 0.6 s in all), then ~10 ms each.
        let maxTries = 100 + Int(max(timeout - 0.6, 0) / 0.0105)
        return { tries in
            guard tries < maxTries else { return false }
            let base = min(1 + tries / 10, 10) * 1000
            usleep(UInt32(base + Int.random(in: 0...1000)))
            return true
        }
    }

    static func wallClock() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }
}

/// What identifies the state of a WAL-mode database's log: its size and modification time, and
/// its 32-byte header, whose checkpoint sequence and salts change whenever the log restarts.
/// nil when there is no log file (then every poll queries).
struct WALStamp: Equatable {
    var size: Int
    var modified: timespec
    var header: [UInt8]

    init?(databasePath: String) {
        let fd = open(databasePath + "-wal", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { return nil }
        var header = [UInt8](repeating: 0, count: 32)
        let n = header.withUnsafeMutableBytes { pread(fd, $0.baseAddress, 32, 0) }
        guard n >= 0 else { return nil }
        self.size = Int(st.st_size)
        self.modified = st.st_mtim
        self.header = Array(header[0..<n])
    }

    static func == (a: WALStamp, b: WALStamp) -> Bool {
        a.size == b.size && a.modified.tv_sec == b.modified.tv_sec && a.modified.tv_nsec == b.modified.tv_nsec && a.header == b.header
    }
}
