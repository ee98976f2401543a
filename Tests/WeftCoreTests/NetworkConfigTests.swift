import Testing
import WeftCore

private func parse(_ text: String, env: CNIEnvironment? = nil) throws(CNIError) -> NetworkConfig {
    try NetworkConfig.parse(Array(text.utf8), env: env)
}

/// A minimal valid config with `ipam` replaced by the given JSON text.
private func withIPAM(_ ipam: String, extra: String = "") -> String {
    #"{"cniVersion": "1.0.0", "name": "weft", "type": "weft", \#(extra) "ipam": \#(ipam)}"#
}

private func builtin(_ c: NetworkConfig, sourceLocation: SourceLocation = #_sourceLocation) throws -> NetworkConfig.WeftIPAM {
    guard case .builtin(let w) = c.ipam else {
        Issue.record("expected the built-in IPAM, got \(c.ipam)", sourceLocation: sourceLocation)
        throw CNIError.invalidConfig("not builtin")
    }
    return w
}

@Suite struct NetworkConfigTests {
    @Test func bridgeConfig() throws {
        let c = try parse(#"""
        {
          "cniVersion": "1.0.0",
          "name": "weft",
          "type": "weft",
          "mode": "bridge",
          "bridge": "br-pods",
          "mtu": 1450,
          "hairpinMode": false,
          "ipMasq": true,
          "clusterCIDR": "10.244.0.0/16",
          "ipam": {
            "type": "weft",
            "ranges": [[{"subnet": "10.244.1.0/24", "rangeStart": "10.244.1.10", "rangeEnd": "10.244.1.200", "gateway": "10.244.1.1"}]],
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.244.1.254"}],
            "dataDir": "/run/weft/ipam"
          },
          "dns": {"nameservers": ["10.96.0.10"], "domain": "cluster.local", "search": ["svc.cluster.local"], "options": ["ndots:5"]}
        }
        """#)
        #expect(c.cniVersion.description == "1.0.0")
        #expect(c.name == "weft")
        #expect(c.type == "weft")
        #expect(c.mode == .bridge)
        #expect(c.bridge == "br-pods")
        #expect(c.mtu == 1450)
        #expect(c.hairpinMode == false)
        #expect(c.ipMasq == true)
        #expect(c.clusterCIDRs == [net("10.244.0.0/16")])
        #expect(c.noMasqueradeDestinations == [net("10.244.0.0/16")])
        let w = try builtin(c)
        #expect(w.dataDir == "/run/weft/ipam")
        #expect(w.rangeSets.count == 1)
        let r = try #require(w.rangeSets.first?.ranges.first)
        #expect(r.subnet == net("10.244.1.0/24"))
        #expect(r.rangeStart == ip("10.244.1.10"))
        #expect(r.rangeEnd == ip("10.244.1.200"))
        #expect(r.gateway == ip("10.244.1.1"))
        #expect(w.routes == [CNIResult.Route(dst: net("0.0.0.0/0")), CNIResult.Route(dst: net("192.168.0.0/16"), gw: ip("10.244.1.254"))])
        #expect(c.dns == CNIResult.DNS(nameservers: ["10.96.0.10"], domain: "cluster.local", search: ["svc.cluster.local"], options: ["ndots:5"]))
        #expect(c.prevResult == nil)
        #expect(c.requestedIPs.isEmpty)
        #expect(c.requestedMAC == nil)
        #expect(c.raw["bridge"]?.stringValue == "br-pods")
    }

    @Test func routedDualStackConfig() throws {
        let c = try parse(#"""
        {"cniVersion": "1.1.0", "name": "weft-routed", "type": "weft", "mode": "routed",
         "clusterCIDR": ["10.244.0.0/16", "fd00:244::/56"],
         "ipam": {"ranges": [[{"subnet": "10.244.2.0/24"}], [{"subnet": "fd00:244:0:2::/64"}]]}}
        """#)
        #expect(c.mode == .routed)
        #expect(c.cniVersion == CNIVersion.latest)
        #expect(c.clusterCIDRs == [net("10.244.0.0/16"), net("fd00:244::/56")])
        let w = try builtin(c)
        #expect(w.rangeSets.map(\.family) == [.v4, .v6])
        #expect(w.routes == nil)
        let v6 = try #require(w.rangeSets.last?.ranges.first)
        #expect(v6.subnet == net("fd00:244:0:2::/64"))
        #expect(v6.rangeStart == ip("fd00:244:0:2::1"))
        // IPv6 has no broadcast address: the range runs to the subnet's last address.
        #expect(v6.rangeEnd == ip("fd00:244:0:2:ffff:ffff:ffff:ffff"))
        #expect(v6.gateway == ip("fd00:244:0:2::1"))
        #expect(NetworkConfig.routedGatewayV4 == ip("169.254.1.1"))
        #expect(NetworkConfig.routedGatewayV6 == ip("fe80::1"))
    }

    @Test func defaults() throws {
        let c = try parse(withIPAM(#"{"ranges": [[{"subnet": "10.22.0.0/24"}]]}"#))
        #expect(c.type == "weft")
        #expect(c.bridge == "weft0")
        #expect(c.bridge == NetworkConfig.defaultBridge)
        #expect(c.mode == .bridge)
        #expect(c.hairpinMode == true)
        #expect(c.ipMasq == false)
        #expect(c.mtu == nil)
        #expect(c.clusterCIDRs.isEmpty)
        #expect(c.dns.isEmpty)
        let w = try builtin(c)
        #expect(w.dataDir == "/var/lib/cni/networks")
        #expect(w.dataDir == NetworkConfig.defaultDataDir)
        #expect(w.routes == nil)
        let r = try #require(w.rangeSets.first?.ranges.first)
        #expect(r.gateway == ip("10.22.0.1"))
        #expect(r.rangeStart == ip("10.22.0.1"))
        // The IPv4 broadcast address is never handed out.
        #expect(r.rangeEnd == ip("10.22.0.254"))
        #expect(r.capacity == 253)
        // With no clusterCIDR the pod subnets are not masqueraded.
        #expect(c.noMasqueradeDestinations == [net("10.22.0.0/24")])
    }

    @Test func noMasqueradeDestinationsPerFamily() throws {
        let dual = #"{"ranges": [[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00:244:0:1::/64"}]]}"#
        // A cluster range for IPv4 only: IPv6 falls back to the pod subnet.
        let c = try parse(withIPAM(dual, extra: #""clusterCIDR": "10.244.0.0/16","#))
        #expect(c.noMasqueradeDestinations == [net("10.244.0.0/16"), net("fd00:244:0:1::/64")])
        let d = try parse(withIPAM(dual, extra: #""clusterCIDR": ["fd00:244::/56", "10.244.0.0/16"],"#))
        #expect(d.noMasqueradeDestinations == [net("10.244.0.0/16"), net("fd00:244::/56")])
        #expect(try parse(withIPAM(dual)).noMasqueradeDestinations == [net("10.244.1.0/24"), net("fd00:244:0:1::/64")])
    }

    @Test func podRangesMustLieInsideTheClusterRangeOfTheirFamily() throws {
        let dual = #"{"ranges": [[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00:244:0:1::/64"}]]}"#
        expectCNIError(code: 7, mentioning: ["ipam.ranges[0]", "10.244.1.0/24", "outside clusterCIDR", "10.245.0.0/16"]) {
            _ = try parse(withIPAM(dual, extra: #""clusterCIDR": "10.245.0.0/16","#))
        }
        expectCNIError(code: 7, mentioning: ["ipam.ranges[1]", "fd00:244:0:1::/64", "outside clusterCIDR"]) {
            _ = try parse(withIPAM(dual, extra: #""clusterCIDR": ["10.244.0.0/16", "fd00:245::/56"],"#))
        }
        // A cluster range narrower than the pod subnet does not contain it.
        expectCNIError(code: 7, mentioning: ["ipam.ranges[0]", "outside clusterCIDR"]) {
            _ = try parse(withIPAM(dual, extra: #""clusterCIDR": "10.244.1.0/25","#))
        }
        // Any one of several cluster ranges of the family will do.
        #expect(throws: Never.self) { _ = try parse(withIPAM(dual, extra: #""clusterCIDR": ["10.0.0.0/16", "10.244.0.0/16"],"#)) }
        // Delegated IPAM has no ranges to check.
        #expect(throws: Never.self) { _ = try parse(withIPAM(#"{"type": "host-local"}"#, extra: #""clusterCIDR": "10.245.0.0/16","#)) }
    }

    @Test func typeAndModeDefaultsWhenTypeGiven() throws {
        let c = try parse(#"{"cniVersion":"0.4.0","name":"n","type":"weft-custom","ipam":{"ranges":[[{"subnet":"10.22.0.0/24"}]]}}"#)
        #expect(c.type == "weft-custom")
        #expect(c.cniVersion.description == "0.4.0")
    }

    @Test func multipleRangesInASet() throws {
        let c = try parse(withIPAM(#"""
        {"ranges": [[
            {"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.10", "rangeEnd": "10.0.0.20"},
            {"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.30", "rangeEnd": "10.0.0.40"},
            {"subnet": "10.0.1.0/24"}
        ]]}
        """#))
        let set = try #require(try builtin(c).rangeSets.first)
        #expect(set.ranges.count == 3)
        #expect(set.ranges.map(\.rangeStart) == [ip("10.0.0.10"), ip("10.0.0.30"), ip("10.0.1.1")])
        #expect(set.ranges.map(\.gateway) == [ip("10.0.0.1"), ip("10.0.0.1"), ip("10.0.1.1")])
        #expect(set.capacity == 11 + 11 + 253)
        #expect(c.noMasqueradeDestinations == [net("10.0.0.0/24"), net("10.0.0.0/24"), net("10.0.1.0/24")])
    }

    @Test func legacySubnetForm() throws {
        let c = try parse(withIPAM(#"{"type": "weft", "subnet": "10.5.0.0/16", "rangeStart": "10.5.0.100", "gateway": "10.5.0.254"}"#))
        let w = try builtin(c)
        #expect(w.rangeSets.count == 1)
        let r = try #require(w.rangeSets.first?.ranges.first)
        #expect(r.subnet == net("10.5.0.0/16"))
        #expect(r.rangeStart == ip("10.5.0.100"))
        #expect(r.rangeEnd == ip("10.5.255.254"))
        #expect(r.gateway == ip("10.5.0.254"))
        // Errors in the legacy form are reported under ipam.
        expectCNIError(code: 7, mentioning: ["ipam.subnet", "10.5.0.0/31"]) { _ = try parse(withIPAM(#"{"subnet": "10.5.0.0/31"}"#)) }
        expectCNIError(code: 7, mentioning: ["ipam.rangeStart", "10.6.0.1"]) {
            _ = try parse(withIPAM(#"{"subnet": "10.5.0.0/16", "rangeStart": "10.6.0.1"}"#))
        }
    }

    @Test func rangesTakePrecedenceOverLegacySubnet() throws {
        let c = try parse(withIPAM(#"{"subnet": "10.5.0.0/16", "ranges": [[{"subnet": "10.6.0.0/24"}]]}"#))
        #expect(try builtin(c).rangeSets.flatMap(\.ranges).map(\.subnet) == [net("10.6.0.0/24")])
    }

    @Test func keysAreCaseInsensitive() throws {
        let c = try parse(#"""
        {"CNIVersion": "1.0.0", "Name": "n", "Type": "weft", "Mode": "routed", "Bridge": "br1", "MTU": 9000, "HairpinMode": false, "IPMasq": true,
         "IPAM": {"Type": "weft", "Ranges": [[{"Subnet": "10.22.0.0/24", "RangeStart": "10.22.0.5", "RangeEnd": "10.22.0.9", "Gateway": "10.22.0.254"}]],
                  "Routes": [{"Dst": "0.0.0.0/0", "GW": "10.22.0.254"}], "DataDir": "/x"},
         "RuntimeConfig": {"IPs": ["10.22.0.7/24"], "MAC": "0a:58:0a:16:00:07"}}
        """#)
        #expect(c.name == "n")
        #expect(c.mode == .routed)
        #expect(c.bridge == "br1")
        #expect(c.mtu == 9000)
        #expect(c.hairpinMode == false)
        #expect(c.ipMasq == true)
        let w = try builtin(c)
        #expect(w.dataDir == "/x")
        let r = try #require(w.rangeSets.first?.ranges.first)
        #expect(r.rangeStart == ip("10.22.0.5"))
        #expect(r.rangeEnd == ip("10.22.0.9"))
        #expect(r.gateway == ip("10.22.0.254"))
        #expect(w.routes == [CNIResult.Route(dst: net("0.0.0.0/0"), gw: ip("10.22.0.254"))])
        #expect(c.requestedIPs == [ip("10.22.0.7")])
        #expect(c.requestedMAC == "0a:58:0a:16:00:07")
    }

    @Test func unknownKeysAndCapabilitiesAreIgnored() throws {
        let c = try parse(#"""
        {"cniVersion": "1.0.0", "name": "n", "type": "weft",
         "capabilities": {"ips": true, "mac": true, "portMappings": true},
         "vendorThing": {"x": [1, 2, {"y": null}]}, "futureFlag": true,
         "ipam": {"ranges": [[{"subnet": "10.22.0.0/24", "extra": "ignored"}]], "someIPAMOption": 3},
         "runtimeConfig": {"portMappings": [{"hostPort": 8080}], "bandwidth": {}}}
        """#)
        #expect(c.name == "n")
        #expect(try builtin(c).rangeSets.count == 1)
        #expect(c.requestedIPs.isEmpty)
    }

    @Test func nullMembersMeanAbsent() throws {
        let c = try parse(#"{"cniVersion": "1.0.0", "name": "n", "mtu": null, "bridge": null, "ipam": {"ranges": [[{"subnet": "10.22.0.0/24", "gateway": null}]]}}"#)
        #expect(c.mtu == nil)
        #expect(c.bridge == "weft0")
        #expect(try builtin(c).rangeSets.first?.ranges.first?.gateway == ip("10.22.0.1"))
    }

    @Test func delegatedIPAM() throws {
        let c = try parse(withIPAM(#"{"type": "host-local", "ranges": [[{"subnet": "not validated here"}]]}"#))
        guard case .delegated(let type) = c.ipam else {
            Issue.record("expected delegated IPAM, got \(c.ipam)")
            return
        }
        #expect(type == "host-local")
        // The document is kept as-is for the delegate.
        #expect(c.raw["ipam"]?["ranges"]?.arrayValue?.count == 1)
        #expect(c.noMasqueradeDestinations.isEmpty)
        let d = try parse(withIPAM(#"{"type": "dhcp"}"#, extra: #""clusterCIDR": "10.244.0.0/16","#))
        #expect(d.noMasqueradeDestinations == [net("10.244.0.0/16")])
    }

    @Test func emptyIPAMTypeMeansBuiltin() throws {
        let c = try parse(withIPAM(#"{"type": "", "ranges": [[{"subnet": "10.22.0.0/24"}]]}"#))
        #expect(try builtin(c).rangeSets.count == 1)
    }

    @Test func runtimeConfigAndCNIArgsRequestAddresses() throws {
        let text = withIPAM(#"{"ranges": [[{"subnet": "10.22.0.0/24"}], [{"subnet": "fd00:22::/64"}]]}"#,
                            extra: #""runtimeConfig": {"ips": ["10.22.0.7/24"]},"#)
        #expect(try parse(text).requestedIPs == [ip("10.22.0.7")])

        let env = CNIEnvironment(command: .add, containerID: "c", netns: "/n", ifname: "eth0",
                                 args: try CNIEnvironment.parseArgs("IgnoreUnknown=1;IP=10.22.0.7,fd00:22::7"))
        // The runtimeConfig address is not repeated; the CNI_ARGS IPv6 one is added.
        #expect(try parse(text, env: env).requestedIPs == [ip("10.22.0.7"), ip("fd00:22::7")])

        let only = withIPAM(#"{"ranges": [[{"subnet": "10.22.0.0/24"}]]}"#)
        let argsOnly = CNIEnvironment(command: .add, args: [("IP", "10.22.0.9")])
        #expect(try parse(only, env: argsOnly).requestedIPs == [ip("10.22.0.9")])
        // No IP arg: nothing requested.
        #expect(try parse(only, env: CNIEnvironment(command: .add, args: [("K8S_POD_NAME", "x")])).requestedIPs.isEmpty)

        expectCNIError(code: 4, mentioning: ["CNI_ARGS", "\"10.22.0.x\""]) {
            _ = try parse(only, env: CNIEnvironment(command: .add, args: [("IP", "10.22.0.x")]))
        }
        expectCNIError(code: 7, mentioning: ["runtimeConfig.ips[1]", "\"nope\""]) {
            _ = try parse(withIPAM(#"{"ranges": [[{"subnet": "10.22.0.0/24"}]]}"#, extra: #""runtimeConfig": {"ips": ["10.22.0.7", "nope"]},"#))
        }
    }

    @Test func macFromRuntimeConfigOrCNIArgs() throws {
        let base = withIPAM(#"{"ranges": [[{"subnet": "10.22.0.0/24"}]]}"#)
        let env = CNIEnvironment(command: .add, args: [("MAC", "0a:58:0a:16:00:09")])
        #expect(try parse(base, env: env).requestedMAC == "0a:58:0a:16:00:09")
        let both = withIPAM(#"{"ranges": [[{"subnet": "10.22.0.0/24"}]]}"#, extra: #""runtimeConfig": {"mac": "0a:58:0a:16:00:01"},"#)
        #expect(try parse(both, env: env).requestedMAC == "0a:58:0a:16:00:01")
        expectCNIError(code: 7, mentioning: ["mac", "\"zz:58:0a:16:00:09\""]) {
            _ = try parse(base, env: CNIEnvironment(command: .add, args: [("MAC", "zz:58:0a:16:00:09")]))
        }
    }

    @Test func prevResultIsRead() throws {
        let c = try parse(withIPAM(#"{"ranges": [[{"subnet": "10.22.0.0/24"}]]}"#, extra: #"""
        "prevResult": {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/x"}],
                       "ips": [{"address": "10.22.0.5/24", "gateway": "10.22.0.1", "interface": 0}]},
        """#))
        let p = try #require(c.prevResult)
        #expect(p.ips == [CNIResult.IPConfig(address: ifaddr("10.22.0.5/24"), gateway: ip("10.22.0.1"), interface: 0)])
        #expect(p.interfaces.first?.sandbox == "/var/run/netns/x")
        expectCNIError(code: 6, mentioning: ["prevResult.ips[0].address"]) {
            _ = try parse(withIPAM(#"{"ranges": [[{"subnet": "10.22.0.0/24"}]]}"#, extra: #""prevResult": {"ips": [{"address": "x"}]},"#))
        }
    }

    // MARK: errors

    @Test(arguments: ["{", "not json", #"{"cniVersion": "1.0.0""#, #"{"cniVersion": 1.0.0}"#, ""])
    func malformedJSONIsCode6(text: String) {
        expectCNIError(code: 6, mentioning: ["not valid JSON"]) { _ = try parse(text) }
    }

    @Test func nonObjectIsCode6() {
        expectCNIError(code: 6, mentioning: ["an array"]) { _ = try parse("[]") }
        expectCNIError(code: 6, mentioning: ["a string"]) { _ = try NetworkConfig.parse(JSONValue.string("x")) }
    }

    @Test func cniVersionIsCode1() {
        let all = CNIVersion.supported.map(\.description)
        expectCNIError(code: 1, mentioning: ["cniVersion", "missing"] + all) {
            _ = try parse(#"{"name": "n", "ipam": {"ranges": [[{"subnet": "10.22.0.0/24"}]]}}"#)
        }
        expectCNIError(code: 1, mentioning: ["cniVersion", "\"0.2.0\""] + all) {
            _ = try parse(#"{"cniVersion": "0.2.0", "name": "n", "ipam": {"ranges": [[{"subnet": "10.22.0.0/24"}]]}}"#)
        }
        expectCNIError(code: 1, mentioning: ["\"2.0.0\""]) {
            _ = try parse(#"{"cniVersion": "2.0.0", "name": "n", "ipam": {"ranges": [[{"subnet": "10.22.0.0/24"}]]}}"#)
        }
        // The version is checked before anything else.
        expectCNIError(code: 1) { _ = try parse(#"{"cniVersion": "0.1.0"}"#) }
    }

    @Test func nameIsRequiredAndChecked() throws {
        expectCNIError(code: 7, mentioning: ["name", "missing"]) {
            _ = try parse(#"{"cniVersion": "1.0.0", "ipam": {"ranges": [[{"subnet": "10.22.0.0/24"}]]}}"#)
        }
        expectCNIError(code: 7, mentioning: ["name", "missing"]) {
            _ = try parse(#"{"cniVersion": "1.0.0", "name": "", "ipam": {"ranges": [[{"subnet": "10.22.0.0/24"}]]}}"#)
        }
        for bad in ["a/b", "..", ".", "a b", "x;y"] {
            expectCNIError(code: 7, mentioning: ["name", "\"\(bad)\""]) {
                _ = try parse(#"{"cniVersion": "1.0.0", "name": "\#(bad)", "ipam": {"ranges": [[{"subnet": "10.22.0.0/24"}]]}}"#)
            }
        }
        // The name becomes a directory: ASCII only, and bounded.
        for bad in ["名前", "café", String(repeating: "n", count: 201)] {
            expectCNIError(code: 7, mentioning: ["name", "\"\(bad)\""]) {
                _ = try parse(#"{"cniVersion": "1.0.0", "name": "\#(bad)", "ipam": {"ranges": [[{"subnet": "10.22.0.0/24"}]]}}"#)
            }
        }
        #expect(try parse(#"{"cniVersion": "1.0.0", "name": "Weft-net_1.a", "ipam": {"ranges": [[{"subnet": "10.22.0.0/24"}]]}}"#).name == "Weft-net_1.a")
        expectCNIError(code: 7, mentioning: ["name", "a string", "a number"]) {
            _ = try parse(#"{"cniVersion": "1.0.0", "name": 5, "ipam": {"ranges": [[{"subnet": "10.22.0.0/24"}]]}}"#)
        }
    }

    @Test func ipamIsRequired() {
        expectCNIError(code: 7, mentioning: ["ipam", "missing"]) { _ = try parse(#"{"cniVersion": "1.0.0", "name": "n"}"#) }
        expectCNIError(code: 7, mentioning: ["ipam", "missing"]) { _ = try parse(withIPAM("null")) }
        expectCNIError(code: 7, mentioning: ["ipam", "an object", "a string"]) { _ = try parse(withIPAM(#""weft""#)) }
        expectCNIError(code: 7, mentioning: ["ipam.ranges", "missing"]) { _ = try parse(withIPAM("{}")) }
        expectCNIError(code: 7, mentioning: ["ipam.ranges", "missing"]) { _ = try parse(withIPAM(#"{"ranges": []}"#)) }
        expectCNIError(code: 7, mentioning: ["ipam.ranges", "an array", "an object"]) { _ = try parse(withIPAM(#"{"ranges": {}}"#)) }
    }

    @Test func ipamTypeMustBeAName() {
        for bad in ["/opt/cni/bin/host-local", "../host-local", "a/b", "..", "."] {
            expectCNIError(code: 7, mentioning: ["ipam.type", "\"\(bad)\""]) { _ = try parse(withIPAM(#"{"type": "\#(bad)"}"#)) }
        }
    }

    @Test(arguments: ["10.22.0.0/33", "banana", "10.22.0.0", "10.22.0.0/", "fd00::/129", "10.22.0.0/024x"])
    func invalidSubnetText(subnet: String) {
        expectCNIError(code: 7, mentioning: ["ipam.ranges[0][0].subnet", "\"\(subnet)\""]) {
            _ = try parse(withIPAM(#"{"ranges": [[{"subnet": "\#(subnet)"}]]}"#))
        }
    }

    @Test func subnetErrorsNameTheRightRange() {
        expectCNIError(code: 7, mentioning: ["ipam.ranges[1][2].subnet", "\"bad\""]) {
            _ = try parse(withIPAM(#"{"ranges": [[{"subnet": "10.0.0.0/24"}], [{"subnet": "10.1.0.0/24"}, {"subnet": "10.2.0.0/24"}, {"subnet": "bad"}]]}"#))
        }
        expectCNIError(code: 7, mentioning: ["ipam.ranges[0][0].subnet", "missing"]) {
            _ = try parse(withIPAM(#"{"ranges": [[{"rangeStart": "10.0.0.5"}]]}"#))
        }
        expectCNIError(code: 7, mentioning: ["ipam.ranges[0][0].subnet", "a string", "a number"]) {
            _ = try parse(withIPAM(#"{"ranges": [[{"subnet": 10}]]}"#))
        }
    }

    @Test(arguments: ["10.22.0.0/31", "10.22.0.0/32", "fd00::/127", "fd00::/128"])
    func subnetTooSmall(subnet: String) {
        expectCNIError(code: 7, mentioning: ["ipam.ranges[0][0].subnet", subnet, "too small"]) {
            _ = try parse(withIPAM(#"{"ranges": [[{"subnet": "\#(subnet)"}]]}"#))
        }
    }

    @Test func smallestUsableSubnets() throws {
        let c = try parse(withIPAM(#"{"ranges": [[{"subnet": "10.22.0.0/30"}], [{"subnet": "fd00::/126"}]]}"#))
        let w = try builtin(c)
        #expect(w.rangeSets[0].ranges[0].rangeEnd == ip("10.22.0.2"))
        #expect(w.rangeSets[0].capacity == 1)
        #expect(w.rangeSets[1].ranges[0].rangeEnd == ip("fd00::3"))
        #expect(w.rangeSets[1].capacity == 2)
    }

    @Test(arguments: ["rangeStart", "rangeEnd", "gateway"])
    func addressOutsideSubnet(field: String) {
        expectCNIError(code: 7, mentioning: ["ipam.ranges[0][0].\(field)", "10.23.0.5", "10.22.0.0/24"]) {
            _ = try parse(withIPAM(#"{"ranges": [[{"subnet": "10.22.0.0/24", "\#(field)": "10.23.0.5"}]]}"#))
        }
        // Another family is outside too.
        expectCNIError(code: 7, mentioning: ["ipam.ranges[0][0].\(field)", "fd00::5"]) {
            _ = try parse(withIPAM(#"{"ranges": [[{"subnet": "10.22.0.0/24", "\#(field)": "fd00::5"}]]}"#))
        }
        // Unparseable.
        expectCNIError(code: 7, mentioning: ["ipam.ranges[0][0].\(field)", "\"10.22.0.x\""]) {
            _ = try parse(withIPAM(#"{"ranges": [[{"subnet": "10.22.0.0/24", "\#(field)": "10.22.0.x"}]]}"#))
        }
    }

    @Test func startAfterEnd() {
        expectCNIError(code: 7, mentioning: ["ipam.ranges[0][0].rangeStart", "10.22.0.50", "10.22.0.10"]) {
            _ = try parse(withIPAM(#"{"ranges": [[{"subnet": "10.22.0.0/24", "rangeStart": "10.22.0.50", "rangeEnd": "10.22.0.10"}]]}"#))
        }
        // A one-address range is fine.
        #expect(throws: Never.self) {
            _ = try parse(withIPAM(#"{"ranges": [[{"subnet": "10.22.0.0/24", "rangeStart": "10.22.0.50", "rangeEnd": "10.22.0.50"}]]}"#))
        }
    }

    @Test func overlappingRangesInASet() {
        expectCNIError(code: 7, mentioning: ["ipam.ranges[0][1]", "overlaps", "ipam.ranges[0][0]"]) {
            _ = try parse(withIPAM(#"{"ranges": [[{"subnet": "10.22.0.0/24"}, {"subnet": "10.22.0.0/25"}]]}"#))
        }
        expectCNIError(code: 7, mentioning: ["ipam.ranges[0][2]", "overlaps", "ipam.ranges[0][0]"]) {
            _ = try parse(withIPAM(#"""
            {"ranges": [[{"subnet": "10.22.0.0/24", "rangeStart": "10.22.0.10", "rangeEnd": "10.22.0.20"},
                         {"subnet": "10.23.0.0/24"},
                         {"subnet": "10.22.0.0/24", "rangeStart": "10.22.0.20", "rangeEnd": "10.22.0.30"}]]}
            """#))
        }
    }

    @Test func overlappingRangeSets() {
        expectCNIError(code: 7, mentioning: ["ipam.ranges[1]", "10.22.5.0/24", "overlaps", "ipam.ranges[0]"]) {
            _ = try parse(withIPAM(#"{"ranges": [[{"subnet": "10.22.0.0/16"}], [{"subnet": "10.22.5.0/24"}]]}"#))
        }
        expectCNIError(code: 7, mentioning: ["ipam.ranges[2]", "overlaps", "ipam.ranges[0]"]) {
            _ = try parse(withIPAM(#"{"ranges": [[{"subnet": "10.22.0.0/24"}], [{"subnet": "fd00::/64"}], [{"subnet": "10.23.0.0/24"}, {"subnet": "10.22.0.0/24"}]]}"#))
        }
    }

    @Test func mixedFamiliesInASet() {
        expectCNIError(code: 7, mentioning: ["ipam.ranges[0][1]", "IPv6", "ipam.ranges[0][0]", "IPv4"]) {
            _ = try parse(withIPAM(#"{"ranges": [[{"subnet": "10.22.0.0/24"}, {"subnet": "fd00::/64"}]]}"#))
        }
    }

    @Test func rangeSetShapeErrors() {
        expectCNIError(code: 7, mentioning: ["ipam.ranges[0]", "empty"]) { _ = try parse(withIPAM(#"{"ranges": [[]]}"#)) }
        expectCNIError(code: 7, mentioning: ["ipam.ranges[0]", "list of ranges", "an object"]) {
            _ = try parse(withIPAM(#"{"ranges": [{"subnet": "10.22.0.0/24"}]}"#))
        }
        expectCNIError(code: 7, mentioning: ["ipam.ranges[0][0]", "an object", "a string"]) {
            _ = try parse(withIPAM(#"{"ranges": [["10.22.0.0/24"]]}"#))
        }
    }

    @Test func ipamRoutesAndDataDir() {
        expectCNIError(code: 7, mentioning: ["ipam.routes", "::/0", "IPv6"]) {
            _ = try parse(withIPAM(#"{"ranges": [[{"subnet": "10.22.0.0/24"}]], "routes": [{"dst": "::/0"}]}"#))
        }
        expectCNIError(code: 7, mentioning: ["ipam.routes[0].dst", "\"default\""]) {
            _ = try parse(withIPAM(#"{"ranges": [[{"subnet": "10.22.0.0/24"}]], "routes": [{"dst": "default"}]}"#))
        }
        expectCNIError(code: 7, mentioning: ["ipam.routes[0].gw", "IPv6"]) {
            _ = try parse(withIPAM(#"{"ranges": [[{"subnet": "10.22.0.0/24"}]], "routes": [{"dst": "0.0.0.0/0", "gw": "fd00::1"}]}"#))
        }
        expectCNIError(code: 7, mentioning: ["ipam.dataDir", "\"var/lib\""]) {
            _ = try parse(withIPAM(#"{"ranges": [[{"subnet": "10.22.0.0/24"}]], "dataDir": "var/lib"}"#))
        }
    }

    @Test func emptyRoutesListMeansNoRoutes() throws {
        let c = try parse(withIPAM(#"{"ranges": [[{"subnet": "10.22.0.0/24"}]], "routes": []}"#))
        #expect(try builtin(c).routes == [])
    }

    @Test(arguments: [("0", "0"), ("67", "67"), ("65536", "65536"), ("-1", "-1")])
    func mtuOutOfRange(value: String, shown: String) {
        expectCNIError(code: 7, mentioning: ["mtu", shown, "out of range"]) {
            _ = try parse(withIPAM(#"{"ranges": [[{"subnet": "10.22.0.0/24"}]]}"#, extra: #""mtu": \#(value),"#))
        }
    }

    @Test(arguments: [#""1500""#, "1450.5", "true", "[1500]"])
    func mtuNotANumber(value: String) {
        expectCNIError(code: 7, mentioning: ["mtu", "whole number", value]) {
            _ = try parse(withIPAM(#"{"ranges": [[{"subnet": "10.22.0.0/24"}]]}"#, extra: #""mtu": \#(value),"#))
        }
    }

    @Test func mtuBounds() throws {
        for m in [68, 1280, 1500, 9000, 65535] {
            #expect(try parse(withIPAM(#"{"ranges": [[{"subnet": "10.22.0.0/24"}]]}"#, extra: #""mtu": \#(m),"#)).mtu == m)
        }
    }

    @Test(arguments: ["vxlan", "Bridge", "", "ROUTED"])
    func badMode(mode: String) {
        expectCNIError(code: 7, mentioning: ["mode", "\"\(mode)\"", "bridge", "routed"]) {
            _ = try parse(withIPAM(#"{"ranges": [[{"subnet": "10.22.0.0/24"}]]}"#, extra: #""mode": "\#(mode)","#))
        }
    }

    @Test(arguments: ["zz:58:0a:16:00:09", "0a:58:0a:16:00", "0a:58:0a:16:00:09:01", "0a-58-0a-16-00-09", "a:58:0a:16:00:09", "+a:58:0a:16:00:09", ""])
    func badMAC(mac: String) {
        expectCNIError(code: 7, mentioning: ["mac", "\"\(mac)\""]) {
            _ = try parse(withIPAM(#"{"ranges": [[{"subnet": "10.22.0.0/24"}]]}"#, extra: #""runtimeConfig": {"mac": "\#(mac)"},"#))
        }
    }

    @Test(arguments: ["this-is-too-long0", "br/0", "br 0", ""])
    func badBridgeName(bridge: String) {
        expectCNIError(code: 7, mentioning: ["bridge"]) {
            _ = try parse(withIPAM(#"{"ranges": [[{"subnet": "10.22.0.0/24"}]]}"#, extra: #""bridge": "\#(bridge)","#))
        }
    }

    @Test func badBooleansAndClusterCIDR() {
        expectCNIError(code: 7, mentioning: ["hairpinMode", "true or false", "\"yes\""]) {
            _ = try parse(withIPAM(#"{"ranges": [[{"subnet": "10.22.0.0/24"}]]}"#, extra: #""hairpinMode": "yes","#))
        }
        expectCNIError(code: 7, mentioning: ["ipMasq", "true or false"]) {
            _ = try parse(withIPAM(#"{"ranges": [[{"subnet": "10.22.0.0/24"}]]}"#, extra: #""ipMasq": 1,"#))
        }
        expectCNIError(code: 7, mentioning: ["clusterCIDR", "\"10.244.0.0\""]) {
            _ = try parse(withIPAM(#"{"ranges": [[{"subnet": "10.22.0.0/24"}]]}"#, extra: #""clusterCIDR": "10.244.0.0","#))
        }
        expectCNIError(code: 7, mentioning: ["clusterCIDR[1]", "\"x\""]) {
            _ = try parse(withIPAM(#"{"ranges": [[{"subnet": "10.22.0.0/24"}]]}"#, extra: #""clusterCIDR": ["10.244.0.0/16", "x"],"#))
        }
        expectCNIError(code: 7, mentioning: ["clusterCIDR[0]", "a number"]) {
            _ = try parse(withIPAM(#"{"ranges": [[{"subnet": "10.22.0.0/24"}]]}"#, extra: #""clusterCIDR": [5],"#))
        }
        expectCNIError(code: 7, mentioning: ["clusterCIDR", "an object"]) {
            _ = try parse(withIPAM(#"{"ranges": [[{"subnet": "10.22.0.0/24"}]]}"#, extra: #""clusterCIDR": {},"#))
        }
        expectCNIError(code: 7, mentioning: ["dns.nameservers[0]", "a number"]) {
            _ = try parse(withIPAM(#"{"ranges": [[{"subnet": "10.22.0.0/24"}]]}"#, extra: #""dns": {"nameservers": [1]},"#))
        }
    }
}

@Suite struct MACAndVethNameTests {
    @Test func parseAndFormatMAC() {
        #expect(parseMAC("0a:58:0A:16:00:05") == [0x0a, 0x58, 0x0a, 0x16, 0x00, 0x05])
        #expect(parseMAC("ff:ff:ff:ff:ff:ff") == [255, 255, 255, 255, 255, 255])
        #expect(formatMAC([0x0a, 0x58, 0x0a, 0x16, 0x00, 0x05]) == "0a:58:0a:16:00:05")
        #expect(formatMAC([0, 1, 0xab, 0xff, 0x10, 0x0f]) == "00:01:ab:ff:10:0f")
        let m = "02:42:ac:11:00:02"
        #expect(parseMAC(m).map(formatMAC) == m)
        for bad in ["", "0a:58:0a:16:00", "0a:58:0a:16:00:05:06", "0a-58-0a-16-00-05", "a:58:0a:16:00:05", "0a:58:0a:16:00:5 ",
                    "gg:58:0a:16:00:05", "+a:58:0a:16:00:05", "-0:58:0a:16:00:05", "0a:58:0a:16:00:005", "0a:58::0a:16:00"] {
            #expect(parseMAC(bad) == nil, "\"\(bad)\"")
        }
    }

    @Test func hostVethName() {
        let a = WeftCore.hostVethName(containerID: "3f2a9c0e1b7d", ifname: "eth0")
        #expect(a == WeftCore.hostVethName(containerID: "3f2a9c0e1b7d", ifname: "eth0"))
        #expect(a.utf8.count == 15)
        #expect(a.hasPrefix("weft"))
        #expect(a.dropFirst(4).allSatisfy { "0123456789abcdef".contains($0) })
        #expect(throws: Never.self) { try requireInterfaceName(a, field: "veth") }
        #expect(a != WeftCore.hostVethName(containerID: "3f2a9c0e1b7d", ifname: "net1"))
        #expect(a != WeftCore.hostVethName(containerID: "3f2a9c0e1b7e", ifname: "eth0"))
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        #expect(WeftCore.hostVethName(containerID: "ab", ifname: "c") != WeftCore.hostVethName(containerID: "a", ifname: "bc"))
        // Pinned: the name must not change between releases, or DEL after an upgrade cannot find
        // the host end of pods created before it. FNV-1a 64 of "3f2a9c0e1b7d/eth0", first 11 hex
        // digits (computed independently with Python).
        #expect(a == "weftbd569eb9133")
        let names = Set((0..<1000).map { WeftCore.hostVethName(containerID: "c\($0)", ifname: "eth0") })
        #expect(names.count == 1000)
        #expect(names.allSatisfy { $0.utf8.count == 15 })
    }
}
