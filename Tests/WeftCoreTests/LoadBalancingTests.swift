import Testing
import WeftCore

struct LoadBalancingTests {
    typealias T = ServiceTests

    @Test func everyAddressHasOneAnnouncerAndALeavingNodeMovesOnlyItsOwn() {
        let nodes = (0..<5).map { "node\($0)" }
        let ips = (1...60).map { IPAddress("192.168.100.\($0)")! }
        let before = Dictionary(uniqueKeysWithValues: ips.map { ($0, LoadBalancing.announcer(of: $0, among: nodes)!) })
        #expect(Set(before.values).count == 5, "spread over every node")
        let after = Dictionary(uniqueKeysWithValues: ips.map { ($0, LoadBalancing.announcer(of: $0, among: nodes.filter { $0 != "node2" })!) })
        for ip in ips where before[ip] != "node2" { #expect(after[ip] == before[ip], "\(ip) stays where it was") }
        #expect(LoadBalancing.announcer(of: ips[0], among: [String]()) == nil)
    }

    @Test func localPolicyAnnouncesFromANodeWithAnEndpointAndHealthChecksCountPods() throws {
        var svc = try T.service(#"{"type":"LoadBalancer","externalTrafficPolicy":"Local","healthCheckNodePort":31000,"selector":{"app":"web"},"ports":[{"port":80,"targetPort":8080}]}"#)
        svc.loadBalancerIPs = [IPAddress("192.168.100.70")!]
        var dual = try T.pod("a", ip: "10.244.1.5", node: "node1")
        dual.setStatus("podIPs", try JSONValue.parse(#"[{"ip":"10.244.1.5"},{"ip":"fd00::5"}]"#))
        let entries = [ServiceRules.Entry(service: svc, endpoints: svc.endpoints(from: [dual]))]
        let live: Set<String> = ["node0", "node1", "node2"]
        #expect(LoadBalancing.addresses(announcedBy: "node1", entries: entries, liveNodes: live) == [IPAddress("192.168.100.70")!])
        #expect(LoadBalancing.addresses(announcedBy: "node0", entries: entries, liveNodes: live).isEmpty)
        #expect(LoadBalancing.addresses(announcedBy: "node1", entries: entries, liveNodes: ["node0"]).isEmpty, "a node whose lease expired announces nothing")
        #expect(LoadBalancing.healthChecks(node: "node1", entries: entries) == [31000: .init(service: "default/web", localEndpoints: 1)], "one dual-stack pod is one endpoint")
        #expect(LoadBalancing.healthChecks(node: "node0", entries: entries)[31000]?.localEndpoints == 0)
    }

    @Test func loadBalancerAddressesAreServedLikeExternalIPs() throws {
        var svc = try T.service(#"{"type":"LoadBalancer","selector":{"app":"web"},"ports":[{"port":80,"targetPort":8080,"nodePort":30090}]}"#)
        svc.clusterIPs = [IPAddress("10.96.0.40")!]
        svc.loadBalancerIPs = [IPAddress("192.168.100.70")!]
        let script = ServiceRules.script([.init(service: svc, endpoints: svc.endpoints(from: [try T.pod("a", ip: "10.244.0.5")]))])
        #expect(script.contains("192.168.100.70 . tcp . 80 : goto svc-default/web/tcp/80/external"), "masqueraded like traffic from outside")
    }

    @Test func statusAndHealthCheckPortAreReadAndChecked() throws {
        let j = try JSONValue.parse(#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"w","namespace":"default"},"spec":{"type":"LoadBalancer","ports":[{"port":80}]},"status":{"loadBalancer":{"ingress":[{"ip":"192.168.100.66"},{"hostname":"lb.example.com"}]}}}"#)
        #expect(try ClusterService(KubeObject(json: j)).loadBalancerIPs == [IPAddress("192.168.100.66")!])
        #expect(throws: ManifestError.self) { try T.service(#"{"type":"LoadBalancer","healthCheckNodePort":80,"ports":[{"port":80}]}"#) }
        #expect(throws: ManifestError.self) { try T.service(#"{"loadBalancerIP":"192.168.100.66","ports":[{"port":80}]}"#) }
    }
}

struct StaleConntrackTests {
    typealias T = ServiceTests

    @Test func udpServicesClearWhatAChangeLeftStale() throws {
        var svc = try T.service(#"{"type":"NodePort","selector":{"app":"web"},"ports":[{"name":"dns","port":53,"protocol":"UDP","targetPort":8053,"nodePort":30053},{"name":"http","port":80,"targetPort":8080}]}"#)
        svc.clusterIPs = [IPAddress("10.96.0.53")!]
        func entry(_ pods: [KubeObject]) -> [ServiceRules.Entry] { [.init(service: svc, endpoints: svc.endpoints(from: pods))] }
        let a = try T.pod("a", ip: "10.244.0.5"), b = try T.pod("b", ip: "10.244.1.5")
        // An endpoint goes: flows it answered, through the VIP and the node port, for UDP only.
        #expect(ServiceRules.staleConntrack(from: entry([a, b]), to: entry([b])) == [
            StaleConntrack(family: .v4, proto: "UDP", destination: IPAddress("10.96.0.53")!, destinationPort: 53, replySource: IPAddress("10.244.0.5")!, replySourcePort: 8053),
            StaleConntrack(family: .v4, proto: "UDP", destinationPort: 30053, replySource: IPAddress("10.244.0.5")!, replySourcePort: 8053),
        ])
        // From none to some: whatever was made while it rejected.
        #expect(ServiceRules.staleConntrack(from: entry([]), to: entry([a])) == [
            StaleConntrack(family: .v4, proto: "UDP", destination: IPAddress("10.96.0.53")!, destinationPort: 53),
            StaleConntrack(family: .v4, proto: "UDP", destinationPort: 30053),
        ])
        #expect(ServiceRules.staleConntrack(from: entry([a]), to: entry([a, b])).isEmpty, "an endpoint added leaves nothing stale")
        #expect(ServiceRules.staleConntrack(from: [], to: entry([a])) == ServiceRules.staleConntrack(from: entry([]), to: entry([a])),
                "a new service: datagrams sent before it was programmed went un-NATed; their entries go too")
    }
}
