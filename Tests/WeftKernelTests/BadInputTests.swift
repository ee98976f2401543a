import Testing
import WeftCore
import WeftOS

/// Every kind of bad input: the right code, a message that says what to fix, and nothing left
/// behind — no interface on the node or in the pod, no allocation, no nftables table — while
/// a pod that already worked keeps working.
@Suite(.serialized, .enabled(if: isRoot, "needs root to create network namespaces"))
struct BadInputTests {
    struct Case: CustomTestStringConvertible, Sendable {
        var name: String
        var config: @Sendable (String) -> String   // dataDir -> config
        var env: [String: String] = [:]
        var code: Int
        var message: String
        var testDescription: String { name }
    }

    static let cases: [Case] = [
        Case(name: "malformed JSON", config: { _ in "{\"cniVersion\": \"1.0.0\", " }, code: 6, message: "not valid JSON"),
        Case(name: "unknown version", config: { weftConfig(dataDir: $0, version: "9.9.9") }, code: 1, message: "\"9.9.9\" is not supported"),
        Case(name: "missing CNI_COMMAND", config: { weftConfig(dataDir: $0) }, env: ["CNI_COMMAND": ""], code: 4, message: "CNI_COMMAND"),
        Case(name: "unknown verb", config: { weftConfig(dataDir: $0) }, env: ["CNI_COMMAND": "ATTACH"], code: 4, message: "ATTACH"),
        Case(name: "missing CNI_CONTAINERID", config: { weftConfig(dataDir: $0) }, env: ["CNI_CONTAINERID": ""], code: 4, message: "CNI_CONTAINERID"),
        Case(name: "bad CNI_IFNAME", config: { weftConfig(dataDir: $0) }, env: ["CNI_IFNAME": "this-name-is-far-too-long"], code: 4, message: "at most 15 bytes"),
        Case(name: "missing netns", config: { weftConfig(dataDir: $0) }, env: ["CNI_NETNS": "/run/netns/does-not-exist-weft"], code: 4, message: "does not exist"),
        Case(name: "not a netns", config: { weftConfig(dataDir: $0) }, env: ["CNI_NETNS": "/etc/hostname"], code: 4, message: "not a network namespace"),
        Case(name: "invalid subnet", config: { weftConfig(dataDir: $0, v4: "10.22.0.300/24") }, code: 7, message: "ipam.ranges[0][0].subnet \"10.22.0.300/24\" is not a CIDR"),
        Case(name: "subnet too small", config: { weftConfig(dataDir: $0, v4: "10.22.0.1/32") }, code: 7, message: "too small"),
        Case(name: "bad mode", config: { weftConfig(mode: "overlay", dataDir: $0) }, code: 7, message: "mode \"overlay\""),
        Case(name: "bad mtu", config: { weftConfig(dataDir: $0, extra: "\"mtu\": 10") }, code: 7, message: "mtu 10"),
        Case(name: "missing delegated IPAM plugin", config: { _ in
            "{\"cniVersion\": \"1.0.0\", \"name\": \"testnet\", \"type\": \"weft\", \"ipam\": {\"type\": \"no-such-ipam\"}}"
        }, code: 7, message: "no executable named no-such-ipam in CNI_PATH"),
    ]

    @Test("bad input gets its code and message, and leaves nothing behind", arguments: cases)
    func badInput(_ c: Case) throws {
        let lab = try KernelLab()
        defer { lab.close() }
        // A working pod first: it must be undisturbed by the bad request.
        let good = weftConfig(dataDir: lab.dataDir)
        let p0 = try lab.pod("p0")
        let ok = try lab.cni("ADD", config: good, containerID: "good", netns: p0)
        try #require(ok.status == 0)
        let nodeBefore = try lab.nodeLinks()
        let allocBefore = lab.allocations(network: "testnet")
        let tablesBefore = try lab.inNode(["nft", "list", "tables"]).stdout

        let pod = try lab.pod("bad")
        var env = ["CNI_COMMAND": "ADD", "CNI_CONTAINERID": "bad1", "CNI_NETNS": "/run/netns/\(pod)", "CNI_IFNAME": "eth0"]
        for (k, v) in c.env { env[k] = v }
        let r = try lab.cni(env["CNI_COMMAND"]!, config: c.config(lab.dataDir), containerID: env["CNI_CONTAINERID"]!, netns: env["CNI_NETNS"]!, ifname: env["CNI_IFNAME"]!)
        #expect(r.status != 0)
        let err = try #require(r.json, "error JSON on stdout, got: \(r.stdout) \(r.stderr)")
        #expect(err["code"]?.intValue == c.code, "\(c.name): \(r.stdout)")
        #expect(err["msg"]?.stringValue?.contains(c.message) == true, "\(c.name): \(err["msg"]?.stringValue ?? "")")
        #expect(err["cniVersion"]?.stringValue != nil)

        #expect(try lab.nodeLinks() == nodeBefore, "no interface left on the node")
        #expect(try lab.links(in: pod) == ["lo"], "no interface left in the pod")
        #expect(lab.allocations(network: "testnet") == allocBefore, "no address taken")
        #expect(try lab.inNode(["nft", "list", "tables"]).stdout == tablesBefore, "no nftables change")
        #expect(try lab.ping(from: lab.node, addresses(ok)[0]), "the earlier pod still works")
    }

    @Test("an exhausted range: code 100, nothing half-made, earlier pods unharmed")
    func exhausted() throws {
        let lab = try KernelLab()
        defer { lab.close() }
        // A /29 has 6 host addresses, one of them the gateway: 5 pods fit.
        let config = weftConfig(dataDir: lab.dataDir, v4: "10.23.0.0/29", v6: "fd00:23::/64")
        var first = ""
        for i in 0..<5 {
            let r = try lab.cni("ADD", config: config, containerID: "c\(i)", netns: try lab.pod("p\(i)"))
            try #require(r.status == 0, "\(r.stdout)")
            if i == 0 { first = addresses(r)[0] }
        }
        let nodeBefore = try lab.nodeLinks()
        let extra = try lab.pod("extra")
        let r = try lab.cni("ADD", config: config, containerID: "c5", netns: extra)
        #expect(r.json?["code"]?.intValue == 100)
        #expect(r.json?["msg"]?.stringValue?.contains("no IPv4 address left") == true, "\(r.stdout)")
        #expect(lab.allocations(network: "testnet").count == 10, "the IPv6 address taken first was given back")
        #expect(try lab.nodeLinks() == nodeBefore)
        #expect(try lab.links(in: extra) == ["lo"])
        #expect(try lab.ping(from: lab.node, first))
    }

    @Test("ADD onto an interface name the pod already has: code 102, the pod's interface untouched")
    func interfaceExists() throws {
        let lab = try KernelLab()
        defer { lab.close() }
        let config = weftConfig(dataDir: lab.dataDir)
        let ns = try lab.pod("p0")
        let r1 = try lab.cni("ADD", config: config, containerID: "c0", netns: ns)
        try #require(r1.status == 0)
        let r2 = try lab.cni("ADD", config: config, containerID: "c9", netns: ns)
        #expect(r2.json?["code"]?.intValue == 102)
        #expect(lab.allocations(network: "testnet").count == 1)
        #expect(try lab.ping(from: lab.node, addresses(r1)[0]))
    }
}
