import Testing
import WeftCNI
import WeftCore
import WeftOS
import WeftOSFakes

/// A network configuration as a runtime would pass it on stdin, built field by field.
struct Conf {
    var cniVersion = "1.0.0"
    var name = "weftnet"
    var mode: String?
    var bridge: String?
    var ranges: [[String]] = [["10.22.0.0/24"]]
    var ipamType: String?
    var ipamRoutes: [String]?
    var ipMasq: Bool?
    var clusterCIDR: String?
    var mtu: Int?
    /// Extra top-level members (prevResult, cni.dev/valid-attachments, ...).
    var extra: [(String, JSONValue)] = []

    var json: JSONValue {
        var ipam: [(String, JSONValue)] = []
        if let ipamType { ipam.append(("type", .string(ipamType))) }
        ipam.append(("ranges", .array(ranges.map { set in .array(set.map { .object([("subnet", .string($0))]) }) })))
        if let ipamRoutes { ipam.append(("routes", .array(ipamRoutes.map { .object([("dst", .string($0))]) }))) }
        var top: [(String, JSONValue)] = [("cniVersion", .string(cniVersion)), ("name", .string(name)), ("type", .string("weft"))]
        if let mode { top.append(("mode", .string(mode))) }
        if let bridge { top.append(("bridge", .string(bridge))) }
        if let ipMasq { top.append(("ipMasq", .bool(ipMasq))) }
        if let clusterCIDR { top.append(("clusterCIDR", .string(clusterCIDR))) }
        if let mtu { top.append(("mtu", .number(Double(mtu)))) }
        top.append(("ipam", .object(ipam)))
        return .object(top + extra)
    }

    var bytes: [UInt8] { Array(json.serialized().utf8) }

    func with(_ key: String, _ value: JSONValue) -> Conf {
        var c = self
        c.extra.removeAll { $0.0 == key }
        c.extra.append((key, value))
        return c
    }
}

/// What the plugin printed and returned, with the JSON parsed.
struct Reply {
    var outcome: Plugin.Outcome
    var json: JSONValue?

    var ok: Bool { outcome.exitCode == 0 }
    /// The error code, when the reply is an error.
    var code: Int? { outcome.exitCode == 0 ? nil : json?["code"]?.intValue }
    var msg: String { json?["msg"]?.stringValue ?? "" }

    var interfaces: [JSONValue] { json?["interfaces"]?.arrayValue ?? [] }
    var ips: [JSONValue] { json?["ips"]?.arrayValue ?? [] }
    var routes: [JSONValue] { json?["routes"]?.arrayValue ?? [] }
}

/// One node and the plugin, driven as a runtime would: environment plus config bytes.
final class Harness {
    let node: FakeNode
    var conf: Conf
    var cniPath = ""

    init(_ conf: Conf = Conf(), node: FakeNode = FakeNode()) {
        self.conf = conf
        self.node = node
    }

    static func netnsPath(_ id: String) -> String { "/var/run/netns/\(id)" }

    var host: FakeNetworkControl { node.host }
    var store: MemoryIPAMStore { node.store(network: conf.name) }

    func pod(_ id: String) -> FakePodNamespace? { node.namespaces[Harness.netnsPath(id)] }
    func podNet(_ id: String) -> FakeNetworkControl? { pod(id)?.network }
    func hostVeth(_ id: String, _ ifname: String = "eth0") -> Link? { host.find(hostVethName(containerID: id, ifname: ifname)) }
    /// The addresses IPAM holds for an attachment.
    func held(_ id: String, _ ifname: String = "eth0") -> [IPAddress] {
        ((try? store.allocations()) ?? []).filter { $0.owner?.attachment == Attachment(containerID: id, ifname: ifname) }.map(\.address)
    }

    func run(_ env: [String: String], _ stdin: [UInt8]) -> Reply {
        let out = Plugin(node: node).run(environment: env, stdin: stdin)
        let json = out.stdout.isEmpty ? nil : try? JSONValue.parse(out.stdout)
        return Reply(outcome: out, json: json)
    }

    func env(_ command: String, id: String?, netns: String?, ifname: String? = "eth0") -> [String: String] {
        var e = ["CNI_COMMAND": command, "CNI_PATH": cniPath]
        if let id { e["CNI_CONTAINERID"] = id }
        if let netns { e["CNI_NETNS"] = netns }
        if let ifname { e["CNI_IFNAME"] = ifname }
        e["CNI_ARGS"] = id.map { "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=\($0)" } ?? ""
        return e
    }

    /// ADD for pod `id`, creating its namespace unless `createNamespace` is false.
    @discardableResult
    func add(_ id: String, ifname: String = "eth0", conf: Conf? = nil, createNamespace: Bool = true) -> Reply {
        let path = Harness.netnsPath(id)
        if createNamespace { node.addNamespace(path: path) }
        return run(env("ADD", id: id, netns: path, ifname: ifname), (conf ?? self.conf).bytes)
    }

    @discardableResult
    func del(_ id: String, ifname: String = "eth0", netns: String? = nil, conf: Conf? = nil) -> Reply {
        run(env("DEL", id: id, netns: netns ?? Harness.netnsPath(id), ifname: ifname), (conf ?? self.conf).bytes)
    }

    func check(_ id: String, prevResult: JSONValue?, ifname: String = "eth0", conf: Conf? = nil) -> Reply {
        var c = conf ?? self.conf
        if let prevResult { c = c.with("prevResult", prevResult) }
        return run(env("CHECK", id: id, netns: Harness.netnsPath(id), ifname: ifname), c.bytes)
    }

    func gc(valid: [(String, String)], conf: Conf? = nil) -> Reply {
        var c = conf ?? self.conf
        c = c.with("cni.dev/valid-attachments", .array(valid.map { .object([("containerID", .string($0.0)), ("ifname", .string($0.1))]) }))
        return run(["CNI_COMMAND": "GC", "CNI_PATH": cniPath], c.bytes)
    }

    func status(conf: Conf? = nil) -> Reply {
        run(["CNI_COMMAND": "STATUS", "CNI_PATH": cniPath], (conf ?? self.conf).bytes)
    }

    /// Nothing of attachment `id`/`ifname` is left: no host veth, no pod interface, no address.
    func expectNothingLeft(_ id: String, ifname: String = "eth0", sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(hostVeth(id, ifname) == nil, "host veth of \(id) is left", sourceLocation: sourceLocation)
        if let pod = podNet(id) {
            #expect(pod.linkNames == ["lo"], "pod \(id) still has \(pod.linkNames)", sourceLocation: sourceLocation)
            #expect(pod.allAddresses.isEmpty && pod.allRoutes.isEmpty && pod.allNeighbors.isEmpty, sourceLocation: sourceLocation)
        }
        #expect(held(id, ifname).isEmpty, "IPAM still holds \(held(id, ifname)) for \(id)", sourceLocation: sourceLocation)
    }
}

func ip(_ s: String) -> IPAddress {
    guard let a = IPAddress(s) else { fatalError("test literal \(s) is not an address") }
    return a
}

func net(_ s: String) -> IPNetwork {
    guard let n = IPNetwork(s) else { fatalError("test literal \(s) is not a CIDR") }
    return n
}

func ifaddr(_ s: String) -> IPInterfaceAddress {
    guard let a = IPInterfaceAddress(s) else { fatalError("test literal \(s) is not an interface address") }
    return a
}

/// Expects an error reply with `code` whose message mentions every one of `parts`.
func expectError(_ r: Reply, code: Int, mentioning parts: [String] = [], sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(r.outcome.exitCode != 0, "expected an error, got success: \(r.outcome.stdout)", sourceLocation: sourceLocation)
    #expect(r.code == code, "expected code \(code), got \(r.code.map(String.init) ?? "none"): \(r.outcome.stdout)", sourceLocation: sourceLocation)
    #expect(r.json?["msg"]?.stringValue?.isEmpty == false, "error reply without msg", sourceLocation: sourceLocation)
    for p in parts {
        #expect(r.msg.contains(p), "message \"\(r.msg)\" should mention \"\(p)\"", sourceLocation: sourceLocation)
    }
}

func expectSuccess(_ r: Reply, sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(r.outcome.exitCode == 0, "expected success, got \(r.outcome.stdout)", sourceLocation: sourceLocation)
}

/// A 0.4.0 IPAM result, as host-local prints it.
func ipamResult(_ ips: [(String, String?)], routes: [String] = [], version: String = "0.4.0") -> [UInt8] {
    var top: [(String, JSONValue)] = [("cniVersion", .string(version))]
    top.append(("ips", .array(ips.map { a, gw in
        var m: [(String, JSONValue)] = [("version", .string(a.contains(":") ? "6" : "4")), ("address", .string(a))]
        if let gw { m.append(("gateway", .string(gw))) }
        return .object(m)
    })))
    if !routes.isEmpty { top.append(("routes", .array(routes.map { .object([("dst", .string($0))]) }))) }
    top.append(("dns", .object([])))
    return Array(JSONValue.object(top).serialized(pretty: true).utf8)
}
