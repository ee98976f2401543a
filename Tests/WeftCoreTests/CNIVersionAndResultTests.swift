import Testing
import WeftCore

@Suite struct CNIVersionTests {
    static let allSupported = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]

    @Test func supportedList() {
        #expect(CNIVersion.supported.map(\.description) == Self.allSupported)
        #expect(CNIVersion.latest.description == "1.1.0")
        #expect(CNIVersion.supported.max() == CNIVersion.latest)
        for v in Self.allSupported { #expect(CNIVersion(v)?.isSupported == true, "\(v)") }
        for v in ["0.1.0", "0.2.0", "0.3.2", "0.4.1", "1.0.1", "1.2.0", "2.0.0"] {
            #expect(CNIVersion(v)?.isSupported == false, "\(v)")
        }
    }

    @Test func parsing() throws {
        let v = try #require(CNIVersion("1.0.0"))
        #expect(v.major == 1 && v.minor == 0 && v.patch == 0)
        #expect(CNIVersion("0.10.3")?.minor == 10)
        for bad in ["", "1", "1.0", "1.0.0.0", "a.b.c", "1..0", "-1.0.0", "1.-1.0", "v1.0.0", " 1.0.0", "1.0.0 "] {
            #expect(CNIVersion(bad) == nil, "\"\(bad)\"")
        }
    }

    @Test func ordering() {
        let ordered = ["0.1.0", "0.3.0", "0.3.1", "0.4.0", "0.9.0", "0.10.0", "1.0.0", "1.1.0", "2.0.0"].map { CNIVersion($0)! }
        #expect(ordered.sorted() == ordered)
        #expect(ordered.shuffled().sorted() == ordered)
        #expect(CNIVersion("1.0.0") == CNIVersion("1.0.0"))
    }

    @Test func featureFlags() {
        func v(_ s: String) -> CNIVersion { CNIVersion(s)! }
        #expect(v("0.3.0").ipsCarryVersion && v("0.3.1").ipsCarryVersion && v("0.4.0").ipsCarryVersion)
        #expect(!v("1.0.0").ipsCarryVersion && !v("1.1.0").ipsCarryVersion)
        #expect(!v("0.4.0").hasRouteAttributes && !v("1.0.0").hasRouteAttributes && v("1.1.0").hasRouteAttributes)
        #expect(!v("0.3.1").supportsCheck && v("0.4.0").supportsCheck && v("1.0.0").supportsCheck)
        #expect(!v("1.0.0").supportsStatusAndGC && v("1.1.0").supportsStatusAndGC)
    }

    @Test(arguments: allSupported)
    func requireSupportedAcceptsEach(text: String) throws {
        #expect(try requireSupportedVersion(text).description == text)
    }

    @Test(arguments: [nil, "", "0.2.0", "2.0.0", "1.0", "garbage", "0.3.2"] as [String?])
    func requireSupportedRejects(text: String?) {
        let e = expectCNIError(code: 1, mentioning: ["cniVersion"] + Self.allSupported) { _ = try requireSupportedVersion(text) }
        if let text, !text.isEmpty { #expect(e?.msg.contains("\"\(text)\"") == true) }
        if text == nil || text == "" { #expect(e?.msg.contains("missing") == true) }
    }

    @Test func requireSupportedNamesTheField() {
        expectCNIError(code: 1, mentioning: ["prevResult.cniVersion", "\"9.9.9\""]) {
            _ = try requireSupportedVersion("9.9.9", field: "prevResult.cniVersion")
        }
    }
}

@Suite struct CNIErrorTests {
    @Test func codes() {
        #expect(CNIError.incompatibleVersion("").code == 1)
        #expect(CNIError.unsupportedField("").code == 2)
        #expect(CNIError.unknownContainer("").code == 3)
        #expect(CNIError.invalidEnvironment("").code == 4)
        #expect(CNIError.ioFailure("").code == 5)
        #expect(CNIError.decodingFailure("").code == 6)
        #expect(CNIError.invalidConfig("").code == 7)
        #expect(CNIError.tryAgainLater("").code == 11)
        #expect(CNIError.notReady("").code == 50)
        #expect(CNIError.degraded("").code == 51)
        #expect(CNIError.rangeExhausted("").code == 100)
        #expect(CNIError.addressUnavailable("").code == 101)
        #expect(CNIError.interfaceExists("").code == 102)
        #expect(CNIError.kernel("").code == 103)
        #expect(CNIError.checkFailed("").code == 104)
        #expect(CNIError.delegateFailed("").code == 105)
    }

    @Test func json() {
        let e = CNIError.kernel("cannot add veth", details: "EEXIST")
        #expect(e.json(cniVersion: "1.0.0").serialized() == #"{"cniVersion":"1.0.0","code":103,"msg":"cannot add veth","details":"EEXIST"}"#)
        #expect(CNIError.invalidConfig("bad").json(cniVersion: "0.4.0").serialized() == #"{"cniVersion":"0.4.0","code":7,"msg":"bad"}"#)
        #expect(e.description == "CNI error 103: cannot add veth (EEXIST)")
        #expect(CNIError.invalidConfig("bad").description == "CNI error 7: bad")
    }
}

@Suite struct CNIResultTests {
    /// A result using every field, including the 1.1.0-only ones.
    static let full = CNIResult(
        interfaces: [
            .init(name: "weft1a2b3c4d5e6", mac: "0a:58:0a:16:00:01", mtu: 1450),
            .init(name: "eth0", mac: "0a:58:0a:16:00:05", mtu: 1450, sandbox: "/var/run/netns/cni-1234"),
        ],
        ips: [
            .init(address: ifaddr("10.22.0.5/24"), gateway: ip("10.22.0.1"), interface: 1),
            .init(address: ifaddr("fd00:22::5/64"), gateway: ip("fd00:22::1"), interface: 1),
        ],
        routes: [
            .init(dst: net("0.0.0.0/0"), gw: ip("10.22.0.1"), mtu: 1400, advmss: 1360, priority: 10, table: 100, scope: 0),
            .init(dst: net("::/0")),
            .init(dst: net("10.96.0.0/12"), priority: 5),
        ],
        dns: .init(nameservers: ["10.96.0.10"], domain: "cluster.local", search: ["default.svc.cluster.local", "svc.cluster.local"], options: ["ndots:5"]))

    /// What survives a version without interface mtu and route attributes.
    static var withoutV11Fields: CNIResult {
        var r = full
        for i in r.interfaces.indices { r.interfaces[i].mtu = nil }
        r.routes = r.routes.map { CNIResult.Route(dst: $0.dst, gw: $0.gw) }
        return r
    }

    static func v(_ s: String) -> CNIVersion { CNIVersion(s)! }

    @Test(arguments: ["0.3.0", "0.3.1", "0.4.0"])
    func zeroXResultsCarryIPVersion(version: String) throws {
        let j = Self.full.json(for: Self.v(version))
        #expect(j["cniVersion"]?.stringValue == version)
        let ips = try #require(j["ips"]?.arrayValue)
        #expect(ips.count == 2)
        #expect(ips[0]["version"]?.stringValue == "4")
        #expect(ips[1]["version"]?.stringValue == "6")
        #expect(ips[0]["address"]?.stringValue == "10.22.0.5/24")
        #expect(ips[0]["gateway"]?.stringValue == "10.22.0.1")
        #expect(ips[0]["interface"]?.intValue == 1)
        #expect(ips[1]["address"]?.stringValue == "fd00:22::5/64")
        // No 1.1.0 attributes before 1.1.0.
        let routes = try #require(j["routes"]?.arrayValue)
        #expect(routes[0]["mtu"] == nil && routes[0]["priority"] == nil && routes[0]["advmss"] == nil)
        #expect(routes[2]["priority"] == nil)
        #expect(j["interfaces"]?.arrayValue?.allSatisfy { $0["mtu"] == nil } == true)
    }

    @Test func v100OmitsIPVersionAndV11Attributes() throws {
        let j = Self.full.json(for: Self.v("1.0.0"))
        #expect(j["cniVersion"]?.stringValue == "1.0.0")
        let ips = try #require(j["ips"]?.arrayValue)
        #expect(ips.allSatisfy { $0["version"] == nil })
        #expect(ips[0]["address"]?.stringValue == "10.22.0.5/24")
        let routes = try #require(j["routes"]?.arrayValue)
        #expect(routes.count == 3)
        for r in routes {
            for k in ["mtu", "advmss", "priority", "table", "scope"] { #expect(r[k] == nil, "route \(k)") }
        }
        #expect(routes[0]["dst"]?.stringValue == "0.0.0.0/0")
        #expect(routes[0]["gw"]?.stringValue == "10.22.0.1")
        #expect(routes[1]["dst"]?.stringValue == "::/0")
        #expect(routes[1]["gw"] == nil)
        let ifs = try #require(j["interfaces"]?.arrayValue)
        #expect(ifs.allSatisfy { $0["mtu"] == nil })
        #expect(ifs[0]["mac"]?.stringValue == "0a:58:0a:16:00:01")
        #expect(ifs[0]["sandbox"] == nil)
        #expect(ifs[1]["sandbox"]?.stringValue == "/var/run/netns/cni-1234")
    }

    @Test func v110IncludesV11Attributes() throws {
        let j = Self.full.json(for: Self.v("1.1.0"))
        let ips = try #require(j["ips"]?.arrayValue)
        #expect(ips.allSatisfy { $0["version"] == nil })
        let routes = try #require(j["routes"]?.arrayValue)
        #expect(routes[0]["mtu"]?.intValue == 1400)
        #expect(routes[0]["advmss"]?.intValue == 1360)
        #expect(routes[0]["priority"]?.intValue == 10)
        #expect(routes[0]["table"]?.intValue == 100)
        #expect(routes[0]["scope"]?.intValue == 0)
        #expect(routes[1]["mtu"] == nil && routes[1]["priority"] == nil)
        #expect(routes[2]["priority"]?.intValue == 5)
        #expect(routes[2]["mtu"] == nil)
        let ifs = try #require(j["interfaces"]?.arrayValue)
        #expect(ifs.map { $0["mtu"]?.intValue } == [1450, 1450])
    }

    @Test func dnsAndLayout() throws {
        let j = Self.full.json(for: Self.v("1.0.0"))
        let dns = try #require(j["dns"])
        #expect(dns["nameservers"] == .array([.string("10.96.0.10")]))
        #expect(dns["domain"]?.stringValue == "cluster.local")
        #expect(dns["search"]?.arrayValue?.count == 2)
        #expect(dns["options"] == .array([.string("ndots:5")]))
        // cniVersion leads, as in the spec's examples.
        #expect(j.serialized().hasPrefix(#"{"cniVersion":"1.0.0","interfaces":[{"name":"weft1a2b3c4d5e6""#))
    }

    @Test func emptyResult() {
        let j = CNIResult().json(for: Self.v("1.0.0"))
        #expect(j == .object([("cniVersion", .string("1.0.0")), ("dns", .object([]))]))
    }

    @Test(arguments: CNIVersion.supported)
    func decodingEachVersionGivesAnEqualValue(version: CNIVersion) throws {
        let expected = version.hasRouteAttributes ? Self.full : Self.withoutV11Fields
        let j = Self.full.json(for: version)
        #expect(try CNIResult(json: j) == expected)
        // And through text, as a prevResult arrives.
        #expect(try CNIResult(json: JSONValue.parse(j.serialized())) == expected)
        #expect(try CNIResult(json: JSONValue.parse(j.serialized(pretty: true))) == expected)
        // A value with only fields the version has survives exactly.
        #expect(try CNIResult(json: expected.json(for: version)) == expected)
    }

    @Test func decodesASpecExample() throws {
        let text = #"""
        {
          "cniVersion": "0.4.0",
          "interfaces": [
            {"name": "cni0", "mac": "00:11:22:33:44:55"},
            {"name": "veth3243", "mac": "55:44:33:22:11:11"},
            {"name": "eth0", "mac": "99:88:77:66:55:44", "sandbox": "/var/run/netns/blue"}
          ],
          "ips": [
            {"version": "4", "address": "10.1.0.5/16", "gateway": "10.1.0.1", "interface": 2}
          ],
          "routes": [{"dst": "0.0.0.0/0"}],
          "dns": {"nameservers": ["10.1.0.1"]},
          "someFutureKey": {"x": 1}
        }
        """#
        let r = try CNIResult(json: JSONValue.parse(text))
        #expect(r.interfaces.map(\.name) == ["cni0", "veth3243", "eth0"])
        #expect(r.interfaces[2].sandbox == "/var/run/netns/blue")
        #expect(r.ips == [.init(address: ifaddr("10.1.0.5/16"), gateway: ip("10.1.0.1"), interface: 2)])
        #expect(r.routes == [.init(dst: net("0.0.0.0/0"))])
        #expect(r.dns.nameservers == ["10.1.0.1"])
        #expect(r.dns.domain == nil)
    }

    @Test func decodesCapitalisedKeys() throws {
        let r = try CNIResult(json: JSONValue.parse(#"{"CNIVersion":"1.0.0","IPs":[{"Address":"10.0.0.2/24","Gateway":"10.0.0.1"}],"Routes":[{"Dst":"0.0.0.0/0","GW":"10.0.0.1"}]}"#))
        #expect(r.ips.first?.address == ifaddr("10.0.0.2/24"))
        #expect(r.ips.first?.gateway == ip("10.0.0.1"))
        #expect(r.routes.first?.gw == ip("10.0.0.1"))
        #expect(r.dns.isEmpty)
    }

    @Test func decodingErrorsNameThePath() {
        expectCNIError(code: 6, mentioning: ["prevResult", "an array"]) { _ = try CNIResult(json: .array([])) }
        expectCNIError(code: 6, mentioning: ["prevResult.ips[0].address", "missing"]) {
            _ = try CNIResult(json: JSONValue.parse(#"{"ips":[{"gateway":"10.0.0.1"}]}"#))
        }
        expectCNIError(code: 6, mentioning: ["prevResult.ips[1].address", "\"10.0.0.5\""]) {
            _ = try CNIResult(json: JSONValue.parse(#"{"ips":[{"address":"10.0.0.4/24"},{"address":"10.0.0.5"}]}"#))
        }
        expectCNIError(code: 6, mentioning: ["prevResult.ips[0].gateway", "\"10.0.0.x\""]) {
            _ = try CNIResult(json: JSONValue.parse(#"{"ips":[{"address":"10.0.0.4/24","gateway":"10.0.0.x"}]}"#))
        }
        expectCNIError(code: 6, mentioning: ["prevResult.routes[0].dst", "\"default\""]) {
            _ = try CNIResult(json: JSONValue.parse(#"{"routes":[{"dst":"default"}]}"#))
        }
        expectCNIError(code: 6, mentioning: ["prevResult.routes[0].gw", "IPv6", "IPv4"]) {
            _ = try CNIResult(json: JSONValue.parse(#"{"routes":[{"dst":"0.0.0.0/0","gw":"fd00::1"}]}"#))
        }
        expectCNIError(code: 6, mentioning: ["prevResult.interfaces[0].name", "missing"]) {
            _ = try CNIResult(json: JSONValue.parse(#"{"interfaces":[{"mac":"00:11:22:33:44:55"}]}"#))
        }
        expectCNIError(code: 6, mentioning: ["prevResult.interfaces[0].mtu", "1500.5"]) {
            _ = try CNIResult(json: JSONValue.parse(#"{"interfaces":[{"name":"eth0","mtu":1500.5}]}"#))
        }
        expectCNIError(code: 6, mentioning: ["prevResult.ips", "an object"]) {
            _ = try CNIResult(json: JSONValue.parse(#"{"ips":{"address":"10.0.0.4/24"}}"#))
        }
        expectCNIError(code: 6, mentioning: ["prevResult.dns.nameservers[0]", "a number"]) {
            _ = try CNIResult(json: JSONValue.parse(#"{"dns":{"nameservers":[53]}}"#))
        }
        expectCNIError(code: 6, mentioning: ["custom.ips[0].address"]) {
            _ = try CNIResult(json: JSONValue.parse(#"{"ips":[{}]}"#), path: JSONPath("custom"))
        }
    }

    @Test func dnsIsEmpty() {
        #expect(CNIResult.DNS().isEmpty)
        #expect(!CNIResult.DNS(domain: "x").isEmpty)
        #expect(!CNIResult.DNS(options: ["ndots:5"]).isEmpty)
    }
}
