// Small helpers for weft-bench: clock, statistics, formatting, signals, threads, processes.
import Synchronization
import WeftCore
import WeftOS
#if canImport(Glibc)
import Glibc
#endif

struct BenchError: Error, CustomStringConvertible {
    var description: String
    init(_ message: String) { description = message }
}

// MARK: - Signals

/// Set by SIGINT/SIGTERM/SIGHUP. The loops poll it and unwind, so every `defer` (namespace and
/// temp-dir removal) runs; the handler itself does nothing but this store.
let interrupted = Atomic<Bool>(false)

func installSignalHandlers() {
    // A closed stdout/stderr (`weft-bench | head`) must not kill the run before its cleanup.
    _ = signal(SIGPIPE, SIG_IGN)
    for sig in [SIGINT, SIGTERM, SIGHUP] {
        _ = signal(sig) { _ in interrupted.store(true, ordering: .relaxed) }
    }
}

/// While cleaning up: a second Ctrl-C must not stop the cleanup, and the `ip` processes it
/// runs inherit the ignored disposition.
func ignoreSignals() {
    for sig in [SIGINT, SIGTERM, SIGHUP] { _ = signal(sig, SIG_IGN) }
}

func checkInterrupted() throws(BenchError) {
    if interrupted.load(ordering: .relaxed) { throw BenchError("interrupted") }
}

// MARK: - Clock and statistics

@inline(__always)
func monotonicNanos() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
}

/// Latency summary in milliseconds. Percentiles are nearest-rank (p99 of 100 samples is the
/// 99th smallest).
struct LatencyStats {
    var count: Int
    var p50: Double
    var p90: Double
    var p99: Double
    var mean: Double
    var min: Double
    var max: Double

    init(nanos: [UInt64]) {
        let ms = nanos.map { Double($0) / 1e6 }.sorted()
        count = ms.count
        func rank(_ p: Double) -> Double {
            guard !ms.isEmpty else { return .nan }
            let r = Int((p * Double(ms.count)).rounded(.up))
            return ms[Swift.max(0, Swift.min(ms.count - 1, r - 1))]
        }
        p50 = rank(0.50); p90 = rank(0.90); p99 = rank(0.99)
        mean = ms.isEmpty ? .nan : ms.reduce(0, +) / Double(ms.count)
        min = ms.first ?? .nan
        max = ms.last ?? .nan
    }

    var json: JSONValue {
        .object([("n", .number(Double(count))), ("p50_ms", .number(p50)), ("p90_ms", .number(p90)), ("p99_ms", .number(p99)),
                 ("mean_ms", .number(mean)), ("min_ms", .number(min)), ("max_ms", .number(max))])
    }
}

// MARK: - Formatting (no Foundation: String(format:) is not available)

func fixed(_ x: Double, _ decimals: Int) -> String {
    guard x.isFinite else { return "-" }
    var scale = 1.0
    for _ in 0..<decimals { scale *= 10 }
    let neg = x < 0
    let v = (abs(x) * scale).rounded()
    guard v < 9e15 else { return String(x) }
    let n = Int64(v)
    let s = String(n)
    var out: String
    if decimals == 0 {
        out = s
    } else {
        let padded = s.count <= decimals ? String(repeating: "0", count: decimals - s.count + 1) + s : s
        out = String(padded.dropLast(decimals)) + "." + String(padded.suffix(decimals))
    }
    return neg && n != 0 ? "-" + out : out
}

func padLeft(_ s: String, _ width: Int) -> String { s.count >= width ? s : String(repeating: " ", count: width - s.count) + s }
func padRight(_ s: String, _ width: Int) -> String { s.count >= width ? s : s + String(repeating: " ", count: width - s.count) }

/// A command line as it can be pasted back into a shell.
func shellQuoted(_ args: [String]) -> String {
    args.map { a in
        let safe = !a.isEmpty && a.unicodeScalars.allSatisfy { c in
            (c >= "a" && c <= "z") || (c >= "A" && c <= "Z") || (c >= "0" && c <= "9") || "-_./=:,+@%".unicodeScalars.contains(c)
        }
        return safe ? a : "'" + a.replacingAll("'", with: "'\\''") + "'"
    }.joined(separator: " ")
}

extension String {
    func replacingAll(_ target: Character, with replacement: String) -> String {
        var out = ""
        for c in self { if c == target { out += replacement } else { out.append(c) } }
        return out
    }

    var trimmed: String {
        var s = Substring(self)
        while let f = s.first, f.isWhitespace { s.removeFirst() }
        while let l = s.last, l.isWhitespace { s.removeLast() }
        return String(s)
    }
}

func utcTimestamp() -> String {
    var t = time(nil)
    var tmv = tm()
    gmtime_r(&t, &tmv)
    var buf = [CChar](repeating: 0, count: 64)
    let n = strftime(&buf, buf.count, "%Y-%m-%d %H:%M:%S UTC", &tmv)
    return String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

func log(_ s: String) {
    var bytes = Array((s + "\n").utf8)[...]
    while !bytes.isEmpty {
        let n = bytes.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
        if n <= 0 { if errno == EINTR { continue }; return }
        bytes = bytes.dropFirst(n)
    }
}

// MARK: - Processes

/// The environment every spawned program gets (plugins and helpers alike): nothing inherited,
/// so weft and the reference see exactly the same variables.
let basePath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

func runTool(_ path: String, _ args: [String], stdin: String = "") throws(BenchError) -> Subprocess.Output {
    do {
        return try Subprocess.run(path, arguments: args, environment: ["PATH": basePath, "LC_ALL": "C"], stdin: Array(stdin.utf8))
    } catch {
        throw BenchError("cannot run \(path): \(error)")
    }
}

func firstExecutable(_ candidates: [String]) -> String? { candidates.first { access($0, X_OK) == 0 } }

func isDirectory(_ path: String) -> Bool {
    var st = stat()
    return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
}

// MARK: - Threads

/// Runs `body(i)` for i in 0..<count on `width` dedicated OS threads (not a pool: each worker
/// is a real thread that can `setns` and block in waitpid). Each worker runs its whole loop
/// inside `around` (used to enter the node's network namespace once per thread). The first
/// error stops all workers and is rethrown.
func parallelFor(_ count: Int, width: Int,
                 around: @escaping @Sendable (_ loop: () throws -> Void) throws -> Void = { try $0() },
                 _ body: @escaping @Sendable (Int) throws -> Void) throws {
    final class Context: @unchecked Sendable {
        let count: Int
        let around: @Sendable (_ loop: () throws -> Void) throws -> Void
        let body: @Sendable (Int) throws -> Void
        let next = Atomic<Int>(0)
        let failed = Atomic<Bool>(false)
        let firstError = Mutex<(any Error)?>(nil)
        init(count: Int, around: @escaping @Sendable (_ loop: () throws -> Void) throws -> Void, body: @escaping @Sendable (Int) throws -> Void) {
            self.count = count; self.around = around; self.body = body
        }

        func fail(_ error: any Error) {
            firstError.withLock { if $0 == nil { $0 = error } }
            failed.store(true, ordering: .relaxed)
        }

        func work() {
            do {
                try around {
                    while !failed.load(ordering: .relaxed) {
                        let i = next.wrappingAdd(1, ordering: .relaxed).oldValue
                        if i >= count { return }
                        try body(i)
                    }
                }
            } catch {
                fail(error)
            }
        }
    }
    let ctx = Context(count: count, around: around, body: body)
    let unmanaged = Unmanaged.passRetained(ctx)
    defer { unmanaged.release() }
    var threads: [pthread_t] = []
    for _ in 0..<max(1, min(width, count)) {
        var t = pthread_t()
        let rc = pthread_create(&t, nil, { arg in
            Unmanaged<Context>.fromOpaque(arg!).takeUnretainedValue().work()
            return nil
        }, unmanaged.toOpaque())
        if rc != 0 {
            ctx.fail(BenchError("pthread_create failed: \(String(cString: strerror(rc)))"))
            break
        }
        threads.append(t)
    }
    for t in threads { pthread_join(t, nil) }
    if let e = ctx.firstError.withLock({ $0 }) { throw e }
}

/// Per-index result slots written by the workers of `parallelFor` (each index by one thread).
final class Slots<T>: @unchecked Sendable {
    private let buffer: UnsafeMutableBufferPointer<T>
    init(count: Int, initial: T) {
        buffer = .allocate(capacity: count)
        buffer.initialize(repeating: initial)
    }
    deinit { buffer.deinitialize(); buffer.deallocate() }
    subscript(i: Int) -> T {
        get { buffer[i] }
        set { buffer[i] = newValue }
    }
    var values: [T] { Array(buffer) }
}
