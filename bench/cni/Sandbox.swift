// The throwaway world a benchmark run lives in: one "node" network namespace, the pods'
// namespaces, and a temporary directory. Everything is named wb<pid>-<random>..., so a run
// killed before its cleanup is recognised (its pid is gone) and removed by the next run.
// Nothing here, nor anything the plugins are given, touches the root network namespace: the
// plugins run with their threads inside the node namespace.
import WeftOS
#if canImport(Glibc)
import Glibc
#endif

final class Sandbox: @unchecked Sendable {
    let id: String
    let ip: String
    let tmp: String
    private(set) var namespaces: [String] = []
    private var cleaned = false

    static let netnsDir = "/run/netns"

    var nodeName: String { id + "-node" }
    func netnsPath(_ name: String) -> String { Sandbox.netnsDir + "/" + name }

    init(ip: String) throws(BenchError) {
        self.ip = ip
        var suffix = String(UInt32.random(in: 0...0xff_ffff), radix: 16)
        while suffix.count < 6 { suffix = "0" + suffix }
        id = "wb\(getpid())-\(suffix)"
        let root = Sandbox.tmpRoot
        Sandbox.removeStale(ip: ip, tmpRoot: root)
        tmp = root + "/" + id
        guard mkdir(tmp, 0o700) == 0 else { throw BenchError("cannot create \(tmp): \(String(cString: strerror(errno)))") }
    }

    static var tmpRoot: String {
        if let t = getenv("TMPDIR").map({ String(cString: $0) }), t.hasPrefix("/"), isDirectory(t) { return t }
        return "/tmp"
    }

    /// Creates network namespaces with one `ip -batch` (recorded first, so cleanup covers a
    /// batch that fails half-way).
    func createNamespaces(_ names: [String]) throws(BenchError) {
        namespaces += names
        let script = names.map { "netns add \($0)\n" }.joined()
        let out = try runTool(ip, ["-batch", "-"], stdin: script)
        try checkInterrupted()
        guard out.status == 0 else {
            throw BenchError("ip netns add failed (exit \(out.status)): \(String(decoding: out.stderr, as: UTF8.self).trimmed)")
        }
    }

    /// Removes the namespaces and the temporary directory. Idempotent; never throws (it runs
    /// from `defer` on every way out, including after Ctrl-C).
    func cleanup() {
        if cleaned { return }
        cleaned = true
        ignoreSignals()
        if !namespaces.isEmpty {
            // Pods first, the node last (its bridges and veths go with it).
            let ordered = namespaces.filter { $0 != nodeName } + namespaces.filter { $0 == nodeName }
            _ = try? runTool(ip, ["-force", "-batch", "-"], stdin: ordered.map { "netns del \($0)\n" }.joined())
            let left = ((try? Files.list(Sandbox.netnsDir)) ?? []).filter { $0.hasPrefix(id + "-") }
            for name in left { _ = try? runTool(ip, ["netns", "del", name]) }
            let still = ((try? Files.list(Sandbox.netnsDir)) ?? []).filter { $0.hasPrefix(id + "-") }
            if !still.isEmpty { log("weft-bench: warning: could not remove network namespaces: \(still.joined(separator: " "))") }
        }
        removeTree(tmp)
    }

    private func removeTree(_ path: String) {
        guard path.hasPrefix("/"), path.count > 5, Files.exists(path) else { return }
        if let rm = firstExecutable(["/usr/bin/rm", "/bin/rm"]) { _ = try? runTool(rm, ["-rf", "--", path]) }
        if Files.exists(path) { log("weft-bench: warning: could not remove \(path)") }
    }

    /// The pid in a name of the form wb<pid>-<6 hex digits>[-...] (what `init` makes), if the
    /// name has exactly that form; anything else is not ours and is never touched.
    static func ownerPid(_ name: String) -> pid_t? {
        guard name.hasPrefix("wb") else { return nil }
        let parts = name.dropFirst(2).split(separator: "-", omittingEmptySubsequences: false)
        guard parts.count >= 2, !parts[0].isEmpty, parts[0].count <= 10, parts[0].allSatisfy({ $0.isASCII && $0.isNumber }),
              parts[1].count == 6, parts[1].allSatisfy({ $0.isASCII && $0.isHexDigit && !$0.isUppercase }) else { return nil }
        return pid_t(parts[0])
    }

    static func isStale(_ name: String) -> Bool {
        guard let pid = ownerPid(name), pid != getpid() else { return false }
        if kill(pid, 0) != 0 && errno == ESRCH { return true }
        // A killed run whose parent has not reaped it yet is a zombie: as dead as it gets.
        guard let stat = try? Files.readString("/proc/\(pid)/stat"), let paren = stat.lastIndex(of: ")") else { return false }
        return String(stat[stat.index(after: paren)...]).trimmed.first == "Z"
    }

    /// Leftovers of earlier runs that died without cleaning up (SIGKILL, crash).
    static func removeStale(ip: String, tmpRoot: String) {
        let stale = ((try? Files.list(netnsDir)) ?? []).filter(isStale).sorted { !$0.hasSuffix("-node") && $1.hasSuffix("-node") }
        if !stale.isEmpty {
            log("weft-bench: removing \(stale.count) stale namespace(s) of dead runs")
            _ = try? runTool(ip, ["-force", "-batch", "-"], stdin: stale.map { "netns del \($0)\n" }.joined())
        }
        // Temp dirs: exactly wb<pid>-<6 hex>.
        for name in (try? Files.list(tmpRoot)) ?? [] where isStale(name) {
            guard name.split(separator: "-", omittingEmptySubsequences: false).count == 2 else { continue }
            let path = tmpRoot + "/" + name
            if isDirectory(path), let rm = firstExecutable(["/usr/bin/rm", "/bin/rm"]) { _ = try? runTool(rm, ["-rf", "--", path]) }
        }
    }
}
