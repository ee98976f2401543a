// The report: a table for people, JSON for scripts.
import WeftCore
import WeftOS
#if canImport(Glibc)
import Glibc
#endif

struct Results {
    let date = utcTimestamp()
    let command = shellQuoted(CommandLine.arguments)
    let machine = Machine.describe()
    let options: WeftBench
    let runID: String
    let weft: PluginSpec
    let routed: PluginSpec
    let reference: PluginSpec
    let referenceVersion: String
    var spawnBaseline = LatencyStats(nanos: [])
    /// /proc/loadavg when the run started and ended: wall-clock latencies are only comparable
    /// between runs on an otherwise idle machine (the CPU column is much less sensitive).
    let loadAtStart = Machine.loadAverage()
    var loadAtEnd = ""
    var latency: [LatencyRow] = []
    var throughput: [ThroughputResult] = []

    /// Project targets: weft's ADD and DEL p50 at most this fraction of the reference's.
    static let latencyTarget = 0.25

    init(options: WeftBench, sandbox: Sandbox, weft: PluginSpec, routed: PluginSpec, reference: PluginSpec) {
        self.options = options
        runID = sandbox.id
        self.weft = weft; self.routed = routed; self.reference = reference
        referenceVersion = Machine.debianVersion("containernetworking-plugins") ?? "unknown version"
    }

    func row(_ label: String, _ op: String) -> LatencyStats? { latency.first { $0.label == label && $0.op == op }?.stats }

    var addRatio: Double? {
        guard let w = row(weft.label, "ADD"), let r = row(reference.label, "ADD") else { return nil }
        return w.p50 / r.p50
    }
    var delRatio: Double? {
        guard let w = row(weft.label, "DEL"), let r = row(reference.label, "DEL") else { return nil }
        return w.p50 / r.p50
    }
    var cpuRatio: (add: Double, del: Double)? {
        guard let wa = latency.first(where: { $0.label == weft.label && $0.op == "ADD" }), let ra = latency.first(where: { $0.label == reference.label && $0.op == "ADD" }),
              let wd = latency.first(where: { $0.label == weft.label && $0.op == "DEL" }), let rd = latency.first(where: { $0.label == reference.label && $0.op == "DEL" })
        else { return nil }
        return (wa.cpu.mean / ra.cpu.mean, wd.cpu.mean / rd.cpu.mean)
    }
    var throughputRatio: (add: Double, del: Double)? {
        guard let w = throughput.first(where: { $0.label == weft.label }), let r = throughput.first(where: { $0.label == reference.label }) else { return nil }
        return (w.addPerSecond / r.addPerSecond, w.delPerSecond / r.delPerSecond)
    }

    func table() -> String {
        var s = ""
        func line(_ t: String = "") { s += t + "\n" }
        line("weft-bench — weft CNI vs reference bridge+host-local (\(date))")
        line("command:   \(command)")
        line("machine:   \(machine)")
        line("load avg:  \(loadAtStart) at start, \(loadAtEnd) at end (1/5/15 min)")
        line("weft:      \(weft.binary)  [bridge, ipMasq, clusterCIDR \(PluginSpec.clusterCIDR), built-in IPAM; routed mode as an extra line]")
        line("reference: \(reference.binary) + host-local (\(referenceVersion)), cniVersion 1.0.0, isGateway, ipMasq (iptables), hairpinMode")
        line("method:    plugins run in a throwaway node netns (\(runID)-node): the benchmark thread setns()es into it and posix_spawns the")
        line("           plugin, timing spawn..waitpid; pod netns made beforehand; \(options.warmup) unmeasured ADD+DEL warm-up per config;")
        line("           every ADD checked for exit 0 and an address; after each DEL phase no IPAM allocation or veth may remain.")
        line("           launcher overhead (spawn+wait of /bin/true, same for all): p50 \(fixed(spawnBaseline.p50, 2)) ms")
        line()
        if options.pods < 100 { line("NOTE: fewer than 100 pods: a smoke test, not numbers to record"); line() }
        line("Sequential latency, \(options.pods) pods each (weft and reference interleaved pod by pod), milliseconds")
        let head = padRight("", 4) + padRight("plugin", 30) + ["n", "p50", "p90", "p99", "mean", "min", "max"].map { padLeft($0, 8) }.joined()
            + padLeft("cpu/op", 10)
        line(head)
        for r in latency {
            let st = r.stats
            line(padRight(r.op, 4) + padRight(r.label, 30) + padLeft(String(st.count), 8)
                 + [st.p50, st.p90, st.p99, st.mean, st.min, st.max].map { padLeft(fixed($0, 2), 8) }.joined()
                 + padLeft(fixed(r.cpu.mean, 2), 10))
        }
        line("(cpu/op: mean user+system CPU ms of the plugin and the programs it ran, e.g. host-local and iptables)")
        line()
        if let first = throughput.first {
            line("Throughput, \(first.pods) pods, \(first.parallel) parallel invocations")
            line(padRight("plugin", 34) + ["ADD pods/s", "DEL pods/s", "ADD wall s", "DEL wall s", "ADD p50 ms", "DEL p50 ms"].map { padLeft($0, 11) }.joined())
            for t in throughput {
                line(padRight(t.label, 34) + [fixed(t.addPerSecond, 1), fixed(t.delPerSecond, 1), fixed(t.addWallSeconds, 3), fixed(t.delWallSeconds, 3),
                                              fixed(t.addLatency.p50, 2), fixed(t.delLatency.p50, 2)].map { padLeft($0, 11) }.joined())
            }
            line()
        }
        line("Ratios weft / reference")
        func verdict(_ r: Double) -> String { r <= Results.latencyTarget ? "target <= \(fixed(Results.latencyTarget, 2)): met" : "target <= \(fixed(Results.latencyTarget, 2)): MISSED" }
        if let r = addRatio { line("  ADD p50         \(padLeft(fixed(r, 3), 7))   (\(verdict(r)))") }
        if let r = delRatio { line("  DEL p50         \(padLeft(fixed(r, 3), 7))   (\(verdict(r)))") }
        if let c = cpuRatio {
            line("  ADD cpu/op      \(padLeft(fixed(c.add, 3), 7))   DEL cpu/op \(fixed(c.del, 3))  (CPU time, not a target; insensitive to load)")
        }
        if let t = throughputRatio {
            line("  ADD throughput  \(padLeft(fixed(t.add, 2), 7))x  (weft pods/s / reference pods/s; higher is better)")
            line("  DEL throughput  \(padLeft(fixed(t.del, 2), 7))x")
        }
        return s
    }

    func json() -> JSONValue {
        func spec(_ p: PluginSpec) -> JSONValue {
            .object([("label", .string(p.label)), ("binary", .string(p.binary)), ("config", p.config)])
        }
        var ratios: [(String, JSONValue)] = []
        if let r = addRatio { ratios.append(("add_p50", .number(r))); ratios.append(("add_p50_target_met", .bool(r <= Results.latencyTarget))) }
        if let r = delRatio { ratios.append(("del_p50", .number(r))); ratios.append(("del_p50_target_met", .bool(r <= Results.latencyTarget))) }
        if let t = throughputRatio { ratios.append(("add_throughput", .number(t.add))); ratios.append(("del_throughput", .number(t.del))) }
        if let c = cpuRatio { ratios.append(("add_cpu_per_op", .number(c.add))); ratios.append(("del_cpu_per_op", .number(c.del))) }
        return .object([
            ("date", .string(date)),
            ("command", .string(command)),
            ("machine", .string(machine)),
            ("pods", .number(Double(options.pods))),
            ("parallel", .number(Double(options.parallel))),
            ("warmup", .number(Double(options.warmup))),
            ("reference_version", .string(referenceVersion)),
            ("plugins", .object([("weft", spec(weft)), ("weft_routed", spec(routed)), ("reference", spec(reference))])),
            ("spawn_baseline", spawnBaseline.json),
            ("load_average_start", .string(loadAtStart)),
            ("load_average_end", .string(loadAtEnd)),
            ("latency", .array(latency.map {
                .object([("plugin", .string($0.label)), ("op", .string($0.op)), ("stats", $0.stats.json), ("cpu_per_op", $0.cpu.json)])
            })),
            ("throughput", .array(throughput.map { t in
                .object([("plugin", .string(t.label)), ("pods", .number(Double(t.pods))), ("parallel", .number(Double(t.parallel))),
                         ("add_pods_per_s", .number(t.addPerSecond)), ("del_pods_per_s", .number(t.delPerSecond)),
                         ("add_wall_s", .number(t.addWallSeconds)), ("del_wall_s", .number(t.delWallSeconds)),
                         ("add_latency", t.addLatency.json), ("del_latency", t.delLatency.json)])
            })),
            ("ratios_weft_over_reference", .object(ratios)),
        ])
    }
}

enum Machine {
    static func describe() -> String {
        var cpu = "unknown CPU"
        if let info = try? Files.readString("/proc/cpuinfo"),
           let l = info.split(separator: "\n").first(where: { $0.hasPrefix("model name") }), let colon = l.firstIndex(of: ":") {
            cpu = String(l[l.index(after: colon)...]).trimmed
        }
        let cores = sysconf(Int32(_SC_NPROCESSORS_ONLN))
        var u = utsname()
        uname(&u)
        let release = withUnsafePointer(to: &u.release) { $0.withMemoryRebound(to: CChar.self, capacity: 65) { String(cString: $0) } }
        var mem = ""
        if let m = try? Files.readString("/proc/meminfo"), let l = m.split(separator: "\n").first(where: { $0.hasPrefix("MemTotal:") }),
           let kb = Double(l.split(separator: " ").dropFirst().first ?? "") {
            mem = ", \(fixed(kb / 1_048_576, 1)) GiB RAM"
        }
        return "\(cpu), \(cores) CPUs\(mem), Linux \(release)"
    }

    static func loadAverage() -> String {
        guard let t = try? Files.readString("/proc/loadavg") else { return "?" }
        return t.split(separator: " ").prefix(3).joined(separator: " ")
    }

    static func debianVersion(_ package: String) -> String? {
        guard let q = firstExecutable(["/usr/bin/dpkg-query"]), let out = try? runTool(q, ["-W", "-f=${Version}", package]),
              out.status == 0 else { return nil }
        let v = String(decoding: out.stdout, as: UTF8.self).trimmed
        return v.isEmpty ? nil : "\(package) \(v)"
    }
}
