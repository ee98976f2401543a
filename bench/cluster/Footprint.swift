import ArgumentParser
import WeftCore
import WeftLab
import WeftOS
#if canImport(Glibc)
import Glibc
#endif

/// Memory and CPU of one node agent in a big lab, idle and while nodes join.
struct Footprint: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "RSS and CPU time of one agent in an N-node lab: idle, and while 5 nodes join.")

    @Option(help: "Nodes in the lab.") var nodes = 50
    @Option(help: "Nodes that join during the burst.") var joiners = 5
    @Option(help: "Idle window, seconds.") var idle = 30.0
    @Option(help: "Burst window, seconds from the joiners' start (CPU is also read when node0 has converged).") var burst = 10.0
    @Option(help: "sqlite or etcd.") var datastore = "sqlite"
    @Option(help: "Lab name (starts with \"bench\").") var lab = "benchfp"
    @Option(help: "The weft binary (default: next to this one; weft-cni must sit beside it).") var weft: String?

    func validate() throws {
        guard nodes + joiners <= 60, nodes >= 2 else { throw ValidationError("--nodes + --joiners must be at most 60 (the lab's address plan)") }
    }

    struct Sample {
        var ticks: Int = 0 // utime + stime
        var rssKB: Int = 0
        var hwmKB: Int = 0
        var anonKB: Int = 0 // RssAnon: private memory, what the process itself costs (RSS counts the shared binary too)
        var threads: Int = 0
    }

    static let tick = Double(sysconf(Int32(_SC_CLK_TCK)))

    static func sample(_ pid: pid_t) -> Sample? {
        guard let stat = try? Files.readString("/proc/\(pid)/stat"), let close = stat.lastIndex(of: ")"),
              let status = try? Files.readString("/proc/\(pid)/status") else { return nil }
        let f = stat[stat.index(after: close)...].split(separator: " ")
        guard f.count > 13, let u = Int(f[11]), let s = Int(f[12]) else { return nil }
        var out = Sample(ticks: u + s)
        for line in status.split(separator: "\n") {
            let parts = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard parts.count >= 2, let v = Int(parts[1]) else { continue }
            switch parts[0] {
            case "VmRSS:": out.rssKB = v
            case "VmHWM:": out.hwmKB = v
            case "RssAnon:": out.anonKB = v
            case "Threads:": out.threads = v
            default: break
            }
        }
        return out
    }

    func run() throws {
        installSignalHandlers()
        let bin = try Binaries(weft: weft)
        printHeader("footprint --nodes \(nodes)")
        let labHandle = try LabHandle(name: lab, nodes: nodes, mode: "native", datastore: datastore, leaseTTL: nil, bin: bin)
        defer { labHandle.down() }
        var joinerPIDs: [pid_t] = []
        defer { for p in joinerPIDs { killAndReap(p) } }

        let mesh = try labHandle.waitForFullMesh(timeout: 300)
        print("  every node had a route to every peer \(fmt(mesh, 2)) s after `lab up` returned")
        try sleepSeconds(5) // let start-up work (pods, first resyncs) pass

        let agents = try (0..<nodes).map { try labHandle.agentPID(ns: labHandle.nodeNS($0)) }
        let runtimes = try (0..<nodes).map { i -> pid_t in
            for p in try sh(["ip", "netns", "pids", labHandle.nodeNS(i)]).split(separator: "\n") {
                guard let pid = pid_t(p), let c = try? Files.read("/proc/\(pid)/cmdline") else { continue }
                let a = c.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
                if a.count > 1, a[0].hasSuffix("/weft"), a[1] == "runtime" { return pid }
            }
            throw BenchError("no runtime in node\(i)")
        }
        let me = agents[0]
        print("measured agent: node0, pid \(me): \(String(decoding: ((try? Files.read("/proc/\(me)/cmdline")) ?? []).map { $0 == 0 ? 32 : $0 }, as: UTF8.self))")

        func snapshot(_ pids: [pid_t]) throws -> [Sample] {
            try pids.map { p in
                guard let s = Self.sample(p) else { throw BenchError("process \(p) is gone (agent crashed?): \(tail(labHandle.state.dir + "/node0/agent.log"))") }
                return s
            }
        }
        func cpu(_ a: [Sample], _ b: [Sample]) -> Double { Double(zip(a, b).map { $1.ticks - $0.ticks }.reduce(0, +)) / Self.tick }

        // Idle.
        print("\nidle window: \(Int(idle)) s")
        let i0a = try snapshot(agents), i0r = try snapshot(runtimes), ti0 = now()
        try sleepSeconds(idle)
        let i1a = try snapshot(agents), i1r = try snapshot(runtimes), idleSeconds = now() - ti0

        // Burst: 5 nodes join at once.
        let first = nodes
        var joinIPs = Set<String>()
        for k in first..<(first + joiners) {
            try labHandle.attach(ns: labHandle.nodeNS(k), port: "n\(k)", address: LabHandle.hostIP(k))
            joinIPs.insert(LabHandle.hostIP(k))
        }
        let monitor = try RouteMonitor(namespace: labHandle.nodeNS(0))
        _ = monitor.drain(at: now())
        print("burst: \(joiners) nodes join (agents started together), window \(Int(burst)) s")
        let b0a = try snapshot(agents), b0r = try snapshot(runtimes)
        let tb0 = now()
        for k in first..<(first + joiners) {
            joinerPIDs.append(try labHandle.startAgent(node: "node\(k)", ns: labHandle.nodeNS(k), mode: "native", leaseTTL: 10).pid)
        }
        var seen = Set<String>()
        var converged: Double?
        var bc: Sample?
        while now() - tb0 < max(burst, 1) || converged == nil {
            try checkInterrupted()
            for (_, e) in pollMonitors([monitor], timeout: 0.02) where e.added && e.gateway.map(joinIPs.contains) == true { seen.insert(e.gateway!) }
            if converged == nil && seen.count == joiners { converged = now() - tb0; bc = Self.sample(me) }
            if now() - tb0 > 120 { throw BenchError("node0 did not get routes to all \(joiners) joining nodes within 120 s (has \(seen.count))") }
        }
        let b1a = try snapshot(agents), b1r = try snapshot(runtimes), burstSeconds = now() - tb0

        func pct(_ cpuSeconds: Double, _ window: Double) -> String { fmt(100 * cpuSeconds / window, 1) + " %" }
        let meIdle = Double(i1a[0].ticks - i0a[0].ticks) / Self.tick
        let meBurst = Double(b1a[0].ticks - b0a[0].ticks) / Self.tick
        let meToConv = bc.map { Double($0.ticks - b0a[0].ticks) / Self.tick } ?? .nan
        print("\n## footprint: \(nodes)-node lab, native mode, \(datastore); one agent (node0)\n")
        print(table(["measure", "node0 agent", "all \(nodes) agents (sum)", "all \(nodes) runtimes (sum)"], [
            ["RSS before idle window (VmRSS)", "\(i0a[0].rssKB / 1024) MiB", "\(i0a.map(\.rssKB).reduce(0, +) / 1024) MiB", "\(i0r.map(\.rssKB).reduce(0, +) / 1024) MiB"],
            ["RSS after burst (VmRSS)", "\(b1a[0].rssKB / 1024) MiB", "\(b1a.map(\.rssKB).reduce(0, +) / 1024) MiB", "\(b1r.map(\.rssKB).reduce(0, +) / 1024) MiB"],
            ["private memory after burst (RssAnon)", "\(fmt(Double(b1a[0].anonKB) / 1024, 1)) MiB", "\(b1a.map(\.anonKB).reduce(0, +) / 1024) MiB", "\(b1r.map(\.anonKB).reduce(0, +) / 1024) MiB"],
            ["peak RSS (VmHWM)", "\(b1a[0].hwmKB / 1024) MiB", "\(b1a.map(\.hwmKB).reduce(0, +) / 1024) MiB", "\(b1r.map(\.hwmKB).reduce(0, +) / 1024) MiB"],
            ["threads", "\(b1a[0].threads)", "\(b1a.map(\.threads).reduce(0, +))", "\(b1r.map(\.threads).reduce(0, +))"],
            ["CPU (utime+stime), idle \(fmt(idleSeconds, 1)) s", "\(fmt(meIdle, 2)) s = \(pct(meIdle, idleSeconds)) of a core", "\(fmt(cpu(i0a, i1a), 2)) s = \(pct(cpu(i0a, i1a), idleSeconds))", "\(fmt(cpu(i0r, i1r), 2)) s = \(pct(cpu(i0r, i1r), idleSeconds))"],
            ["CPU, burst: start -> node0 has the \(joiners) routes (\(converged.map(ms) ?? "?") ms)", "\(fmt(meToConv, 2)) s", "", ""],
            ["CPU, burst window \(fmt(burstSeconds, 1)) s from the joiners' start", "\(fmt(meBurst, 2)) s = \(pct(meBurst, burstSeconds))", "\(fmt(cpu(b0a, b1a), 2)) s = \(pct(cpu(b0a, b1a), burstSeconds))", "\(fmt(cpu(b0r, b1r), 2)) s = \(pct(cpu(b0r, b1r), burstSeconds))"],
        ]))
        print("\nCPU ticks are \(Int(Self.tick)) Hz (/proc/PID/stat utime+stime); RSS from /proc/PID/status.")
        print("lab up: \(fmt(labHandle.upSeconds, 1)) s for \(nodes) nodes; full mesh \(fmt(mesh, 1)) s later")
        print("machine at end: \(machineLine())")
    }
}
