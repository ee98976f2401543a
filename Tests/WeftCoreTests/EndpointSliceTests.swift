import Testing
import WeftCore

struct EndpointSliceTests {
    typealias T = ServiceTests

    static func terminating(_ pod: KubeObject) -> KubeObject {
        var p = pod
        p.setMeta("deletionTimestamp", .string("2026-12-02T01:00:00Z"))
        return p
    }

    @Test func slicesListEachSelectedAddressWithConditionsAndResolvedPorts() throws {
        let s = try T.service(#"{"selector":{"app":"web"},"ipFamilyPolicy":"PreferDualStack","ports":[{"name":"http","port":80,"targetPort":"http"},{"name":"udp","port":53,"protocol":"UDP","targetPort":5353}]}"#)
        let pods = [try T.pod("a", ip: "10.244.0.5"), try T.pod("b", ip: "10.244.1.5", phase: "Pending"),
                    Self.terminating(try T.pod("c", ip: "10.244.1.6")), try T.pod("d", ip: "fd00:244::5"),
                    try T.pod("other", ip: "10.244.0.6", labels: #"{"app":"db"}"#)]
        let slices = EndpointSlices.desired(for: s, endpoints: s.endpoints(from: pods))
        #expect(slices.count == 2, "one slice per address family")
        let v4 = try #require(slices.first { $0.json["addressType"]?.stringValue == "IPv4" })
        #expect(v4.kind == "EndpointSlice" && v4.apiVersion == "discovery.k8s.io/v1" && v4.namespace == "default")
        #expect(v4.labels["kubernetes.io/service-name"] == "web" && EndpointSlices.isManaged(v4))
        let ports = (v4.json["ports"]?.arrayValue ?? []).map { "\($0["name"]!.stringValue!)=\($0["port"]!.intValue!)/\($0["protocol"]!.stringValue!)" }
        #expect(Set(ports) == ["http=8080/TCP", "udp=5353/UDP"])
        let conds = Dictionary(uniqueKeysWithValues: (v4.json["endpoints"]?.arrayValue ?? []).map { e in
            (e["addresses"]!.arrayValue![0].stringValue!, "\(e["conditions"]!["ready"]!.boolValue!) \(e["conditions"]!["serving"]!.boolValue!) \(e["conditions"]!["terminating"]!.boolValue!)")
        })
        #expect(conds == ["10.244.0.5": "true true false", "10.244.1.5": "false false false", "10.244.1.6": "false true true"])

        // Read back as the proxy reads them: the same endpoints.
        let back = EndpointSlices.endpoints(for: s, in: slices)
        #expect(back == s.endpoints(from: pods))
        #expect(back.first { $0.pod == "c" }.map { ($0.ready, $0.serving, $0.terminating) } ?? (true, false, false) == (false, true, true))
    }

    @Test func podsResolvingANamedPortDifferentlyGetSeparateSlicesOfAtMostAHundred() throws {
        let s = try T.service(#"{"selector":{"app":"web"},"ports":[{"port":80,"targetPort":"http"}]}"#)
        var pods = try (0..<150).map { i in try T.pod("p\(i)", ip: "10.244.\(i / 200).\(i % 200 + 2)") }
        var odd = try T.pod("odd", ip: "10.244.3.3")
        odd.setSpec("containers", try JSONValue.parse(#"[{"name":"c","ports":[{"name":"http","containerPort":9090}]}]"#))
        pods.append(odd)
        let slices = EndpointSlices.desired(for: s, endpoints: s.endpoints(from: pods))
        #expect(slices.map { $0.json["endpoints"]?.arrayValue?.count ?? 0 }.sorted() == [1, 50, 100])
        #expect(Set(slices.map(\.name)).count == 3, "names are unique")
        #expect(EndpointSlices.desired(for: s, endpoints: s.endpoints(from: pods)) == slices, "the same pods give the same objects")
        let back = EndpointSlices.endpoints(for: s, in: slices)
        #expect(back.count == 151)
        #expect(back.first { $0.pod == "odd" }?.port(for: s.ports[0]) == 9090)
        #expect(EndpointSlices.desired(for: try T.service(#"{"ports":[{"port":80}]}"#), endpoints: []) == [], "no selector: no slices of weft's")
    }

    @Test func slicesOfAnotherControllerAreHonouredAndBadEntriesSkipped() throws {
        let s = try T.service(#"{"ports":[{"name":"http","port":80}]}"#)
        let foreign = KubeObject(json: try JSONValue.parse(#"""
        {"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","metadata":{"name":"web-manual","namespace":"default",
          "labels":{"kubernetes.io/service-name":"web","endpointslice.kubernetes.io/managed-by":"someone-else"}},
         "addressType":"IPv4","ports":[{"name":"http","port":8443,"protocol":"TCP"}],
         "endpoints":[{"addresses":["192.168.7.9"]},{"addresses":["not-an-ip"]},{"addresses":["fd00::1"]},
                      {"addresses":["192.168.7.10"],"conditions":{"ready":false}}]}
        """#))
        var otherNamespace = foreign
        otherNamespace.setMeta("namespace", .string("elsewhere"))
        let eps = EndpointSlices.endpoints(for: s, in: [foreign, otherNamespace])
        #expect(eps.map(\.address.description) == ["192.168.7.9", "192.168.7.10"])
        #expect(eps.map(\.ready) == [true, false], "a missing ready condition means ready")
        #expect(eps.allSatisfy { $0.port(for: s.ports[0]) == 8443 })
        #expect(!EndpointSlices.isManaged(foreign))
    }

    @Test func terminatingEndpointsTakeTrafficOnlyWhenNoneIsReady() throws {
        var web = try T.service(#"{"selector":{"app":"web"},"ports":[{"port":80,"targetPort":"http"}]}"#)
        web.clusterIPs = [IPAddress("10.96.0.20")!]
        let draining = Self.terminating(try T.pod("old", ip: "10.244.0.5"))
        func script(_ pods: [KubeObject]) -> String { ServiceRules.script([.init(service: web, endpoints: web.endpoints(from: pods))]) }
        let both = script([draining, try T.pod("new", ip: "10.244.1.5")])
        #expect(both.contains("dnat ip to 10.244.1.5:8080") && !both.contains("10.244.0.5:8080"), "the ready one only")
        let onlyDraining = script([draining])
        #expect(onlyDraining.contains("dnat ip to 10.244.0.5:8080"), "fallback to the serving, terminating one")
        #expect(!onlyDraining.contains("add element inet weft-services no-endpoint-services"))
        var stopped = draining
        stopped.setStatus("conditions", try JSONValue.parse(#"[{"type":"Ready","status":"False"}]"#))
        #expect(script([stopped]).contains("no-endpoint-services { 10.96.0.20 . tcp . 80 : goto reject-chain }"), "not serving: rejected")
    }
}

extension EndpointSliceTests {
    @Test func aStoredSliceReadsBackEqual() throws {
        let s = try T.service(#"{"selector":{"app":"web"},"ports":[{"name":"http","port":80,"targetPort":"http"}]}"#)
        let pods = [try T.pod("a", ip: "10.244.106.2"), try T.pod("b", ip: "10.244.20.2", node: "node1")]
        for slice in EndpointSlices.desired(for: s, endpoints: s.endpoints(from: pods)) {
            // The decoder does not keep member order; equal all the same, or the controller
            // rewrites the slice for ever.
            #expect(try KubeObject(bytes: slice.bytes) == slice)
        }
    }
}
