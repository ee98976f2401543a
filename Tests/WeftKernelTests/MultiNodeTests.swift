import Foundation
import Testing
import WeftCore
import WeftOS

/// Many nodes: `weft lab` builds a host network, nodes, the datastore, agents and runtimes in
/// namespaces; pods are applied as Kubernetes manifests; real packets prove every pair.
@Suite(.serialized, .enabled(if: isRoot, "needs root to create network namespaces"))
struct MultiNodeTests {
    /// A lab named for this test, torn down afterwards whatever happens.
    final class TestLab {
        let name = "t" + String(UInt32.random(in: 0..<UInt32.max), radix: 36)
        init(nodes: Int, mode: String, datastore: String = "sqlite", leaseTTL: Int = 10) throws {
            let r = try weft(["lab", "up", "--name", name, "--nodes", "\(nodes)", "--mode", mode, "--datastore", datastore, "--lease-ttl", "\(leaseTTL)"])
            guard r.status == 0 else { _ = try? weft(["lab", "down", "--name", name]); throw LabError("lab up failed: \(r.stdout)\(r.stderr)") }
        }
        deinit { _ = try? weft(["lab", "down", "--name", name]) }

        @discardableResult
        func run(_ args: [String], stdin: String = "") throws -> CommandResult { try weft(args + ["--lab", name], stdin: stdin) }
        func nodeNS(_ i: Int) -> String { "wl-\(name)-node\(i)" }
        func podNS(_ ns: String, _ pod: String) -> String { "wl-\(name)-\(ns)-\(pod)" }

        /// One TCP connection from namespace `ns` to `target`, a round trip every `intervalMs`
        /// for `seconds` (`weft probe --hold`, which fails if the flow breaks); its output goes
        /// to the pipe. The caller kills it if it outlives the test.
        func heldFlow(from ns: String, to target: String, seconds: Int, intervalMs: Int = 50) throws -> (process: Process, output: Pipe) {
            let flow = Process()
            flow.executableURL = URL(fileURLWithPath: "/usr/bin/nsenter")
            flow.arguments = ["--net=/run/netns/\(ns)", product("weft"), "probe", target, "--hold", "\(seconds)", "--interval", "\(intervalMs)"]
            let out = Pipe()
            flow.standardOutput = out
            flow.standardError = out
            try flow.run()
            return (flow, out)
        }

        /// Restarts node `i`'s agent as an operator would: SIGTERM, then the same command line.
        /// Returns whether the old one stopped within 5 s, and the new process (lab down ends it).
        func restartAgent(node i: Int) throws -> (stopped: Bool, process: Process) {
            let agent = try #require(try sh(["ip", "netns", "pids", nodeNS(i)]).stdout.split(separator: "\n").compactMap { pid_t($0) }
                .first { ((try? Files.readString("/proc/\($0)/cmdline")) ?? "").contains("\0agent\0") })
            let argv = try Files.readString("/proc/\(agent)/cmdline").split(separator: "\0").map(String.init)
            kill(agent, SIGTERM)
            var stopped = false
            for _ in 0..<50 where !stopped { stopped = kill(agent, 0) != 0; if !stopped { usleep(100_000) } }
            let restarted = Process()
            restarted.executableURL = URL(fileURLWithPath: "/usr/bin/nsenter")
            restarted.arguments = ["--net=/run/netns/\(nodeNS(i))"] + argv
            restarted.standardOutput = FileHandle.nullDevice
            restarted.standardError = FileHandle.nullDevice
            try restarted.run()
            return (stopped, restarted)
        }
    }

    static func weft(_ args: [String], stdin: String = "") throws -> CommandResult { try sh([product("weft")] + args, stdin: stdin) }

    static func podsManifest(nodes: Int, perNode: Int, namespace: String = "default") -> String {
        var docs: [String] = []
        for n in 0..<nodes {
            for p in 0..<perNode {
                docs.append("""
                apiVersion: v1
                kind: Pod
                metadata:
                  name: web-\(n)-\(p)
                  namespace: \(namespace)
                  labels: {app: web}
                spec:
                  nodeName: node\(n)
                  containers:
                  - name: web
                    image: agnhost
                    ports:
                    - containerPort: 8080
                      name: http
                """)
            }
        }
        return docs.joined(separator: "\n---\n")
    }

    @Test("every pod reaches every pod on every node, with no NAT", arguments: ["vxlan", "native", "underlay"])
    func connectivity(mode: String) throws {
        let lab = try TestLab(nodes: 3, mode: mode)
        let apply = try lab.run(["apply", "-f", "-"], stdin: Self.podsManifest(nodes: 3, perNode: 2))
        try #require(apply.status == 0, "\(apply.stdout)\(apply.stderr)")
        let c = try lab.run(["connectivity"])
        #expect(c.status == 0, "\(c.stdout)\(c.stderr)")
        #expect(c.stdout.contains("36/36 pairs as expected"), "30 pod pairs + 6 node-to-own-pod: \(c.stdout)")

        // kubectl-shaped output.
        let pods = try #require(try lab.run(["get", "pods", "-A", "-o", "json"]).json)
        let items = pods["items"]?.arrayValue ?? []
        #expect(items.count == 6)
        for p in items {
            #expect(p["status"]?["podIP"]?.stringValue != nil)
            #expect(p["spec"]?["nodeName"]?.stringValue?.hasPrefix("node") == true)
        }
        let nodes = try #require(try lab.run(["get", "nodes", "-o", "json"]).json)
        let nodeItems = nodes["items"]?.arrayValue ?? []
        #expect(nodeItems.count == 3)
        let cidrs = nodeItems.compactMap { $0["spec"]?["podCIDRs"]?.arrayValue?.first?.stringValue }
        #expect(Set(cidrs).count == 3, "each node its own pod range: \(cidrs)")
        #expect(nodeItems.allSatisfy { $0["status"]?["addresses"]?.arrayValue?.first?["type"]?.stringValue == "InternalIP" })

        // Deleting the pods runs CNI DEL on their nodes: the namespaces go.
        let del = try lab.run(["delete", "-f", "-"], stdin: Self.podsManifest(nodes: 3, perNode: 2))
        #expect(del.status == 0)
        var gone = false
        for _ in 0..<50 where !gone {
            gone = !((try? Files.list("/run/netns")) ?? []).contains { $0.hasPrefix("wl-\(lab.name)-default-") }
            if !gone { usleep(100_000) }
        }
        #expect(gone, "pod namespaces removed after delete")
    }

    @Test("a node that leaves has its routes withdrawn everywhere; restarted, it keeps its pod range")
    func nodeLeavesAndReturns() throws {
        let lab = try TestLab(nodes: 3, mode: "native", leaseTTL: 2)
        func routes(on i: Int) throws -> String { try sh(["ip", "netns", "exec", lab.nodeNS(i), "ip", "route", "show", "proto", "87"]).stdout }
        let node2Range = try #require(try lab.run(["get", "nodes", "-o", "json"]).json?["items"]?.arrayValue?
            .first { $0["metadata"]?["name"]?.stringValue == "node2" }?["spec"]?["podCIDRs"]?.arrayValue?.first?.stringValue)
        // Routes follow the nodes' leases: node0 may learn node2's a moment after the lab is up.
        #expect(try eventually(15) { try routes(on: 0).contains(node2Range) }, "node0 routes node2's range: \((try? routes(on: 0)) ?? "")")

        // Kill node2's agent: after the lease TTL, node0 and node1 withdraw its route.
        let pids = try sh(["ip", "netns", "pids", lab.nodeNS(2)]).stdout.split(separator: "\n").compactMap { pid_t($0) }
        let agentPids = pids.filter { ((try? Files.readString("/proc/\($0)/cmdline")) ?? "").contains("agent") }
        try #require(!agentPids.isEmpty)
        for p in agentPids { kill(p, SIGKILL) }
        var withdrawn = false
        for _ in 0..<80 where !withdrawn { withdrawn = try !routes(on: 0).contains(node2Range) && !routes(on: 1).contains(node2Range); if !withdrawn { usleep(100_000) } }
        #expect(withdrawn, "route to \(node2Range) withdrawn after the lease expired")

        // Restart it the way the lab started it: the same range comes back everywhere.
        let state = try JSONValue.parse(Files.read("/run/weft/lab/\(lab.name)/state.json"))
        let datastore = try #require(state["datastore"]?.stringValue)
        let dir = "/run/weft/lab/\(lab.name)/node2"
        let restart = Process()
        restart.executableURL = URL(fileURLWithPath: "/usr/sbin/ip")
        restart.arguments = ["netns", "exec", lab.nodeNS(2), product("weft"), "agent", "--node", "node2", "--datastore", datastore, "--mode", "native",
                             "--cluster-cidr", "10.245.0.0/16", "--cluster-cidr", "fd00:245::/56", "--cni-conf-dir", dir + "/net.d",
                             "--ipam-data-dir", dir + "/ipam", "--lease-ttl", "2"]
        restart.standardOutput = FileHandle.nullDevice
        restart.standardError = FileHandle.nullDevice
        try restart.run()
        defer {
            // SIGTERM is the agent's graceful stop; it must exit on it (checked below).
            restart.terminate()
            var waited = 0
            while restart.isRunning && waited < 100 { usleep(100_000); waited += 1 }
            if restart.isRunning { kill(restart.processIdentifier, SIGKILL); restart.waitUntilExit() }
        }
        var back = false
        for _ in 0..<80 where !back { back = try routes(on: 0).contains(node2Range); if !back { usleep(100_000) } }
        #expect(back, "route to \(node2Range) back after the restart, same range")

        // A graceful stop (SIGTERM) ends the agent promptly and leaves its routes in place.
        restart.terminate()
        var stopped = false
        for _ in 0..<100 where !stopped { stopped = !restart.isRunning; if !stopped { usleep(100_000) } }
        #expect(stopped, "the agent exits on SIGTERM")
        #expect(try routes(on: 0).contains(node2Range), "peers keep the route until the lease runs out")
    }

    @Test("with traffic flowing, an etcd member dies and an agent restarts: no flow breaks, no route is lost")
    func reliabilityOnEtcd() throws {
        let lab = try TestLab(nodes: 2, mode: "native", datastore: "etcd", leaseTTL: 4)
        let apply = try lab.run(["apply", "-f", "-"], stdin: Self.podsManifest(nodes: 2, perNode: 1))
        try #require(apply.status == 0, "\(apply.stdout)\(apply.stderr)")
        let pods = try #require(try lab.run(["get", "pods", "-A", "-o", "json"]).json?["items"]?.arrayValue)
        let target = try #require(pods.first { $0["spec"]?["nodeName"]?.stringValue == "node1" }?["status"]?["podIP"]?.stringValue)
        func routes(on i: Int) throws -> String { try sh(["ip", "netns", "exec", lab.nodeNS(i), "ip", "route", "show", "proto", "87"]).stdout }
        func range(of node: String) throws -> String {
            try #require(try lab.run(["get", "nodes", "-o", "json"]).json?["items"]?.arrayValue?
                .first { $0["metadata"]?["name"]?.stringValue == node }?["spec"]?["podCIDRs"]?.arrayValue?.first?.stringValue)
        }
        let range0 = try range(of: "node0"), range1 = try range(of: "node1")

        // One TCP connection from node0's pod to node1's pod, a round trip every 50 ms for 15 s.
        let (flow, out) = try lab.heldFlow(from: lab.podNS("default", "web-0-0"), to: "\(target):8080", seconds: 15)
        defer { if flow.isRunning { kill(flow.processIdentifier, SIGKILL) } }
        usleep(500_000)

        // Kill one of the three etcd members outright.
        let etcd0 = try sh(["ip", "netns", "pids", "wl-\(lab.name)-etcd0"]).stdout.split(separator: "\n").compactMap { pid_t($0) }
        try #require(!etcd0.isEmpty, "etcd member 0 is running")
        for p in etcd0 { kill(p, SIGKILL) }

        // Restart node1's agent (SIGTERM, then the same command line again).
        let (exited, restarted) = try lab.restartAgent(node: 1)
        #expect(exited, "the agent stops on SIGTERM")
        defer { kill(restarted.processIdentifier, SIGKILL); restarted.waitUntilExit() }

        // While the flow runs: each node always holds its route to the other's pods.
        var lost: [String] = []
        while flow.isRunning {
            if try !routes(on: 0).contains(range1) { lost.append("node0 lost \(range1)") }
            if try !routes(on: 1).contains(range0) { lost.append("node1 lost \(range0)") }
            usleep(100_000)
        }
        flow.waitUntilExit()
        let said = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(flow.terminationStatus == 0, "the established flow survived: \(said)")
        #expect(said.contains("none lost"), "\(said)")
        #expect(lost.isEmpty, "\(Set(lost))")
        // The restarted agent is in service: with a member down, it still keeps the node's lease.
        #expect(restarted.isRunning, "the restarted agent runs on the two remaining members")
        #expect(try lab.run(["connectivity"]).status == 0)
    }

    @Test("agent bad input: no block left, a range overlapping the host network, an unreachable datastore")
    func agentBadInput() throws {
        // One node of its own (a namespace with an uplink), and a datastore file for it.
        let lab = try KernelLab()
        defer { lab.close() }
        try lab.inNode(["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1"])
        try lab.inNode(["ip", "addr", "add", "192.168.77.1/24", "dev", "eth0"])
        try lab.inNode(["ip", "link", "set", "eth0", "up"])
        let db = "sqlite://\(lab.dataDir)-cluster.db"
        defer { _ = try? sh(["rm", "-rf", "\(lab.dataDir)-cluster.db", "\(lab.dataDir)-cluster.db-wal", "\(lab.dataDir)-cluster.db-shm", "\(lab.dataDir)-net.d"]) }
        func agent(_ name: String, _ extra: [String], runFor seconds: Int = 20) throws -> CommandResult {
            try lab.inNode(["timeout", "\(seconds)", product("weft"), "agent", "--node", name, "--mode", "native", "--cni-conf-dir", "\(lab.dataDir)-net.d",
                            "--ipam-data-dir", lab.dataDir] + extra)
        }
        let small = ["--datastore", db, "--cluster-cidr", "10.1.0.0/23", "--block-prefix-v4", "24"]

        // A /23 holds two /24 blocks: two nodes get one each (and keep them after stopping),
        // the third is told there is none left.
        for n in ["x1", "x2"] {
            let r = try agent(n, small, runFor: 3)
            #expect(r.status == 124 && r.stderr.contains("node registered"), "\(n) ran until stopped: \(r.stderr)")
        }
        let third = try agent("x3", small)
        #expect(third.status != 0 && third.status != 124, "x3 must fail, not run")
        #expect(third.stderr.contains("cluster range 10.1.0.0/23 has no free /24 block left for node x3"), "\(third.stderr)")
        // The nodes that hold blocks are undisturbed: x1 comes back with its block.
        let again = try agent("x1", small, runFor: 3)
        #expect(again.stderr.contains("node registered") && (again.stderr.contains("10.1.0.0/24") || again.stderr.contains("10.1.1.0/24")), "\(again.stderr)")

        // A pod range overlapping the host network would swallow host traffic.
        let overlap = try agent("y", ["--datastore", "sqlite://\(lab.dataDir)-other.db", "--cluster-cidr", "192.168.0.0/16"])
        #expect(overlap.status != 0 && overlap.status != 124)
        #expect(overlap.stderr.contains("cluster range 192.168.0.0/16 overlaps the host network 192.168.77.0/24"), "\(overlap.stderr)")
        _ = try? sh(["rm", "-f", "\(lab.dataDir)-other.db", "\(lab.dataDir)-other.db-wal", "\(lab.dataDir)-other.db-shm"])

        // No datastore answers: a clear error naming the endpoint, promptly (well within the
        // 20 s this command is given).
        let unreachable = try agent("z", ["--datastore", "etcd://127.0.0.1:1", "--cluster-cidr", "10.1.0.0/16"])
        #expect(unreachable.status != 0 && unreachable.status != 124, "\(unreachable.stderr)")
        #expect(unreachable.stderr.contains("datastore unavailable") && unreachable.stderr.contains("http://127.0.0.1:1"), "\(unreachable.stderr)")
        let missingDir = try agent("z", ["--datastore", "sqlite:///nonexistent-\(lab.id)/x.db", "--cluster-cidr", "10.1.0.0/16"])
        #expect(missingDir.stderr.contains("directory /nonexistent-\(lab.id) does not exist"), "\(missingDir.stderr)")
    }

    @Test("bad input: invalid manifests, unknown nodes, a second agent under a taken name, ranges that do not fit")
    func badInput() throws {
        let lab = try TestLab(nodes: 2, mode: "vxlan")
        let ok = try lab.run(["apply", "-f", "-"], stdin: Self.podsManifest(nodes: 2, perNode: 1))
        try #require(ok.status == 0)
        let cases: [(String, String)] = [
            ("apiVersion: v1\nkind: Pod\nmetadata: {name: Bad_Name}\nspec: {containers: [{name: c}]}", "is not a valid name"),
            ("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {nodeName: node9, containers: [{name: c}]}", "\"node9\" is not a node"),
            ("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, ports: [{containerPort: 70000}]}]}", "containerPort 70000"),
            ("apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: nope}\nspec: {containers: [{name: c}]}", "namespace \"nope\" does not exist"),
            ("apiVersion: v1\nkind: Gadget\nmetadata: {name: g}", "kind \"Gadget\" is not supported"),
            ("{not yaml: [", "not valid YAML"),
        ]
        for (manifest, message) in cases {
            let r = try lab.run(["apply", "-f", "-"], stdin: manifest)
            #expect(r.status != 0, "\(manifest)")
            #expect(r.stderr.contains(message), "\(manifest): \(r.stderr)")
        }
        // The README's example file on a 2-node cluster: web-2 names node2, which is not a node.
        // The file is refused as one: the refusal printed, nothing of it stored.
        let examples = String(#filePath.prefix(upTo: #filePath.range(of: "/Tests/")!.lowerBound)) + "/examples/pods.yaml"
        let example = try lab.run(["apply", "-f", examples])
        #expect(example.status != 0)
        #expect(example.stderr.contains("pod default/web-2: spec.nodeName \"node2\" is not a node of this cluster"), "\(example.stderr)")
        #expect(example.stderr.contains("nothing of \(examples) was applied"), "\(example.stderr)")
        let after = try lab.run(["get", "pods", "-A"]).stdout + (try lab.run(["get", "namespaces"]).stdout) + (try lab.run(["get", "services"]).stdout)
        let names = Set(after.split(whereSeparator: \.isWhitespace).map(String.init))
        #expect(names.isDisjoint(with: ["web-0", "web-1", "cart-0", "shop", "web"]), "\(after)")
        // A second agent calling itself node0 from another address is refused.
        let state = try JSONValue.parse(Files.read("/run/weft/lab/\(lab.name)/state.json"))
        let datastore = try #require(state["datastore"]?.stringValue)
        let dup = try sh(["ip", "netns", "exec", lab.nodeNS(1), product("weft"), "agent", "--node", "node0", "--datastore", datastore,
                          "--mode", "vxlan", "--cluster-cidr", "10.244.0.0/16", "--cluster-cidr", "fd00:244::/56", "--cni-conf-dir", "/tmp/\(lab.name)-dup"])
        #expect(dup.status != 0 && dup.stderr.contains("already registered"), "\(dup.stderr)")
        // An agent proposing different cluster settings is refused.
        let other = try sh(["ip", "netns", "exec", lab.nodeNS(1), product("weft"), "agent", "--node", "node7", "--datastore", datastore,
                            "--mode", "native", "--cluster-cidr", "10.99.0.0/16", "--cni-conf-dir", "/tmp/\(lab.name)-other"])
        #expect(other.status != 0 && other.stderr.contains("the cluster runs"), "\(other.stderr)")
        // A block larger than the range.
        let tooBig = try sh(["ip", "netns", "exec", lab.nodeNS(1), product("weft"), "agent", "--node", "x", "--datastore", "sqlite:///tmp/\(lab.name)-x.db", "--cluster-cidr", "10.1.0.0/24",
                             "--block-prefix-v4", "16", "--cni-conf-dir", "/tmp/\(lab.name)-x"])
        #expect(tooBig.status != 0 && tooBig.stderr.contains("larger than the cluster range"), "\(tooBig.stderr)")
        _ = try? sh(["rm", "-rf", "/tmp/\(lab.name)-dup", "/tmp/\(lab.name)-other", "/tmp/\(lab.name)-x", "/tmp/\(lab.name)-x.db"])
        // What already ran is undisturbed.
        #expect(try lab.run(["connectivity"]).status == 0)
    }
}
