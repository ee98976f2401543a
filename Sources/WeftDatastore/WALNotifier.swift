#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Synchronization

/// Wakes a file's watch hub when the key log changes, from inotify on the database's
/// directory: a write that adds rows to the log touches a marker file beside the database
/// (`NAME-changes`) after its commit, so the hub of every process reads a commit within about
/// a millisecond instead of at its next poll (every 50 ms), and reads it already published.
/// Writes of leases alone (every node's keepalive) touch nothing: waking on every write of the
/// log itself woke every process of a 20-node lab some 60 times a second for nothing. Polling
/// stays as the fallback, and is all there is where inotify is not (its limits reached, some
/// network file systems) or a writer does not touch the marker.
final class WALNotifier: Sendable {
    private struct State {
        /// Bumped on every change seen.
        var generation: UInt64 = 0
        var waiters: [UInt64: CheckedContinuation<Void, Never>] = [:]
        /// Waits cancelled before they were registered.
        var cancelled: Set<UInt64> = []
        var nextWaiter: UInt64 = 0
    }
    /// Shared with the reader thread, which outlives no notifier: `deinit` stops it.
    private final class Shared: Sendable { let state = Mutex(State()) }
    private let shared = Shared()
    /// Written to stop the reader thread (a thread blocked in read(2) would not notice a close).
    private let stopPipe: (read: Int32, write: Int32)

    /// One per database file and process, however many stores a process opens on it (each
    /// costs an inotify instance, 128 per user by default, and a thread).
    static func shared(databasePath: String) -> WALNotifier? {
        let path = URL(fileURLWithPath: databasePath).standardizedFileURL.path
        return registry.withLock { r in
            if let live = r[path]?.notifier { return live }
            let made = WALNotifier(databasePath: path)
            r[path] = made.map(Weak.init)
            return made
        }
    }
    private struct Weak: @unchecked Sendable { weak var notifier: WALNotifier? }
    private static let registry = Mutex<[String: Weak]>([:])

    private let path: String

    private init?(databasePath: String) {
        let url = URL(fileURLWithPath: databasePath)
        let directory = url.deletingLastPathComponent().path, base = url.lastPathComponent
        let fd = inotify_init1(Int32(IN_CLOEXEC))
        guard fd >= 0 else { return nil }
        // Not IN_MODIFY: the log's own writes would wake the reader thread at every commit.
        guard inotify_add_watch(fd, directory, UInt32(IN_ATTRIB | IN_CREATE | IN_MOVED_TO)) >= 0 else { close(fd); return nil }
        var p: [Int32] = [-1, -1]
        guard pipe(&p) == 0 else { close(fd); return nil }
        for end in p { _ = fcntl(end, F_SETFD, FD_CLOEXEC) }
        stopPipe = (p[0], p[1])
        path = databasePath
        let names: Set<String> = [base + Self.markerSuffix], stopRead = p[0]
        let thread = Thread { [shared] in
            Self.read(inotify: fd, stop: stopRead, names: names, shared: shared)
            close(fd)
            close(stopRead)
        }
        thread.name = "weft-sqlite-wal-notifier"
        thread.start()
    }

    /// Ends the reader thread (it sees the pipe hang up); waits in progress return at their
    /// timeout. No write: a reader thread gone early would leave it to raise SIGPIPE.
    deinit {
        close(stopPipe.write)
        let path = self.path
        Self.registry.withLock { r in if r[path]?.notifier == nil { r[path] = nil } }
    }

    var generation: UInt64 { shared.state.withLock { $0.generation } }

    static let markerSuffix = "-changes"

    /// Wakes this process's waits as a change would (a watch joined and wants its catch-up now).
    func poke() { Self.wake(shared) }

    private static func wake(_ shared: Shared) {
        let woken = shared.state.withLock { s in
            s.generation += 1
            defer { s.waiters = [:] }
            return Array(s.waiters.values)
        }
        for c in woken { c.resume() }
    }

    /// Tells every process's notifier on this file that the key log changed: the marker's times
    /// set to now (IN_ATTRIB), the marker made if it is not there (IN_CREATE). Best effort.
    static func markChanged(databasePath: String) {
        let marker = databasePath + markerSuffix
        if utimensat(AT_FDCWD, marker, nil, 0) != 0, errno == ENOENT {
            let fd = open(marker, O_WRONLY | O_CREAT | O_CLOEXEC, 0o644)
            if fd >= 0 { close(fd) }
        }
    }

    /// Returns once a change past `seen` (a `generation` read earlier) has been seen, or after
    /// `timeout`, or when the task is cancelled.
    func wait(past seen: UInt64, timeout: Duration) async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.changed(past: seen) }
            group.addTask { try? await Task.sleep(for: timeout) }
            await group.next()
            group.cancelAll()
        }
    }

    private func changed(past seen: UInt64) async {
        let id = shared.state.withLock { s in s.nextWaiter += 1; return s.nextWaiter }
        // A cancellation that came after the wait ended left its mark: nothing reads it now.
        defer { shared.state.withLock { _ = $0.cancelled.remove(id) } }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                let now: Bool = shared.state.withLock { s in
                    if s.generation > seen || s.cancelled.remove(id) != nil { return true }
                    s.waiters[id] = c
                    return false
                }
                if now { c.resume() }
            }
        } onCancel: {
            let waiting = shared.state.withLock { s in
                if let c = s.waiters.removeValue(forKey: id) { return c as CheckedContinuation<Void, Never>? }
                s.cancelled.insert(id)
                return nil
            }
            waiting?.resume()
        }
    }

    private static func read(inotify fd: Int32, stop: Int32, names: Set<String>, shared: Shared) {
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            var fds = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0), pollfd(fd: stop, events: Int16(POLLIN), revents: 0)]
            if poll(&fds, 2, -1) < 0 {
                if errno == EINTR { continue }
                return
            }
            if fds[1].revents != 0 { return }
            let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 { if errno == EINTR || errno == EAGAIN { continue }; return }
            // struct inotify_event: wd, mask, cookie, len (4 bytes each), then len bytes of name.
            var at = 0, relevant = false
            while at + 16 <= n {
                let mask = buffer.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: at + 4, as: UInt32.self) }
                let len = buffer.withUnsafeBytes { Int($0.loadUnaligned(fromByteOffset: at + 12, as: UInt32.self)) }
                // Events were dropped: any of them may have been a commit.
                if mask & UInt32(IN_Q_OVERFLOW) != 0 { relevant = true }
                let nameBytes = buffer[(at + 16)..<min(at + 16 + len, n)].prefix { $0 != 0 }
                if names.contains(String(decoding: nameBytes, as: UTF8.self)) { relevant = true }
                at += 16 + len
            }
            guard relevant else { continue }
            wake(shared)
        }
    }
}
