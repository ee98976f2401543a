import WeftAgent
import WeftCore
import WeftOS
#if canImport(Glibc)
import Glibc
#endif

/// `weft doctor` on a lab: for every node, what its kernel and files hold (read inside its
/// namespace) against what the datastore says it should hold, judged by `Doctor.check`.
public struct LabDoctor {
    public let state: LabState
    public let store: any Datastore
    public let uplink = "eth0"

    public init(state: LabState, store: any Datastore) { self.state = state; self.store = store }

    public func run() async throws -> [Finding] {
        let nodes = try await store.list(prefix: Keys.nodes).items.compactMap { (try? KubeObject(bytes: $0.value)).flatMap(NodeInfo.init) }
        let live = Set(try await store.list(prefix: Keys.nodeLeases).items.map { String($0.key.dropFirst(Keys.nodeLeases.count)) })
        let pods = try await store.list(prefix: Keys.pods).items.compactMap { try? KubeObject(bytes: $0.value) }
        var owners: [IPNetwork: String] = [:]
        for n in nodes { for r in n.podCIDRs { owners[r] = n.name } }

        let backend = state.mode.backend()
        var findings: [Finding] = []
        for node in state.nodes {
            let hostFamily = IPAddress(node.hostIP)?.family ?? .v4
            var want = NodeExpectation(backend: backend, hostFamily: hostFamily,
                                       routing: backend.desiredRouting(me: node.name, nodes: nodes.filter { live.contains($0.name) }, uplink: uplink))
            want.rangeOwners = owners
            want.leaseLive = live.contains(node.name)
            want.hasIPv6PodRange = nodes.first { $0.name == node.name }?.podCIDRs.contains { $0.family == .v6 } ?? false
            want.podAddresses = Set(pods.filter { $0.nodeName == node.name && $0.spec["hostNetwork"]?.boolValue != true }.flatMap { p in
                (p.status["podIPs"]?.arrayValue ?? []).compactMap { $0["ip"]?.stringValue.flatMap(IPAddress.init) }
            })
            do {
                findings += Doctor.check(try observe(node, backend: backend), want)
            } catch {
                findings.append(Finding(node: node.name, check: "node", message: "cannot look inside the node's namespace \(node.netns): \(error)",
                                        fix: "is the lab up? `weft lab up` recreates it"))
            }
        }
        return findings
    }

    /// Reads one node: links, routes and sysctls inside its namespace, what its dataplane finds
    /// drifting (asked through its agent); its CNI config and IPAM records from the lab's files.
    func observe(_ node: LabState.Node, backend: any RoutingBackend) throws -> NodeObservation {
        var o = NodeObservation(node: node.name, uplink: uplink)
        let dir = "\(state.dir)/\(node.name)"
        if let conf = try? JSONValue.parse(Files.read("\(dir)/net.d/10-weft.conflist")) {
            o.configuredPodMTU = conf["plugins"]?.arrayValue?.first?["mtu"]?.intValue
        }
        o.ipamHeld = Set(((try? Files.list("\(dir)/ipam/weft")) ?? []).compactMap(IPAddress.init))
        let ns = try NetworkNamespace(path: "/run/netns/\(node.netns)")
        try ns.run { () throws -> Void in
            let net = try Rtnetlink()
            let links = try net.links()
            o.uplinkMTU = links.first { $0.name == uplink }?.mtu
            o.linkMTUs = Dictionary(links.map { ($0.name, $0.mtu) }, uniquingKeysWith: { a, _ in a })
            for l in links where l.name.hasPrefix("weft") && l.name != backend.deviceName && l.name != "weft0" { o.podInterfaceMTUs[l.name] = l.mtu }
            let names = Dictionary(links.map { ($0.index, $0.name) }, uniquingKeysWith: { a, _ in a })
            for r in try net.routes(family: .v4) + net.routes(family: .v6) where r.protocolID == RouteEntry.weftProtocol && r.table == 254 {
                o.routes.append((r.destination, r.gateway, r.linkIndex.flatMap { names[$0] } ?? "?"))
            }
            var keys = ["net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding", "net/ipv4/conf/all/rp_filter", "net/ipv4/conf/\(uplink)/rp_filter"]
            let arrival = backend.arrivalDevice(uplink: uplink)
            if arrival != uplink { keys.append("net/ipv4/conf/\(arrival)/rp_filter") }
            keys += backend.sysctls(uplink: uplink).map(\.key)
            for k in keys {
                if let v = try? Files.readString("/proc/sys/\(k)") { o.sysctls[k] = v.trimmingCharacters(in: .whitespacesAndNewlines) }
            }
            o.conntrackCount = (try? Files.readString("/proc/sys/net/netfilter/nf_conntrack_count")).flatMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
            o.conntrackMax = (try? Files.readString("/proc/sys/net/netfilter/nf_conntrack_max")).flatMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
            o.agentAnswers = Self.healthz(port: AgentClient.port)
        }
        // An agent that does not answer is reported as such; its dataplane is then not judged.
        if o.agentAnswers {
            switch AgentClient.dataplaneDrift(netns: node.netns) {
            case .success(let drift): o.dataplaneDrift = drift
            case .failure(let why): o.dataplaneUnreadable = why.description
            }
        }
        return o
    }

    static func healthz(port: UInt16) -> Bool { AgentClient.get(port: port, path: "/healthz")?.status == 200 }
}
