import ArgumentParser
import Foundation
import WeftCore
import WeftDatastore
import WeftLab
import WeftOS
#if canImport(Glibc)
import Glibc
#endif

/// The observability targets on a 3-node lab: a scrape of /metrics with 1,000 pods on the node
/// (< 10 ms), a flow visible to `weft observe` after its packet (< 1 s), `weft trace` (< 1 s).
struct ObservabilityBench: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "observability",
        abstract: "Metrics scrape time with 1,000 pods on a node, flow visibility delay, weft trace time.")

    @Option(help: "Pods placed on node0 (in the datastore; node0's runtime is stopped so they are not started).") var pods = 1000
    @Option(help: "Scrapes to time.") var scrapes = 500
    @Option(help: "Connections whose flow is timed.") var flows = 30
    @Option(help: "weft trace runs to time.") var traces = 10
    @Option(help: "Lab name (starts with \"bench\").") var lab = "benchobs"
    @Option(help: "The weft binary (default: next to this one; weft-cni must sit beside it).") var weft: String?

    func run() throws {
        installSignalHandlers()
        let bin = try Binaries(weft: weft)
        printHeader("observability --pods \(pods)")
        let labHandle = try LabHandle(name: lab, nodes: 3, mode: "vxlan", datastore: "sqlite", leaseTTL: nil, bin: bin)
        defer { labHandle.down() }
        _ = try labHandle.waitForFullMesh(timeout: 60)

        // Real pods for flows and traces: a client on node1, a server on node2 behind a service.
        let manifest = "\(labHandle.state.dir)/bench-obs.yaml"
        try Files.writeAtomically(manifest, Array("""
            apiVersion: v1
            kind: Pod
            metadata: {name: client, labels: {app: client}}
            spec: {nodeName: node1, containers: [{name: c, image: agnhost}]}
            ---
            apiVersion: v1
            kind: Pod
            metadata: {name: server, labels: {app: server}}
            spec: {nodeName: node2, containers: [{name: s, image: agnhost, ports: [{containerPort: 8080, name: http}]}]}
            ---
            apiVersion: v1
            kind: Service
            metadata: {name: server}
            spec: {selector: {app: server}, ports: [{port: 80, targetPort: http}]}
            ---
            apiVersion: v1
            kind: Service
            metadata: {name: bulk}
            spec: {selector: {app: bulk}, ports: [{port: 80, targetPort: 8080}]}
            ---
            apiVersion: networking.k8s.io/v1
            kind: NetworkPolicy
            metadata: {name: bulk}
            spec:
              podSelector: {matchLabels: {app: bulk}}
              ingress: [{from: [{podSelector: {matchLabels: {app: client}}}], ports: [{port: 8080}]}]
            """.utf8))
        print("$ weft apply -f \(manifest) --lab \(lab)")
        _ = try labHandle.weft(["apply", "-f", manifest])

        // 1,000 pods on node0, in the datastore only (its runtime stopped first, or it would start
        // them): the agent computes policy sets, the service's 1,000 endpoints and flow names for
        // them; its IPAM directory holds a record per pod, as if the CNI plugin had added them.
        let node0 = labHandle.nodeNS(0)
        for p in try sh(["ip", "netns", "pids", node0]).split(separator: "\n") {
            guard let pid = pid_t(p), let cmd = try? Files.read("/proc/\(pid)/cmdline") else { continue }
            let args = cmd.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
            if args.count > 1, args[0].hasSuffix("/weft"), args[1] == "runtime" { killAndReap(pid) }
        }
        let store = try openDatastore(labHandle.state.datastore)
        let ipamDir = "\(labHandle.state.dir)/node0/ipam/weft"
        try Files.makeDirectories(ipamDir)
        let t0 = now()
        let sem = DispatchSemaphore(value: 0)
        nonisolated(unsafe) var failure: Error?
        Task {
            do {
                for i in 0..<pods {
                    let ip = "10.251.\(i / 250).\(i % 250 + 1)"
                    var pod = KubeObject(apiVersion: "v1", kind: "Pod", name: "bulk-\(i)", namespace: "default")
                    pod.labels = ["app": "bulk"]
                    pod.setSpec("nodeName", .string("node0"))
                    pod.setSpec("containers", .array([.object([("name", .string("c")), ("ports", .array([.object([("containerPort", .number(8080)), ("name", .string("http"))])]))])]))
                    pod.setStatus("phase", .string("Running"))
                    pod.setStatus("podIP", .string(ip))
                    pod.setStatus("podIPs", .array([.object([("ip", .string(ip))])]))
                    try await store.create(Keys.pod("default", pod.name), value: pod.bytes)
                    try Files.writeAtomically("\(ipamDir)/\(ip)", Array("bench-\(i)\neth0\n".utf8))
                }
            } catch { failure = error }
            sem.signal()
        }
        sem.wait()
        if let failure { throw BenchError("writing pods: \(failure)") }
        print("  wrote \(pods) pods on node0 in \(fmt(now() - t0, 1)) s; waiting for the EndpointSlice controller and node0's agent")
        // Settled when node0's policy table selects them all.
        let settle = now()
        while true {
            try checkInterrupted()
            let el = (try? inNS(node0, ["nft", "list", "map", "inet", "weft-policy", "ingress-pods4"])) ?? ""
            if el.components(separatedBy: "10.251.").count - 1 >= pods { break }
            guard now() - settle < 300 else { throw BenchError("node0's policy table did not select the \(pods) pods in 300 s") }
            try sleepSeconds(0.5)
        }
        print("  node0's policy table selects all \(pods) pods \(fmt(now() - settle, 1)) s later")

        // 1. Scrapes, one connection each (as a scraper without keep-alive would).
        let ns0 = try NetworkNamespace(path: "/run/netns/\(node0)")
        var scrapeTimes: [Double] = []
        var size = 0, series = 0
        for _ in 0..<scrapes {
            try checkInterrupted()
            let s = now()
            guard let r = try ns0.run({ () -> (status: Int, body: [UInt8])? in AgentClient.get(port: AgentClient.port, path: "/metrics") }), r.status == 200 else {
                throw BenchError("scrape of node0 failed")
            }
            scrapeTimes.append(now() - s)
            size = r.body.count
            series = String(decoding: r.body, as: UTF8.self).split(separator: "\n").filter { !$0.hasPrefix("#") }.count
        }

        // 2. Flows: a connection from the client, then every node polled every 20 ms until the
        //    flow with its source port shows (what `weft observe --follow` sees, less its 200 ms poll).
        let clientNS = NodeRuntime.netnsName(labID: labHandle.state.id, namespace: "default", pod: "client")
        let podList = try JSONValue.parse(try labHandle.weft(["get", "pods", "-o", "json"]))["items"]?.arrayValue ?? []
        guard let serverIP = podList.first(where: { $0["metadata"]?["name"]?.stringValue == "server" })?["status"]?["podIP"]?.stringValue else {
            throw BenchError("the server pod has no IP")
        }
        var cursors: [String: UInt64] = [:]
        for n in labHandle.state.nodes { cursors[n.name] = (try AgentClient.flows(netns: n.netns, since: UInt64.max / 2))?.next ?? 0 }
        var flowDelays: [Double] = []
        for k in 0..<flows {
            try checkInterrupted()
            let port = UInt16(41000 + k)
            let sent = now()
            _ = try runCmd(["ip", "netns", "exec", clientNS, bin.weft, "probe", "\(serverIP):8080", "--source-port", "\(port)", "--timeout", "2000"])
            var seen: Double?
            while seen == nil && now() - sent < 5 {
                for n in labHandle.state.nodes {
                    guard let (list, next) = try AgentClient.flows(netns: n.netns, since: cursors[n.name] ?? 0) else { continue }
                    cursors[n.name] = next
                    if list.contains(where: { $0.sourcePort == port && $0.event == "new" }) { seen = now() - sent }
                }
                if seen == nil { usleep(20_000) }
            }
            guard let seen else { throw BenchError("the flow from source port \(port) did not show within 5 s") }
            flowDelays.append(seen)
        }

        // 3. weft trace through the service, as a user runs it.
        var traceTimes: [Double] = []
        for _ in 0..<traces {
            try checkInterrupted()
            let r = try runCmd([bin.weft, "trace", "client", "svc/default/server:80", "--lab", lab])
            guard r.status == 0 else { throw BenchError("weft trace failed: \(r.stdout)\(r.stderr)") }
            traceTimes.append(r.seconds)
        }

        print("\n## observability, 3-node lab (vxlan), \(self.pods) pods on node0\n")
        let p99s = percentile(scrapeTimes, 99), flow99 = percentile(flowDelays, 99), trace99 = percentile(traceTimes, 99)
        print(table(["measure", "p50", "p99", "max", "target", "met"], [
            ["scrape of node0's /metrics (\(size) B, \(series) samples; \(scrapes) scrapes)", fmt(percentile(scrapeTimes, 50) * 1000, 2) + " ms", fmt(p99s * 1000, 2) + " ms",
             fmt((scrapeTimes.max() ?? 0) * 1000, 2) + " ms", "< 10 ms", p99s < 0.010 ? "yes" : "NO"],
            ["flow at the agents after the connection (\(flows) flows, 20 ms polls)", ms(percentile(flowDelays, 50)) + " ms", ms(flow99) + " ms",
             ms(flowDelays.max() ?? 0) + " ms", "< 1 s", flow99 < 1 ? "yes" : "NO"],
            ["`weft trace client svc/default/server:80` (whole command, \(traces) runs)", ms(percentile(traceTimes, 50)) + " ms", ms(trace99) + " ms",
             ms(traceTimes.max() ?? 0) + " ms", "< 1 s", trace99 < 1 ? "yes" : "NO"],
        ]))
        print("(the flow delay includes the probe command itself: process start, connect, answer; `weft observe --follow` adds up to its 200 ms poll)")
        print("machine at end: \(machineLine())")
    }
}
