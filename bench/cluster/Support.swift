import WeftCore
import WeftLab
import WeftOS
#if canImport(Glibc)
import Glibc
#endif

// Shared plumbing of weft-bench-cluster: processes, clocks, statistics, tables, the lab (always
// through the `weft` CLI, as a user drives it) and clean-up on every way out.

struct BenchError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

/// Monotonic seconds.
func now() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

func sleepSeconds(_ s: Double) throws {
    let end = now() + s
    while now() < end {
        try checkInterrupted()
        usleep(UInt32(max(1000, min(100_000, (end - now()) * 1e6))))
    }
}

// MARK: interruption

nonisolated(unsafe) var interruptFlag: sig_atomic_t = 0

/// Ctrl-C, SIGTERM, SIGHUP only set a flag: loops stop at the next check and the `defer`s
/// (lab down, namespace removal) run. A closed stdout must not kill us mid-clean-up.
func installSignalHandlers() {
    for s in [SIGINT, SIGTERM, SIGHUP] { signal(s) { _ in interruptFlag = 1 } }
    signal(SIGPIPE, SIG_IGN)
}

func checkInterrupted() throws {
    if interruptFlag != 0 { throw BenchError("interrupted; cleaning up") }
}

// MARK: processes

let pathEnv = ["PATH": "/usr/sbin:/usr/bin:/sbin:/bin"]

struct RunResult {
    var status: Int32
    var stdout: String
    var stderr: String
    var seconds: Double
}

/// Runs a command to completion (PATH lookup through /usr/bin/env), capturing its output.
func runCmd(_ args: [String]) throws -> RunResult {
    let t0 = now()
    let out: Subprocess.Output
    do { out = try Subprocess.run("/usr/bin/env", arguments: args, environment: pathEnv, stdin: []) } catch {
        throw BenchError("\(args.joined(separator: " ")): \(error)")
    }
    return RunResult(status: out.status, stdout: String(decoding: out.stdout, as: UTF8.self), stderr: String(decoding: out.stderr, as: UTF8.self), seconds: now() - t0)
}

/// Runs a command that must succeed; returns its stdout.
@discardableResult
func sh(_ args: [String]) throws -> String {
    let r = try runCmd(args)
    guard r.status == 0 else {
        throw BenchError("`\(args.joined(separator: " "))` exited \(r.status): \(r.stderr.isEmpty ? r.stdout : r.stderr)")
    }
    return r.stdout
}

@discardableResult
func inNS(_ ns: String, _ args: [String]) throws -> String { try sh(["ip", "netns", "exec", ns] + args) }

/// Starts a process without waiting for it and returns its pid (our child, reaped by us):
/// own session, stdin from /dev/null, stdout+stderr appended to `log`. Same launch as the
/// lab's `spawnDetached`, which does not return the pid.
func spawn(_ args: [String], log: String) throws -> pid_t {
    var attr = posix_spawnattr_t()
    posix_spawnattr_init(&attr)
    defer { posix_spawnattr_destroy(&attr) }
    posix_spawnattr_setflags(&attr, 0x80) // POSIX_SPAWN_SETSID
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 1, log, O_WRONLY | O_CREAT | O_APPEND, 0o644)
    posix_spawn_file_actions_adddup2(&actions, 1, 2)
    let argv: [UnsafeMutablePointer<CChar>?] = (["/usr/bin/env"] + args).map { strdup($0) } + [nil]
    let env: [UnsafeMutablePointer<CChar>?] = [strdup("PATH=/usr/sbin:/usr/bin:/sbin:/bin"), nil]
    defer { argv.forEach { free($0) }; env.forEach { free($0) } }
    var pid: pid_t = 0
    let rc = posix_spawn(&pid, "/usr/bin/env", &actions, &attr, argv, env)
    guard rc == 0 else { throw BenchError("start \(args.joined(separator: " ")): \(String(cString: strerror(rc)))") }
    return pid
}

/// nil while running; the exit status once it has ended (and is reaped).
func exited(_ pid: pid_t) -> Int32? {
    var status: Int32 = 0
    let r = waitpid(pid, &status, WNOHANG)
    if r == 0 { return nil }
    if r < 0 { return -1 }
    return (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
}

func killAndReap(_ pid: pid_t) {
    kill(pid, SIGKILL)
    var status: Int32 = 0
    _ = waitpid(pid, &status, 0)
}

func tail(_ path: String, lines: Int = 15) -> String {
    guard let text = try? Files.readString(path) else { return "(\(path) unreadable)" }
    return text.split(separator: "\n", omittingEmptySubsequences: false).suffix(lines).joined(separator: "\n")
}

/// The directory this executable lives in (the scratch path's debug/ or release/).
func executableDirectory() -> String {
    var buf = [CChar](repeating: 0, count: 4096)
    let n = readlink("/proc/self/exe", &buf, buf.count - 1)
    guard n > 0 else { return "." }
    let path = String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    return String(path[..<(path.lastIndex(of: "/") ?? path.endIndex)])
}

// MARK: statistics and tables

func percentile(_ xs: [Double], _ p: Double) -> Double {
    guard !xs.isEmpty else { return .nan }
    let s = xs.sorted()
    let rank = Int((p / 100 * Double(s.count)).rounded(.up))
    return s[min(max(rank, 1), s.count) - 1]
}

func median(_ xs: [Double]) -> Double {
    guard !xs.isEmpty else { return .nan }
    let s = xs.sorted()
    return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
}

func fmt(_ x: Double, _ digits: Int = 1) -> String {
    guard x.isFinite else { return "–" }
    var p = 1.0
    for _ in 0..<digits { p *= 10 }
    let v = (x * p).rounded() / p
    var s = "\(v)"
    if let dot = s.firstIndex(of: ".") {
        let decimals = s.distance(from: dot, to: s.endIndex) - 1
        if digits == 0 { s = String(s[..<dot]) } else if decimals < digits { s += String(repeating: "0", count: digits - decimals) }
    }
    return s
}

func ms(_ seconds: Double) -> String { fmt(seconds * 1000, 0) }

/// A Markdown table (pasteable into bench/README.md).
func table(_ header: [String], _ rows: [[String]]) -> String {
    let widths = header.indices.map { i in ([header[i]] + rows.map { i < $0.count ? $0[i] : "" }).map(\.count).max()! }
    func line(_ cells: [String]) -> String {
        "| " + header.indices.map { i in
            let c = i < cells.count ? cells[i] : ""
            return c + String(repeating: " ", count: widths[i] - c.count)
        }.joined(separator: " | ") + " |"
    }
    return ([line(header), "| " + widths.map { String(repeating: "-", count: max($0, 3)) }.joined(separator: " | ") + " |"] + rows.map(line)).joined(separator: "\n")
}

func machineLine() -> String {
    let load = ((try? Files.readString("/proc/loadavg")) ?? "").split(separator: " ").prefix(3).joined(separator: " ")
    let cpus = sysconf(Int32(_SC_NPROCESSORS_ONLN))
    var u = utsname()
    uname(&u)
    let release = withUnsafeBytes(of: &u.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
    return "\(cpus) CPUs, Linux \(release), load average \(load)"
}

func dateLine() -> String {
    var t = time(nil)
    var tmv = tm()
    gmtime_r(&t, &tmv)
    var buf = [CChar](repeating: 0, count: 64)
    let n = strftime(&buf, buf.count, "%Y-%m-%d %H:%M:%S UTC", &tmv)
    return String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

func printHeader(_ what: String) {
    print("# weft-bench-cluster \(what)")
    print("command: \(CommandLine.arguments.map { $0.contains(" ") ? "'\($0)'" : $0 }.joined(separator: " "))")
    print("date:    \(dateLine())")
    print("machine: \(machineLine())")
}

// MARK: the lab, through the weft CLI

struct Binaries {
    var weft: String
    var cni: String
    init(weft: String?) throws {
        self.weft = weft ?? executableDirectory() + "/weft"
        cni = String(self.weft[..<(self.weft.lastIndex(of: "/") ?? self.weft.startIndex)]) + "/weft-cni"
        for b in [self.weft, cni] where !Files.exists(b) {
            throw BenchError("\(b) not found; build it with `swift build --scratch-path .build-benchc --product weft` and `--product weft-cni` (the lab finds weft-cni next to weft)")
        }
    }
}

/// A lab brought up by `weft lab up` and always taken down by `weft lab down`.
final class LabHandle {
    let name: String
    let bin: Binaries
    private(set) var state: LabState
    let upSeconds: Double
    let upCommand: [String]
    private var isDown = false

    init(name: String, nodes: Int, mode: String, datastore: String, leaseTTL: Int?, bin: Binaries) throws {
        guard name.hasPrefix("bench"), name.count <= 12, name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber) }) else {
            throw BenchError("--lab \(name): use a name starting with \"bench\", up to 12 letters and digits")
        }
        if Files.exists(LabState.dir(name) + "/state.json") {
            throw BenchError("lab \(name) is already up (a previous run killed with SIGKILL?); remove it with `weft lab down --name \(name)` or pick another --lab")
        }
        self.name = name
        self.bin = bin
        var cmd = [bin.weft, "lab", "up", "--name", name, "--nodes", "\(nodes)", "--mode", mode, "--datastore", datastore]
        if let leaseTTL { cmd += ["--lease-ttl", "\(leaseTTL)"] }
        upCommand = cmd
        print("\n$ \(cmd.joined(separator: " "))")
        let r = try runCmd(cmd)
        upSeconds = r.seconds
        print(r.stdout.split(separator: "\n").map { "  " + $0 }.joined(separator: "\n"))
        guard r.status == 0 else {
            if Files.exists(LabState.dir(name) + "/state.json") { _ = try? runCmd([bin.weft, "lab", "down", "--name", name]) }
            throw BenchError("`weft lab up` failed after \(fmt(r.seconds)) s (exit \(r.status)):\n\(r.stderr)")
        }
        state = try LabState.load(name)
        print("  lab up took \(fmt(upSeconds, 2)) s")
    }

    func weft(_ args: [String]) throws -> String { try sh([bin.weft] + args + ["--lab", name]) }

    func down() {
        guard !isDown else { return }
        isDown = true
        let r = try? runCmd([bin.weft, "lab", "down", "--name", name])
        print("$ weft lab down --name \(name): \(r.map { $0.status == 0 ? "ok (\(fmt($0.seconds, 2)) s)" : "exit \($0.status): \($0.stderr)" } ?? "could not run")")
    }

    func nodeNS(_ i: Int) -> String { "\(state.id)-node\(i)" }
    static func hostIP(_ i: Int) -> String { "192.168.100.\(11 + i)" }

    /// weft's routes (proto 87) in a namespace, one line each.
    func weftRoutes(ns: String) throws -> [String] {
        try inNS(ns, ["ip", "-o", "-4", "route", "show", "proto", "87"]).split(separator: "\n").map(String.init)
    }

    /// Waits until every node has a route to each of its peers' ranges.
    func waitForFullMesh(timeout: Double) throws -> Double {
        let t0 = now()
        let n = state.nodes.count
        while true {
            try checkInterrupted()
            var missing: [String] = []
            for node in state.nodes {
                let c = try weftRoutes(ns: node.netns).count
                if c != n - 1 { missing.append("\(node.name): \(c)/\(n - 1)") }
            }
            if missing.isEmpty { return now() - t0 }
            if now() - t0 > timeout {
                throw BenchError("routes did not converge within \(Int(timeout)) s after lab up: \(missing.prefix(10).joined(separator: ", "))\n--- node0 agent.log:\n\(tail(state.dir + "/node0/agent.log"))")
            }
            usleep(200_000)
        }
    }

    /// A namespace plugged into the lab's host network, as `lab up` plugs in nodes.
    func attach(ns: String, port: String, address: String) throws {
        try LabCluster.attach(ns: ns, to: state, port: port, address: address)
    }

    /// Starts `weft agent` for an extra node with the command line LabCluster.startNode uses
    /// (nsenter into the node's namespace; same flags, log and directories); returns its pid.
    func startAgent(node: String, ns: String, mode: String, leaseTTL: Int) throws -> (pid: pid_t, command: [String]) {
        let nodeDir = "\(state.dir)/\(node)"
        try Files.makeDirectories(nodeDir)
        var cmd = ["nsenter", "--net=/run/netns/\(ns)", "--", bin.weft, "agent", "--node", node, "--datastore", state.datastore,
                   "--mode", mode, "--uplink", "eth0", "--block-prefix-v4", "24",
                   "--cni-conf-dir", "\(nodeDir)/net.d", "--ipam-data-dir", "\(nodeDir)/ipam", "--lease-ttl", "\(leaseTTL)"]
        let cidrs = mode == "vxlan" ? ["10.244.0.0/16", "fd00:244::/56"] : ["10.245.0.0/16", "fd00:245::/56"]
        for c in cidrs { cmd += ["--cluster-cidr", c] }
        return (try spawn(cmd, log: "\(nodeDir)/agent.log"), cmd)
    }

    /// Kills everything in a namespace and removes it (with its port on the host network).
    func removeNamespace(_ ns: String, port: String? = nil) {
        if let port { _ = try? runCmd(["ip", "-n", state.hostNetwork, "link", "del", port]) }
        if let pids = try? sh(["ip", "netns", "pids", ns]) {
            for p in pids.split(separator: "\n") { if let pid = pid_t(p) { kill(pid, SIGKILL) } }
        }
        _ = try? sh(["ip", "netns", "del", ns])
    }

    /// Nodes of the lab whose agent is no longer running, with the end of its log.
    func deadAgents() -> [(node: Int, log: String)] {
        state.nodes.indices.compactMap { i in
            (try? agentPID(ns: nodeNS(i))) == nil ? (i, tail("\(state.dir)/node\(i)/agent.log", lines: 6)) : nil
        }
    }

    /// The pid of the agent running in a node's namespace.
    func agentPID(ns: String) throws -> pid_t {
        for p in try sh(["ip", "netns", "pids", ns]).split(separator: "\n") {
            guard let pid = pid_t(p), let cmd = try? Files.read("/proc/\(pid)/cmdline") else { continue }
            let args = cmd.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
            if args.count > 1, args[0].hasSuffix("/weft"), args[1] == "agent" { return pid }
        }
        throw BenchError("no weft agent found in namespace \(ns)")
    }
}
