import ArgumentParser
import WeftCore
import WeftLab
import WeftOS
#if canImport(Glibc)
import Glibc
#endif

/// How fast every node's routes follow a node joining and leaving.
struct Convergence: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Route convergence on every node when a node joins, crashes (SIGKILL) or is deleted.")

    @Option(help: "Nodes in the lab (the joining node comes on top).") var nodes = 20
    @Option(help: "sqlite or etcd.") var datastore = "sqlite"
    @Option(help: "Join/leave rounds (at least 5).") var rounds = 5
    @Option(help: "Node lease TTL, seconds.") var leaseTTL = 2
    @Option(help: "Seconds before a phase counts as failed.") var timeout = 60.0
    @Option(help: "Lab name (starts with \"bench\").") var lab = "benchcv"
    @Option(help: "The weft binary (default: next to this one; weft-cni must sit beside it).") var weft: String?

    func validate() throws {
        guard datastore == "sqlite" || datastore == "etcd" else { throw ValidationError("--datastore \(datastore): expected sqlite or etcd") }
        guard (2...58).contains(nodes) else { throw ValidationError("--nodes \(nodes): 2 to 58 (the lab's limit is 60, one more joins)") }
        guard rounds >= 1 else { throw ValidationError("--rounds must be at least 1") }
    }

    struct Phase {
        var perNode: [Double?]
        var range: String?
        var joinerReady: Double?
        var commandDone: Double?
    }

    func run() throws {
        installSignalHandlers()
        let bin = try Binaries(weft: weft)
        printHeader("convergence --nodes \(nodes) --datastore \(datastore)")
        let labHandle = try LabHandle(name: lab, nodes: nodes, mode: "native", datastore: datastore, leaseTTL: leaseTTL, bin: bin)
        defer { labHandle.down() }
        var agentPID: pid_t?
        defer { if let p = agentPID { killAndReap(p) } }

        let meshSeconds = try labHandle.waitForFullMesh(timeout: 180)
        print("  every node had a route to every peer \(fmt(meshSeconds, 2)) s after `lab up` returned")
        // A lab agent that died (e.g. its lease ran out) freezes its node's routes: check after
        // a lease TTL, and before every round; restart the dead ones (reported) so the run goes on.
        var restarted: [pid_t] = []
        defer { for p in restarted { killAndReap(p) } }
        var deaths: [String] = []
        func healAgents(_ when: String) throws {
            let dead = labHandle.deadAgents()
            guard !dead.isEmpty else { return }
            print("LAB PROBLEM \(when): the agent of \(dead.map { "node\($0.node)" }.joined(separator: ", ")) is not running; restarting it (same command as LabCluster.startNode). Its log ends:")
            for d in dead {
                print(d.log.split(separator: "\n").map { "  node\(d.node)| " + $0 }.joined(separator: "\n"))
                if deaths.last?.hasPrefix("node\(d.node) (during") != true { deaths.append("node\(d.node) (\(when))") } // else already counted
                restarted.append(try labHandle.startAgent(node: "node\(d.node)", ns: labHandle.nodeNS(d.node), mode: "native", leaseTTL: leaseTTL).pid)
            }
            _ = try labHandle.waitForFullMesh(timeout: 120)
            try sleepSeconds(Double(leaseTTL) + 1)
        }
        try sleepSeconds(Double(leaseTTL) + 1)
        try healAgents("after lab up")
        let monitors = try (0..<nodes).map { try RouteMonitor(namespace: labHandle.nodeNS($0)) }

        let j = nodes
        let name = "node\(j)", ns = labHandle.nodeNS(j), ip = LabHandle.hostIP(j)
        let manifest = "\(labHandle.state.dir)/bench-node.yaml"
        try Files.writeAtomically(manifest, Array("apiVersion: v1\nkind: Node\nmetadata: {name: \(name)}\n".utf8))
        let deleteCmd = [bin.weft, "delete", "-f", manifest, "--lab", lab]

        var joinNew: [Double] = [], joinerReady: [Double] = [], rejoin: [Double] = [], killRaw: [Double] = [], deleted: [Double] = []
        var deleteCommand: [Double] = [], attachSeconds: [Double] = []
        var afterExpiry: [Double] = [], expiryOffsets: [Double] = []
        var roundRows: [[String]] = []
        var printedCommands = false

        var r = 0, aborted = 0
        while r < rounds {
            try checkInterrupted()
            if r > 0 || aborted > 0 { try healAgents("before round \(r + 1)") }
            do {
                // A. a new node joins: its namespace on the host network, then its agent.
                let ta = now()
                try labHandle.attach(ns: ns, port: "n\(j)", address: ip)
                attachSeconds.append(now() - ta)
                let joiner = try RouteMonitor(namespace: ns)
                drainAll(monitors + [joiner])
                var t0 = now()
                var (pid, cmd) = try labHandle.startAgent(node: name, ns: ns, mode: "native", leaseTTL: leaseTTL)
                agentPID = pid
                if !printedCommands {
                    print("\njoin:   t0, then $ \(cmd.joined(separator: " ")) > \(labHandle.state.dir)/\(name)/agent.log")
                    print("leave:  t0, then kill -KILL <that agent>   (withdrawal expected after the lease TTL, \(leaseTTL) s)")
                    print("delete: t0, then $ \(deleteCmd.joined(separator: " "))   (\(manifest): kind Node, name \(name))")
                    print("observed: RTM_NEWROUTE/RTM_DELROUTE of proto 87 on an rtnetlink socket per node namespace (subscribed before t0), stamped on receipt\n")
                    printedCommands = true
                }
                let join = try wait(join: true, gateway: ip, range: nil, monitors: monitors, joiner: joiner, t0: t0, agent: pid, command: nil, labHandle: labHandle, what: "join of \(name) (round \(r + 1))")
                guard let range = join.range else { throw BenchError("join: no range seen") }
                joinNew += join.perNode.compactMap { $0 }
                if let x = join.joinerReady { joinerReady.append(x) }
                try verify(labHandle, present: true, range: range)
                try sleepSeconds(1)

                // B. the node's agent dies (SIGKILL): peers withdraw once its lease expires.
                drainAll(monitors)
                t0 = now()
                let wallAtKill = wallClock()
                killAndReap(pid)
                agentPID = nil
                // SQLite: the lease's real expiry instant (final now that its holder is dead), so
                // the withdrawal can be timed from the expiry rather than from TTL after the kill.
                let expiresIn = datastore == "sqlite" ? leaseExpiry(labHandle, node: name).map { $0 - wallAtKill } : nil
                let crash = try wait(join: false, gateway: ip, range: range, monitors: monitors, joiner: nil, t0: t0, agent: nil, command: nil, labHandle: labHandle, what: "withdrawal after SIGKILL (round \(r + 1))")
                killRaw += crash.perNode.compactMap { $0 }
                if let e = expiresIn { afterExpiry += crash.perNode.compactMap { $0.map { $0 - e } }; expiryOffsets.append(e) }
                try verify(labHandle, present: false, range: range)
                try sleepSeconds(1)

                // C. the same node comes back (agent restarted on the same namespace and name).
                drainAll(monitors)
                t0 = now()
                (pid, cmd) = try labHandle.startAgent(node: name, ns: ns, mode: "native", leaseTTL: leaseTTL)
                agentPID = pid
                let back = try wait(join: true, gateway: ip, range: nil, monitors: monitors, joiner: nil, t0: t0, agent: pid, command: nil, labHandle: labHandle, what: "rejoin of \(name) (round \(r + 1))")
                rejoin += back.perNode.compactMap { $0 }
                try verify(labHandle, present: true, range: back.range ?? range)
                try sleepSeconds(1)

                // D. the Node is deleted (`weft delete -f`): its pod range goes, peers withdraw at once.
                drainAll(monitors)
                t0 = now()
                let del = try spawn(deleteCmd, log: "\(labHandle.state.dir)/bench-delete.log")
                let gone = try wait(join: false, gateway: ip, range: back.range ?? range, monitors: monitors, joiner: nil, t0: t0, agent: nil, command: del, labHandle: labHandle, what: "withdrawal after deleting Node \(name) (round \(r + 1))")
                deleted += gone.perNode.compactMap { $0 }
                if let c = gone.commandDone { deleteCommand.append(c) }
                try verify(labHandle, present: false, range: back.range ?? range)

                killAndReap(pid)
                agentPID = nil
                labHandle.removeNamespace(ns, port: "n\(j)")
                print("round \(r + 1): join max \(ms(join.perNode.compactMap { $0 }.max()!)) ms (range \(range); joiner had all \(nodes) peer routes at \(join.joinerReady.map(ms) ?? "?") ms), "
                      + "SIGKILL -> withdrawn max \(ms(crash.perNode.compactMap { $0 }.max()!)) ms, rejoin max \(ms(back.perNode.compactMap { $0 }.max()!)) ms, "
                      + "delete -> withdrawn max \(ms(gone.perNode.compactMap { $0 }.max()!)) ms (weft delete exited at \(gone.commandDone.map(ms) ?? "?") ms)")
                roundRows.append(["\(r + 1)", range, ms(join.perNode.compactMap { $0 }.max()!), join.joinerReady.map(ms) ?? "–",
                                  ms(crash.perNode.compactMap { $0 }.max()!), ms(back.perNode.compactMap { $0 }.max()!),
                                  ms(gone.perNode.compactMap { $0 }.max()!), gone.commandDone.map(ms) ?? "–"])
                // The deleted node's lease must run out before the next round joins afresh.
                try sleepSeconds(Double(leaseTTL) + 1)
                r += 1
            } catch let e as AgentDied {
                // A peer's agent died mid-round: its routes are frozen, the round cannot finish.
                aborted += 1
                print("LAB PROBLEM in round \(r + 1): \(e.description)\n  round abandoned (samples of its finished phases are kept); the joining node is removed and the round redone")
                deaths.append("node\(e.node) (during round \(r + 1))")
                if let p = agentPID { killAndReap(p); agentPID = nil }
                _ = try? runCmd(deleteCmd)
                labHandle.removeNamespace(ns, port: "n\(j)")
                try sleepSeconds(Double(leaseTTL) + 1)
                guard aborted <= 3 else { throw BenchError("more than 3 rounds abandoned because lab agents died; see the logs above") }
            }
        }

        try healAgents("at the end")
        print(deaths.isEmpty ? "lab agents: none died during the run" : "LAB PROBLEM: lab agents that died and were restarted: \(deaths.joined(separator: ", "))")
        let overflow = monitors.filter(\.overflowed).map(\.namespace)
        if !overflow.isEmpty { print("WARNING: rtnetlink receive buffer overrun in \(overflow.joined(separator: ", ")); its times may be late") }

        func row(_ label: String, _ xs: [Double], offset: Double = 0) -> [String] {
            let ys = xs.map { $0 - offset }
            return [label, "\(ys.count)", ms(percentile(ys, 50)), ms(percentile(ys, 90)), ms(percentile(ys, 99)), ms(ys.max() ?? .nan)]
        }
        let ttl = Double(leaseTTL)
        print("\n## convergence: \(nodes) nodes + 1 joining, native mode, \(datastore), lease TTL \(leaseTTL) s, \(rounds) rounds (ms; samples = nodes × rounds)\n")
        print(table(["event (time until a node's route changed)", "samples", "p50", "p90", "p99", "max"], [
            row("join: new node (agent start -> route on each peer)", joinNew),
            row("join: the new node's own routes to all peers", joinerReady),
            row("rejoin: same node restarted after SIGKILL", rejoin),
            row("leave by SIGKILL (raw, includes the TTL)", killRaw),
            row("leave by SIGKILL, minus the TTL (\(leaseTTL) s)", killRaw, offset: ttl),
        ] + (afterExpiry.isEmpty ? [] : [
            row("leave by SIGKILL, from the lease's expiry (read from SQLite)", afterExpiry),
        ]) + [
            row("leave by `weft delete -f` Node (from command start)", deleted),
            row("`weft delete -f` command itself (start -> exit)", deleteCommand),
        ]))
        if !expiryOffsets.isEmpty {
            print("\nthe lease expired \(expiryOffsets.map(ms).joined(separator: ", ")) ms after the kill (TTL \(leaseTTL) s minus the time since the last keepalive, which comes every \(ms(max(ttl / 3, 0.5))) ms)")
        }
        print("\nper round (max over the \(nodes) nodes, ms):\n")
        print(table(["round", "range", "join", "joiner ready", "SIGKILL", "rejoin", "delete", "delete cmd"], roundRows))
        let p99join = percentile(joinNew, 99), p99del = percentile(deleted, 99)
        print("")
        print(table(["goal", "p99", "met"], [
            ["join p99 < 1 s (\(datastore))", "\(ms(p99join)) ms", p99join < 1 ? "yes" : "NO"],
            ["leave by deletion p99 < 1 s (\(datastore))", "\(ms(p99del)) ms", p99del < 1 ? "yes" : "NO"],
        ]))
        print("\nlab up: \(fmt(labHandle.upSeconds, 1)) s for \(nodes) nodes; full mesh \(fmt(meshSeconds, 1)) s later; attaching the joining namespace (7 `ip` commands, not timed as join) p50 \(ms(median(attachSeconds))) ms")
        print("machine at end: \(machineLine())")
    }

    struct AgentDied: Error, CustomStringConvertible {
        var node: Int
        var description: String
    }

    private func wallClock() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }

    /// When the node's lease expires (wall-clock Unix seconds), from the lab's SQLite file.
    private func leaseExpiry(_ labHandle: LabHandle, node: String) -> Double? {
        let db = String(labHandle.state.datastore.dropFirst("sqlite://".count))
        let sql = "SELECT l.expires FROM kv k JOIN leases l ON l.id = k.lease WHERE k.name = '\(Keys.nodeLease(node))' AND k.deleted = 0 ORDER BY k.id DESC LIMIT 1;"
        guard let r = try? runCmd(["sqlite3", "-readonly", "-cmd", ".timeout 2000", db, sql]), r.status == 0 else { return nil }
        return r.stdout.split(separator: "\n").first.flatMap { Double($0.trimmingPrefix(" ")) }
    }

    private func drainAll(_ monitors: [RouteMonitor]) {
        for m in monitors { _ = m.drain(at: now()) }
    }

    /// Polls every node's monitor until each saw the change: for a join, a route via the
    /// joining node's host address; for a leave, the removal of its range.
    private func wait(join: Bool, gateway: String, range: String?, monitors: [RouteMonitor], joiner: RouteMonitor?, t0: Double,
                      agent: pid_t?, command: pid_t?, labHandle: LabHandle, what: String) throws -> Phase {
        var phase = Phase(perNode: Array(repeating: nil, count: monitors.count), range: range)
        var joinerRoutes = Set<String>()
        var commandRunning = command != nil
        var lastHealthCheck = t0 + Double(leaseTTL) + 1 // first check once a lease TTL has passed: no extra load while measuring
        let all = monitors + (joiner.map { [$0] } ?? [])
        while true {
            for (i, e) in pollMonitors(all, timeout: 0.02) {
                if i < monitors.count {
                    if join, e.added, e.gateway == gateway, phase.perNode[i] == nil {
                        phase.perNode[i] = e.time - t0
                        phase.range = phase.range ?? e.destination
                    } else if !join, !e.added, e.destination == range, phase.perNode[i] == nil {
                        phase.perNode[i] = e.time - t0
                    }
                } else if e.added, e.gateway != nil {
                    joinerRoutes.insert(e.destination)
                    if joinerRoutes.count == monitors.count && phase.joinerReady == nil { phase.joinerReady = e.time - t0 }
                }
            }
            if commandRunning, let c = command, let status = exited(c) {
                commandRunning = false
                phase.commandDone = now() - t0
                guard status == 0 else { throw BenchError("\(what): `weft delete` exited \(status):\n\(tail(labHandle.state.dir + "/bench-delete.log"))") }
            }
            if now() - lastHealthCheck > 1 {
                lastHealthCheck = now()
                for i in phase.perNode.indices where phase.perNode[i] == nil && (try? labHandle.agentPID(ns: labHandle.nodeNS(i))) == nil {
                    throw AgentDied(node: i, description: "\(what): the agent of node\(i) is not running, so its routes cannot follow. Its log ends:\n"
                                    + tail("\(labHandle.state.dir)/node\(i)/agent.log", lines: 6).split(separator: "\n").map { "  node\(i)| " + $0 }.joined(separator: "\n"))
                }
            }
            if let agent, let status = exited(agent) {
                throw BenchError("\(what): the joining agent exited (\(status)):\n\(tail("\(labHandle.state.dir)/node\(monitors.count)/agent.log"))")
            }
            let done = phase.perNode.allSatisfy { $0 != nil } && (joiner == nil || phase.joinerReady != nil) && !commandRunning
            if done { return phase }
            try checkInterrupted()
            if now() - t0 > timeout {
                let missing = phase.perNode.indices.filter { phase.perNode[$0] == nil }
                var msg = "\(what): not converged after \(Int(timeout)) s; nodes without the change: \(missing.map { "node\($0)" }.joined(separator: ", "))"
                if joiner != nil && phase.joinerReady == nil { msg += "; the joining node has \(joinerRoutes.count)/\(monitors.count) peer routes" }
                if let m = missing.first { msg += "\n--- node\(m) agent.log:\n\(tail("\(labHandle.state.dir)/node\(m)/agent.log"))" }
                msg += "\n--- node\(monitors.count) (joining) agent.log:\n\(tail("\(labHandle.state.dir)/node\(monitors.count)/agent.log"))"
                throw BenchError(msg)
            }
        }
    }

    /// Cross-checks what the monitors saw against `ip route` on every node.
    private func verify(_ labHandle: LabHandle, present: Bool, range: String) throws {
        for i in 0..<nodes {
            let has = try labHandle.weftRoutes(ns: labHandle.nodeNS(i)).contains { $0.hasPrefix(range + " ") }
            guard has == present else {
                throw BenchError("node\(i): `ip route show proto 87` \(present ? "lacks" : "still has") \(range) although its monitor saw the change")
            }
        }
    }
}
