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

    static func eventually(_ seconds: Double, _ body: () throws -> Bool) rethrows -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if try body() { return true }
            usleep(250_000)
        }
        return try body()
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
        #expect(Self.eventually(15) { m = (try? Self.scrape(lab, node: 0)) ?? [:]; return m["weft_cni_operation_duration_seconds_count{command=\"ADD\"}"] == 2 },
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
        #expect(Self.eventually(10) { (try? Self.scrape(lab, node: 0))?["weft_cni_operation_errors_total{command=\"ADD\",code=\"7\"}"] == 1 })

        // Packets denied by policy are counted; the denial is explained and counted per policy.
        let before = m["weft_dropped_packets_total{reason=\"policy-ingress\"}"] ?? 0
        let denied = try sh(["ip", "netns", "exec", lab.podNS("default", "c"), product("weft"), "probe", "\(aIP):8080", "--timeout", "1500"])
        #expect(denied.status != 0)
        #expect(Self.eventually(10) {
            m = (try? Self.scrape(lab, node: 0)) ?? [:]
            return (m["weft_dropped_packets_total{reason=\"policy-ingress\"}"] ?? 0) > before
                && (m["weft_policy_denials_logged_total{direction=\"ingress\",policy=\"default/deny-a\"}"] ?? 0) >= 1
        }, "\(m.filter { $0.key.contains("dropped") || $0.key.contains("denials") })")
        // The heartbeat comes back through the watch within seconds.
        #expect(Self.eventually(15) { ((try? Self.scrape(lab, node: 1))?["weft_datastore_watch_lag_seconds_count"] ?? 0) >= 1 })
        let health = try sh(["ip", "netns", "exec", lab.nodeNS(1), "curl", "-sf", "http://127.0.0.1:9464/healthz"])
        #expect(health.stdout == "ok\n")
    }
}
