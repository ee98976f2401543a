import ArgumentParser
import Foundation
import Synchronization
import WeftCore
import WeftDatastore
import WeftLab
import WeftOS
#if canImport(Glibc)
import Glibc
#endif

/// NetworkPolicy on the lab: how fast a policy change is in force on every node, and what
/// many policies over many pods cost (sync time, agent memory, table size, throughput).
struct PolicyBench: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "policy",
        abstract: "NetworkPolicy: propagation to every node (nft monitor per node), and policies × pods at scale (sync, memory, table size, throughput).")

    @Option(help: "Nodes in the propagation lab.") var nodes = 20
    @Option(help: "Propagation rounds (apply, then delete, one policy each).") var rounds = 10
    @Option(help: "Policies in the scale lab (20 of them in namespace perf).") var policies = 1000
    @Option(help: "Pods written to the scale lab's datastore (not run; addresses in 10.250.0.0/16).") var pods = 1000
    @Option(help: "iperf3 runs per throughput phase (at least 3).") var repeats = 3
    @Option(help: "Seconds per iperf3 run (-t).") var duration = 5
    @Option(help: "Lab name (starts with \"bench\"); the scale lab is this name with a 2.") var lab = "benchpol"
    @Option(help: "Seconds a phase may take before it counts as failed (the scale sync: 10× after `weft apply`).") var timeout = 30.0
    @Option(help: "Skip a part: propagation or scale.") var skip: [String] = []
    @Option(help: "The weft binary (default: next to this one; weft-cni must sit beside it).") var weft: String?

    static let perfPolicies = 20

    func validate() throws {
        guard (2...58).contains(nodes) else { throw ValidationError("--nodes \(nodes): 2 to 58") }
        guard rounds >= 1 else { throw ValidationError("--rounds must be at least 1") }
        guard policies >= Self.perfPolicies else { throw ValidationError("--policies \(policies): at least \(Self.perfPolicies) (that many go to namespace perf)") }
        guard (1...60000).contains(pods) else { throw ValidationError("--pods \(pods): 1 to 60000 (addresses come from 10.250.0.0/16)") }
        guard repeats >= 3, duration >= 1 else { throw ValidationError("use --repeats ≥ 3 and --duration ≥ 1") }
        for s in skip where s != "propagation" && s != "scale" { throw ValidationError("--skip \(s): expected propagation or scale") }
    }

    var scaleLab: String { String(lab.prefix(11)) + (lab.hasSuffix("2") && lab.count == 12 ? "3" : "2") }

    func run() throws {
        installSignalHandlers()
        guard (try? sh(["which", "iperf3"])) != nil else { throw BenchError("iperf3 is missing: apt-get install -y iperf3") }
        let bin = try Binaries(weft: weft)
        printHeader("policy --nodes \(nodes) --rounds \(rounds) --policies \(policies) --pods \(pods)")
        print("weft:    \(bin.weft) (\(bin.weft.contains("/release/") ? "release" : bin.weft.contains("/debug/") ? "debug" : "?") build)")

        var prop: Propagation?, scale: Scale?
        var failures: [String] = []
        if !skip.contains("propagation") {
            do { prop = try propagation(bin) } catch {
                failures.append("propagation: \(error)")
                print("\nPROPAGATION FAILED: \(error)")
            }
        }
        try checkInterrupted()
        if !skip.contains("scale") {
            do { scale = try scaleRun(bin) } catch {
                failures.append("scale: \(error)")
                print("\nSCALE FAILED: \(error)")
            }
        }

        print("\n## summary\n")
        print("```")
        print("weft-bench-cluster policy (\(dateLine()); \(machineLine()); weft \(bin.weft.contains("/release/") ? "release" : "debug") build)")
        if let p = prop { for l in p.summary { print(l) } }
        if let s = scale { for l in s.summary { print(l) } }
        for f in failures { print("FAILED \(f.split(separator: "\n").first ?? "")") }
        print("```")
        if !failures.isEmpty { throw ExitCode(1) }
    }

    // MARK: propagation

    struct Propagation { var summary: [String] }

    func propagation(_ bin: Binaries) throws -> Propagation {
        print("\n# 1. propagation: \(nodes) nodes, native, sqlite, \(rounds) rounds")
        let labHandle = try LabHandle(name: lab, nodes: nodes, mode: "native", datastore: "sqlite", leaseTTL: nil, bin: bin)
        defer { labHandle.down() }
        var monitors: [NFTMonitor] = []
        defer { for m in monitors { m.stop() } } // before lab down (defers run in reverse)
        _ = try labHandle.waitForFullMesh(timeout: 180)
        let dir = labHandle.state.dir

        // One pod per node (so every node has policy work of its own) and an outsider on node0.
        let podsFile = "\(dir)/bench-pods.yaml"
        var docs = ["apiVersion: v1\nkind: Namespace\nmetadata: {name: bench}\n"]
        for i in 0..<nodes {
            docs.append("apiVersion: v1\nkind: Pod\nmetadata: {name: p\(i), namespace: bench, labels: {app: bench}}\nspec: {nodeName: node\(i), containers: [{name: srv, image: agnhost}]}\n")
        }
        docs.append("apiVersion: v1\nkind: Pod\nmetadata: {name: outsider, namespace: bench, labels: {app: other}}\nspec: {nodeName: node0, containers: [{name: srv, image: agnhost}]}\n")
        try Files.writeAtomically(podsFile, Array(docs.joined(separator: "---\n").utf8))
        let applyPods = [bin.weft, "apply", "-f", podsFile, "--lab", lab, "--wait", "300"]
        print("$ \(applyPods.joined(separator: " "))   (namespace bench, pods p0..p\(nodes - 1) app=bench on node0..node\(nodes - 1), outsider app=other on node0)")
        let ra = try runCmd(applyPods)
        guard ra.status == 0 else { throw BenchError("apply of the pods failed (exit \(ra.status)): \(ra.stderr)") }
        print("  \(ra.stdout.split(separator: "\n").count) objects applied, pods running after \(fmt(ra.seconds, 1)) s")
        let ips = try podIPs(labHandle, namespace: "bench")
        let ns = { (pod: String) in NodeRuntime.netnsName(labID: labHandle.state.id, namespace: "bench", pod: pod) }
        guard let target = ips["p1"], ips["outsider"] != nil, ips["p0"] != nil else { throw BenchError("pods p0, p1 or outsider have no IP") }

        // Monitors subscribe before any t0 and live for the whole run.
        print("observed: `ip netns exec <node ns> nft monitor`, one per node for the whole run, each line stamped on receipt")
        monitors = try (0..<nodes).map { try NFTMonitor(namespace: labHandle.nodeNS($0)) }
        for m in monitors { try m.waitSubscribed(timeout: timeout) }
        for m in monitors { _ = m.drain() }

        var add: [Double] = [], del: [Double] = [], addCLI: [Double] = [], delCLI: [Double] = []
        // The same samples from the command's exit: the agents' part (negative when a node was
        // done before the CLI process had exited).
        var addAfter: [Double] = [], delAfter: [Double] = []
        var missingAdd = 0, missingDel = 0
        var rows: [[String]] = []
        var resyncWarnings: [String] = []
        var probeRows: [[String]] = []
        var printedCommands = false
        for r in 1...rounds {
            try checkInterrupted()
            let name = "bench-r\(r)", marker = "np/bench/bench-r\(r)/"
            let file = "\(dir)/\(name).yaml"
            try Files.writeAtomically(file, Array("""
                apiVersion: networking.k8s.io/v1
                kind: NetworkPolicy
                metadata: {name: \(name), namespace: bench}
                spec:
                  podSelector: {matchLabels: {app: bench}}
                  ingress:
                  - from: [{podSelector: {matchLabels: {app: bench}}}]
                    ports: [{port: 8080}]

                """.utf8))
            let applyCmd = [bin.weft, "apply", "-f", file, "--lab", lab]
            let deleteCmd = [bin.weft, "delete", "-f", file, "--lab", lab]
            if !printedCommands {
                print("add:    t0, then $ \(applyCmd.joined(separator: " "))   (podSelector app=bench, ingress from app=bench, port 8080)")
                print("        a node's sample: its first `add …` line naming np/bench/bench-r<r>/")
                print("delete: t1, then $ \(deleteCmd.joined(separator: " "))")
                print("        a node's sample: its first `delete chain …` line naming that policy\n")
                printedCommands = true
            }

            let t0 = now()
            let ra = try runCmd(applyCmd)
            guard ra.status == 0 else { throw BenchError("round \(r): apply exited \(ra.status): \(ra.stderr)") }
            let a = try collect(monitors, t0: t0, what: "add of \(name)") { $0.hasPrefix("add ") && $0.contains(marker) }
            addCLI.append(ra.seconds)
            add += a.times.compactMap { $0 }
            addAfter += a.times.compactMap { $0.map { $0 - ra.seconds } }
            missingAdd += a.times.filter { $0 == nil }.count
            resyncWarnings += a.fullSyncs.map { "round \(r) add: node\($0) rewrote its whole table meanwhile" }
            try verifyChain(labHandle, chain: "\(marker)ingress", present: true, nodesWithSample: a.times)

            // Packets, once, while the last round's policy is in force.
            if r == rounds {
                let allowed = probe(bin, from: ns("p0"), to: "\(target):8080")
                let denied = probe(bin, from: ns("outsider"), to: "\(target):8080")
                probeRows.append(["p0 (app=bench, node0) -> p1 \(target):8080, policy in force", allowed.ok ? "answered" : "no answer", "answered", allowed.ok ? "yes" : "NO"])
                probeRows.append(["outsider (app=other, node0) -> p1 \(target):8080, policy in force", denied.ok ? "answered" : "no answer", "no answer", denied.ok ? "NO" : "yes"])
            }

            try sleepSeconds(0.3)
            for m in monitors { _ = m.drain() }
            let t1 = now()
            let rd = try runCmd(deleteCmd)
            guard rd.status == 0 else { throw BenchError("round \(r): delete exited \(rd.status): \(rd.stderr)") }
            let d = try collect(monitors, t0: t1, what: "delete of \(name)") { $0.hasPrefix("delete chain") && $0.contains(marker) }
            delCLI.append(rd.seconds)
            del += d.times.compactMap { $0 }
            delAfter += d.times.compactMap { $0.map { $0 - rd.seconds } }
            missingDel += d.times.filter { $0 == nil }.count
            resyncWarnings += d.fullSyncs.map { "round \(r) delete: node\($0) rewrote its whole table meanwhile (its sample may be early)" }
            try verifyChain(labHandle, chain: "\(marker)ingress", present: false, nodesWithSample: d.times)

            if r == rounds {
                let after = probe(bin, from: ns("outsider"), to: "\(target):8080")
                probeRows.append(["outsider -> p1 \(target):8080, policy deleted", after.ok ? "answered" : "no answer", "answered", after.ok ? "yes" : "NO"])
            }
            let am = a.times.compactMap { $0 }.max() ?? .nan, dm = d.times.compactMap { $0 }.max() ?? .nan
            print("round \(r): add in force on \(a.times.compactMap { $0 }.count)/\(nodes) nodes, last at \(ms(am)) ms (weft apply \(ms(ra.seconds)) ms); "
                  + "delete on \(d.times.compactMap { $0 }.count)/\(nodes), last at \(ms(dm)) ms (weft delete \(ms(rd.seconds)) ms)")
            rows.append(["\(r)", ms(percentile(a.times.compactMap { $0 }, 50)), ms(am), ms(ra.seconds),
                         ms(percentile(d.times.compactMap { $0 }, 50)), ms(dm), ms(rd.seconds)])
            try sleepSeconds(0.5)
            for m in monitors { _ = m.drain() }
        }
        for m in monitors where m.lostEvents { resyncWarnings.append("nft monitor in \(m.namespace) reported lost netlink events") }

        func row(_ label: String, _ xs: [Double], missing: Int) -> [String] {
            [label, "\(xs.count)\(missing > 0 ? " (+\(missing) never seen)" : "")", ms(percentile(xs, 50)), ms(percentile(xs, 90)), ms(percentile(xs, 99)), ms(xs.max() ?? .nan)]
        }
        print("\n## policy propagation: \(nodes) nodes, native, sqlite, \(rounds) rounds (ms from the command's start; samples = nodes × rounds)\n")
        print(table(["event", "samples", "p50", "p90", "p99", "max"], [
            row("add: policy chain on a node (from `weft apply` start)", add, missing: missingAdd),
            row("delete: policy chain gone from a node (from `weft delete` start)", del, missing: missingDel),
            row("add: the same from `weft apply` exit (the agents' part)", addAfter, missing: 0),
            row("delete: the same from `weft delete` exit (the agents' part)", delAfter, missing: 0),
            row("`weft apply -f` itself (start -> exit)", addCLI, missing: 0),
            row("`weft delete -f` itself (start -> exit)", delCLI, missing: 0),
        ]))
        print("\nper round (ms):\n")
        print(table(["round", "add p50", "add max", "apply cmd", "delete p50", "delete max", "delete cmd"], rows))
        print("\nin force, with packets (`ip netns exec <pod ns> weft probe IP:8080 --timeout 1000`):\n")
        print(table(["probe", "result", "expected", "met"], probeRows))
        for w in resyncWarnings { print("WARNING: \(w)") }
        let p99a = missingAdd > 0 ? .infinity : percentile(add, 99), p99d = missingDel > 0 ? .infinity : percentile(del, 99)
        let probesOK = probeRows.allSatisfy { $0[3] == "yes" }
        print("")
        print(table(["goal", "measured", "target", "met"], [
            ["add in force on every node, p99 (\(nodes) nodes)", missingAdd > 0 ? "\(missingAdd) samples missing" : "\(ms(p99a)) ms", "< 1000 ms", p99a < 1 ? "yes" : "NO"],
            ["delete in force on every node, p99 (\(nodes) nodes)", missingDel > 0 ? "\(missingDel) samples missing" : "\(ms(p99d)) ms", "< 1000 ms", p99d < 1 ? "yes" : "NO"],
            ["probes: allowed answered, outsider denied, then answered", probesOK ? "as expected" : "NOT as expected", "as expected", probesOK ? "yes" : "NO"],
        ]))
        let dead = labHandle.deadAgents()
        if !dead.isEmpty { print("LAB PROBLEM: agents not running at the end: \(dead.map { "node\($0.node)" }.joined(separator: ", "))") }
        reportAgentLogs(labHandle)
        print("machine at end: \(machineLine())")
        return Propagation(summary: [
            "propagation, \(nodes) nodes (native, sqlite), \(rounds) rounds, ms from command start: "
                + "add p50 \(ms(percentile(add, 50))) / p99 \(ms(percentile(add, 99))) / max \(ms(add.max() ?? .nan)); "
                + "delete p50 \(ms(percentile(del, 50))) / p99 \(ms(percentile(del, 99))) / max \(ms(del.max() ?? .nan)); "
                + "CLI apply p50 \(ms(median(addCLI))), delete p50 \(ms(median(delCLI))); from CLI exit p99 add \(ms(percentile(addAfter, 99))), delete \(ms(percentile(delAfter, 99)))"
                + (missingAdd + missingDel > 0 ? "; \(missingAdd + missingDel) samples never seen" : ""),
            "  target p99 < 1 s: add \(p99a < 1 ? "met" : "NOT met"), delete \(p99d < 1 ? "met" : "NOT met"); probes (allowed/denied/after delete) \(probesOK ? "as expected" : "NOT as expected")",
        ])
    }

    struct Collected { var times: [Double?]; var fullSyncs: [Int] }

    /// Reads every monitor until each has shown a matching line (time since t0) or the timeout.
    private func collect(_ monitors: [NFTMonitor], t0: Double, what: String, _ match: (String) -> Bool) throws -> Collected {
        var out = Collected(times: Array(repeating: nil, count: monitors.count), fullSyncs: [])
        while true {
            for (i, m) in monitors.enumerated() {
                for e in m.drain() {
                    if out.times[i] == nil && match(e.line) { out.times[i] = e.time - t0 }
                    if e.line.hasPrefix("delete table inet \(PolicyRules.table)") && !out.fullSyncs.contains(i) { out.fullSyncs.append(i) }
                }
            }
            if out.times.allSatisfy({ $0 != nil }) { return out }
            try checkInterrupted()
            if now() - t0 > timeout {
                let missing = out.times.indices.filter { out.times[$0] == nil }
                print("WARNING: \(what): not seen within \(Int(timeout)) s on \(missing.map { "node\($0)" }.joined(separator: ", "))")
                return out
            }
            usleep(2000)
        }
    }

    /// Cross-checks a monitor's verdict with `nft list chain` on the nodes it was seen on.
    private func verifyChain(_ labHandle: LabHandle, chain: String, present: Bool, nodesWithSample: [Double?]) throws {
        for (i, t) in nodesWithSample.enumerated() where t != nil {
            let r = try runCmd(["ip", "netns", "exec", labHandle.nodeNS(i), "nft", "list", "chain", "inet", PolicyRules.table, chain])
            guard (r.status == 0) == present else {
                throw BenchError("node\(i): `nft list chain inet \(PolicyRules.table) \(chain)` \(present ? "fails" : "still succeeds") although its monitor saw the change")
            }
        }
    }

    private func probe(_ bin: Binaries, from ns: String, to target: String) -> (ok: Bool, output: String) {
        let cmd = ["ip", "netns", "exec", ns, bin.weft, "probe", target, "--timeout", "1000"]
        let r = try? runCmd(cmd)
        let ok = r?.status == 0
        print("$ \(cmd.joined(separator: " ")) -> \(ok ? "answered: \(r!.stdout.trimmingCharacters(in: .whitespacesAndNewlines))" : "failed: \((r?.stderr ?? "").trimmingCharacters(in: .whitespacesAndNewlines))")")
        return (ok, r?.stdout ?? "")
    }

    private func podIPs(_ labHandle: LabHandle, namespace: String) throws -> [String: String] {
        let list = try JSONValue.parse(try labHandle.weft(["get", "pods", "-n", namespace, "-o", "json"]))
        var out: [String: String] = [:]
        for item in list["items"]?.arrayValue ?? [] {
            if let n = item["metadata"]?["name"]?.stringValue, let ip = item["status"]?["podIP"]?.stringValue { out[n] = ip }
        }
        return out
    }

    /// Warnings and errors in the agents' logs, counted, with the distinct messages.
    private func reportAgentLogs(_ labHandle: LabHandle) {
        var counts: [String: Int] = [:], examples: [String: String] = [:]
        for i in labHandle.state.nodes.indices {
            let text = (try? Files.readString("\(labHandle.state.dir)/node\(i)/agent.log")) ?? ""
            for line in text.split(separator: "\n") {
                let words = line.split(separator: " ", maxSplits: 2)
                guard words.count == 3, ["warning", "error", "critical"].contains(String(words[1])) else { continue }
                // The message after `[Module] `, metadata aside, as the key.
                let msg = line.range(of: "] ").map { String(line[$0.upperBound...]) } ?? String(words[2])
                let key = "\(words[1]): \(msg)"
                counts[key, default: 0] += 1
                if examples[key] == nil { examples[key] = "node\(i)| \(line.prefix(400))" }
            }
        }
        if counts.isEmpty { print("agent logs: no warnings or errors on any node"); return }
        print("agent logs: warnings/errors (count over all nodes, first occurrence):")
        for (k, c) in counts.sorted(by: { $0.value > $1.value }).prefix(12) { print("  \(c)× \(examples[k]!)") }
    }

    // MARK: scale

    struct Scale { var summary: [String] }

    func scaleRun(_ bin: Binaries) throws -> Scale {
        let bulkPolicies = policies - Self.perfPolicies
        print("\n# 2. scale: \(policies) policies × \(pods) pods, 2 nodes, native, sqlite")
        let labHandle = try LabHandle(name: scaleLab, nodes: 2, mode: "native", datastore: "sqlite", leaseTTL: nil, bin: bin)
        defer { labHandle.down() }
        var monitor: NFTMonitor?
        defer { monitor?.stop() }
        _ = try labHandle.waitForFullMesh(timeout: 60)
        let dir = labHandle.state.dir, node1 = labHandle.nodeNS(1)
        let agentLog = "\(dir)/node1/agent.log"

        let realFile = "\(dir)/bench-perf.yaml"
        try Files.writeAtomically(realFile, Array("""
            apiVersion: v1
            kind: Namespace
            metadata: {name: perf}
            ---
            apiVersion: v1
            kind: Pod
            metadata: {name: client, namespace: perf, labels: {app: client}}
            spec: {nodeName: node0, containers: [{name: c, image: agnhost}]}
            ---
            apiVersion: v1
            kind: Pod
            metadata: {name: server, namespace: perf, labels: {app: server}}
            spec: {nodeName: node1, containers: [{name: s, image: agnhost}]}
            ---
            apiVersion: v1
            kind: Pod
            metadata: {name: outsider, namespace: perf, labels: {app: other}}
            spec: {nodeName: node0, containers: [{name: o, image: agnhost}]}

            """.utf8))
        print("$ weft apply -f \(realFile) --lab \(scaleLab)   (client app=client on node0, server app=server on node1, outsider app=other on node0)")
        print(try labHandle.weft(["apply", "-f", realFile]).split(separator: "\n").map { "  " + $0 }.joined(separator: "\n"))
        let ips = try podIPs(labHandle, namespace: "perf")
        guard let serverIP = ips["server"], ips["client"] != nil, ips["outsider"] != nil else { throw BenchError("perf pods have no IP: \(ips)") }
        let pns = { (pod: String) in NodeRuntime.netnsName(labID: labHandle.state.id, namespace: "perf", pod: pod) }
        let clientNS = pns("client"), serverNS = pns("server"), outsiderNS = pns("outsider")
        print("  server \(serverIP) in \(serverNS); client in \(clientNS); outsider in \(outsiderNS)")
        var probeRows: [[String]] = []
        let before = probe(bin, from: outsiderNS, to: "\(serverIP):8080")
        probeRows.append(["outsider -> server:8080, no policies", before.ok ? "answered" : "no answer", "answered", before.ok ? "yes" : "NO"])

        let tp = try Throughput.parse(["--duration", "\(duration)"])
        print("iperf3: server `iperf3 -s -1 -D -p 5201` in \(serverNS), client `iperf3 -c \(serverIP) -p 5201 -t \(duration) -J` in \(clientNS)")
        // Also Gbit/s per sender core-second: moves far less with other load on the machine.
        var perCore: [String: [Double]] = [:]
        // What the agents spent meanwhile (2 cores: their CPU is iperf's loss), and how many
        // policy passes they ran (their own weft_reconcile_duration_seconds{loop="policy"}).
        let agents = try (0..<2).map { try labHandle.agentPID(ns: labHandle.nodeNS($0)) }
        var phaseRows: [[String]] = []
        func iperfRuns(_ label: String) throws -> [Double] {
            var out: [Double] = []
            let cpu0 = agents.map(cpuSeconds), pass0 = (0..<2).map { policyPasses(labHandle, node: $0) }
            for k in 0..<repeats {
                try checkInterrupted()
                let m = try tp.iperf(client: clientNS, server: serverNS, ip: serverIP)
                out.append(m.bps)
                if m.senderCPU > 0 { perCore[label == "with" ? "with" : "without", default: []].append(m.bps / 1e9 / (m.senderCPU / 100)) }
                print("  \(label) run \(k + 1): \(fmt(m.bps / 1e9, 2)) Gbit/s (retransmits \(m.retransmits), sender CPU \(fmt(m.senderCPU, 0)) %)")
            }
            let cpu = zip(agents.map(cpuSeconds), cpu0).map { $0 - $1 }
            let passes = (0..<2).map { i in policyPasses(labHandle, node: i).flatMap { a in pass0[i].map { (a.count - $0.count, a.sum - $0.sum) } } }
            let row = [label, "\(fmt(cpu[0], 2)) / \(fmt(cpu[1], 2))"] + passes.map { $0.map { "\(Int($0.0)) (\(fmt($0.1, 2)) s)" } ?? "?" }
            print("  agents meanwhile: CPU node0/node1 \(row[1]) s; policy passes node0 \(row[2]), node1 \(row[3])")
            phaseRows.append(row)
            return out
        }
        print("\n(a) throughput without policies, \(repeats) runs")
        let without1 = try iperfRuns("without")

        let agentPID = try labHandle.agentPID(ns: node1)
        let rssBefore = memory(agentPID)
        let tableBefore = try tableStats(node1)
        print("node1 agent pid \(agentPID): VmRSS \(mb(rssBefore.rss)) MB (peak VmHWM \(mb(rssBefore.hwm)) MB); table: \(tableBefore.text)")

        // The bulk: namespaces and pods straight into the datastore (on no real node, so
        // nothing runs them), then the policies through `weft apply`.
        let nsCount = 50
        var nsObjects: [(String, [UInt8])] = []
        for k in 0..<nsCount {
            nsObjects.append((Keys.namespace("ns\(k)"), Array(#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"ns\#(k)","labels":{"team":"t\#(k % 5)","kubernetes.io/metadata.name":"ns\#(k)"}}}"#.utf8)))
        }
        // Pods in blocks per namespace (pod i in ns<i·50/pods>), so a namespace holds every app
        // and tier: with ns<i%50> the app label (i%10) would follow the namespace.
        var podObjects: [(String, [UInt8])] = []
        var bulkIP: [String] = []
        for i in 0..<pods {
            let k = i * nsCount / pods, n = i + 1
            let ip = "10.250.\(n / 256).\(n % 256)"
            bulkIP.append(ip)
            podObjects.append((Keys.pod("ns\(k)", "b\(i)"), Array(#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"b\#(i)","namespace":"ns\#(k)","labels":{"app":"app\#(i % 10)","tier":"t\#(i % 3)"}},"spec":{"nodeName":"ghost\#(k)","containers":[{"name":"c","image":"agnhost","ports":[{"name":"web","containerPort":80}]}]},"status":{"phase":"Running","podIP":"\#(ip)","podIPs":[{"ip":"\#(ip)"}],"conditions":[{"type":"Ready","status":"True"}]}}"#.utf8)))
        }
        var docs: [String] = []
        for j in 0..<Self.perfPolicies {
            docs.append("""
                apiVersion: networking.k8s.io/v1
                kind: NetworkPolicy
                metadata: {name: allow-client-\(j), namespace: perf}
                spec:
                  podSelector: {matchLabels: {app: server}}
                  ingress:
                  - from: [{podSelector: {matchLabels: {app: client}}}]
                    ports: [{port: 5201}, {port: 8080}]

                """)
        }
        var withEgress = 0
        for i in 0..<bulkPolicies {
            var d = """
                apiVersion: networking.k8s.io/v1
                kind: NetworkPolicy
                metadata: {name: p\(i), namespace: ns\(i % nsCount)}
                spec:
                  podSelector: {matchLabels: {app: app\(i % 10)}}
                  ingress:
                  - from:
                    - podSelector: {matchLabels: {tier: t\(i % 3)}}
                    - namespaceSelector: {matchLabels: {team: t\(i % 5)}}
                      podSelector: {matchLabels: {app: app\((i + 1) % 10)}}
                    ports: [{port: 80}, {port: web}]

                """
            if i % 4 == 0 {
                withEgress += 1
                d += """
                      egress:
                      - to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.250.0.0/16]}}]
                        ports: [{port: 443}]
                      policyTypes: [Ingress, Egress]

                    """
            }
            docs.append(d)
        }
        let policyFile = "\(dir)/bench-policies.yaml"
        try Files.writeAtomically(policyFile, Array(docs.joined(separator: "---\n").utf8))
        print("\n(b) sync: \(nsCount) namespaces ns<k> (team=t<k%5>) and \(pods) pods b<i> (app=app<i%10>, tier=t<i%3>, port web 80, nodeName ghost<k>, 10.250.0.1…\(bulkIP.last!)) written to \(labHandle.state.datastore) with the WeftDatastore API;")
        print("    then $ weft apply -f \(policyFile) --lab \(scaleLab)   (\(Self.perfPolicies) policies in perf: app=server from app=client ports 5201, 8080; \(bulkPolicies) in ns<i%50>: app=app<i%10> from tier=t<i%3> or team=t<i%5>/app=app<(i+1)%10>, ports 80 and web; \(withEgress) of them also egress to 10.0.0.0/8 except 10.250.0.0/16 port 443)")

        let store = try openDatastore(labHandle.state.datastore)
        let logTail = try AgentLog(path: agentLog)
        let passesBefore = policyPasses(labHandle, node: 1), cpuBefore = cpuSeconds(agentPID)
        let wall0 = wallClock()
        let t0 = now()
        let writeObjects = nsObjects + podObjects
        try blocking { for (k, v) in writeObjects { try await store.create(k, value: v) } }
        let tPods = now() - t0
        let applyCmd = [bin.weft, "apply", "-f", policyFile, "--lab", scaleLab]
        let ra = try runCmd(applyCmd)
        guard ra.status == 0 else { throw BenchError("apply of the policies failed (exit \(ra.status)): \(ra.stderr.prefix(2000))") }
        let tApply = now() - t0
        print("  datastore writes (\(writeObjects.count) objects) took \(fmt(tPods, 2)) s; `weft apply` of \(policies) policies took \(fmt(ra.seconds, 2)) s (\(ra.stdout.split(separator: "\n").count) lines of output)")

        let wantPods = pods + 3
        var policyLines: [AgentLog.Line] = []
        var synced: (t: Double, line: AgentLog.Line)?
        while synced == nil {
            try checkInterrupted()
            for l in logTail.newLines() where l.isPolicyLine {
                policyLines.append(l)
                if synced == nil, l.policies == policies, (l.pods ?? 0) >= wantPods { synced = (now() - t0, l) }
            }
            if synced == nil {
                if now() - t0 > 10 * timeout + tApply {
                    throw BenchError("node1's agent did not report policies=\(policies) pods>=\(wantPods) within \(Int(10 * timeout + tApply)) s; its last policy lines:\n"
                                     + policyLines.suffix(5).map(\.text).joined(separator: "\n") + "\n--- agent.log tail:\n" + tail(agentLog))
                }
                if (try? labHandle.agentPID(ns: node1)) == nil { throw BenchError("node1's agent died during sync:\n\(tail(agentLog))") }
                usleep(50_000)
            }
        }
        let syncSeconds = synced!.t
        let full = policyLines.filter(\.full).count
        print("  node1's agent logged \(policyLines.count) `network policies …` lines meanwhile (\(full) full syncs); the first and the last two, time from t0 by the agent's own 1 s timestamps:")
        for l in ([policyLines.first!] + policyLines.dropFirst().suffix(2)) {
            print("    +\(l.wall.map { fmt($0 - wall0, 0) } ?? "?") s  \(l.text.prefix(200))")
        }
        print("  in sync (policies=\(policies), pods=\(synced!.line.pods!)) \(fmt(syncSeconds, 2)) s after t0, \(fmt(syncSeconds - tApply, 2)) s after `weft apply` exited (log polled every 50 ms)")

        let syncCPU = cpuSeconds(agentPID) - cpuBefore
        let syncPasses = policyPasses(labHandle, node: 1).flatMap { a in passesBefore.map { (count: Int(a.count - $0.count), sum: a.sum - $0.sum) } }
        print("  node1's agent meanwhile: \(fmt(syncCPU, 2)) s of CPU; " + (syncPasses.map { "\($0.count) policy passes, \(fmt($0.sum, 2)) s in them (mean \(fmt($0.sum / Double(max($0.count, 1)), 2)) s)" } ?? "policy passes: /metrics unreadable"))
        let rssAfter = memory(agentPID)
        let tList = now()
        let tableAfter = try tableStats(node1)
        let listSeconds = now() - tList
        let table0 = try tableStats(labHandle.nodeNS(0))
        print("node1 agent: VmRSS \(mb(rssAfter.rss)) MB (peak VmHWM \(mb(rssAfter.hwm)) MB); table: \(tableAfter.text) (`nft -j list` \(fmt(tableAfter.listSeconds, 2)) s for \(fmt(Double(tableAfter.jsonBytes) / 1e6, 1)) MB of JSON; WeftCore's JSONValue.parse of it \(fmt(tableAfter.parseSeconds, 2)) s; all counting \(fmt(listSeconds, 2)) s)")
        print("node0 table for comparison: \(table0.text)")

        let allowed = probe(bin, from: clientNS, to: "\(serverIP):8080")
        let denied = probe(bin, from: outsiderNS, to: "\(serverIP):8080")
        probeRows.append(["client (app=client) -> server:8080, policies in force", allowed.ok ? "answered" : "no answer", "answered", allowed.ok ? "yes" : "NO"])
        probeRows.append(["outsider (app=other) -> server:8080, policies in force", denied.ok ? "answered" : "no answer", "no answer", denied.ok ? "NO" : "yes"])

        // One incremental change: a bulk pod changes tier, so it moves between peer sets.
        print("\n(b2) incremental: relabel pod ns0/b0 (\(bulkIP[0])) tier t0 -> t1 -> t0 -> t1 in the datastore; time until node1's `nft monitor` shows an element with its address")
        monitor = try NFTMonitor(namespace: node1)
        let tm = now()
        try monitor!.waitSubscribed(timeout: timeout)
        print("  nft monitor subscribed \(fmt(now() - tm, 2)) s after it started (it reads the whole table first)")
        _ = monitor!.drain()
        var relabel: [(first: Double, last: Double, lines: Int)?] = []
        let key = Keys.pod("ns0", "b0")
        for (k, tier) in ["t1", "t0", "t1"].enumerated() {
            try checkInterrupted()
            let tr = now()
            try blocking {
                guard let kv = try await store.get(key) else { throw BenchError("\(key) is missing") }
                var o = try KubeObject(bytes: kv.value)
                var l = o.labels
                l["tier"] = tier
                o.labels = l
                try await store.update(key, value: o.bytes, expectedRevision: kv.modRevision)
            }
            var first: Double?, last = 0.0, count = 0
            while now() - tr < (first == nil ? timeout : min(timeout, first! + 1)) {
                for e in monitor!.drain() where e.line.contains(" element ") && e.line.split(whereSeparator: { " {},".contains($0) }).contains(Substring(bulkIP[0])) {
                    if first == nil { first = e.time - tr }
                    last = e.time - tr
                    count += 1
                }
                usleep(2000)
            }
            relabel.append(first.map { ($0, last, count) })
            print("  relabel \(k + 1) (tier \(tier)): " + (first.map { "first element change \(ms($0)) ms, last \(ms(last)) ms (\(count) element lines)" } ?? "NO element change seen within \(Int(timeout)) s"))
        }
        if monitor!.lostEvents { print("WARNING: node1's nft monitor reported lost netlink events") }
        monitor?.stop()
        monitor = nil

        print("\n(d) throughput with the policies in force, \(repeats) runs")
        _ = logTail.newLines()
        let with = try iperfRuns("with")
        if logTail.newLines().contains(where: { $0.isPolicyLine && $0.full }) { print("  note: node1's agent rewrote its whole table during these runs (periodic full sync)") }

        // All policies go; then the same path without them again.
        let deleteCmd = [bin.weft, "delete", "-f", policyFile, "--lab", scaleLab]
        print("\n$ \(deleteCmd.joined(separator: " "))")
        let td = now()
        let rd = try runCmd(deleteCmd)
        guard rd.status == 0 else { throw BenchError("delete of the policies failed (exit \(rd.status)): \(rd.stderr.prefix(2000))") }
        var cleared: Double?
        while cleared == nil && now() - td < 10 * timeout + rd.seconds {
            if logTail.newLines().contains(where: { $0.isPolicyLine && $0.policies == 0 }) { cleared = now() - td }
            else { usleep(50_000) }
        }
        print("  `weft delete` took \(fmt(rd.seconds, 2)) s; node1's agent reported policies=0 " + (cleared.map { "\(fmt($0, 2)) s after the command started" } ?? "NOT within the timeout"))
        let rssCleared = memory(agentPID)
        let tableCleared = try tableStats(node1)
        print("node1 agent: VmRSS \(mb(rssCleared.rss)) MB (peak VmHWM \(mb(rssCleared.hwm)) MB); table: \(tableCleared.text)")
        let after = probe(bin, from: outsiderNS, to: "\(serverIP):8080")
        probeRows.append(["outsider -> server:8080, policies deleted", after.ok ? "answered" : "no answer", "answered", after.ok ? "yes" : "NO"])
        print("\n(d) throughput without policies again, \(repeats) runs")
        let without2 = try iperfRuns("without (after delete)")

        let without = without1 + without2
        let ratio = median(with) / median(without)
        let relabelFirst = relabel.compactMap { $0?.first }
        print("\n## policy scale: \(policies) policies × \(pods) pods (+3 running), 2 nodes, native, sqlite; policies written with `weft apply -f` (one file), pods with the datastore API\n")
        print(table(["measure", "value", "target", "met"], [
            ["sync: t0 (before the writes) -> node1 agent logs policies=\(policies) pods≥\(wantPods) (s)", fmt(syncSeconds, 2), "", ""],
            ["  of which: datastore writes of \(writeObjects.count) objects / `weft apply` of \(policies) policies (s)", "\(fmt(tPods, 2)) / \(fmt(ra.seconds, 2))", "", ""],
            ["  agent after `weft apply` exited (s)", fmt(syncSeconds - tApply, 2), "", ""],
            ["  node1 agent: CPU s / policy passes / mean pass (s)", "\(fmt(syncCPU, 2)) / " + (syncPasses.map { "\($0.count) / \(fmt($0.sum / Double(max($0.count, 1)), 2))" } ?? "? / ?"), "", ""],
            ["incremental: relabel one pod -> element change on node1, per change (ms)",
             relabel.map { $0.map { ms($0.first) } ?? "none" }.joined(separator: ", "), "", ""],
            ["`weft delete -f` of all policies -> node1 reports policies=0 (s)", cleared.map { fmt($0, 2) } ?? "not seen", "", ""],
            ["node1 agent VmRSS before / synced / after delete (MB)", "\(mb(rssBefore.rss)) / \(mb(rssAfter.rss)) / \(mb(rssCleared.rss))", "", ""],
            ["node1 agent peak VmHWM at the end (MB)", mb(rssCleared.hwm), "", ""],
            ["node1 table before (chains / rules / sets / elements / lines)", tableBefore.short, "", ""],
            ["node1 table synced (chains / rules / sets / elements / lines)", tableAfter.short, "", ""],
            ["node0 table synced (chains / rules / sets / elements / lines)", table0.short, "", ""],
            ["throughput without policies, before + after (Gbit/s)", (without.map { fmt($0 / 1e9, 2) }).joined(separator: ", ") + " (median \(fmt(median(without) / 1e9, 2)))", "", ""],
            ["throughput with policies (Gbit/s)", (with.map { fmt($0 / 1e9, 2) }).joined(separator: ", ") + " (median \(fmt(median(with) / 1e9, 2)))", "", ""],
            ["throughput with / without (ratio of medians)", fmt(ratio, 3) + "×", "≥ 0.95×", ratio >= 0.95 ? "yes" : "NO"],
            ["  with / the without runs before only; / after only (drift check)",
             "\(fmt(median(with) / median(without1), 3))×; \(fmt(median(with) / median(without2), 3))×", "", ""],
            ["  per sender core-second, with / without (load-robust; not the target's definition)",
             "\(fmt(median(perCore["with"] ?? []), 2)) / \(fmt(median(perCore["without"] ?? []), 2)) = \(fmt(median(perCore["with"] ?? []) / median(perCore["without"] ?? []), 3))×", "", ""],
        ]))
        print("\nthe agents during the throughput runs (\(repeats) × \(duration) s each; policy passes and their time from the agents' /metrics):\n")
        print(table(["runs", "agent CPU s, node0 / node1", "policy passes node0", "policy passes node1"], phaseRows))
        print("\nin force, with packets (`weft probe`, --timeout 1000):\n")
        print(table(["probe", "result", "expected", "met"], probeRows))
        let probesOK = probeRows.allSatisfy { $0[3] == "yes" }
        reportAgentLogs(labHandle)
        print("machine at end: \(machineLine())")
        return Scale(summary: [
            "scale, \(policies) policies × \(pods) pods, 2 nodes (native, sqlite): sync \(fmt(syncSeconds, 1)) s from the first write "
                + "(writes \(fmt(tPods, 1)) s + weft apply \(fmt(ra.seconds, 1)) s + agent \(fmt(syncSeconds - tApply, 1)) s); "
                + "one pod relabel -> node1 \(relabelFirst.isEmpty ? "not seen" : "p50 \(ms(median(relabelFirst))) ms")",
            "  node1 agent RSS \(mb(rssBefore.rss)) -> \(mb(rssAfter.rss)) MB (peak \(mb(rssCleared.hwm)) MB); table \(tableAfter.chains) chains, \(tableAfter.rules) rules, \(tableAfter.sets) sets, \(tableAfter.elements) elements",
            "  throughput client->server \(fmt(median(without) / 1e9, 2)) Gbit/s without, \(fmt(median(with) / 1e9, 2)) with: \(fmt(ratio, 3))× (target ≥ 0.95×: \(ratio >= 0.95 ? "met" : "NOT met")); probes \(probesOK ? "as expected" : "NOT as expected")",
        ])
    }

    // MARK: helpers

    struct Memory { var rss: Double; var hwm: Double }

    /// VmRSS and VmHWM of a process, bytes.
    private func memory(_ pid: pid_t) -> Memory {
        var m = Memory(rss: .nan, hwm: .nan)
        for line in ((try? Files.readString("/proc/\(pid)/status")) ?? "").split(separator: "\n") {
            let w = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard w.count >= 2, let kb = Double(w[1]) else { continue }
            if w[0] == "VmRSS:" { m.rss = kb * 1024 } else if w[0] == "VmHWM:" { m.hwm = kb * 1024 }
        }
        return m
    }

    private func mb(_ bytes: Double) -> String { fmt(bytes / 1_048_576, 1) }

    /// User + system CPU seconds of a process (/proc/PID/stat fields 14 and 15).
    private func cpuSeconds(_ pid: pid_t) -> Double {
        guard let stat = try? Files.readString("/proc/\(pid)/stat"), let close = stat.lastIndex(of: ")") else { return .nan }
        let f = stat[stat.index(after: close)...].split(separator: " ")
        guard f.count > 12, let u = Double(f[11]), let k = Double(f[12]) else { return .nan }
        return (u + k) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    /// The policy loop's pass count and seconds from a node agent's /metrics (curl in the node).
    private func policyPasses(_ labHandle: LabHandle, node: Int) -> (count: Double, sum: Double)? {
        guard let r = try? runCmd(["ip", "netns", "exec", labHandle.nodeNS(node), "curl", "-s", "-m", "5", "http://\(LabHandle.hostIP(node)):9464/metrics"]),
              r.status == 0 else { return nil }
        var count: Double?, sum: Double?
        for line in r.stdout.split(separator: "\n") where line.hasPrefix("weft_reconcile_duration_seconds_") && line.contains("loop=\"policy\"") {
            let v = line.split(separator: " ").last.flatMap { Double($0) }
            if line.hasPrefix("weft_reconcile_duration_seconds_count") { count = v } else if line.hasPrefix("weft_reconcile_duration_seconds_sum") { sum = v }
        }
        guard let count, let sum else { return nil }
        return (count, sum)
    }

    struct TableStats {
        var chains = 0, rules = 0, sets = 0, elements = 0, lines = 0
        var listSeconds = 0.0, jsonBytes = 0, parseSeconds = 0.0
        var text: String { "\(chains) chains, \(rules) rules, \(sets) sets/maps, \(elements) elements, \(lines) lines of `nft list table`" }
        var short: String { "\(chains) / \(rules) / \(sets) / \(elements) / \(lines)" }
    }

    /// The policy table's size in a node namespace, from `nft -j list table` (and its text).
    private func tableStats(_ ns: String) throws -> TableStats {
        var s = TableStats()
        let r = try runCmd(["ip", "netns", "exec", ns, "nft", "-j", "list", "table", "inet", PolicyRules.table])
        guard r.status == 0 else { return s } // no table (yet)
        s.listSeconds = r.seconds
        s.jsonBytes = r.stdout.utf8.count
        let tp = now()
        let json = try JSONValue.parse(r.stdout)
        s.parseSeconds = now() - tp
        for item in json["nftables"]?.arrayValue ?? [] {
            if item["chain"] != nil { s.chains += 1 }
            if item["rule"] != nil { s.rules += 1 }
            if let set = item["set"] ?? item["map"] {
                s.sets += 1
                s.elements += set["elem"]?.arrayValue?.count ?? 0
            }
        }
        s.lines = try inNS(ns, ["nft", "list", "table", "inet", PolicyRules.table]).split(separator: "\n").count
        return s
    }

    private func wallClock() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }
}

/// Runs async datastore calls from this synchronous command (the root command is not async).
private final class ResultBox<T>: @unchecked Sendable { var value: Result<T, any Error>? }

func blocking<T>(_ body: @escaping @Sendable () async throws -> T) throws -> T {
    let box = ResultBox<T>()
    let done = DispatchSemaphore(value: 0)
    Task {
        do { box.value = .success(try await body()) } catch { box.value = .failure(error) }
        done.signal()
    }
    done.wait()
    return try box.value!.get()
}

/// `nft monitor` in one namespace; a thread blocks in read and stamps each line with now()
/// on receipt.
final class NFTMonitor: @unchecked Sendable {
    let namespace: String
    let pid: pid_t
    private let fd: Int32
    private let buffer = Mutex<[(time: Double, line: String)]>([])
    private let lost = Atomic<Bool>(false)
    var lostEvents: Bool { lost.load(ordering: .relaxed) }

    init(namespace: String) throws {
        self.namespace = namespace
        var fds: [Int32] = [0, 0]
        // Close-on-exec (Glibc has no pipe2 here): only nft gets the write end, as its stdout.
        guard pipe(&fds) == 0 else { throw BenchError("pipe: \(String(cString: strerror(errno)))") }
        for f in fds { _ = fcntl(f, F_SETFD, FD_CLOEXEC) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, fds[1], 1)
        posix_spawn_file_actions_adddup2(&actions, fds[1], 2)
        let args = ["/usr/bin/env", "ip", "netns", "exec", namespace, "nft", "monitor"]
        let argv: [UnsafeMutablePointer<CChar>?] = args.map { strdup($0) } + [nil]
        let env: [UnsafeMutablePointer<CChar>?] = [strdup("PATH=/usr/sbin:/usr/bin:/sbin:/bin"), nil]
        defer { argv.forEach { free($0) }; env.forEach { free($0) } }
        var p: pid_t = 0
        let rc = posix_spawn(&p, "/usr/bin/env", &actions, nil, argv, env)
        close(fds[1])
        guard rc == 0 else { close(fds[0]); throw BenchError("start nft monitor in \(namespace): \(String(cString: strerror(rc)))") }
        pid = p
        fd = fds[0]
        let reader = Thread { [self] in self.readLoop() }
        reader.start()
    }

    private func readLoop() {
        var pending: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = read(fd, &buf, buf.count)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            let t = now()
            pending += buf[0..<n]
            var start = 0
            var lines: [(time: Double, line: String)] = []
            while let nl = pending[start...].firstIndex(of: 10) {
                let line = String(decoding: pending[start..<nl], as: UTF8.self)
                if line.contains("lost") && line.hasPrefix("#") { lost.store(true, ordering: .relaxed) }
                lines.append((t, line))
                start = nl + 1
            }
            pending.removeFirst(start)
            if !lines.isEmpty { buffer.withLock { $0 += lines } }
        }
        close(fd)
    }

    /// The lines received since the last call.
    func drain() -> [(time: Double, line: String)] {
        buffer.withLock { b in
            let out = b
            b.removeAll(keepingCapacity: true)
            return out
        }
    }

    func exitStatus() -> Int32? { exited(pid) }

    /// Waits until nft has joined the nf_tables multicast group, which it does only after
    /// reading the ruleset into its cache (seconds for a big table): a socket of this process
    /// in its namespace's /proc/net/netlink with protocol 12 (NETLINK_NETFILTER) and groups.
    func waitSubscribed(timeout: Double) throws {
        let t0 = now()
        while true {
            if let s = exitStatus() { throw BenchError("nft monitor in \(namespace) exited (\(s)): \(drain().map(\.line).joined(separator: "\n"))") }
            let inodes = Set(((try? Files.list("/proc/\(pid)/fd")) ?? []).compactMap { fd -> Substring? in
                var buf = [CChar](repeating: 0, count: 256)
                let n = readlink("/proc/\(pid)/fd/\(fd)", &buf, buf.count - 1)
                guard n > 0 else { return nil }
                let link = String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
                guard link.hasPrefix("socket:[") else { return nil }
                return Substring(link.dropFirst(8).dropLast())
            })
            for line in ((try? Files.readString("/proc/\(pid)/net/netlink")) ?? "").split(separator: "\n").dropFirst() {
                // sk Eth Pid Groups Rmem Wmem Dump Locks Drops Inode
                let w = line.split(separator: " ")
                if w.count >= 10, w[1] == "12", w[3] != "00000000", inodes.contains(w[9]) { return }
            }
            guard now() - t0 < timeout else { throw BenchError("nft monitor in \(namespace) did not subscribe within \(Int(timeout)) s") }
            usleep(10_000)
        }
    }

    /// Ends nft (the reader then sees end of file and closes its end of the pipe).
    func stop() { killAndReap(pid) }
}

/// An agent's log read from where it ended when opened; lines parsed for the policy loop's
/// `network policies …` messages (swift-log: `TIME level label: k=v … [Module] message`).
final class AgentLog {
    struct Line {
        var text: String
        var wall: Double?
        var policies: Int?
        var pods: Int?
        var isPolicyLine: Bool
        var full: Bool
    }

    let path: String
    private var offset: off_t
    private var partial: [UInt8] = []

    init(path: String) throws {
        self.path = path
        var st = stat()
        guard stat(path, &st) == 0 else { throw BenchError("\(path): \(String(cString: strerror(errno)))") }
        offset = st.st_size
    }

    func newLines() -> [Line] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return [] }
        defer { close(fd) }
        var buf = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = pread(fd, &buf, buf.count, offset)
            if n <= 0 { break }
            partial += buf[0..<n]
            offset += off_t(n)
        }
        guard let lastNL = partial.lastIndex(of: 10) else { return [] }
        let text = String(decoding: partial[..<lastNL], as: UTF8.self)
        partial.removeFirst(lastNL + 1)
        return text.split(separator: "\n").map(Self.parse)
    }

    static func parse(_ s: Substring) -> Line {
        var l = Line(text: String(s), wall: nil, policies: nil, pods: nil, isPolicyLine: s.contains("] network policies"), full: s.contains("(full sync)"))
        for w in s.split(separator: " ") {
            if w.hasPrefix("policies=") { l.policies = Int(w.dropFirst(9)) }
            if w.hasPrefix("pods=") { l.pods = Int(w.dropFirst(5)) }
        }
        l.wall = s.split(separator: " ").first.flatMap(parseTime)
        return l
    }

    /// `2025-06-01T12:34:56+0000` (strftime %Y-%m-%dT%H:%M:%S%z) to Unix seconds.
    static func parseTime(_ s: Substring) -> Double? {
        let a = Array(s.utf8)
        guard a.count == 24 else { return nil }
        func num(_ from: Int, _ to: Int) -> Int? { Int(String(decoding: a[from..<to], as: UTF8.self)) }
        guard let y = num(0, 4), let mo = num(5, 7), let d = num(8, 10), let h = num(11, 13), let mi = num(14, 16), let se = num(17, 19),
              let zh = num(20, 22), let zm = num(22, 24) else { return nil }
        var t = tm()
        t.tm_year = Int32(y - 1900); t.tm_mon = Int32(mo - 1); t.tm_mday = Int32(d)
        t.tm_hour = Int32(h); t.tm_min = Int32(mi); t.tm_sec = Int32(se)
        let sign = a[19] == UInt8(ascii: "-") ? -1 : 1
        return Double(timegm(&t)) - Double(sign * (zh * 3600 + zm * 60))
    }
}
