import WeftAgent
import WeftCore
import WeftOS

/// `weft trace SRC DST[:PORT[/PROTO]]` on a lab: the path a packet takes, hop by hop — the
/// route in the source pod, its veth, the service translation and the endpoints it may pick,
/// the policy verdicts naming the deciding policies, the node's routing decision, the
/// encapsulation or native route, the peer node, the destination's veth — computed from the
/// desired state and each hop checked against the live kernel (`ip route get` in the node's or
/// pod's namespace; for services and policy, the node's dataplane, asked through its agent's
/// `/dataplane` endpoint, which answers in its own terms), differences reported.
public struct LabTrace {
    public struct Hop: Sendable {
        public var what: String
        public var desired: String
        /// What the kernel says, when the hop has a kernel counterpart.
        public var live: String?
        public var agrees = true
    }

    public struct Result: Sendable {
        public var hops: [Hop] = []
        public var verdict = ""
        public var delivered = false
        public var differences: Int { hops.filter { !$0.agrees }.count }

        public var text: String {
            var s = ""
            for (i, h) in hops.enumerated() {
                s += "\(i + 1). \(h.what)\n     \(h.desired)\n"
                if let live = h.live { s += "     kernel: \(live)\(h.agrees ? "" : "   <-- DIFFERS")\n" }
            }
            s += "=> \(verdict)\n"
            if differences > 0 { s += "\(differences) difference(s) between the desired state and the kernel\n" }
            return s
        }
    }

    enum End {
        case pod(KubeObject, PolicyPod)
        case service(ClusterService)
        case node(NodeInfo)
        case address(IPAddress)
    }

    public let state: LabState
    public let store: any Datastore
    let uplink = "eth0"

    public init(state: LabState, store: any Datastore) { self.state = state; self.store = store }

    /// "ns/name" or "name" (pod, else service, else node), "pod/…", "svc/…", "node/…", or an address.
    func resolve(_ spec: String, pods: [KubeObject], entries: [ServiceRules.Entry], nodes: [NodeInfo]) throws -> End {
        if let ip = IPAddress(spec) { return .address(ip) }
        var kind: String?, rest = Substring(spec)
        for k in ["pod/", "svc/", "service/", "node/"] where rest.hasPrefix(k) { kind = String(k.dropLast()); rest = rest.dropFirst(k.count) }
        let parts = rest.split(separator: "/").map(String.init)
        let (ns, name) = parts.count == 2 ? (parts[0], parts[1]) : ("default", parts.first ?? "")
        if kind == nil || kind == "pod", let p = pods.first(where: { ($0.namespace ?? "default") == ns && $0.name == name }), let pp = PolicyPod(p) { return .pod(p, pp) }
        if kind == nil || kind == "svc" || kind == "service", let e = entries.first(where: { $0.service.namespace == ns && $0.service.name == name }) { return .service(e.service) }
        if kind == nil || kind == "node", let n = nodes.first(where: { $0.name == (parts.last ?? "") }) { return .node(n) }
        throw LabError("\"\(spec)\" is no running pod, service or node of lab \(state.name); give NAMESPACE/NAME, pod/…, svc/…, node/NAME or an address")
    }

    public func run(from srcSpec: String, to dstSpec: String, port: UInt16?, proto: String) async throws -> Result {
        let nodes = try await store.list(prefix: Keys.nodes).items.compactMap { (try? KubeObject(bytes: $0.value)).flatMap(NodeInfo.init) }
        let pods = try await store.list(prefix: Keys.pods).items.compactMap { try? KubeObject(bytes: $0.value) }
        let entries = try await DesiredState.serviceEntries(store)
        let (input, _) = try await DesiredState.policyInput(store)
        let routing = state.mode.backend()
        let src = try resolve(srcSpec, pods: pods, entries: entries, nodes: nodes)
        var dst = try resolve(dstSpec, pods: pods, entries: entries, nodes: nodes)
        var r = Result()

        guard case .pod(_, let srcPod) = src, let srcNodeName = srcPod.node, nodes.contains(where: { $0.name == srcNodeName }) else {
            throw LabError("the source must be a pod (traces start in a pod's namespace); \(srcSpec) is not")
        }
        // A destination address that is a pod's or a service's is traced as that.
        if case .address(let ip) = dst {
            if let p = pods.first(where: { PolicyPod($0)?.addresses.contains(ip) == true }), let pp = PolicyPod(p) { dst = .pod(p, pp) }
            else if let e = entries.first(where: { $0.service.clusterIPs.contains(ip) }) { dst = .service(e.service) }
        }
        let family: IPFamily = {
            if case .address(let ip) = dst { return ip.family }
            return srcPod.addresses.first?.family ?? .v4
        }()
        guard let srcIP = srcPod.addresses.first(where: { $0.family == family }) else { throw LabError("\(srcSpec) has no \(family) address") }
        let srcNS = NodeRuntime.netnsName(labID: state.id, namespace: srcPod.namespace, pod: srcPod.name)
        let srcNodeNS = netns(of: srcNodeName)

        // The target address and port before translation.
        var target: IPAddress
        var targetPort = port
        switch dst {
        case .pod(_, let p):
            guard let a = p.addresses.first(where: { $0.family == family }) else { throw LabError("\(dstSpec) has no \(family) address") }
            target = a
        case .service(let s):
            guard let a = s.clusterIPs.first(where: { $0.family == family }) else { throw LabError("service \(dstSpec) has no \(family) ClusterIP") }
            target = a
            if targetPort == nil { targetPort = s.ports.first { $0.proto == proto }?.port }
        case .node(let n): target = n.hostIP
        case .address(let a): target = a
        }

        // 1. In the source pod: its route.
        let podRoute = routeGet(ns: srcNS, to: target, from: nil, iif: nil)
        r.hops.append(Hop(what: "source pod \(srcPod.namespace)/\(srcPod.name) \(srcIP) on \(srcNodeName)",
                          desired: "route to \(target): default via the node (routed mode: 169.254.1.1 / fe80::1 dev eth0)",
                          live: podRoute.map { "\(target) \($0.gateway.map { "via \($0) " } ?? "")dev \($0.dev)" } ?? "no route",
                          agrees: podRoute?.dev == "eth0"))
        let srcVeth = routeGet(ns: srcNodeNS, to: srcIP, from: nil, iif: nil)?.dev ?? "?"
        r.hops.append(Hop(what: "veth into \(srcNodeName)", desired: "the pod's host-side interface \(hostVethHint(srcVeth))", live: srcVeth, agrees: srcVeth.hasPrefix("weft")))

        // 2. Service translation.
        var backend = target, backendPort = targetPort
        var backendPod: PolicyPod?
        if case .pod(_, let p) = dst { backendPod = p }
        if case .service(let s) = dst {
            guard let first = serviceHop(s, target: target, port: targetPort, proto: proto, node: srcNodeName, nodeNS: srcNodeNS, entries: entries, into: &r) else { return r }
            backend = first.address
            backendPort = first.port
            backendPod = input.pods.first { $0.addresses.contains(backend) }
        }

        // 3. Egress policy on the source node.
        let egress = policyTrace(node: srcNodeName, ns: srcNodeNS, .egress, pod: srcIP, peer: backend, port: backendPort, proto: proto, input: input)
        r.hops.append(Hop(what: "egress policy on \(srcNodeName)", desired: describe(egress, "egress from \(srcPod.namespace)/\(srcPod.name)"),
                          live: egress.live?.text, agrees: egress.live?.agrees ?? true))
        if !egress.allowed { r.verdict = "dropped on \(srcNodeName): no egress policy allows it (isolated by \(egress.isolatedBy.joined(separator: ", ")))"; return r }

        // 4. The source node's routing decision.
        let dstNodeName = backendPod?.node ?? nodes.first { $0.hostIP == backend }?.name
        let dstNode = nodes.first { $0.name == dstNodeName }
        let decision = routeGet(ns: srcNodeNS, to: backend, from: srcIP, iif: srcVeth)
        let wantDev: String
        let how: String
        if dstNodeName == srcNodeName {
            wantDev = backendPod != nil ? "weft…" : "local"
            how = backendPod != nil ? "same node: straight to the destination pod's veth" : "delivered to the node itself"
        } else if let dstNode {
            let path = routing.path(to: dstNode, uplink: uplink)
            wantDev = path.device; how = path.description
        } else {
            wantDev = uplink; how = "outside the cluster: out of \(uplink) (masqueraded)"
        }
        let devOK = decision.map { wantDev == "weft…" ? isPodVeth($0.dev, routing) : (wantDev == "local" ? $0.type == "local" : $0.dev == wantDev) } ?? false
        r.hops.append(Hop(what: "routing on \(srcNodeName)", desired: how,
                          live: decision.map { "\(backend) \($0.type == "local" ? "local " : "")\($0.gateway.map { "via \($0) " } ?? "")dev \($0.dev)" } ?? "no route",
                          agrees: devOK))
        guard let dstNode, let dstNodeName else {
            r.verdict = devOK ? "leaves the cluster through \(srcNodeName)'s uplink" : "no route"
            r.delivered = devOK
            return r
        }

        // 5. The destination node: its route to the pod, then ingress policy.
        if let backendPod {
            let dstNodeNS = netns(of: dstNodeName)
            let iif = dstNodeName == srcNodeName ? srcVeth : routing.arrivalDevice(uplink: uplink)
            let arrive = routeGet(ns: dstNodeNS, to: backend, from: srcIP, iif: iif)
            if dstNodeName != srcNodeName {
                r.hops.append(Hop(what: "arrives at \(dstNodeName) (\(dstNode.hostIP)) on \(iif)", desired: "route to the destination pod's veth",
                                  live: arrive.map { "\(backend) dev \($0.dev)" } ?? "no route", agrees: arrive.map { isPodVeth($0.dev, routing) } ?? false))
            }
            let ingress = policyTrace(node: dstNodeName, ns: dstNodeNS, .ingress, pod: backend, peer: srcIP, port: backendPort, proto: proto, input: input)
            r.hops.append(Hop(what: "ingress policy on \(dstNodeName)", desired: describe(ingress, "ingress to \(backendPod.namespace)/\(backendPod.name)"),
                              live: ingress.live?.text, agrees: ingress.live?.agrees ?? true))
            if !ingress.allowed { r.verdict = "dropped on \(dstNodeName): no ingress policy allows it (isolated by \(ingress.isolatedBy.joined(separator: ", ")))"; return r }
            r.hops.append(Hop(what: "destination pod \(backendPod.namespace)/\(backendPod.name) \(backend)\(backendPort.map { ":\($0)/\(proto)" } ?? "")", desired: "delivered"))
            r.verdict = "delivered to \(backendPod.namespace)/\(backendPod.name)\(r.differences > 0 ? " (as desired; the kernel differs, see above)" : "")"
            r.delivered = true
        } else {
            r.hops.append(Hop(what: "node \(dstNodeName) \(dstNode.hostIP)", desired: "delivered to the node"))
            r.verdict = "delivered to node \(dstNodeName)"
            r.delivered = true
        }
        return r
    }

    /// The service hop: what the source node's dataplane does with a new connection to the
    /// service's `target`; the backend traced (the first it may pick), or nil with the verdict set.
    func serviceHop(_ s: ClusterService, target: IPAddress, port targetPort: UInt16?, proto: String, node srcNodeName: String, nodeNS srcNodeNS: String,
                    entries: [ServiceRules.Entry], into r: inout Result) -> ServiceBackend? {
        guard let sp = s.ports.first(where: { $0.port == targetPort && $0.proto == proto }) else {
            r.verdict = "service \(s.namespace)/\(s.name) has no \(proto) port \(targetPort.map(String.init) ?? "?")"
            return nil
        }
        // The source node's dataplane says what it does with the connection; without its
        // agent, the desired state from the datastore says what it should do.
        let asked = AgentClient.serviceTrace(netns: srcNodeNS, address: target, port: sp.port, proto: proto)
        let trace: ServiceTrace
        switch asked {
        case .success(let t?): trace = t
        case .success(nil):
            r.verdict = "\(srcNodeName)'s dataplane has no frontend for \(target):\(sp.port)/\(proto) (the agent has not programmed the service yet?)"
            return nil
        case .failure(let why):
            guard let f = DataplaneView.frontend(entries, node: srcNodeName, address: target, port: sp.port, proto: proto) else {
                r.verdict = "service \(s.namespace)/\(s.name) has no frontend at \(target):\(sp.port)/\(proto)"
                return nil
            }
            trace = ServiceTrace(frontend: f, live: DataplaneLive(text: "not asked (\(srcNodeName): \(why))", agrees: false))
        }
        let f = trace.frontend
        var backends: [ServiceBackend] = []
        let desired: String
        switch f.action {
        case .forward(let b):
            backends = b
            let listed = b.map { "\($0.pod.isEmpty ? "" : $0.pod + " ")\($0.address):\($0.port)" }.joined(separator: ", ")
            desired = "picks one of \(b.count) endpoint(s) at random\(f.affinitySeconds != nil ? " (ClientIP affinity)" : ""): \(listed)"
        case .reject: desired = "no endpoint takes traffic: rejected"
        case .drop: desired = "traffic policy Local and no endpoint on \(srcNodeName): dropped"
        }
        r.hops.append(Hop(what: "service \(s.namespace)/\(s.name) \(target):\(sp.port)/\(proto) on \(srcNodeName)\(trace.place.map { " (\($0))" } ?? "")",
                          desired: desired, live: trace.live?.text, agrees: trace.live?.agrees ?? true))
        guard let first = backends.first else {
            r.verdict = f.action == .drop ? "dropped on \(srcNodeName): traffic policy Local and no endpoint on the node"
                : "rejected: the service has no endpoint taking traffic"
            return nil
        }
        if backends.count > 1 { r.hops[r.hops.count - 1].desired += "; traced: the first" }
        return first
    }

    /// The node's dataplane's verdict; without its agent, the datastore's (and the difference said).
    func policyTrace(node: String, ns: String, _ d: NetworkPolicy.Direction, pod: IPAddress, peer: IPAddress, port: UInt16?, proto: String,
                     input: PolicyRules.Input) -> PolicyTrace {
        switch AgentClient.policyTrace(netns: ns, d, pod: pod, peer: peer, port: port, proto: proto) {
        case .success(let t?): return t
        case let other:
            var t = DataplaneView.policyTrace(input, node: node, d, pod: pod, peer: peer, port: port, proto: proto)
            let why = if case .failure(let e) = other { e.description } else { "its agent has no /dataplane endpoint" }
            t.live = DataplaneLive(text: "not asked (\(node): \(why))", agrees: false)
            return t
        }
    }

    func describe(_ v: PolicyTrace, _ what: String) -> String {
        if v.isolatedBy.isEmpty { return "\(what): no policy selects the pod in this direction: allowed" }
        if v.allowed { return "\(what): allowed by \(v.allowedBy.joined(separator: ", ")) (isolated by \(v.isolatedBy.joined(separator: ", ")))" }
        return "\(what): DENIED — isolated by \(v.isolatedBy.joined(separator: ", ")), no rule of theirs allows it"
    }

    /// A pod's host-side veth ("weft" + hash), not the mode's own device.
    func isPodVeth(_ dev: String, _ routing: any RoutingBackend) -> Bool { dev.hasPrefix("weft") && dev != routing.deviceName }

    func hostVethHint(_ dev: String) -> String { dev.hasPrefix("weft") ? "(weft + hash of container and ifname)" : "" }

    func netns(of node: String) -> String { state.nodes.first { $0.name == node }?.netns ?? "?" }

    struct RouteAnswer { var dev: String; var gateway: String?; var type: String }

    /// `ip -j route get` in a namespace.
    func routeGet(ns: String, to: IPAddress, from: IPAddress?, iif: String?) -> RouteAnswer? {
        var args = ["-j", "-n", ns, "route", "get", to.description]
        if let from { args += ["from", from.description] }
        if let iif { args += ["iif", iif] }
        guard let out = try? Subprocess.run("/usr/sbin/ip", arguments: args, environment: ["PATH": "/usr/sbin:/usr/bin"], stdin: []), out.status == 0,
              let j = try? JSONValue.parse(out.stdout), let first = j.arrayValue?.first else { return nil }
        return RouteAnswer(dev: first["dev"]?.stringValue ?? "?", gateway: first["gateway"]?.stringValue, type: first["type"]?.stringValue ?? "unicast")
    }
}
