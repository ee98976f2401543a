import ArgumentParser
import WeftCore
import WeftLab
import WeftOS
#if canImport(Glibc)
import Glibc
#endif

/// TCP throughput with iperf3 over the lab's paths against the physical floor.
struct Throughput: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "TCP throughput (iperf3): node-to-node, pod-to-pod across nodes and on one node, and a bare veth pair.")

    @Option(help: "native or vxlan.") var mode = "native"
    @Option(help: "Measurements per path, interleaved (at least 3).") var repeats = 3
    @Option(help: "Seconds per iperf3 run (-t).") var duration = 5
    @Option(help: "Lab name (starts with \"bench\").") var lab = "benchtp"
    @Option(help: "The weft binary (default: next to this one; weft-cni must sit beside it).") var weft: String?

    func validate() throws {
        guard mode == "native" || mode == "vxlan" else { throw ValidationError("--mode \(mode): expected native or vxlan") }
        guard repeats >= 3 else { throw ValidationError("--repeats \(repeats): use at least 3") }
        guard duration >= 1 else { throw ValidationError("--duration must be at least 1 s") }
    }

    struct Path {
        var key: String
        var label: String
        var clientNS: String
        var serverNS: String
        var serverIP: String
        var samples: [Double] = []
        var retransmits: [Int] = []
        /// Gbit/s per core-second of the sender (iperf3's host_total CPU): the kernel's work on
        /// the path is mostly charged to the sending process, so this moves far less with load.
        var perCore: [Double] = []
        var senderCPU: [Double] = []
    }

    func run() throws {
        installSignalHandlers()
        guard Files.exists("/usr/bin/iperf3") || (try? sh(["which", "iperf3"])) != nil else {
            throw BenchError("iperf3 is missing: apt-get install -y iperf3")
        }
        let bin = try Binaries(weft: weft)
        printHeader("throughput --mode \(mode)")
        print("iperf3: server `iperf3 -s -1 -D -p 5201` in the server's namespace, client `iperf3 -c IP -p 5201 -t \(duration) -J` in the client's; value: end.sum_received.bits_per_second")

        // The physical floor: a veth pair between two fresh namespaces, nothing else.
        let vethA = "wbcl\(getpid())-a", vethB = "wbcl\(getpid())-b"
        removeStaleNamespaces()
        defer { for ns in [vethA, vethB] { killAll(in: ns); _ = try? sh(["ip", "netns", "del", ns]) } }
        try sh(["ip", "netns", "add", vethA])
        try sh(["ip", "netns", "add", vethB])
        for ns in [vethA, vethB] { try inNS(ns, ["ip", "link", "set", "lo", "up"]) }
        try inNS(vethA, ["ip", "link", "add", "veth0", "type", "veth", "peer", "name", "veth0", "netns", "/run/netns/\(vethB)"])
        try inNS(vethA, ["ip", "addr", "add", "10.250.0.1/24", "dev", "veth0"])
        try inNS(vethB, ["ip", "addr", "add", "10.250.0.2/24", "dev", "veth0"])
        try inNS(vethA, ["ip", "link", "set", "veth0", "up"])
        try inNS(vethB, ["ip", "link", "set", "veth0", "up"])

        let labHandle = try LabHandle(name: lab, nodes: 2, mode: mode, datastore: "sqlite", leaseTTL: nil, bin: bin)
        defer { labHandle.down() }
        _ = try labHandle.waitForFullMesh(timeout: 60)

        // Two pods on node0, one on node1.
        let manifest = "\(labHandle.state.dir)/bench-pods.yaml"
        let pods = [("tp-a", "node0"), ("tp-b", "node0"), ("tp-c", "node1")]
        try Files.writeAtomically(manifest, Array(pods.map { p in
            "apiVersion: v1\nkind: Pod\nmetadata: {name: \(p.0), namespace: default}\nspec: {nodeName: \(p.1), containers: [{name: srv, image: agnhost, ports: [{containerPort: 8080}]}]}\n"
        }.joined(separator: "---\n").utf8))
        print("$ weft apply -f \(manifest) --lab \(lab)")
        print(try labHandle.weft(["apply", "-f", manifest]).split(separator: "\n").map { "  " + $0 }.joined(separator: "\n"))
        let list = try JSONValue.parse(try labHandle.weft(["get", "pods", "-A", "-o", "json"]))
        var podIP: [String: String] = [:], podNS: [String: String] = [:]
        for item in list["items"]?.arrayValue ?? [] {
            guard let name = item["metadata"]?["name"]?.stringValue, let ip = item["status"]?["podIP"]?.stringValue else { continue }
            podIP[name] = ip
            podNS[name] = NodeRuntime.netnsName(labID: labHandle.state.id, namespace: item["metadata"]?["namespace"]?.stringValue ?? "default", pod: name)
        }
        for (p, node) in pods {
            guard podIP[p] != nil else { throw BenchError("pod \(p) has no IP in `weft get pods -A -o json`") }
            print("  pod \(p) on \(node): \(podIP[p]!) in namespace \(podNS[p]!)")
        }

        var paths = [
            Path(key: "node", label: "node0 -> node1 host IPs (br0)", clientNS: labHandle.nodeNS(0), serverNS: labHandle.nodeNS(1), serverIP: LabHandle.hostIP(1)),
            Path(key: "cross", label: "pod -> pod across nodes (\(mode))", clientNS: podNS["tp-a"]!, serverNS: podNS["tp-c"]!, serverIP: podIP["tp-c"]!),
            Path(key: "same", label: "pod -> pod on node0 (same node)", clientNS: podNS["tp-a"]!, serverNS: podNS["tp-b"]!, serverIP: podIP["tp-b"]!),
            Path(key: "veth", label: "bare veth pair (floor)", clientNS: vethA, serverNS: vethB, serverIP: "10.250.0.2"),
        ]
        for p in paths {
            let words = ((try? inNS(p.clientNS, ["ip", "-o", "route", "get", p.serverIP])) ?? "").split(separator: " ").map(String.init)
            let dev = words.firstIndex(of: "dev").flatMap { $0 + 1 < words.count ? words[$0 + 1] : nil } ?? "eth0"
            let m = (try? inNS(p.clientNS, ["cat", "/sys/class/net/\(dev)/mtu"]))?.split(separator: "\n").first ?? "?"
            print("  path \(p.key): client \(p.clientNS) -> \(p.serverIP) in \(p.serverNS) (client MTU \(m) on \(dev))")
        }

        print("\nmeasuring: \(repeats) rounds × \(paths.count) paths × \(duration) s, interleaved (order rotates each round)")
        for round in 0..<repeats {
            for k in 0..<paths.count {
                let i = (k + round) % paths.count
                try checkInterrupted()
                let m = try iperf(client: paths[i].clientNS, server: paths[i].serverNS, ip: paths[i].serverIP)
                paths[i].samples.append(m.bps)
                paths[i].retransmits.append(m.retransmits)
                paths[i].senderCPU.append(m.senderCPU)
                if m.senderCPU > 0 { paths[i].perCore.append(m.bps / 1e9 / (m.senderCPU / 100)) }
                print("  round \(round + 1) \(paths[i].key): \(fmt(m.bps / 1e9, 2)) Gbit/s (retransmits \(m.retransmits), sender CPU \(fmt(m.senderCPU, 0)) %, receiver CPU \(fmt(m.receiverCPU, 0)) %)")
            }
        }

        let med = Dictionary(uniqueKeysWithValues: paths.map { ($0.key, median($0.samples)) })
        print("\n## throughput, mode \(mode) (Gbit/s, TCP, one stream, \(duration) s per run)\n")
        print(table(["path", "runs", "median", "min", "max", "sender CPU (median)", "Gbit/s per sender core (median)"], paths.map { p in
            [p.label, p.samples.map { fmt($0 / 1e9, 2) }.joined(separator: ", "), fmt(med[p.key]! / 1e9, 2), fmt(p.samples.min()! / 1e9, 2), fmt(p.samples.max()! / 1e9, 2),
             fmt(median(p.senderCPU), 0) + " %", fmt(median(p.perCore), 2)]
        }))
        let eff = Dictionary(uniqueKeysWithValues: paths.map { ($0.key, median($0.perCore)) })
        let crossTarget = mode == "native" ? 0.9 : 0.7
        let r1 = med["cross"]! / med["node"]!, r2 = med["same"]! / med["veth"]!
        print("")
        print(table(["ratio (of medians)", "value", "target", "met"], [
            ["cross-node pod-to-pod / node-to-node", fmt(r1, 3), "≥ \(crossTarget)", r1 >= crossTarget ? "yes" : "NO"],
            ["same-node pod-to-pod / bare veth", fmt(r2, 3), "≥ 0.9", r2 >= 0.9 ? "yes" : "NO"],
        ]))
        print("\nthe same ratios per sender core-second (load-robust; not the target's definition): cross/node \(fmt(eff["cross"]! / eff["node"]!, 2)), same/veth \(fmt(eff["same"]! / eff["veth"]!, 2))")
        print("machine at end: \(machineLine())")
    }

    /// One iperf3 run: a one-shot daemon server, then the client; returns bits/s received.
    struct Measurement { var bps: Double; var retransmits: Int; var senderCPU: Double; var receiverCPU: Double }

    func iperf(client: String, server: String, ip: String) throws -> Measurement {
        killIperf(in: server)
        try inNS(server, ["iperf3", "-s", "-1", "-D", "-p", "5201"])
        // -D returns before the daemon listens: wait for the socket.
        let t0 = now()
        while (try? inNS(server, ["ss", "-Hltn", "sport = :5201"]))?.contains("5201") != true {
            guard now() - t0 < 5 else { throw BenchError("iperf3 server in \(server) is not listening after 5 s") }
            usleep(20_000)
        }
        let r = try runCmd(["ip", "netns", "exec", client, "iperf3", "-c", ip, "-p", "5201", "-t", "\(duration)", "-J"])
        killIperf(in: server)
        guard let j = try? JSONValue.parse(r.stdout) else { throw BenchError("iperf3 -c \(ip) from \(client): unreadable output (exit \(r.status)): \(r.stdout.prefix(300)) \(r.stderr)") }
        if let err = j["error"]?.stringValue { throw BenchError("iperf3 -c \(ip) from \(client): \(err)") }
        guard let bps = j["end"]?["sum_received"]?["bits_per_second"].flatMap(number) else {
            throw BenchError("iperf3 -c \(ip) from \(client): no end.sum_received.bits_per_second")
        }
        let cpu = j["end"]?["cpu_utilization_percent"]
        return Measurement(bps: bps, retransmits: j["end"]?["sum_sent"]?["retransmits"]?.intValue ?? 0,
                           senderCPU: cpu?["host_total"].flatMap(number) ?? 0, receiverCPU: cpu?["remote_total"].flatMap(number) ?? 0)
    }

    private func number(_ v: JSONValue) -> Double? { if case .number(let d) = v { return d }; return nil }

    private func killIperf(in ns: String) {
        guard let pids = try? sh(["ip", "netns", "pids", ns]) else { return }
        for p in pids.split(separator: "\n") {
            guard let pid = pid_t(p), let comm = try? Files.readString("/proc/\(pid)/comm"), comm.hasPrefix("iperf3") else { continue }
            kill(pid, SIGKILL)
        }
    }

    private func killAll(in ns: String) {
        guard let pids = try? sh(["ip", "netns", "pids", ns]) else { return }
        for p in pids.split(separator: "\n") { if let pid = pid_t(p) { kill(pid, SIGKILL) } }
    }

    /// Namespaces of earlier runs killed with SIGKILL (their pid is gone).
    private func removeStaleNamespaces() {
        for ns in (try? Files.list("/run/netns")) ?? [] where ns.hasPrefix("wbcl") {
            let digits = ns.dropFirst(4).prefix { $0.isNumber }
            guard let pid = pid_t(digits), ns.dropFirst(4 + digits.count).hasPrefix("-"), kill(pid, 0) != 0 && errno == ESRCH else { continue }
            killAll(in: ns)
            _ = try? sh(["ip", "netns", "del", ns])
        }
    }
}
