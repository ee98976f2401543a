import Testing
import WeftCore

struct ServiceTests {
    static func service(_ spec: String, name: String = "web") throws -> ClusterService {
        let j = try JSONValue.parse(Array(#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"\#(name)","namespace":"default"},"spec":\#(spec)}"#.utf8))
        return try ClusterService(KubeObject(json: j))
    }

    static func pod(_ name: String, ip: String, labels: String = #"{"app":"web"}"#, phase: String = "Running", node: String = "node0") throws -> KubeObject {
        let j = try JSONValue.parse(Array(#"""
        {"apiVersion":"v1","kind":"Pod","metadata":{"name":"\#(name)","namespace":"default","labels":\#(labels)},
         "spec":{"nodeName":"\#(node)","containers":[{"name":"c","ports":[{"name":"http","containerPort":8080}]}]},
         "status":{"phase":"\#(phase)","podIP":"\#(ip)"}}
        """#.utf8))
        return KubeObject(json: j)
    }

    @Test func parsesPortsTargetsAndSelector() throws {
        let s = try Self.service(#"{"type":"NodePort","selector":{"app":"web"},"ports":[{"name":"http","port":80,"targetPort":"http","nodePort":30080},{"name":"dns","port":53,"protocol":"UDP","targetPort":5353}]}"#)
        #expect(s.kind == .nodePort)
        #expect(s.selector == ["app": "web"])
        #expect(s.ports.map(\.port) == [80, 53])
        #expect(s.ports[0].targetPort == .name("http") && s.ports[0].nodePort == 30080)
        #expect(s.ports[1].proto == "UDP" && s.ports[1].targetPort == .number(5353))
        #expect(try Self.service(#"{"clusterIP":"None","selector":{"app":"web"}}"#).headless)
    }

    @Test(arguments: [
        (#"{"ports":[{"port":70000}]}"#, "port 70000 must be a port number from 1 to 65535"),
        (#"{"ports":[{"port":80,"protocol":"ICMP"}]}"#, "protocol \"ICMP\" must be TCP, UDP or SCTP"),
        (#"{"type":"NodePort","ports":[{"port":80,"nodePort":80}]}"#, "nodePort 80 is outside the node port range 30000-32767"),
        (#"{"ports":[{"port":80,"nodePort":30001}]}"#, "nodePort is only allowed for type NodePort or LoadBalancer"),
        (#"{"ports":[{"port":80,"targetPort":"Not_A_Name"}]}"#, "must be a port number or a container port's name"),
        (#"{"type":"Magic","ports":[{"port":80}]}"#, "spec.type \"Magic\" must be ClusterIP"),
        (#"{"clusterIP":"10.96.0.300","ports":[{"port":80}]}"#, "spec.clusterIP \"10.96.0.300\" is not an IP address"),
        (#"{"ports":[]}"#, "spec.ports is empty"),
        (#"{"ports":[{"name":"a","port":80},{"port":81}]}"#, "spec.ports[1].name is required"),
        (#"{"externalTrafficPolicy":"Local","ports":[{"port":80}]}"#, "externalTrafficPolicy Local needs type NodePort or LoadBalancer"),
        (#"{"internalTrafficPolicy":"Nearby","ports":[{"port":80}]}"#, "spec.internalTrafficPolicy \"Nearby\" must be Cluster or Local"),
        (#"{"externalIPs":["nope"],"ports":[{"port":80}]}"#, "spec.externalIPs entry \"nope\" is not an IP address"),
        (#"{"sessionAffinity":"Cookie","ports":[{"port":80}]}"#, "spec.sessionAffinity \"Cookie\" must be None or ClientIP"),
        (#"{"sessionAffinity":"ClientIP","sessionAffinityConfig":{"clientIP":{"timeoutSeconds":0}},"ports":[{"port":80}]}"#, "timeoutSeconds 0 must be from 1 to 86400"),
        (#"{"ipFamilyPolicy":"SingleStack","ipFamilies":["IPv4","IPv6"],"ports":[{"port":80}]}"#, "use PreferDualStack or RequireDualStack"),
    ])
    func refusesBadSpecs(spec: String, says: String) {
        do {
            _ = try Self.service(spec)
            Issue.record("accepted \(spec)")
        } catch {
            #expect("\(error)".contains(says), "\(error)")
        }
    }

    @Test func endpointsAreSelectedPodsWithAddressesAndReadiness() throws {
        let s = try Self.service(#"{"selector":{"app":"web"},"ports":[{"port":80,"targetPort":"http"}]}"#)
        let pods = [try Self.pod("a", ip: "10.244.0.5"), try Self.pod("b", ip: "10.244.1.5", phase: "Pending"),
                    try Self.pod("other", ip: "10.244.0.6", labels: #"{"app":"db"}"#)]
        let eps = s.endpoints(from: pods)
        #expect(eps.map(\.pod) == ["a", "b"])
        #expect(eps.map(\.ready) == [true, false])
        #expect(eps[0].port(for: s.ports[0]) == 8080)
    }

    @Test func rulesSendVIPsToEndpointsAndRejectWithoutEndpoints() throws {
        var web = try Self.service(#"{"type":"NodePort","selector":{"app":"web"},"ports":[{"port":80,"targetPort":"http","nodePort":30080}]}"#)
        web.clusterIPs = [ip("10.96.0.20")]
        var empty = try Self.service(#"{"selector":{"app":"none"},"ports":[{"port":80}]}"#, name: "empty")
        empty.clusterIPs = [ip("10.96.0.21")]
        let pods = [try Self.pod("a", ip: "10.244.0.5"), try Self.pod("b", ip: "10.244.1.5")]
        let script = ServiceRules.script([.init(service: web, endpoints: web.endpoints(from: pods)),
                                          .init(service: empty, endpoints: empty.endpoints(from: pods))])
        let shard = ServiceRules.table(for: web)
        #expect(script.contains("add element inet \(shard) service-ips { 10.96.0.20 . tcp . 80 : goto svc-default/web/tcp/80 }"))
        #expect(script.contains("numgen random mod 2 vmap"))
        #expect(script.contains("dnat ip to 10.244.0.5:8080") && script.contains("dnat ip to 10.244.1.5:8080"))
        #expect(script.contains("service-nodeports { tcp . 30080 : goto svc-default/web/tcp/80/nodeport }"))
        #expect(script.contains("no-endpoint-services { 10.96.0.21 . tcp . 80 : goto reject-chain }"))
        #expect(!script.contains("svc-default/empty"), "no chain for a service without endpoints")
    }

    @Test func oneEndpointChangeTouchesOnlyItsService() throws {
        var web = try Self.service(#"{"selector":{"app":"web"},"ports":[{"port":80,"targetPort":"http"}]}"#)
        web.clusterIPs = [ip("10.96.0.20")]
        var db = try Self.service(#"{"selector":{"app":"db"},"ports":[{"port":5432,"targetPort":8080}]}"#, name: "db")
        db.clusterIPs = [ip("10.96.0.30")]
        let dbPod = try Self.pod("d", ip: "10.244.2.9", labels: #"{"app":"db"}"#)
        let two = [try Self.pod("a", ip: "10.244.0.5"), try Self.pod("b", ip: "10.244.1.5"), dbPod]
        let one = [try Self.pod("a", ip: "10.244.0.5"), dbPod]
        func model(_ pods: [KubeObject]) -> ServiceRules.Model {
            ServiceRules.model([.init(service: web, endpoints: web.endpoints(from: pods)), .init(service: db, endpoints: db.endpoints(from: pods))])
        }
        let t = ServiceRules.table(for: web)
        #expect(t != ServiceRules.table(for: db), "the two services are in different shards")
        let (update, cleanup) = try #require(ServiceRules.transaction(from: model(two), to: model(one))).scripts
        #expect(update == """
            delete element inet \(t) svc-default/web/tcp/80/pick { 1 }
            flush chain inet \(t) svc-default/web/tcp/80
            add rule inet \(t) svc-default/web/tcp/80 numgen random mod 1 vmap @svc-default/web/tcp/80/pick
            flush chain inet \(t) svc-default/web/tcp/80/ep/10.244.1.5/8080

            """)
        #expect(cleanup == "delete chain inet \(t) svc-default/web/tcp/80/ep/10.244.1.5/8080\n")
        #expect(ServiceRules.transaction(from: model(one), to: model(one))?.isEmpty == true)
        // Updated in place, only the changed service is rebuilt and looked at: the same change.
        let inPlace = model(two)
        let next = inPlace.updated(with: [.init(service: web, endpoints: web.endpoints(from: one)), .init(service: db, endpoints: db.endpoints(from: one))])
        #expect(next.revision(of: "default/db") == inPlace.revision(of: "default/db"))
        #expect(next.revision(of: "default/web") != inPlace.revision(of: "default/web"))
        #expect(ServiceRules.transaction(from: inPlace, to: next) == ServiceRules.transaction(from: model(two), to: model(one)))
        #expect(ServiceRules.transaction(from: next, to: next.updated(with: [.init(service: web, endpoints: web.endpoints(from: one)),
                                                                         .init(service: db, endpoints: db.endpoints(from: one))]))?.isEmpty == true)
        // In place: the same change, returned by the update itself.
        var live = model(two)
        #expect(live.update(with: [.init(service: web, endpoints: web.endpoints(from: one)), .init(service: db, endpoints: db.endpoints(from: one))])
                == ServiceRules.transaction(from: model(two), to: model(one)))
        #expect(live.update(with: [.init(service: web, endpoints: web.endpoints(from: one)), .init(service: db, endpoints: db.endpoints(from: one))])?.isEmpty == true)
        // A service gone, found from the update's own record as by comparing every service.
        let webOnly = [ServiceRules.Entry(service: web, endpoints: web.endpoints(from: one))]
        let dbGone = try #require(ServiceRules.transaction(from: next, to: next.updated(with: webOnly)))
        #expect(dbGone == ServiceRules.transaction(from: model(one), to: ServiceRules.model(webOnly)))
        #expect(dbGone.cleanup.contains(.deleteChain(table: ServiceRules.table(for: db), "svc-default/db/tcp/5432")))
        // The last endpoint goes: the VIP moves from the service map to the reject map.
        let goneChange = try #require(ServiceRules.transaction(from: model(one), to: model([dbPod])))
        #expect(Set((goneChange.update + goneChange.cleanup).map(\.table)) == [t, ServiceRules.frontTable], "its shard and the front table only")
        let (gone, _) = goneChange.scripts
        #expect(gone.contains("delete element inet \(t) service-ips { 10.96.0.20 . tcp . 80 }"))
        #expect(gone.contains("add element inet weft-services no-endpoint-services { 10.96.0.20 . tcp . 80 : goto reject-chain }"))
        #expect(!gone.contains("db"))
    }

    /// Two services naming one external address and port: the holder keeps it, the other waits
    /// and gets it as soon as it is freed — later, or in the same pass — as a fresh model would.
    @Test func aContestedExternalAddressPassesToTheServiceWaitingForIt() throws {
        func svc(_ name: String, _ vip: String) throws -> ClusterService {
            var s = try Self.service(#"{"selector":{"app":"web"},"externalIPs":["192.0.2.7"],"ports":[{"port":80,"targetPort":8080}]}"#, name: name)
            s.clusterIPs = [ip(vip)]
            return s
        }
        let pods = [try Self.pod("p", ip: "10.244.0.5")]
        let a = try svc("a", "10.96.0.1"), b = try svc("b", "10.96.0.2"), c = try svc("c", "10.96.0.3")
        func entry(_ s: ClusterService) -> ServiceRules.Entry { .init(service: s, endpoints: s.endpoints(from: pods)) }
        func holder(_ m: ServiceRules.Model) -> [String] {
            ServiceRules.fullScript(m).split(separator: "\n").filter { $0.contains("192.0.2.7 . tcp . 80") }.map(String.init)
        }
        var m = ServiceRules.model([entry(a), entry(b)])
        #expect(holder(m).count == 1 && holder(m)[0].contains("svc-default/a/"), "a had it first: \(holder(m))")
        // a goes: b, waiting, takes it in the same update.
        let updated = m.update(with: [entry(b)])
        let change = try #require(updated)
        #expect(holder(m) == holder(ServiceRules.model([entry(b)])) && holder(m)[0].contains("svc-default/b/"))
        #expect(change.update.contains { if case .addElements(_, _, let items) = $0 { return items.keys.contains(.addressProtoPort(ip("192.0.2.7"), .tcp, 80)) }; return false })
        // b goes and c comes in one pass: c takes it.
        _ = m.update(with: [entry(c)])
        #expect(holder(m) == holder(ServiceRules.model([entry(c)])) && holder(m)[0].contains("svc-default/c/"))
        // Deleted and created with it in one pass, a waiter and a newcomer: as a fresh model decides.
        var n = ServiceRules.model([entry(a), entry(b)])
        _ = n.update(with: [entry(b), entry(c)])
        #expect(holder(n) == holder(ServiceRules.model([entry(b), entry(c)])))
    }

    /// A reader that knows what changed updates the model with those entries only; the model
    /// and the change it returns are what the whole list would give, contested keys included.
    @Test func updatingWithTheChangeAloneEqualsUpdatingWithEverything() throws {
        func svc(_ name: String, _ vip: String, external: Bool) throws -> ClusterService {
            let ext = external ? #","externalIPs":["192.0.2.7"]"# : ""
            var s = try Self.service(#"{"selector":{"app":"web"}\#(ext),"ports":[{"port":80,"targetPort":8080,"protocol":"UDP"}]}"#, name: name)
            s.clusterIPs = [ip(vip)]
            return s
        }
        func entry(_ s: ClusterService, _ podIPs: [String]) throws -> ServiceRules.Entry {
            .init(service: s, endpoints: s.endpoints(from: try podIPs.enumerated().map { try Self.pod("p\($0.offset)", ip: $0.element) }))
        }
        var current: [String: ServiceRules.Entry] = [:]
        for i in 0..<6 { current["default/s\(i)"] = try entry(try svc("s\(i)", "10.96.0.\(10 + i)", external: i < 3), ["10.244.0.\(i + 2)"]) }
        var whole = ServiceRules.model(Array(current.values)), delta = whole
        // Each step: the entries changed and the services removed.
        let steps: [([ServiceRules.Entry], Set<String>)] = [
            ([try entry(try svc("s4", "10.96.0.14", external: false), ["10.244.0.40", "10.244.0.41"])], []),   // endpoints move
            ([], ["default/s0"]),                                                                             // the external address's holder goes
            ([try entry(try svc("s6", "10.96.0.16", external: true), ["10.244.0.60"])], ["default/s1"]),         // one comes, another goes
            ([try entry(try svc("s2", "10.96.0.12", external: false), ["10.244.0.2"])], []),                    // the holder gives it up
            ([try entry(try svc("s5", "10.96.0.15", external: false), ["10.244.0.5"])], []),                    // unchanged: nothing to do
        ]
        for (n, (changed, removed)) in steps.enumerated() {
            for e in changed { current[e.key] = e }
            for k in removed { current[k] = nil }
            let a = whole.update(with: Array(current.values)), b = delta.update(changed: changed, removed: removed)
            #expect(a?.update.map { NFT.text($0) } == b?.update.map { NFT.text($0) } && a?.cleanup.map { NFT.text($0) } == b?.cleanup.map { NFT.text($0) }, "step \(n)")
            #expect(ServiceRules.fullScript(whole) == ServiceRules.fullScript(delta), "step \(n)")
            #expect(ServiceRules.fullScript(delta) == ServiceRules.fullScript(ServiceRules.model(Array(current.values))), "step \(n): as a fresh model")
        }
        #expect(delta.update(changed: [], removed: ["default/nobody"])?.isEmpty == true)
    }
}
