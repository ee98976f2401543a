import Testing
import WeftCore

@Suite struct CNIEnvironmentTests {
    static let full: [String: String] = [
        "CNI_CONTAINERID": "3f2a9c0e1b7d",
        "CNI_NETNS": "/var/run/netns/cni-1234",
        "CNI_IFNAME": "eth0",
        "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0",
        "CNI_PATH": "/opt/cni/bin:/usr/libexec/cni",
    ]

    static func env(_ command: String, _ overrides: [String: String?] = [:]) -> [String: String] {
        var e = full
        e["CNI_COMMAND"] = command
        for (k, v) in overrides { e[k] = v }
        return e
    }

    @Test func addReadsEverything() throws {
        let e = try CNIEnvironment.parse(Self.env("ADD"))
        #expect(e.command == .add)
        #expect(e.containerID == "3f2a9c0e1b7d")
        #expect(e.netns == "/var/run/netns/cni-1234")
        #expect(e.ifname == "eth0")
        #expect(e.path == ["/opt/cni/bin", "/usr/libexec/cni"])
        #expect(e.args.map(\.key) == ["IgnoreUnknown", "K8S_POD_NAMESPACE", "K8S_POD_NAME"])
        #expect(e.arg("IgnoreUnknown") == "1")
        #expect(e.podNamespace == "default")
        #expect(e.podName == "web-0")
        #expect(e.arg("K8S_POD_UID") == nil)
        #expect(e == CNIEnvironment(command: .add, containerID: "3f2a9c0e1b7d", netns: "/var/run/netns/cni-1234", ifname: "eth0",
                                    args: [("IgnoreUnknown", "1"), ("K8S_POD_NAMESPACE", "default"), ("K8S_POD_NAME", "web-0")],
                                    path: ["/opt/cni/bin", "/usr/libexec/cni"]))
    }

    @Test(arguments: ["ADD", "CHECK"])
    func addAndCheckNeedContainerNetnsAndIfname(command: String) {
        for variable in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"] {
            // Unset and empty are the same.
            for value in [nil, ""] as [String?] {
                expectCNIError(code: 4, mentioning: [variable]) { _ = try CNIEnvironment.parse(Self.env(command, [variable: value])) }
            }
        }
        #expect((try? CNIEnvironment.parse(Self.env(command)))?.command == CNICommand(rawValue: command))
    }

    @Test func netnsMessageNamesTheVerb() {
        expectCNIError(code: 4, mentioning: ["CNI_NETNS", "CHECK"]) { _ = try CNIEnvironment.parse(Self.env("CHECK", ["CNI_NETNS": nil])) }
    }

    @Test func delWithoutNetnsIsFine() throws {
        let e = try CNIEnvironment.parse(Self.env("DEL", ["CNI_NETNS": nil]))
        #expect(e.command == .del)
        #expect(e.netns == "")
        #expect(e.containerID == "3f2a9c0e1b7d")
        #expect(try CNIEnvironment.parse(Self.env("DEL", ["CNI_NETNS": ""])).netns == "")
    }

    @Test func delNeedsContainerIDAndIfname() {
        expectCNIError(code: 4, mentioning: ["CNI_CONTAINERID"]) { _ = try CNIEnvironment.parse(Self.env("DEL", ["CNI_CONTAINERID": nil])) }
        expectCNIError(code: 4, mentioning: ["CNI_IFNAME"]) { _ = try CNIEnvironment.parse(Self.env("DEL", ["CNI_IFNAME": ""])) }
    }

    @Test func versionNeedsNothing() throws {
        let e = try CNIEnvironment.parse(["CNI_COMMAND": "VERSION"])
        #expect(e.command == .version)
        #expect(e.containerID == "" && e.netns == "" && e.ifname == "" && e.args.isEmpty && e.path.isEmpty)
        // Even garbage in the other variables is not looked at.
        let g = try CNIEnvironment.parse(["CNI_COMMAND": "VERSION", "CNI_CONTAINERID": "/bad", "CNI_IFNAME": "way-too-long-interface", "CNI_ARGS": "junk"])
        #expect(g.command == .version)
    }

    @Test(arguments: ["GC", "STATUS"])
    func gcAndStatusNeedNoAttachment(command: String) throws {
        let e = try CNIEnvironment.parse(["CNI_COMMAND": command, "CNI_PATH": "/opt/cni/bin"])
        #expect(e.command.rawValue == command)
        #expect(e.path == ["/opt/cni/bin"])
    }

    @Test func commandIsRequiredAndChecked() {
        expectCNIError(code: 4, mentioning: ["CNI_COMMAND", "ADD", "DEL", "CHECK", "VERSION"]) { _ = try CNIEnvironment.parse([:]) }
        expectCNIError(code: 4, mentioning: ["CNI_COMMAND"]) { _ = try CNIEnvironment.parse(["CNI_COMMAND": ""]) }
        expectCNIError(code: 4, mentioning: ["CNI_COMMAND", "\"add\""]) { _ = try CNIEnvironment.parse(Self.env("add")) }
        expectCNIError(code: 4, mentioning: ["\"UPDATE\""]) { _ = try CNIEnvironment.parse(Self.env("UPDATE")) }
    }

    @Test(arguments: ["a", "A", "0", "3f2a9c0e1b7d", "a-b_c.d", "pod.default-0_1", String(repeating: "f", count: 64)])
    func validContainerIDs(id: String) throws {
        #expect(try CNIEnvironment.parse(Self.env("ADD", ["CNI_CONTAINERID": id])).containerID == id)
    }

    @Test(arguments: ["-abc", "_abc", ".abc", "ab/c", "ab c", "é", "abé", "ab:c", "abc\n", "a;b", "../etc"])
    func invalidContainerIDs(id: String) {
        expectCNIError(code: 4, mentioning: ["CNI_CONTAINERID", "\"\(id)\""]) {
            _ = try CNIEnvironment.parse(Self.env("ADD", ["CNI_CONTAINERID": id]))
        }
        expectCNIError(code: 4, mentioning: ["CNI_CONTAINERID"]) {
            _ = try CNIEnvironment.parse(Self.env("DEL", ["CNI_CONTAINERID": id]))
        }
    }

    @Test(arguments: ["eth0", "e", "net1", "a23456789012345", "eth0.100", "vlan-7_x", "éééééé"])
    func validIfnames(name: String) throws {
        #expect(try CNIEnvironment.parse(Self.env("ADD", ["CNI_IFNAME": name])).ifname == name)
    }

    @Test(arguments: ["a234567890123456", "eth/0", "/", "eth:0", "eth 0", "eth\t0", "eth\u{01}", ".", "..", "ééééééééé"])
    func invalidIfnames(name: String) {
        expectCNIError(code: 4, mentioning: ["CNI_IFNAME", "\"\(name)\""]) {
            _ = try CNIEnvironment.parse(Self.env("ADD", ["CNI_IFNAME": name]))
        }
    }

    @Test func interfaceNameCheckNamesTheField() {
        expectCNIError(code: 4, mentioning: ["bridge", "\"br/0\""]) { try requireInterfaceName("br/0", field: "bridge") }
        expectCNIError(code: 4, mentioning: ["bridge", "not set"]) { try requireInterfaceName("", field: "bridge") }
        #expect(throws: Never.self) { try requireInterfaceName("weft0", field: "bridge") }
    }

    @Test func cniArgsParsing() throws {
        let args = try CNIEnvironment.parseArgs("IgnoreUnknown=1;K8S_POD_NAMESPACE=kube-system;;X=a=b=c;EMPTY=;")
        #expect(args.map(\.key) == ["IgnoreUnknown", "K8S_POD_NAMESPACE", "X", "EMPTY"])
        #expect(args.map(\.value) == ["1", "kube-system", "a=b=c", ""])
        #expect(try CNIEnvironment.parseArgs("").isEmpty)
        #expect(try CNIEnvironment.parseArgs(";;").isEmpty)
        // The first of duplicated keys wins in lookups.
        let e = CNIEnvironment(command: .add, args: try CNIEnvironment.parseArgs("IP=10.0.0.1;IP=10.0.0.2"))
        #expect(e.arg("IP") == "10.0.0.1")
        // Keys are case-sensitive.
        #expect(e.arg("ip") == nil)
    }

    @Test(arguments: [("oops", "oops"), ("=value", "=value"), ("A=1;oops;B=2", "oops"), ("K8S_POD_NAME", "K8S_POD_NAME")])
    func malformedCNIArgs(raw: String, culprit: String) {
        expectCNIError(code: 4, mentioning: ["CNI_ARGS", "\"\(culprit)\""]) { _ = try CNIEnvironment.parseArgs(raw) }
        expectCNIError(code: 4, mentioning: ["CNI_ARGS"]) { _ = try CNIEnvironment.parse(Self.env("ADD", ["CNI_ARGS": raw])) }
    }

    @Test func pathSkipsEmptyEntries() throws {
        #expect(try CNIEnvironment.parse(Self.env("ADD", ["CNI_PATH": ":/opt/cni/bin::/x:"])).path == ["/opt/cni/bin", "/x"])
        #expect(try CNIEnvironment.parse(Self.env("ADD", ["CNI_PATH": nil])).path == [])
    }

    @Test func equality() {
        let a = CNIEnvironment(command: .add, containerID: "c", netns: "/n", ifname: "eth0", args: [("A", "1")], path: ["/p"])
        #expect(a == CNIEnvironment(command: .add, containerID: "c", netns: "/n", ifname: "eth0", args: [("A", "1")], path: ["/p"]))
        #expect(a != CNIEnvironment(command: .add, containerID: "c", netns: "/n", ifname: "eth0", args: [("A", "2")], path: ["/p"]))
        #expect(a != CNIEnvironment(command: .del, containerID: "c", netns: "/n", ifname: "eth0", args: [("A", "1")], path: ["/p"]))
        #expect(a != CNIEnvironment(command: .add, containerID: "c", netns: "/n", ifname: "eth1", args: [("A", "1")], path: ["/p"]))
    }
}
