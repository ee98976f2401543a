// weft-bench-services: the services table at scale. For 100, 1,000 and 10,000 services of 10
// endpoints each: how long the agent takes to render and apply the whole table (a full sync),
// how long one endpoint's change takes to reach the kernel (model diff + the update
// transactions, as the agent does it), and the process's memory. Runs nft in a
// throwaway network namespace; never touches the root namespace.
import Foundation
import WeftCore
import WeftOS

/// Unbuffered, so a run stopped part-way still shows the sizes it finished.
func say(_ s: String) { FileHandle.standardOutput.write(Data((s + "\n").utf8)) }
func ms(_ d: Duration) -> Double { Double(d.components.seconds) * 1000 + Double(d.components.attoseconds) / 1e15 }
func percentile(_ xs: [Double], _ p: Double) -> Double {
    let s = xs.sorted()
    return s[min(s.count - 1, Int((Double(s.count) * p).rounded(.up)) - 1)]
}
func rssMiB() -> Double {
    let status = (try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)) ?? ""
    let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
    return (Double(line.split(separator: " ").dropFirst().first ?? "0") ?? 0) / 1024
}

/// The process's peak resident set (VmHWM).
func peakRSSMiB() -> Double {
    let status = (try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)) ?? ""
    let line = status.split(separator: "\n").first { $0.hasPrefix("VmHWM:") } ?? ""
    return (Double(line.split(separator: " ").dropFirst().first ?? "0") ?? 0) / 1024
}

func entries(_ n: Int, shift: Int = 0) throws -> [ServiceRules.Entry] {
    try (0..<n).map { i in
        let spec = #"{"apiVersion":"v1","kind":"Service","metadata":{"name":"s\#(i)","namespace":"bench"},"spec":{"selector":{"app":"s\#(i)"},"ports":[{"port":80,"targetPort":8080}]}}"#
        var svc = try ClusterService(KubeObject(json: JSONValue.parse(spec)))
        svc.clusterIPs = [IPAddress(family: .v4, value: UInt128(0x0A60_0000 + 16 + i))]   // 10.96.0.16 + i
        let eps = (0..<10).map { e in
            ServiceEndpoint(pod: "s\(i)-\(e)", address: IPAddress(family: .v4, value: UInt128(0x0AF4_0000 + i * 16 + e + (i == 0 ? shift : 0))),
                            ready: true, nodeName: "node0", ports: ["": 8080])
        }
        // The datastore revisions the agent's reader attaches (see DesiredState.serviceEntries):
        // only the moved service's change.
        return ServiceRules.Entry(service: svc, endpoints: eps, source: "\(i == 0 ? shift : 0)")
    }
}

extension Subprocess {
    static func runOK(_ argv: [String]) -> Bool {
        (try? run(argv[0], arguments: Array(argv.dropFirst()), environment: ["PATH": "/usr/sbin:/usr/bin:/sbin:/bin"], stdin: []).status) == 0
    }
}

let counts = CommandLine.arguments.dropFirst().compactMap { Int($0) }
let sizes = counts.isEmpty ? [100, 1000, 10000] : counts
if CommandLine.arguments.dropFirst().first == "first-packet" {
    try firstPacket(sizes: sizes)
    exit(0)
}
let ns = "wbs\(getpid())"
guard Subprocess.runOK(["/usr/sbin/ip", "netns", "add", ns]) else { fatalError("ip netns add \(ns) failed (root needed)") }
defer { _ = Subprocess.runOK(["/usr/sbin/ip", "netns", "del", ns]) }
let netns = try NetworkNamespace(path: "/run/netns/\(ns)")
if CommandLine.arguments.dropFirst().first == "full-sync" {
    // The agent's full sync as it does it: the model built, the whole tables written as one
    // netlink transaction (no libnftables in the process, so the peak RSS is the agent's own).
    say("weft-bench-services full-sync — \(Date()) — \(ProcessInfo.processInfo.activeProcessorCount) CPUs")
    say("| services × endpoints | model | full sync (ops + netlink) | rules in the kernel | peak RSS |")
    say("| --- | --- | --- | --- | --- |")
    let clock = ContinuousClock(), netlink = NFTablesNetlink(), nft = LibNFTables()
    for n in sizes {
        let base = try entries(n)
        var model = ServiceRules.Model()
        let build = clock.measure { model = ServiceRules.model(base) }
        var ops: [NFT.Op] = []
        let opsTime = try clock.measure { ops = ServiceRules.fullSync(model, replacing: try netns.run { () throws(NFTablesError) in try nft.tableNames() }) }
        let write = try clock.measure {
            try netns.run { () throws(NFTablesError) in try netlink.apply(ops) }
        } + opsTime
        say(String(format: "  of which the ops %.0f ms", ms(opsTime)))
        let counts = try netns.run { () throws(NFTablesError) in try nft.ruleCounts(tables: ServiceRules.tables) }
        let rules = counts.values.reduce(0) { $0 + $1.values.reduce(0, +) }
        let fixed = ServiceRules.ruleset(ServiceRules.Model()).tables.values.reduce(0) { $0 + $1.ruleCount }
        guard rules == model.ruleCount + fixed else {
            fatalError("the kernel holds \(rules) rules, the model \(model.ruleCount) and the fixed tables")
        }
        say(String(format: "| %d × 10 | %.0f ms | %.0f ms | %d | %.0f MiB |", n, ms(build), ms(write), rules, peakRSSMiB()))
    }
    _ = Subprocess.runOK(["/usr/sbin/ip", "netns", "del", ns])
    exit(0)
}
if CommandLine.arguments.dropFirst().first == "agent-pass" {
    say("weft-bench-services agent-pass — \(Date()) — \(ProcessInfo.processInfo.activeProcessorCount) CPUs, SQLite datastore")
    try await agentPass(sizes: sizes, netns: netns)
    _ = Subprocess.runOK(["/usr/sbin/ip", "netns", "del", ns])
    exit(0)
}
let clock = ContinuousClock()

say("weft-bench-services — \(Date()) — \(ProcessInfo.processInfo.activeProcessorCount) CPUs")
say("| services × endpoints | script | render | full sync (apply) | one-endpoint change p50 / p99 (diff + netlink) | of which the diff, p50 | the same through libnftables, p50 | RSS after |")
say("| --- | --- | --- | --- | --- | --- | --- | --- |")
for n in sizes {
    let base = try entries(n)
    var script = ""
    let render = clock.measure { script = ServiceRules.script(base) }   // model + full script
    let nft = LibNFTables()
    let apply = try clock.measure { try netns.run { () throws(NFTablesError) in try nft.run(script) } }
    // One endpoint of one service moves: the model updated from all the entries (only the
    // changed service rebuilt; the agent now hands it the change alone, see agent-pass), the
    // change found, and written as netlink batches; and, for comparison, the same kind of change written as nft scripts through
    // libnftables, as weft did before (3 changes: each costs seconds at 10,000 services).
    let netlink = NFTablesNetlink()
    var changes: [Double] = [], scripted: [Double] = [], computing: [Double] = []
    var have = ServiceRules.model(base)
    for k in 1...204 {
        let changed = try entries(n, shift: 1000 + k)   // service 0's first endpoint moves
        let viaLibnftables = k > 201
        var computed = Duration.zero
        let d = try clock.measure {
            let t0 = ContinuousClock.now
            let change = have.update(with: changed)   // in place, as the agent does
            computed = ContinuousClock.now - t0
            if let c = change {
                try netns.run { () throws(NFTablesError) in
                    if viaLibnftables {
                        let (u, x) = c.scripts
                        try nft.run(u)
                        if !x.isEmpty { try nft.run(x) }
                    } else {
                        try netlink.apply(c.ops)
                    }
                }
            }
        }
        if viaLibnftables { scripted.append(ms(d)) } else if k > 1 { changes.append(ms(d)); computing.append(ms(computed)) }
        if ProcessInfo.processInfo.environment["WEFT_BENCH_SAMPLES"] != nil, !viaLibnftables { say(String(format: "  change %d: %.1f ms (diff %.1f)", k, ms(d), ms(computed))) }
    }
    // A check that the kernel holds what was sent: the map has n entries.
    let listed = try ServiceRules.tables.map { t in try netns.run { () throws(NFTablesError) in try nft.list(table: t, family: "inet") } ?? "" }.joined()
    let elements = listed.components(separatedBy: ". tcp . 80 : goto").count - 1
    guard elements == n else { fatalError("expected \(n) service-ips elements, the kernel lists \(elements)") }
    say(String(format: "| %d × 10 | %.1f MB | %.0f ms | %.0f ms | %.1f / %.1f ms | %.1f ms | %.0f ms | %.0f MiB |", n, Double(script.utf8.count) / 1e6, ms(render), ms(apply),
                 percentile(changes, 0.5), percentile(changes, 0.99), percentile(computing, 0.5), percentile(scripted, 0.5), rssMiB()))
}
