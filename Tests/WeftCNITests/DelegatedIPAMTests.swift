import Testing
import WeftCNI
import WeftCore
import WeftOS
import WeftOSFakes
#if canImport(Glibc)
import Glibc
#endif

@Suite("Delegated IPAM") struct DelegatedIPAMTests {
    static let pluginPath = "/fake/bin/host-local"

    /// A harness whose config names host-local, and a fake host-local that hands out
    /// 10.99.0.7/24 and answers the other verbs with success.
    static func harness(mode: String? = nil) -> Harness {
        var c = Conf()
        c.ipamType = "host-local"
        c.ranges = [["10.99.0.0/24"]]
        c.mode = mode
        let h = Harness(c)
        h.cniPath = "/opt/cni/bin:/fake/bin"
        h.node.plugins[pluginPath] = { env, _ in
            switch env["CNI_COMMAND"] {
            case "ADD": return Subprocess.Output(status: 0, stdout: ipamResult([("10.99.0.7/24", "10.99.0.1")], routes: ["0.0.0.0/0"]))
            default: return Subprocess.Output(status: 0, stdout: [])
            }
        }
        return h
    }

    @Test func addUsesThePluginsAddresses() throws {
        let h = Self.harness()
        let r = h.add("pod-a")
        expectSuccess(r)
        #expect(r.ips.map { $0["address"]?.stringValue } == ["10.99.0.7/24"])
        #expect(r.ips.first?["gateway"]?.stringValue == "10.99.0.1")
        #expect(r.ips.first?["interface"]?.intValue == 2)
        #expect(h.podNet("pod-a")?.addresses(on: "eth0") == [ifaddr("10.99.0.7/24")])
        #expect(h.host.addresses(on: "weft0") == [ifaddr("10.99.0.1/24")])
        #expect(h.podNet("pod-a")?.allRoutes.map { "\($0.destination) via \($0.gateway.map(\.description) ?? "-")" } == ["0.0.0.0/0 via 10.99.0.1"])
        #expect(h.store.addresses.isEmpty, "the built-in allocator is not used")

        try #require(h.node.execCalls.count == 1)
        let call = h.node.execCalls[0]
        #expect(call.path == Self.pluginPath)
        #expect(call.environment["CNI_COMMAND"] == "ADD")
        #expect(call.environment["CNI_CONTAINERID"] == "pod-a")
        #expect(call.environment["CNI_NETNS"] == Harness.netnsPath("pod-a"))
        #expect(call.environment["CNI_IFNAME"] == "eth0")
        #expect(call.environment["CNI_PATH"] == "/opt/cni/bin:/fake/bin")
        #expect(call.environment["CNI_ARGS"]?.contains("K8S_POD_NAME=pod-a") == true)
        let sent = try JSONValue.parse(call.stdin)
        #expect(sent["ipam"]?["type"]?.stringValue == "host-local")
        #expect(sent["name"]?.stringValue == "weftnet")
    }

    @Test func pluginWithoutRoutesStillGivesDefaultRoutes() throws {
        let h = Self.harness()
        h.node.plugins[Self.pluginPath] = { env, _ in
            env["CNI_COMMAND"] == "ADD"
                ? Subprocess.Output(status: 0, stdout: ipamResult([("10.99.0.7/24", "10.99.0.1"), ("fd00:99::7/64", "fd00:99::1")]))
                : Subprocess.Output(status: 0, stdout: [])
        }
        let r = h.add("pod-a")
        expectSuccess(r)
        let pod = try #require(h.podNet("pod-a"))
        #expect(Set(pod.allRoutes.map { "\($0.destination) via \($0.gateway.map(\.description) ?? "-")" }) == ["0.0.0.0/0 via 10.99.0.1", "::/0 via fd00:99::1"])
        #expect(r.routes.map { $0["dst"]?.stringValue } == ["0.0.0.0/0", "::/0"])
    }

    @Test func delIsForwarded() throws {
        let h = Self.harness()
        expectSuccess(h.add("pod-a"))
        let r = h.del("pod-a")
        expectSuccess(r)
        #expect(h.node.execCalls.map { $0.environment["CNI_COMMAND"] } == ["ADD", "DEL"])
        #expect(h.node.execCalls.last?.environment["CNI_CONTAINERID"] == "pod-a")
        #expect(h.hostVeth("pod-a") == nil)
    }

    @Test func checkAndGCAreForwarded() throws {
        var h = Self.harness()
        let add = h.add("pod-a")
        expectSuccess(add)
        expectSuccess(h.check("pod-a", prevResult: add.json))
        #expect(h.node.execCalls.last?.environment["CNI_COMMAND"] == "CHECK")

        h = Self.harness()
        h.conf.cniVersion = "1.1.0"
        expectSuccess(h.gc(valid: []))
        let gc = try #require(h.node.execCalls.last)
        #expect(gc.environment["CNI_COMMAND"] == "GC")
        #expect(gc.environment["CNI_CONTAINERID"] == nil && gc.environment["CNI_NETNS"] == nil)
    }

    @Test func kernelFailureReleasesThroughThePlugin() throws {
        let h = Self.harness()
        let ns = h.node.addNamespace(path: Harness.netnsPath("pod-a"))
        ns.network.failNext["ensureAddress"] = EINVAL
        expectError(h.add("pod-a"), code: 103)
        #expect(h.node.execCalls.map { $0.environment["CNI_COMMAND"] } == ["ADD", "DEL"])
        h.expectNothingLeft("pod-a")
    }

    @Test func missingPlugin() {
        let h = Self.harness()
        h.node.plugins = [:]
        let r = h.add("pod-a")
        expectError(r, code: 7, mentioning: ["host-local", "/opt/cni/bin:/fake/bin"])
        #expect(h.host.operations.isEmpty)
        #expect(h.podNet("pod-a")?.linkNames == ["lo"])
    }

    @Test func noCNIPath() {
        let h = Self.harness()
        h.cniPath = ""
        expectError(h.add("pod-a"), code: 4, mentioning: ["CNI_PATH", "host-local"])
    }

    @Test func pluginErrorIsPropagated() {
        let h = Self.harness()
        h.node.plugins[Self.pluginPath] = { _, _ in
            Subprocess.Output(status: 1, stdout: Array(#"{"cniVersion": "0.4.0", "code": 11, "msg": "lock busy, try again", "details": "flock"}"#.utf8))
        }
        let r = h.add("pod-a")
        expectError(r, code: 11, mentioning: ["host-local", "lock busy, try again"])
        #expect(r.json?["details"]?.stringValue == "flock")
        #expect(h.host.operations.isEmpty)
    }

    @Test func pluginCrashWithoutJSON() {
        let h = Self.harness()
        h.node.plugins[Self.pluginPath] = { _, _ in Subprocess.Output(status: 2, stdout: [], stderr: Array("panic: boom\n".utf8)) }
        let r = h.add("pod-a")
        expectError(r, code: 105, mentioning: ["host-local", "2"])
        #expect(r.json?["details"]?.stringValue == "panic: boom")
    }

    @Test func pluginAnswersGarbage() {
        let h = Self.harness()
        h.node.plugins[Self.pluginPath] = { _, _ in Subprocess.Output(status: 0, stdout: Array("not json".utf8)) }
        expectError(h.add("pod-a"), code: 105, mentioning: ["host-local", "not JSON"])
    }

    @Test func pluginReturnsNoAddress() {
        let h = Self.harness()
        h.node.plugins[Self.pluginPath] = { _, _ in Subprocess.Output(status: 0, stdout: Array(#"{"cniVersion": "0.4.0"}"#.utf8)) }
        expectError(h.add("pod-a"), code: 105, mentioning: ["no addresses"])
        #expect(h.host.operations.isEmpty)
    }
}

@Suite("Input errors and VERSION") struct InputTests {
    @Test func version() throws {
        let h = Harness()
        let r = h.run(["CNI_COMMAND": "VERSION"], Array(#"{"cniVersion": "0.4.0"}"#.utf8))
        expectSuccess(r)
        #expect(r.json?["cniVersion"]?.stringValue == "0.4.0")
        #expect(r.json?["supportedVersions"]?.arrayValue?.compactMap(\.stringValue) == ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
        let bare = h.run(["CNI_COMMAND": "VERSION"], [])
        expectSuccess(bare)
        #expect(bare.json?["cniVersion"]?.stringValue == "1.1.0")
        #expect(h.host.operations.isEmpty)
    }

    @Test func noCommand() {
        let h = Harness()
        var env = h.env("ADD", id: "pod-a", netns: Harness.netnsPath("pod-a"))
        env["CNI_COMMAND"] = nil
        let r = h.run(env, h.conf.bytes)
        expectError(r, code: 4, mentioning: ["CNI_COMMAND"])
        #expect(r.json?["cniVersion"]?.stringValue == "1.0.0", "the error speaks the config's version")
    }

    @Test func unknownCommand() {
        let h = Harness()
        expectError(h.run(h.env("FROB", id: "pod-a", netns: "/x"), h.conf.bytes), code: 4, mentioning: ["FROB"])
    }

    @Test(arguments: ["", "bad/name", "a-name-that-is-far-too-long", "eth 0", "."])
    func badInterfaceName(ifname: String) {
        let h = Harness()
        h.node.addNamespace(path: Harness.netnsPath("pod-a"))
        let r = h.run(h.env("ADD", id: "pod-a", netns: Harness.netnsPath("pod-a"), ifname: ifname), h.conf.bytes)
        expectError(r, code: 4, mentioning: ["CNI_IFNAME"])
        #expect(h.store.addresses.isEmpty)
    }

    @Test func missingContainerID() {
        let h = Harness()
        expectError(h.run(h.env("ADD", id: nil, netns: "/x"), h.conf.bytes), code: 4, mentioning: ["CNI_CONTAINERID"])
    }

    @Test func missingNetnsForAdd() {
        let h = Harness()
        expectError(h.run(h.env("ADD", id: "pod-a", netns: nil), h.conf.bytes), code: 4, mentioning: ["CNI_NETNS"])
    }

    @Test func malformedJSON() {
        let h = Harness()
        h.node.addNamespace(path: Harness.netnsPath("pod-a"))
        let r = h.run(h.env("ADD", id: "pod-a", netns: Harness.netnsPath("pod-a")), Array(#"{"cniVersion": "1.0.0", "name": "#.utf8))
        expectError(r, code: 6, mentioning: ["JSON"])
        #expect(r.json?["cniVersion"]?.stringValue == "1.1.0")
        #expect(h.host.operations.isEmpty)
    }

    @Test func configNotAnObject() {
        let h = Harness()
        expectError(h.run(h.env("ADD", id: "pod-a", netns: "/x"), Array("[1, 2]".utf8)), code: 6)
    }

    @Test(arguments: ["0.2.0", "2.0.0", "1.0"])
    func unsupportedVersion(version: String) {
        var c = Conf()
        c.cniVersion = version
        let h = Harness(c)
        let r = h.add("pod-a")
        expectError(r, code: 1, mentioning: [version, "1.1.0"])
        #expect(r.json?["cniVersion"]?.stringValue == "1.1.0")
        #expect(h.host.operations.isEmpty)
    }

    @Test func invalidConfigTouchesNothing() {
        var c = Conf()
        c.mode = "overlay"
        let h = Harness(c)
        expectError(h.add("pod-a"), code: 7, mentioning: ["overlay"])
        #expect(h.host.operations.isEmpty)
    }
}
