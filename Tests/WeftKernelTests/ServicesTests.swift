import Foundation
import Testing
import WeftCore
import WeftOS

/// Services on a 2-node lab: ClusterIPs load-balance over endpoints on both nodes from pods and
/// from nodes, NodePorts answer on every node address from the host network, a pod reaches
/// itself through its service, a service without endpoints refuses at once, and bad
/// Services are refused with nothing running disturbed.
@Suite(.serialized, .enabled(if: isRoot, "needs root to create network namespaces"))
struct ServicesTests {
    static let manifest = """
    apiVersion: v1
    kind: Pod
    metadata: {name: web-a, labels: {app: web}}
    spec: {nodeName: node0, containers: [{name: web, image: agnhost, ports: [{containerPort: 8080, name: http}]}]}
    ---
    apiVersion: v1
    kind: Pod
    metadata: {name: web-b, labels: {app: web}}
    spec: {nodeName: node1, containers: [{name: web, image: agnhost, ports: [{containerPort: 8080, name: http}]}]}
    ---
    apiVersion: v1
    kind: Pod
    metadata: {name: client}
    spec: {nodeName: node0, containers: [{name: c, image: agnhost}]}
    ---
    apiVersion: v1
    kind: Service
    metadata: {name: web}
    spec:
      type: NodePort
      selector: {app: web}
      externalIPs: [203.0.113.10]
      ports: [{name: http, port: 80, targetPort: http, nodePort: 30080}]
    ---
    apiVersion: v1
    kind: Service
    metadata: {name: dual}
    spec:
      ipFamilyPolicy: PreferDualStack
      selector: {app: web}
      ports: [{port: 80, targetPort: 8080}]
    ---
    apiVersion: v1
    kind: Service
    metadata: {name: sticky}
    spec:
      sessionAffinity: ClientIP
      sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}
      selector: {app: web}
      ports: [{port: 80, targetPort: 8080}]
    ---
    apiVersion: v1
    kind: Service
    metadata: {name: local}
    spec:
      type: NodePort
      internalTrafficPolicy: Local
      externalTrafficPolicy: Local
      selector: {app: web}
      ports: [{port: 80, targetPort: 8080, nodePort: 30081}]
    ---
    apiVersion: v1
    kind: Service
    metadata: {name: empty}
    spec:
      selector: {app: nothing}
      ports: [{port: 80}]
    """

    func probe(_ ns: String, _ target: String) throws -> CommandResult {
        try sh(["ip", "netns", "exec", ns, product("weft"), "probe", target, "--timeout", "3000"])
    }

    /// Asks `tries` times; returns who answered and from which source address the server saw.
    func answers(_ ns: String, _ target: String, tries: Int = 30) throws -> [String] {
        try (0..<tries).map { _ in try probe(ns, target).stdout.trimmingCharacters(in: .whitespacesAndNewlines) }
    }

    @Test("ClusterIP, NodePort, hairpin and no-endpoint reject, from pods, nodes and the host network")
    func servicesWork() throws {
        // vxlan: the mode that carries IPv6 between nodes (native routes follow the IPv4 host network).
        let lab = try MultiNodeTests.TestLab(nodes: 2, mode: "vxlan")
        let apply = try lab.run(["apply", "-f", "-"], stdin: Self.manifest)
        try #require(apply.status == 0, "\(apply.stdout)\(apply.stderr)")
        let svcs = try #require(try lab.run(["get", "services", "-o", "json"]).json?["items"]?.arrayValue)
        let web = try #require(svcs.first { $0["metadata"]?["name"]?.stringValue == "web" })
        let vip = try #require(web["spec"]?["clusterIP"]?.stringValue)
        let emptyVIP = try #require(svcs.first { $0["metadata"]?["name"]?.stringValue == "empty" }?["spec"]?["clusterIP"]?.stringValue)
        #expect(IPNetwork("10.96.0.0/16")!.contains(IPAddress(vip)!), "ClusterIP \(vip) from the service range")
        let pods = try #require(try lab.run(["get", "pods", "-o", "json"]).json?["items"]?.arrayValue)
        func podIP(_ n: String) -> String? { pods.first { $0["metadata"]?["name"]?.stringValue == n }?["status"]?["podIP"]?.stringValue }
        let clientIP = try #require(podIP("client"))

        // The agents program the table shortly after the apply; wait for the first answer.
        var first = ""
        for _ in 0..<50 where !first.hasPrefix("web-") { first = (try? probe(lab.podNS("default", "client"), "\(vip):80").stdout) ?? ""; if !first.hasPrefix("web-") { usleep(100_000) } }
        try #require(first.hasPrefix("web-"), "the ClusterIP answers: \(first)")

        // From a pod: both endpoints (one per node) answer, and they see the client's own address.
        let fromPod = try answers(lab.podNS("default", "client"), "\(vip):80")
        #expect(Set(fromPod.map { $0.split(separator: " ")[0] }) == ["web-a", "web-b"], "load-balanced over both nodes: \(fromPod)")
        #expect(fromPod.allSatisfy { $0.hasSuffix(" \(clientIP)") }, "pod-to-service keeps the source address: \(fromPod)")
        // HTTP through the ClusterIP and a NodePort, from curl and from an HTTP/1.0 client that
        // reads to the end: the backend's answer names it and the client's own address.
        let viaCurl = try sh(["ip", "netns", "exec", lab.podNS("default", "client"), "curl", "-s", "-m", "5", "http://\(vip)/"])
        let echo = try #require(viaCurl.json, "curl through the ClusterIP: \(viaCurl.stdout)\(viaCurl.stderr)")
        #expect(["web-a", "web-b"].contains(echo["pod"]?.stringValue ?? "") && echo["namespace"]?.stringValue == "default"
                && echo["clientAddress"]?.stringValue == clientIP, "\(echo.serialized())")
        let readToEnd = try (0..<6).map { _ in try exchange(in: lab.podNS("default", "client"), vip, 80, send: "GET /hostname HTTP/1.0\r\n\r\n") }
        #expect(readToEnd.allSatisfy { $0.closed && $0.text.hasPrefix("HTTP/1.0 200 OK\r\n") && $0.text.contains("X-Weft-Client: \(clientIP):") },
                "HTTP/1.0 through the ClusterIP: \(readToEnd.map(\.text))")
        #expect(Set(readToEnd.map { $0.text.components(separatedBy: "\r\n\r\n").last ?? "" }).isSubset(of: ["web-a", "web-b"]))
        let viaNodePort = try sh(["ip", "netns", "exec", "wl-\(lab.name)-net", "curl", "-s", "-m", "5", "http://192.168.100.12:30080/hostname"])
        #expect(["web-a", "web-b"].contains(viaNodePort.stdout), "curl to a NodePort: \(viaNodePort.stdout)\(viaNodePort.stderr)")
        // From a node's own network namespace.
        #expect(try answers(lab.nodeNS(1), "\(vip):80", tries: 5).allSatisfy { $0.hasPrefix("web-") })
        // NodePort on both node addresses, from the host network (outside the cluster).
        for nodeIP in ["192.168.100.11", "192.168.100.12"] {
            let r = try answers("wl-\(lab.name)-net", "\(nodeIP):30080", tries: 5)
            #expect(r.allSatisfy { $0.hasPrefix("web-") }, "NodePort on \(nodeIP): \(r)")
        }
        // An external IP, routed to node0 by the host network (as an admin would), answers there.
        try sh(["ip", "netns", "exec", "wl-\(lab.name)-net", "ip", "route", "add", "203.0.113.10/32", "via", "192.168.100.11"])
        let external = try answers("wl-\(lab.name)-net", "203.0.113.10:80", tries: 5)
        #expect(external.allSatisfy { $0.hasPrefix("web-") }, "externalIP: \(external)")

        // Hairpin: an endpoint reaches itself through its own service.
        let hairpin = try answers(lab.podNS("default", "web-a"), "\(vip):80", tries: 20)
        #expect(hairpin.allSatisfy { $0.hasPrefix("web-") }, "\(hairpin)")
        #expect(hairpin.contains { $0.hasPrefix("web-a") }, "reached itself at least once in 20: \(hairpin)")
        // Dual-stack: an IPv4 and an IPv6 ClusterIP, each leading to the pods' address of its family.
        let dualSpec = svcs.first { $0["metadata"]?["name"]?.stringValue == "dual" }?["spec"]
        let dual = (dualSpec?["clusterIPs"]?.arrayValue ?? []).compactMap { $0.stringValue }
        try #require(dual.count == 2, "\(dual)")
        let vip6 = try #require(dual.first { $0.contains(":") })
        #expect(IPNetwork("fd00:96::/112")!.contains(IPAddress(vip6)!))
        let clientIP6 = try #require(pods.first { $0["metadata"]?["name"]?.stringValue == "client" }?["status"]?["podIPs"]?.arrayValue?
            .compactMap { $0["ip"]?.stringValue }.first { $0.contains(":") })
        let over6 = try answers(lab.podNS("default", "client"), "[\(vip6)]:80", tries: 10)
        #expect(over6.allSatisfy { $0.hasPrefix("web-") && $0.hasSuffix(" \(clientIP6)") }, "IPv6 ClusterIP: \(over6)")

        // Session affinity: one client keeps its endpoint; without it the same client saw both.
        let stickyVIP = try #require(svcs.first { $0["metadata"]?["name"]?.stringValue == "sticky" }?["spec"]?["clusterIP"]?.stringValue)
        let stuck = try answers(lab.podNS("default", "client"), "\(stickyVIP):80", tries: 20)
        #expect(stuck.allSatisfy { $0.hasPrefix("web-") }, "\(stuck)")
        #expect(Set(stuck.map { $0.split(separator: " ").first.map(String.init) ?? "" }).count == 1, "ClientIP affinity keeps one endpoint: \(stuck)")

        // Local traffic policies: from inside, only the client's node's endpoint; from outside,
        // the receiving node's endpoint, which sees the real client address (no masquerade).
        let localVIP = try #require(svcs.first { $0["metadata"]?["name"]?.stringValue == "local" }?["spec"]?["clusterIP"]?.stringValue)
        let inside = try answers(lab.podNS("default", "client"), "\(localVIP):80", tries: 10)
        #expect(inside.allSatisfy { $0.hasPrefix("web-a ") }, "internalTrafficPolicy Local keeps to node0: \(inside)")
        let toNode1 = try answers("wl-\(lab.name)-net", "192.168.100.12:30081", tries: 5)
        #expect(toNode1.allSatisfy { $0 == "web-b 192.168.100.1" }, "externalTrafficPolicy Local: node1's endpoint, client address kept: \(toNode1)")
        let toNode0 = try answers("wl-\(lab.name)-net", "192.168.100.11:30081", tries: 5)
        #expect(toNode0.allSatisfy { $0 == "web-a 192.168.100.1" }, "\(toNode0)")

        // No endpoints: refused, not a timeout.
        let refused = try probe(lab.podNS("default", "client"), "\(emptyVIP):80")
        #expect(refused.status != 0 && refused.stderr.contains("refused"), "\(refused.stderr)")

        // The client's node's agent restarts (SIGTERM, then the same command line): a connection
        // held through the ClusterIP all along does not break (the full sync at start replaces
        // the table in one transaction; the flow's NAT lives in conntrack).
        let (flow, out) = try lab.heldFlow(from: lab.podNS("default", "client"), to: "\(vip):80", seconds: 6)
        defer { if flow.isRunning { kill(flow.processIdentifier, SIGKILL) } }
        usleep(500_000)
        #expect(try lab.restartAgent(node: 0).stopped, "the agent stops on SIGTERM")
        #expect(eventually(15) { !flow.isRunning }, "the held flow ends on its own")
        let said = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(flow.terminationStatus == 0, "the flow through the ClusterIP survived the agent's restart: \(said)")

        // An endpoint goes away: the service keeps answering from the other one.
        let del = try lab.run(["delete", "-f", "-"], stdin: "apiVersion: v1\nkind: Pod\nmetadata: {name: web-b}\n")
        #expect(del.status == 0)
        var onlyA = false
        for _ in 0..<50 where !onlyA {
            onlyA = try answers(lab.podNS("default", "client"), "\(vip):80", tries: 6).allSatisfy { $0.hasPrefix("web-a") }
            if !onlyA { usleep(100_000) }
        }
        #expect(onlyA, "after web-b's deletion only web-a answers")
    }

    /// Polls `body` every 100 ms for up to `seconds`; true once it holds.

    @Test("EndpointSlices: written for selectors, honoured from another controller; a terminating pod drains, then the service rejects")
    func endpointSlicesAndTermination() throws {
        let lab = try MultiNodeTests.TestLab(nodes: 2, mode: "native")
        let manifest = """
        apiVersion: v1
        kind: Pod
        metadata: {name: old, labels: {app: drain}}
        spec:
          nodeName: node0
          terminationGracePeriodSeconds: 30
          containers: [{name: web, image: agnhost, ports: [{containerPort: 8080, name: http}], lifecycle: {preStop: {sleep: {seconds: 20}}}}]
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: client}
        spec: {nodeName: node1, containers: [{name: c, image: agnhost}]}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: drain}
        spec: {selector: {app: drain}, ports: [{name: http, port: 80, targetPort: http}]}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: manual}
        spec: {ports: [{name: http, port: 80}]}
        """
        let apply = try lab.run(["apply", "-f", "-"], stdin: manifest)
        try #require(apply.status == 0, "\(apply.stdout)\(apply.stderr)")
        func items(_ what: String) throws -> [JSONValue] { try lab.run(["get", what, "-o", "json"]).json?["items"]?.arrayValue ?? [] }
        func named(_ list: [JSONValue], _ n: String) -> JSONValue? { list.first { $0["metadata"]?["name"]?.stringValue == n } }
        let svcs = try items("services")
        let vip = try #require(named(svcs, "drain")?["spec"]?["clusterIP"]?.stringValue)
        let manualVIP = try #require(named(svcs, "manual")?["spec"]?["clusterIP"]?.stringValue)
        let oldIP = try #require(named(try items("pods"), "old")?["status"]?["podIP"]?.stringValue)
        let client = lab.podNS("default", "client")

        // weft's controller writes the slice of the selecting service: old's address, ready.
        func drainSlices() throws -> [JSONValue] {
            try items("endpointslices").filter { $0["metadata"]?["labels"]?["kubernetes.io/service-name"]?.stringValue == "drain" }
        }
        func conditions(_ ip: String) throws -> String? {
            for slice in try drainSlices() {
                for e in slice["endpoints"]?.arrayValue ?? [] where e["addresses"]?.arrayValue?.first?.stringValue == ip {
                    let c = e["conditions"]
                    return ["ready", "serving", "terminating"].map { "\($0)=\(c?[$0]?.boolValue ?? false)" }.joined(separator: " ")
                }
            }
            return nil
        }
        #expect(try eventually(10) { try conditions(oldIP) == "ready=true serving=true terminating=false" }, "\((try? drainSlices()) ?? [])")
        #expect(try drainSlices().allSatisfy { $0["metadata"]?["labels"]?["endpointslice.kubernetes.io/managed-by"]?.stringValue == "endpointslice-controller.weft.io" })
        #expect(try eventually(10) { ((try? probe(client, "\(vip):80").stdout) ?? "").hasPrefix("old ") }, "the service answers from old")

        // A slice another controller wrote for a service without a selector is used as it is.
        let manualSlice = """
        apiVersion: discovery.k8s.io/v1
        kind: EndpointSlice
        metadata: {name: manual-1, labels: {kubernetes.io/service-name: manual, endpointslice.kubernetes.io/managed-by: test-controller}}
        addressType: IPv4
        ports: [{name: http, port: 8080, protocol: TCP}]
        endpoints: [{addresses: [\(oldIP)], conditions: {ready: true}}]
        """
        try #require(try lab.run(["apply", "-f", "-"], stdin: manualSlice).status == 0)
        #expect(try eventually(10) { ((try? probe(client, "\(manualVIP):80").stdout) ?? "").hasPrefix("old ") }, "the hand-written slice is honoured")

        // Deleting old: during its preStop sleep it is terminating but still serving, and, being
        // the only endpoint, still gets the traffic (Kubernetes' fallback).
        let del = try lab.run(["delete", "-f", "-", "--wait", "false"], stdin: "apiVersion: v1\nkind: Pod\nmetadata: {name: old}\n")
        try #require(del.status == 0, "\(del.stderr)")
        #expect(try eventually(5) { try conditions(oldIP) == "ready=false serving=true terminating=true" }, "\((try? drainSlices()) ?? [])")
        let draining = try answers(client, "\(vip):80", tries: 5)
        #expect(draining.allSatisfy { $0.hasPrefix("old ") }, "a terminating endpoint takes traffic while none is ready: \(draining)")

        // A new ready pod takes all the traffic while old still drains.
        let new = try lab.run(["apply", "-f", "-"], stdin: """
        apiVersion: v1
        kind: Pod
        metadata: {name: new, labels: {app: drain}}
        spec: {nodeName: node1, containers: [{name: web, image: agnhost, ports: [{containerPort: 8080, name: http}]}]}
        """)
        try #require(new.status == 0, "\(new.stderr)")
        #expect(try eventually(5) { try answers(client, "\(vip):80", tries: 5).allSatisfy { $0.hasPrefix("new ") } }, "the ready endpoint only")
        #expect(named(try items("pods"), "old") != nil, "old is still terminating (preStop of 20 s)")

        // After the grace, old is gone: from the pods, from the slice, and its traffic with it.
        #expect(try eventually(40) { named(try items("pods"), "old") == nil }, "old terminated")
        #expect(try eventually(5) { try conditions(oldIP) == nil })
        // Grace 0 deletes at once; with no endpoint left the service refuses at once.
        try #require(try lab.run(["delete", "-f", "-", "--grace-period", "0"], stdin: "apiVersion: v1\nkind: Pod\nmetadata: {name: new}\n").status == 0)
        #expect(try eventually(10) {
            let r = try probe(client, "\(vip):80")
            return r.status != 0 && r.stderr.contains("refused")
        }, "no endpoint: rejected")

        // Deleting the service removes weft's slices; the other controller's slice stays.
        try #require(try lab.run(["delete", "-f", "-"], stdin: "apiVersion: v1\nkind: Service\nmetadata: {name: drain}\n").status == 0)
        #expect(try eventually(10) { try drainSlices().isEmpty })
        #expect(named(try items("endpointslices"), "manual-1") != nil, "the other controller's slice is not touched")
    }

    @Test("LoadBalancer: an address from the pool announced by one node, reachable from the host network; Local keeps the client address and has a health check")
    func loadBalancers() throws {
        // A short lease: the failover at the end waits for the dead node's lease to run out.
        let lab = try MultiNodeTests.TestLab(nodes: 2, mode: "native", leaseTTL: 2)
        let manifest = """
        apiVersion: v1
        kind: Pod
        metadata: {name: web-a, labels: {app: web, local: "yes"}}
        spec: {nodeName: node0, containers: [{name: web, image: agnhost, ports: [{containerPort: 8080, name: http}]}]}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: web-b, labels: {app: web}}
        spec: {nodeName: node1, containers: [{name: web, image: agnhost, ports: [{containerPort: 8080, name: http}]}]}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: lb}
        spec: {type: LoadBalancer, selector: {app: web}, ports: [{name: http, port: 80, targetPort: http}]}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: lblocal}
        spec: {type: LoadBalancer, externalTrafficPolicy: Local, selector: {local: "yes"}, ports: [{name: http, port: 80, targetPort: http}]}
        """
        let apply = try lab.run(["apply", "-f", "-"], stdin: manifest)
        try #require(apply.status == 0, "\(apply.stdout)\(apply.stderr)")
        let svcs = try #require(try lab.run(["get", "services", "-o", "json"]).json?["items"]?.arrayValue)
        func spec(_ n: String) -> JSONValue? { svcs.first { $0["metadata"]?["name"]?.stringValue == n } }
        let lbIP = try #require(spec("lb")?["status"]?["loadBalancer"]?["ingress"]?.arrayValue?.first?["ip"]?.stringValue)
        let localIP = try #require(spec("lblocal")?["status"]?["loadBalancer"]?["ingress"]?.arrayValue?.first?["ip"]?.stringValue)
        let pool = IPNetwork("192.168.100.64/28")!
        #expect(pool.contains(IPAddress(lbIP)!) && pool.contains(IPAddress(localIP)!) && lbIP != localIP, "\(lbIP) \(localIP)")
        let hc = try #require(spec("lblocal")?["spec"]?["healthCheckNodePort"]?.intValue)
        #expect(spec("lb")?["spec"]?["healthCheckNodePort"] == nil, "Cluster policy: no health check")
        #expect(try lab.run(["get", "services"]).stdout.contains(lbIP), "weft get services shows the EXTERNAL-IP")

        // Exactly one node holds each address on its uplink.
        func holders(_ ip: String) throws -> [Int] {
            try (0..<2).filter { try sh(["ip", "-n", lab.nodeNS($0), "-o", "addr", "show", "dev", "eth0"]).stdout.contains(" \(ip)/32 ") }
        }
        #expect(try eventually(10) { try holders(lbIP).count == 1 }, "one announcer for \(lbIP): \((try? holders(lbIP)) ?? [])")
        // Local: only node0 has an endpoint, so node0 announces.
        #expect(try eventually(10) { try holders(localIP) == [0] }, "the node with the local endpoint announces \(localIP): \((try? holders(localIP)) ?? [])")

        // From the host network (outside the cluster): both endpoints behind the Cluster one.
        let host = "wl-\(lab.name)-net"
        #expect(try eventually(10) { ((try? probe(host, "\(lbIP):80").stdout) ?? "").hasPrefix("web-") })
        let viaLB = try answers(host, "\(lbIP):80", tries: 20)
        #expect(Set(viaLB.map { $0.split(separator: " ")[0] }) == ["web-a", "web-b"], "\(viaLB)")
        // Local: web-a only, and it sees the real client address.
        let viaLocal = try answers(host, "\(localIP):80", tries: 5)
        #expect(viaLocal.allSatisfy { $0 == "web-a 192.168.100.1" }, "\(viaLocal)")

        // The health check: 200 on the node with a local endpoint, 503 on the other.
        func health(_ node: String) throws -> (String, String) {
            let r = try sh(["ip", "netns", "exec", host, "curl", "-s", "-m", "3", "-w", "\n%{http_code}", "http://\(node):\(hc)/healthz"])
            let lines = r.stdout.split(separator: "\n").map(String.init)
            return (lines.last ?? "", lines.dropLast().joined())
        }
        let (code0, body0) = try health("192.168.100.11")
        #expect(code0 == "200" && body0.contains("\"localEndpoints\":1") && body0.contains("\"name\":\"lblocal\""), "\(code0) \(body0)")
        #expect(try health("192.168.100.12").0 == "503")

        // web-a goes: the Local service has no endpoint left, nobody announces it, node0's check fails.
        try #require(try lab.run(["delete", "-f", "-", "--grace-period", "0"], stdin: "apiVersion: v1\nkind: Pod\nmetadata: {name: web-a}\n").status == 0)
        #expect(try eventually(10) { try holders(localIP).isEmpty })
        #expect(try eventually(10) { try health("192.168.100.11").0 == "503" })
        #expect(try answers(host, "\(lbIP):80", tries: 5).allSatisfy { $0.hasPrefix("web-b ") }, "the Cluster one still answers")
        // Deleting the service gives its address back: nobody holds it any more.
        try #require(try lab.run(["delete", "-f", "-"], stdin: "apiVersion: v1\nkind: Service\nmetadata: {name: lb}\n").status == 0)
        #expect(try eventually(10) { try holders(lbIP).isEmpty })

        // Failover: the announcing node dies (agent killed, uplink down). When its lease runs
        // out the other node takes the address and says so (gratuitous ARP): the host network's
        // neighbour entry moves to the new holder's MAC without any traffic asking for it.
        try #require(try lab.run(["apply", "-f", "-"], stdin: "apiVersion: v1\nkind: Service\nmetadata: {name: lbmove}\nspec: {type: LoadBalancer, selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}\n").status == 0)
        let moveIP = try #require(try lab.run(["get", "services", "-o", "json"]).json?["items"]?.arrayValue?
            .first { $0["metadata"]?["name"]?.stringValue == "lbmove" }?["status"]?["loadBalancer"]?["ingress"]?.arrayValue?.first?["ip"]?.stringValue)
        #expect(try eventually(10) { try holders(moveIP).count == 1 })
        let dead = try #require(try holders(moveIP).first), survivor = 1 - dead
        #expect(try eventually(10) { ((try? probe(host, "\(moveIP):80").stdout) ?? "").hasPrefix("web-") }, "the host network learns the holder")
        func mac(_ i: Int) throws -> String { try sh(["ip", "netns", "exec", lab.nodeNS(i), "cat", "/sys/class/net/eth0/address"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines) }
        func neighbour() throws -> String { try sh(["ip", "-n", host, "neigh", "show", moveIP]).stdout }
        #expect(try neighbour().contains(try mac(dead)))
        let pids = try sh(["ip", "netns", "pids", lab.nodeNS(dead)]).stdout.split(separator: "\n").compactMap { pid_t($0) }
        for p in pids where ((try? Files.readString("/proc/\(p)/cmdline")) ?? "").contains("agent") { kill(p, SIGKILL) }
        try sh(["ip", "-n", lab.nodeNS(dead), "link", "set", "eth0", "down"])
        #expect(try eventually(15) { try holders(moveIP).contains(survivor) }, "the survivor announces \(moveIP)")
        #expect(try eventually(5) { try neighbour().contains(try mac(survivor)) }, "gratuitous ARP moved the host's entry: \((try? neighbour()) ?? "")")
    }

    @Test("cluster DNS: service names, search path, headless, SRV, ExternalName, NXDOMAIN, over UDP and TCP, from pods")
    func clusterDNS() throws {
        let lab = try MultiNodeTests.TestLab(nodes: 2, mode: "vxlan")
        let manifest = """
        apiVersion: v1
        kind: Pod
        metadata: {name: web-a, labels: {app: web}}
        spec: {nodeName: node0, containers: [{name: web, image: agnhost, ports: [{containerPort: 8080, name: http}]}]}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: web-b, labels: {app: web}}
        spec: {nodeName: node1, containers: [{name: web, image: agnhost, ports: [{containerPort: 8080, name: http}]}]}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: client}
        spec: {nodeName: node1, containers: [{name: c, image: agnhost}]}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: web}
        spec: {selector: {app: web}, ports: [{name: http, port: 80, targetPort: http}]}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: hl}
        spec: {clusterIP: None, selector: {app: web}, ports: [{name: http, port: 8080}]}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: named, labels: {app: named}}
        spec: {nodeName: node0, hostname: primary, subdomain: db, containers: [{name: c, image: agnhost}]}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: db}
        spec: {clusterIP: None, selector: {app: named}, ports: [{name: http, port: 8080}]}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: ext}
        spec: {type: ExternalName, externalName: db.example.com}
        """
        let apply = try lab.run(["apply", "-f", "-"], stdin: manifest)
        try #require(apply.status == 0, "\(apply.stdout)\(apply.stderr)")
        let svcs = try #require(try lab.run(["get", "services", "-A", "-o", "json"]).json?["items"]?.arrayValue)
        let vip = try #require(svcs.first { $0["metadata"]?["name"]?.stringValue == "web" }?["spec"]?["clusterIP"]?.stringValue)
        #expect(svcs.first { $0["metadata"]?["name"]?.stringValue == "kube-dns" }?["spec"]?["clusterIP"]?.stringValue == "10.96.0.10")
        let pods = try #require(try lab.run(["get", "pods", "-o", "json"]).json?["items"]?.arrayValue)
        let webIPs = Set(pods.filter { ($0["metadata"]?["name"]?.stringValue ?? "").hasPrefix("web-") }.compactMap { $0["status"]?["podIP"]?.stringValue })
        let client = lab.podNS("default", "client")

        // The pod's resolv.conf, as kubelet writes it for ClusterFirst.
        let resolv = try sh(["cat", "/etc/netns/\(client)/resolv.conf"]).stdout
        #expect(resolv.contains("nameserver 10.96.0.10") && resolv.contains("search default.svc.cluster.local svc.cluster.local cluster.local")
                && resolv.contains("options ndots:5"), "\(resolv)")
        func dig(_ args: String...) throws -> String {
            try sh(["ip", "netns", "exec", client, "dig", "+time=2", "+tries=2"] + args).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        // Each node publishes its resolver; the first answer may wait for the agents' zone.
        #expect(try eventually(15) { try dig("+short", "web.default.svc.cluster.local") == vip }, "A record of the ClusterIP")
        #expect(try dig("+short", "+tcp", "web.default.svc.cluster.local") == vip, "over TCP too")
        #expect(try dig("+short", "+search", "web") == vip, "the short name through the search path")
        let getent = try sh(["ip", "netns", "exec", client, "getent", "hosts", "web.default"]).stdout
        #expect(getent.hasPrefix(vip + " "), "glibc's resolver: \(getent)")
        // Headless: the ready pods' addresses.
        #expect(try eventually(10) { Set(try dig("+short", "hl.default.svc.cluster.local").split(separator: "\n").map(String.init)) == webIPs })
        // SRV for a named port, ExternalName as a CNAME.
        #expect(try dig("+short", "SRV", "_http._tcp.web.default.svc.cluster.local").hasSuffix(" 80 web.default.svc.cluster.local."))
        #expect(try dig("+short", "CNAME", "ext.default.svc.cluster.local") == "db.example.com.")
        // A pod by its dashed address; a pod by its hostname under its headless subdomain.
        let anyWeb = try #require(webIPs.first)
        #expect(try dig("+short", "\(anyWeb.replacingOccurrences(of: ".", with: "-")).default.pod.cluster.local") == anyWeb)
        let namedIP = try #require(try lab.run(["get", "pods", "-o", "json"]).json?["items"]?.arrayValue?
            .first { $0["metadata"]?["name"]?.stringValue == "named" }?["status"]?["podIP"]?.stringValue)
        #expect(try eventually(10) { try dig("+short", "primary.db.default.svc.cluster.local") == namedIP }, "hostname.subdomain")
        // A name that does not exist: NXDOMAIN, not a timeout.
        #expect(try dig("nope.default.svc.cluster.local").contains("status: NXDOMAIN"))
        // Every node's resolver is an endpoint of kube-dns.
        let slices = try lab.run(["get", "endpointslices", "-n", "kube-system"]).stdout
        #expect(slices.contains("kube-dns-node0") && slices.contains("kube-dns-node1"), "\(slices)")
        // A new service resolves as soon as it is applied.
        try #require(try lab.run(["apply", "-f", "-"], stdin: "apiVersion: v1\nkind: Service\nmetadata: {name: later}\nspec: {selector: {app: web}, ports: [{port: 81}]}\n").status == 0)
        let laterIP = try #require(try lab.run(["get", "services", "-o", "json"]).json?["items"]?.arrayValue?
            .first { $0["metadata"]?["name"]?.stringValue == "later" }?["spec"]?["clusterIP"]?.stringValue)
        #expect(try eventually(5) { try dig("+short", "later.default.svc.cluster.local") == laterIP })
    }

    @Test("Deployment: replicas behind a service; scaled, rolled to a new template and deleted with its pods")
    func deployments() throws {
        let lab = try MultiNodeTests.TestLab(nodes: 2, mode: "native")
        func deployment(replicas: Int, version: String) -> String {
            """
            apiVersion: apps/v1
            kind: Deployment
            metadata: {name: web}
            spec:
              replicas: \(replicas)
              selector: {matchLabels: {app: web}}
              template:
                metadata: {labels: {app: web, version: "\(version)"}}
                spec: {terminationGracePeriodSeconds: 5, containers: [{name: web, image: agnhost, ports: [{containerPort: 8080, name: http}]}]}
            ---
            apiVersion: v1
            kind: Service
            metadata: {name: web}
            spec: {selector: {app: web}, ports: [{name: http, port: 80, targetPort: http}]}
            ---
            apiVersion: v1
            kind: Pod
            metadata: {name: client}
            spec: {nodeName: node0, containers: [{name: c, image: agnhost}]}
            """
        }
        func webPods() throws -> [JSONValue] {
            (try lab.run(["get", "pods", "-o", "json"]).json?["items"]?.arrayValue ?? []).filter { ($0["metadata"]?["name"]?.stringValue ?? "").hasPrefix("web-") }
        }
        let first = try lab.run(["apply", "-f", "-"], stdin: deployment(replicas: 3, version: "1"))
        try #require(first.status == 0, "\(first.stdout)\(first.stderr)")
        let three = try webPods()
        #expect(three.count == 3 && three.allSatisfy { $0["status"]?["phase"]?.stringValue == "Running" }, "apply waits for the replicas")
        #expect(Set(three.compactMap { $0["spec"]?["nodeName"]?.stringValue }) == ["node0", "node1"], "spread over the nodes")
        let vip = try #require(try lab.run(["get", "services", "-o", "json"]).json?["items"]?.arrayValue?
            .first { $0["metadata"]?["name"]?.stringValue == "web" }?["spec"]?["clusterIP"]?.stringValue)
        let names = Set(three.compactMap { $0["metadata"]?["name"]?.stringValue })
        #expect(try eventually(10) { Set(try answers(lab.podNS("default", "client"), "\(vip):80", tries: 30).map { String($0.split(separator: " ")[0]) }) == names },
                "every replica answers through the service")
        #expect(try lab.run(["get", "deployments"]).stdout.contains("3/3"))

        // Scaled down: one stays.
        try #require(try lab.run(["apply", "-f", "-"], stdin: deployment(replicas: 1, version: "1")).status == 0)
        #expect(try eventually(15) { try webPods().count == 1 })
        // A new template: a new pod of it runs, then the old one goes.
        let rolled = try lab.run(["apply", "-f", "-"], stdin: deployment(replicas: 1, version: "2"))
        try #require(rolled.status == 0, "\(rolled.stderr)")
        #expect(rolled.stdout.contains("previous template terminating"), "\(rolled.stdout)")
        #expect(try eventually(15) { let p = try webPods(); return p.count == 1 && p[0]["metadata"]?["labels"]?["version"]?.stringValue == "2" })
        // Deleting the deployment deletes its pods.
        try #require(try lab.run(["delete", "-f", "-"], stdin: "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n").status == 0)
        #expect(try webPods().isEmpty)
        // A deployment whose selector does not match its template is refused, nothing stored.
        let bad = try lab.run(["apply", "-f", "-"], stdin: deployment(replicas: 1, version: "1").replacingOccurrences(of: "matchLabels: {app: web}", with: "matchLabels: {app: other}"))
        #expect(bad.status != 0 && bad.stderr.contains("does not match spec.template.metadata.labels"), "\(bad.stderr)")
        #expect(try lab.run(["get", "deployments"]).stdout.contains("No resources") || !(try lab.run(["get", "deployments"]).stdout.contains("web")))
    }

    @Test("UDP: a long-lived client flow follows the service to a new endpoint (stale conntrack entries deleted)")
    func udpFlowFollowsTheService() throws {
        let lab = try MultiNodeTests.TestLab(nodes: 2, mode: "native")
        func pod(_ name: String, _ node: String) -> String {
            "apiVersion: v1\nkind: Pod\nmetadata: {name: \(name), labels: {app: udp}}\nspec: {nodeName: \(node), containers: [{name: s, image: agnhost, ports: [{containerPort: 8053, protocol: UDP}]}]}\n"
        }
        let apply = try lab.run(["apply", "-f", "-"], stdin: pod("u-a", "node1") + """
            ---
            apiVersion: v1
            kind: Pod
            metadata: {name: client}
            spec: {nodeName: node0, containers: [{name: c, image: agnhost}]}
            ---
            apiVersion: v1
            kind: Service
            metadata: {name: udp}
            spec: {selector: {app: udp}, ports: [{name: dns, port: 53, protocol: UDP, targetPort: 8053}]}
            """)
        try #require(apply.status == 0, "\(apply.stdout)\(apply.stderr)")
        let vip = try #require(try lab.run(["get", "services", "-o", "json"]).json?["items"]?.arrayValue?.first?["spec"]?["clusterIP"]?.stringValue)
        // One flow: the same source port every time, as a resolver client or a game keeps.
        func ask() -> String {
            (try? sh(["ip", "netns", "exec", lab.podNS("default", "client"), product("weft"), "probe", "--udp", "--source-port", "40001",
                      "--timeout", "500", "\(vip):53"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)) ?? ""
        }
        #expect(eventually(10) { ask().hasPrefix("u-a ") }, "u-a answers the flow")
        // The endpoint is replaced: the flow's conntrack entry still says u-a, which is gone.
        try #require(try lab.run(["delete", "-f", "-", "--grace-period", "0"], stdin: "apiVersion: v1\nkind: Pod\nmetadata: {name: u-a}\n").status == 0)
        try #require(try lab.run(["apply", "-f", "-"], stdin: pod("u-b", "node1")).status == 0)
        // 20 s: other suites' labs run at the same time in CI; still short of the entry's 30 s
        // timeout, so only the deletion of the stale entry lets the flow reach u-b.
        #expect(eventually(20) { ask().hasPrefix("u-b ") }, "the same flow reaches u-b before the entry's 30 s timeout")
    }

    @Test("bad Services: a taken NodePort or ClusterIP, one outside the range, bad ports; nothing running disturbed")
    func badServices() throws {
        let lab = try MultiNodeTests.TestLab(nodes: 1, mode: "native")
        try #require(try lab.run(["apply", "-f", "-"], stdin: Self.manifest.replacingOccurrences(of: "nodeName: node1", with: "nodeName: node0")).status == 0)
        let vip = try #require(try lab.run(["get", "services", "-o", "json"]).json?["items"]?.arrayValue?
            .first { $0["metadata"]?["name"]?.stringValue == "web" }?["spec"]?["clusterIP"]?.stringValue)
        let cases: [(String, String)] = [
            ("{type: NodePort, selector: {app: web}, ports: [{port: 81, nodePort: 30080}]}", "nodePort 30080 is already used by another service"),
            ("{clusterIP: \(vip), selector: {app: web}, ports: [{port: 80}]}", "spec.clusterIP \(vip) is already allocated to another service"),
            ("{clusterIP: 10.200.0.1, ports: [{port: 80}]}", "spec.clusterIP 10.200.0.1 is outside the service range 10.96.0.0/16"),
            ("{ports: [{port: 0}]}", "must be a port number from 1 to 65535"),
            ("{ports: [{port: 80, protocol: ICMP}]}", "protocol \"ICMP\" must be TCP, UDP or SCTP"),
            ("{type: NodePort, ports: [{port: 80, nodePort: 99}]}", "outside the node port range 30000-32767"),
        ]
        for (spec, message) in cases {
            let r = try lab.run(["apply", "-f", "-"], stdin: "apiVersion: v1\nkind: Service\nmetadata: {name: bad}\nspec: \(spec)\n")
            #expect(r.status != 0, "\(spec) accepted")
            #expect(r.stderr.contains(message), "\(spec): \(r.stderr)")
        }
        #expect(try lab.run(["get", "services", "-o", "json"]).json?["items"]?.arrayValue?.count == 5, "no half-made service stored")
        // The running service still answers.
        var ok = false
        for _ in 0..<50 where !ok { ok = ((try? probe(lab.podNS("default", "client"), "\(vip):80").stdout) ?? "").hasPrefix("web-"); if !ok { usleep(100_000) } }
        #expect(ok)
    }
}
