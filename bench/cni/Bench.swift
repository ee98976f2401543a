// The measurements: sequential ADD/DEL latency (weft and the reference interleaved pod by
// pod), routed-mode latency, and parallel throughput; then the table, ratios and JSON.
import ArgumentParser
import WeftCore
import WeftOS
#if canImport(Glibc)
import Glibc
#endif

struct WeftBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "weft-bench",
        abstract: "Benchmark the weft CNI plugin against the reference bridge + host-local plugins.",
        discussion: """
        Runs everything inside a throwaway "node" network namespace (wb<pid>-<random>-node) with one \
        network namespace per pod; the root network namespace is never touched. Must run as root. \
        Everything it creates is removed at exit, on failure and on Ctrl-C; leftovers of runs that \
        were killed are removed at the next start.
        """)

    @Option(help: "Pods per measurement: sequential ADD/DEL latency per plugin, and the throughput run.")
    var pods = 100

    @Option(help: "Concurrent plugin invocations in the throughput run.")
    var parallel = 8

    @Option(help: "The weft CNI plugin binary (default: weft-cni next to this executable).")
    var weft: String?

    @Option(name: .customLong("cni-path"), help: "Directory of the reference plugins (bridge, host-local); also CNI_PATH.")
    var cniPath = "/usr/lib/cni"

    @Option(help: "Unmeasured ADD+DEL rounds per configuration before measuring.")
    var warmup = 1

    @Flag(help: "Print the results as JSON on stdout (the table then goes to stderr).")
    var json = false

    mutating func validate() throws {
        guard (1...60_000).contains(pods) else { throw ValidationError("--pods must be 1...60000") }
        guard (1...256).contains(parallel) else { throw ValidationError("--parallel must be 1...256") }
        guard warmup >= 0 else { throw ValidationError("--warmup must be 0 or more") }
    }

    mutating func run() throws {
        guard geteuid() == 0 else { throw BenchError("weft-bench must run as root (it creates network namespaces)") }
        let weftPath = weft ?? WeftBench.siblingPlugin()
        guard access(weftPath, X_OK) == 0 else {
            throw BenchError("weft plugin \(weftPath) is not executable; build it (swift build -c release --static-swift-stdlib --product weft-cni) or pass --weft PATH")
        }
        for p in ["bridge", "host-local"] where access(cniPath + "/" + p, X_OK) != 0 {
            throw BenchError("reference plugin \(cniPath)/\(p) is missing; install containernetworking-plugins or pass --cni-path DIR")
        }
        guard let ip = firstExecutable(["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]) else {
            throw BenchError("ip (iproute2) is not installed")
        }

        installSignalHandlers()
        let sandbox = try Sandbox(ip: ip)
        defer { sandbox.cleanup() }
        do {
            let bench = Bench(options: self, weftPath: weftPath, sandbox: sandbox)
            let results = try bench.execute()
            let table = results.table()
            if json {
                log(table)
                print(results.json().serialized(pretty: true))
            } else {
                print(table)
            }
        } catch where interrupted.load(ordering: .relaxed) {
            log("weft-bench: interrupted; removing namespaces and temporary files")
            throw ExitCode(130)
        }
    }

    static func siblingPlugin() -> String {
        var buf = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buf, buf.count - 1)
        guard n > 0 else { return "weft-cni" }
        let exe = String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let dir = exe.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
        return dir + "/weft-cni"
    }
}

struct ThroughputResult {
    var label: String
    var pods: Int
    var parallel: Int
    var addWallSeconds: Double
    var delWallSeconds: Double
    var addLatency: LatencyStats
    var delLatency: LatencyStats
    var addPerSecond: Double { Double(pods) / addWallSeconds }
    var delPerSecond: Double { Double(pods) / delWallSeconds }
}

struct LatencyRow {
    var label: String
    var op: String
    var stats: LatencyStats
    /// CPU time per invocation (plugin plus what it ran).
    var cpu: LatencyStats
}

final class Bench: @unchecked Sendable {
    let options: WeftBench
    let sandbox: Sandbox
    let weftBridge: PluginSpec
    let weftRouted: PluginSpec
    let reference: PluginSpec
    var weftPool: [String] = []
    var refPool: [String] = []
    var node: NetworkNamespace!

    init(options: WeftBench, weftPath: String, sandbox: Sandbox) {
        self.options = options
        self.sandbox = sandbox
        weftBridge = .weft(binary: weftPath, mode: "bridge", subnet: "10.200.0.0/16", bridge: "weftbr0", tmp: sandbox.tmp, cniPath: options.cniPath)
        weftRouted = .weft(binary: weftPath, mode: "routed", subnet: "10.202.0.0/16", bridge: "", tmp: sandbox.tmp, cniPath: options.cniPath)
        reference = .reference(cniPath: options.cniPath, subnet: "10.201.0.0/16", bridge: "refbr0", tmp: sandbox.tmp)
    }

    func execute() throws -> Results {
        let n = options.pods
        var results = Results(options: options, sandbox: sandbox, weft: weftBridge, routed: weftRouted, reference: reference)

        // Namespaces first: their creation is not the plugins' cost. One pool per plugin, reused
        // across phases (every DEL phase is checked to leave the pods empty).
        weftPool = (0..<n).map { "\(sandbox.id)-w\($0)" }
        refPool = (0..<n).map { "\(sandbox.id)-r\($0)" }
        log("weft-bench: run \(sandbox.id): creating 1 node + \(2 * n) pod network namespaces")
        let t0 = monotonicNanos()
        try sandbox.createNamespaces([sandbox.nodeName] + weftPool + refPool)
        let lo = try runTool(sandbox.ip, ["-n", sandbox.nodeName, "link", "set", "lo", "up"])
        guard lo.status == 0 else { throw BenchError("cannot bring up lo in the node namespace: \(String(decoding: lo.stderr, as: UTF8.self))") }
        node = try NetworkNamespace(path: sandbox.netnsPath(sandbox.nodeName))
        log("weft-bench: namespaces ready in \(fixed(Double(monotonicNanos() - t0) / 1e9, 2)) s")

        // The launcher's own cost (same for every plugin): spawn+wait of /bin/true from here.
        results.spawnBaseline = try spawnBaseline()

        // 1. Sequential latency, bridge mode, weft and the reference interleaved pod by pod.
        try warm([(weftBridge, weftPool), (reference, refPool)])
        log("weft-bench: sequential ADD then DEL of \(n) pods, weft (bridge) and reference interleaved")
        let lat = try latency([(weftBridge, weftPool), (reference, refPool)], tag: "l")
        try leakCheck([weftBridge, reference])
        results.latency += [
            LatencyRow(label: weftBridge.label, op: "ADD", stats: LatencyStats(nanos: lat[0].add), cpu: LatencyStats(nanos: lat[0].addCPU)),
            LatencyRow(label: reference.label, op: "ADD", stats: LatencyStats(nanos: lat[1].add), cpu: LatencyStats(nanos: lat[1].addCPU)),
            LatencyRow(label: weftBridge.label, op: "DEL", stats: LatencyStats(nanos: lat[0].del), cpu: LatencyStats(nanos: lat[0].delCPU)),
            LatencyRow(label: reference.label, op: "DEL", stats: LatencyStats(nanos: lat[1].del), cpu: LatencyStats(nanos: lat[1].delCPU)),
        ]

        // 2. Routed mode (weft only).
        try warm([(weftRouted, weftPool)])
        log("weft-bench: sequential ADD then DEL of \(n) pods, weft (routed)")
        let routed = try latency([(weftRouted, weftPool)], tag: "l")
        try leakCheck([weftRouted])
        results.latency += [
            LatencyRow(label: weftRouted.label, op: "ADD", stats: LatencyStats(nanos: routed[0].add), cpu: LatencyStats(nanos: routed[0].addCPU)),
            LatencyRow(label: weftRouted.label, op: "DEL", stats: LatencyStats(nanos: routed[0].del), cpu: LatencyStats(nanos: routed[0].delCPU)),
        ]

        // 3. Throughput: `parallel` concurrent ADDs of n pods, then DEL of all, per plugin.
        for (spec, pool) in [(weftBridge, weftPool), (reference, refPool)] {
            log("weft-bench: throughput, \(spec.label): \(n) ADDs then \(n) DELs, \(options.parallel) at a time")
            results.throughput.append(try throughput(spec, pool: pool))
            try leakCheck([spec])
        }
        results.loadAtEnd = Machine.loadAverage()
        return results
    }

    // MARK: phases

    private func containerID(_ tag: String, _ spec: PluginSpec, _ i: Int) -> String { "\(sandbox.id)-\(tag)-\(spec.key)-\(i)" }

    private func spawnBaseline() throws -> LatencyStats {
        guard let t = firstExecutable(["/usr/bin/true", "/bin/true"]) else { return LatencyStats(nanos: []) }
        var samples: [UInt64] = []
        try node.run { () throws(BenchError) in
            for _ in 0..<50 {
                let t0 = monotonicNanos()
                let out = try runTool(t, [])
                samples.append(monotonicNanos() - t0)
                guard out.status == 0 else { throw BenchError("\(t) failed") }
            }
        }
        return LatencyStats(nanos: samples)
    }

    /// Unmeasured ADD+DEL rounds: creates each plugin's bridge / nftables / iptables state and
    /// pages the binaries in, so the measured numbers are steady state.
    private func warm(_ lanes: [(PluginSpec, [String])]) throws {
        guard options.warmup > 0 else { return }
        try node.run { () throws(BenchError) in
            for w in 0..<options.warmup {
                for (spec, pool) in lanes {
                    let id = containerID("warm\(w)", spec, 0)
                    let ns = sandbox.netnsPath(pool[0])
                    _ = try invokePlugin(spec, "ADD", containerID: id, netns: ns, pod: 0)
                    _ = try invokePlugin(spec, "DEL", containerID: id, netns: ns, pod: 0)
                }
            }
        }
    }

    /// ADD of every pod, then DEL of every pod, one at a time; with several lanes the plugins
    /// alternate pod by pod (and which goes first alternates too), so drift in the machine's
    /// state or load hits them equally.
    private func latency(_ lanes: [(PluginSpec, [String])], tag: String) throws -> [(add: [UInt64], del: [UInt64], addCPU: [UInt64], delCPU: [UInt64])] {
        let n = options.pods
        var add = Array(repeating: [UInt64](), count: lanes.count)
        var del = Array(repeating: [UInt64](), count: lanes.count)
        var addCPU = Array(repeating: [UInt64](), count: lanes.count)
        var delCPU = Array(repeating: [UInt64](), count: lanes.count)
        var seen = Array(repeating: Set<String>(), count: lanes.count)
        try node.run { () throws(BenchError) in
            for (command, pass) in [("ADD", 0), ("DEL", 1)] {
                for i in 0..<n {
                    try checkInterrupted()
                    for k in 0..<lanes.count {
                        let j = (i + k) % lanes.count
                        let (spec, pool) = lanes[j]
                        let r = try invokePlugin(spec, command, containerID: containerID(tag, spec, i), netns: sandbox.netnsPath(pool[i]), pod: i)
                        if pass == 0 {
                            add[j].append(r.nanos)
                            addCPU[j].append(r.cpu)
                            if let a = r.address, !seen[j].insert(a).inserted {
                                throw BenchError("\(spec.label) handed out \(a) twice")
                            }
                        } else {
                            del[j].append(r.nanos)
                            delCPU[j].append(r.cpu)
                        }
                    }
                }
            }
        }
        return (0..<lanes.count).map { (add[$0], del[$0], addCPU[$0], delCPU[$0]) }
    }

    private func throughput(_ spec: PluginSpec, pool: [String]) throws -> ThroughputResult {
        let n = options.pods
        let node = self.node!
        let sandbox = self.sandbox
        let id: @Sendable (Int) -> String = { i in "\(sandbox.id)-t-\(spec.key)-\(i)" }
        let enter: @Sendable (() throws -> Void) throws -> Void = { loop in try node.run { try loop() } }

        let addNanos = Slots<UInt64>(count: n, initial: 0)
        let addresses = Slots<String>(count: n, initial: "")
        let a0 = monotonicNanos()
        try parallelFor(n, width: options.parallel, around: enter) { i in
            let r = try invokePlugin(spec, "ADD", containerID: id(i), netns: sandbox.netnsPath(pool[i]), pod: i)
            addNanos[i] = r.nanos
            addresses[i] = r.address ?? ""
        }
        let addWall = monotonicNanos() - a0
        if Set(addresses.values).count != n {
            throw BenchError("\(spec.label) handed out the same address to two pods under \(options.parallel) parallel ADDs")
        }

        let delNanos = Slots<UInt64>(count: n, initial: 0)
        let d0 = monotonicNanos()
        try parallelFor(n, width: options.parallel, around: enter) { i in
            delNanos[i] = try invokePlugin(spec, "DEL", containerID: id(i), netns: sandbox.netnsPath(pool[i]), pod: i).nanos
        }
        let delWall = monotonicNanos() - d0
        return ThroughputResult(label: spec.label, pods: n, parallel: options.parallel,
                                addWallSeconds: Double(addWall) / 1e9, delWallSeconds: Double(delWall) / 1e9,
                                addLatency: LatencyStats(nanos: addNanos.values), delLatency: LatencyStats(nanos: delNanos.values))
    }

    /// After a DEL phase: no address may still be allocated and no veth may remain on the node
    /// (a DEL that "succeeds" without doing its work would make its latency meaningless).
    private func leakCheck(_ specs: [PluginSpec]) throws {
        for spec in specs {
            let dir = spec.dataDir + "/" + spec.network
            let held = ((try? Files.list(dir)) ?? []).filter { IPAddress($0) != nil }
            if !held.isEmpty {
                throw BenchError("after DEL of every pod, \(spec.label) IPAM in \(dir) still holds \(held.count) address(es): \(held.prefix(5).joined(separator: ", "))")
            }
        }
        let veths = try node.control().links().filter { $0.kind == "veth" }
        if !veths.isEmpty {
            throw BenchError("after DEL of every pod, \(veths.count) veth(s) remain on the node: \(veths.prefix(5).map(\.name).joined(separator: ", "))")
        }
    }
}
