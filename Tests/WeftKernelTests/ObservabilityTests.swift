import Foundation
import Testing
import WeftCore
import WeftOS

/// Seeing the network: every agent's /metrics on a real lab, each number checked against what
/// the test made happen (pods added, a CNI call refused, packets denied).
@Suite(.serialized, .enabled(if: isRoot, "needs root to create network namespaces"))
struct ObservabilityTests {
    /// The metric samples of one scrape: "name{labels}" → value.
    static func scrape(_ lab: MultiNodeTests.TestLab, node: Int) throws -> [String: Double] {
        let r = try sh(["ip", "netns", "exec", lab.nodeNS(node), "curl", "-sf", "http://127.0.0.1:9464/metrics"])
        guard r.status == 0 else { throw LabError("scrape of node\(node) failed: \(r.stderr)") }
        var out: [String: Double] = [:]
        for line in r.stdout.split(separator: "\n") where !line.hasPrefix("#") {
            guard let space = line.lastIndex(of: " "), let v = Double(line[line.index(after: space)...]) else { continue }
            out[String(line[..<space])] = v
        }
        return out
    }


    @Test("metrics: CNI calls and errors, IPAM use, reconciles, programmed state, drops by reason, conntrack, watch lag")
    func metrics() throws {
        let lab = try MultiNodeTests.TestLab(nodes: 2, mode: "vxlan")
        let apply = try lab.run(["apply", "-f", "-"], stdin: """
        apiVersion: v1
        kind: Pod
        metadata: {name: a, labels: {app: a}}
        spec: {nodeName: node0, containers: [{name: c, image: agnhost}]}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: b}
        spec: {nodeName: node0, containers: [{name: c, image: agnhost}]}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: c}
        spec: {nodeName: node1, containers: [{name: c, image: agnhost}]}
        ---
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: deny-a}
        spec: {podSelector: {matchLabels: {app: a}}}
        """)
        try #require(apply.status == 0, "\(apply.stdout)\(apply.stderr)")
        let pods = try #require(try lab.run(["get", "pods", "-o", "json"]).json?["items"]?.arrayValue)
        let aIP = try #require(pods.first { $0["metadata"]?["name"]?.stringValue == "a" }?["status"]?["podIP"]?.stringValue)
        let ranges = try #require(try lab.run(["get", "nodes", "-o", "json"]).json?["items"]?.arrayValue?
            .first { $0["metadata"]?["name"]?.stringValue == "node0" }?["spec"]?["podCIDRs"]?.arrayValue?.compactMap(\.stringValue))

        var m: [String: Double] = [:]
        #expect(eventually(15) { m = (try? Self.scrape(lab, node: 0)) ?? [:]; return m["weft_cni_operation_duration_seconds_count{command=\"ADD\"}"] == 2 },
                "two ADDs on node0: \(m.filter { $0.key.hasPrefix("weft_cni") })")
        for r in ranges {
            #expect(m["weft_ipam_addresses_allocated{range=\"\(r)\"}"] == 2, "two addresses held in \(r)")
            #expect((m["weft_ipam_addresses{range=\"\(r)\"}"] ?? 0) > 2)
        }
        for loop in ["routes", "services", "policy"] {
            #expect((m["weft_reconcile_duration_seconds_count{loop=\"\(loop)\"}"] ?? 0) >= 1, "\(loop) reconciled")
        }
        #expect((m["weft_nftables_rules_programmed{table=\"weft-policy\"}"] ?? 0) > 0)
        #expect(m["weft_routes_programmed"] == 2, "one peer node, a route per family")
        #expect((m["weft_conntrack_entries_limit"] ?? 0) > 0)

        // A refused CNI call is counted by its code (7: invalid configuration).
        let eventLog = "/run/weft/lab/\(lab.name)/node0/ipam/weft-cni-events.log"
        let bad = try sh(["ip", "netns", "exec", lab.nodeNS(0), "env", "CNI_COMMAND=ADD", "CNI_CONTAINERID=bad", "CNI_NETNS=/proc/self/ns/net",
                          "CNI_IFNAME=eth0", "CNI_PATH=/usr/lib/cni", product("weft-cni")],
                         stdin: #"{"cniVersion":"1.0.0","name":"weft","type":"weft","eventLog":"\#(eventLog)","ipam":{"ranges":[[{"subnet":"10.1.0.300/24"}]]}}"#)
        #expect(bad.status != 0 && bad.stdout.contains("\"code\": 7"), "\(bad.stdout)")
        #expect(eventually(10) { (try? Self.scrape(lab, node: 0))?["weft_cni_operation_errors_total{command=\"ADD\",code=\"7\"}"] == 1 })

        // Packets denied by policy are counted; the denial is explained and counted per policy.
        let before = m["weft_dropped_packets_total{reason=\"policy-ingress\"}"] ?? 0
        let denied = try sh(["ip", "netns", "exec", lab.podNS("default", "c"), product("weft"), "probe", "\(aIP):8080", "--timeout", "1500"])
        #expect(denied.status != 0)
        #expect(eventually(10) {
            m = (try? Self.scrape(lab, node: 0)) ?? [:]
            return (m["weft_dropped_packets_total{reason=\"policy-ingress\"}"] ?? 0) > before
                && (m["weft_policy_denials_logged_total{direction=\"ingress\",policy=\"default/deny-a\"}"] ?? 0) >= 1
        }, "\(m.filter { $0.key.contains("dropped") || $0.key.contains("denials") })")
        // The heartbeat comes back through the watch within seconds.
        #expect(eventually(15) { ((try? Self.scrape(lab, node: 1))?["weft_datastore_watch_lag_seconds_count"] ?? 0) >= 1 })
        let health = try sh(["ip", "netns", "exec", lab.nodeNS(1), "curl", "-sf", "http://127.0.0.1:9464/healthz"])
        #expect(health.stdout == "ok\n")
        // Flows are the node's own business: a pod asking node0's agent is refused.
        let fromPod = try sh(["ip", "netns", "exec", lab.podNS("default", "c"), "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "http://192.168.100.11:9464/flows"])
        #expect(fromPod.stdout == "403", "\(fromPod.stdout)")
    }

    @Test("doctor: clean on a healthy lab; finds each planted fault (a wrong MTU, a deleted route, a leaked address, a rule removed by hand)")
    func doctor() throws {
        let lab = try MultiNodeTests.TestLab(nodes: 2, mode: "vxlan")
        let apply = try lab.run(["apply", "-f", "-"], stdin: """
        apiVersion: v1
        kind: Pod
        metadata: {name: a}
        spec: {nodeName: node0, containers: [{name: c, image: agnhost}]}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: c}
        spec: {nodeName: node1, containers: [{name: c, image: agnhost}]}
        ---
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: deny}
        spec: {podSelector: {}}
        """)
        try #require(apply.status == 0, "\(apply.stdout)\(apply.stderr)")
        func doctor() throws -> CommandResult { try lab.run(["doctor"]) }
        var r = try CommandResult(status: 1, stdout: "", stderr: "")
        #expect(eventually(15) { r = (try? doctor()) ?? r; return r.status == 0 }, "a healthy lab: \(r.stdout)")
        #expect(r.stdout.contains("no problems found on 2 node(s)"))
        let node0 = lab.nodeNS(0)

        // A wrong MTU: the host network shrinks under pods sized for 1500 − VXLAN.
        _ = try sh(["ip", "-n", node0, "link", "set", "eth0", "mtu", "1300"])
        r = try doctor()
        #expect(r.status != 0 && r.stdout.contains("PROBLEM [node0] mtu: pods are given MTU 1450 but eth0 carries 1300"), "\(r.stdout)")
        _ = try sh(["ip", "-n", node0, "link", "set", "eth0", "mtu", "1500"])

        // A leaked address: held in IPAM, by no pod.
        let leak = "/run/weft/lab/\(lab.name)/node0/ipam/weft/10.244.250.77"
        try Files.writeAtomically(leak, Array("leaked\n".utf8))
        r = try doctor()
        #expect(r.status != 0 && r.stdout.contains("PROBLEM [node0] ipam: 1 address(es) held in IPAM by no pod of this node: 10.244.250.77"), "\(r.stdout)")
        unlink(leak)

        // A deleted route, with the agent paused so it cannot put it back before the check.
        let agent = try #require(try sh(["ip", "netns", "pids", node0]).stdout.split(separator: "\n").compactMap { pid_t($0) }
            .first { ((try? Files.readString("/proc/\($0)/cmdline")) ?? "").contains("\0agent\0") })
        kill(agent, SIGSTOP)
        defer { kill(agent, SIGCONT) }
        let route = try #require(try sh(["ip", "-n", node0, "route", "show", "proto", "87"]).stdout.split(separator: "\n").first?.split(separator: " ").first.map(String.init))
        _ = try sh(["ip", "-n", node0, "route", "del", route])
        r = try doctor()
        #expect(r.status != 0 && r.stdout.contains("PROBLEM [node0] routes: no route to node1's pods \(route)"), "\(r.stdout)")
        kill(agent, SIGCONT)
        #expect(eventually(15) { (try? doctor())?.status == 0 }, "the agent puts the route back and the doctor is satisfied")

        // A rule removed by hand (the anti-spoofing rule): drift from what the agent means to hold.
        let handle = try #require(try sh(["ip", "netns", "exec", node0, "nft", "-a", "list", "chain", "inet", "weft-policy", "antispoof"]).stdout
            .split(separator: "\n").first { $0.contains("fib saddr") }?.components(separatedBy: "handle ").last)
        _ = try sh(["ip", "netns", "exec", node0, "nft", "delete", "rule", "inet", "weft-policy", "antispoof", "handle", handle])
        r = try doctor()
        #expect(r.status != 0 && r.stdout.contains("PROBLEM [node0] drift: table inet weft-policy differs") && r.stdout.contains("chain antispoof: 3 rule(s), 4 meant"), "\(r.stdout)")
        #expect(!r.stdout.contains("[node1]"), "node1 is fine: \(r.stdout)")
    }

    @Test("trace: through a service to a pod on another node, a policy denial named, a hand-made difference from the kernel reported")
    func trace() throws {
        let lab = try MultiNodeTests.TestLab(nodes: 3, mode: "vxlan")
        let apply = try lab.run(["apply", "-f", "-"], stdin: """
        apiVersion: v1
        kind: Namespace
        metadata: {name: x}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: a, namespace: x, labels: {pod: a}}
        spec: {nodeName: node0, containers: [{name: c, image: agnhost, ports: [{containerPort: 80, name: web}]}]}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: b, namespace: x, labels: {pod: b}}
        spec: {nodeName: node1, containers: [{name: c, image: agnhost, ports: [{containerPort: 80, name: web}]}]}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: c, namespace: x, labels: {pod: c}}
        spec: {nodeName: node2, containers: [{name: c, image: agnhost}]}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: web, namespace: x}
        spec: {selector: {pod: b}, ports: [{port: 8000, targetPort: web}]}
        ---
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: only-a, namespace: x}
        spec:
          podSelector: {matchLabels: {pod: b}}
          ingress: [{from: [{podSelector: {matchLabels: {pod: a}}}], ports: [{port: web}]}]
        """)
        try #require(apply.status == 0, "\(apply.stdout)\(apply.stderr)")
        var r = try CommandResult(status: 1, stdout: "", stderr: "")
        // Allowed through the service; the trace agrees with what packets do.
        #expect(eventually(15) { r = (try? lab.run(["trace", "x/a", "svc/x/web:8000"])) ?? r; return r.status == 0 }, "\(r.stdout)\(r.stderr)")
        #expect(r.stdout.contains("picks one of 1 endpoint(s) at random: b ") && r.stdout.contains("to node1's pod range over VXLAN")
                && r.stdout.contains("ingress to x/b: allowed by x/only-a") && r.stdout.contains("=> delivered to x/b"), "\(r.stdout)")
        let vip = try #require(r.stdout.split(separator: "\n").first { $0.contains("route to 10.96.") }?.split(separator: " ").dropFirst(2).first?.dropLast())
        #expect(try sh(["ip", "netns", "exec", lab.podNS("x", "a"), product("weft"), "probe", "\(vip):8000", "--timeout", "2000"]).stdout.hasPrefix("b "))
        // Denied: the trace names the isolating policy, and packets agree.
        r = try lab.run(["trace", "x/c", "x/b:80"])
        #expect(r.status != 0 && r.stdout.contains("=> dropped on node1: no ingress policy allows it (isolated by x/only-a)"), "\(r.stdout)")
        let bIP = try #require(r.stdout.split(separator: "\n").first { $0.contains("route to 10.244.") }?.split(separator: " ").dropFirst(2).first?.dropLast())
        #expect(try sh(["ip", "netns", "exec", lab.podNS("x", "c"), product("weft"), "probe", "\(bIP):80", "--timeout", "1000"]).status != 0)
        #expect(try sh(["ip", "netns", "exec", lab.podNS("x", "a"), product("weft"), "probe", "\(bIP):80", "--timeout", "2000"]).stdout.hasPrefix("b "),
                "the address the trace used is b's: x/a, which the policy allows, reaches it")
        // The same two connections as flows, from every node, named with pods and the service.
        var flows: [JSONValue] = []
        #expect(eventually(5) {
            flows = ((try? lab.run(["observe", "--since", "5m", "-o", "json"]))?.stdout ?? "").split(separator: "\n").compactMap { try? JSONValue.parse(String($0)) }
            return flows.contains { $0["sourcePod"]?.stringValue == "x/a" && $0["service"]?.stringValue == "x/web" && $0["destinationPod"]?.stringValue == "x/b"
                && $0["verdict"]?.stringValue == "forwarded" && $0["node"]?.stringValue == "node0" }
                && flows.contains { $0["sourcePod"]?.stringValue == "x/c" && $0["destinationPod"]?.stringValue == "x/b" && $0["verdict"]?.stringValue == "dropped"
                    && $0["reason"]?.stringValue == "ingress: no policy allows it; isolated by x/only-a" && $0["node"]?.stringValue == "node1" }
        }, "\(flows.map { $0.serialized() })")
        let dropped = try lab.run(["observe", "--verdict", "dropped", "--pod", "x/b"])
        #expect(dropped.stdout.contains("x/c") && dropped.stdout.contains("DROPPED") && !dropped.stdout.contains("FORWARDED"), "\(dropped.stdout)")
        let none = try lab.run(["observe", "--namespace", "kube-system"])
        #expect(none.stdout.isEmpty, "no flow of kube-system pods: \(none.stdout)")

        // The picture: nodes with their kernel routes, pods (b outlined as isolated), the service,
        // and the matrix probed with packets: c to b denied as the policy says, the rest reached.
        let page = "/run/weft/lab/\(lab.name)/picture.html"
        let pic = try lab.run(["picture", "--matrix", "-o", page])
        #expect(pic.status == 0 && pic.stdout.contains("9/9 pairs as expected"), "\(pic.stdout)\(pic.stderr)")
        let html = try Files.readString(page)
        #expect(html.contains("x/b") && html.contains("ingress isolated by x/only-a") && html.contains("svc x/web") && html.contains("dev weft.vxlan"))
        #expect(html.components(separatedBy: "class='denied'").count - 1 == 1 && html.components(separatedBy: "class='ok'").count - 1 == 5
                && !html.contains("class='wrong'"), "one pair denied (c to b), five reached")

        // A hand-made difference: b taken out of the ingress map on node1 (so the kernel no longer isolates it).
        _ = try sh(["ip", "netns", "exec", lab.nodeNS(1), "nft", "delete", "element", "inet", "weft-policy", "ingress-pods4", "{", String(bIP), "}"])
        r = try lab.run(["trace", "x/c", "x/b:80"])
        #expect(r.stdout.contains("is not in ingress-pods (not isolated)   <-- DIFFERS") && r.stdout.contains("1 difference(s) between the desired state and the kernel"), "\(r.stdout)")
        let bad = try lab.run(["trace", "x/nobody", "x/b:80"])
        #expect(bad.status != 0 && bad.stderr.contains("\"x/nobody\" is no running pod, service or node"), "\(bad.stderr)")
    }
}
