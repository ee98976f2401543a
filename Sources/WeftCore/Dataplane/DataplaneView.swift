/// One address · protocol · port a service answers on, and what a new connection to it meets
/// on one node: the backends it is spread over, a reject (no endpoint takes traffic) or a drop
/// (traffic policy Local, none on this node). The dataplane's meaning, whatever implements it.
public struct ServiceFrontend: Sendable, Equatable {
    public enum Kind: String, Sendable { case clusterIP = "ClusterIP", externalIP = "ExternalIP", loadBalancer = "LoadBalancer", nodePort = "NodePort" }
    public enum Action: Sendable, Equatable {
        case forward([ServiceBackend])
        case reject
        case drop
    }
    /// "namespace/name"
    public var service: String
    public var kind: Kind
    public var family: IPFamily
    /// Nil for a node port (any local address of the node).
    public var address: IPAddress?
    public var proto: String
    public var port: UInt16
    public var action: Action
    /// ClientIP session affinity: a client keeps its backend this long.
    public var affinitySeconds: Int?
    /// Traffic from outside is masqueraded, so the reply comes back through this node.
    public var masquerade: Bool
    /// Traffic policy Local: only this node's endpoints.
    public var localOnly: Bool

    public init(service: String, kind: Kind, family: IPFamily, address: IPAddress?, proto: String, port: UInt16, action: Action,
                affinitySeconds: Int? = nil, masquerade: Bool = false, localOnly: Bool = false) {
        self.service = service; self.kind = kind; self.family = family; self.address = address; self.proto = proto; self.port = port
        self.action = action; self.affinitySeconds = affinitySeconds; self.masquerade = masquerade; self.localOnly = localOnly
    }
}

public struct ServiceBackend: Sendable, Equatable {
    public var pod: String
    public var address: IPAddress
    public var port: UInt16
    public var node: String?
    /// Serving while it terminates: taken only because no endpoint is ready.
    public var terminating: Bool
    public init(pod: String, address: IPAddress, port: UInt16, node: String?, terminating: Bool) {
        self.pod = pod; self.address = address; self.port = port; self.node = node; self.terminating = terminating
    }
}

/// The logical state a dataplane holds, computed from what it was given: one definition of what
/// services and policy mean on a node, shared by every implementation's dump and trace (and by
/// the fake), so they cannot disagree on it.
public enum DataplaneView {
    /// The frontends of one service on `node`, in the service's port order, IPv4 first.
    public static func frontends(_ e: ServiceRules.Entry, node: String?) -> [ServiceFrontend] {
        let svc = e.service
        guard !svc.headless, svc.kind != .externalName else { return [] }
        var out: [ServiceFrontend] = []
        for p in svc.ports {
            for family in [IPFamily.v4, .v6] {
                let candidates = e.endpoints.filter { $0.address.family == family }.compactMap { ep in ep.port(for: p).map { (ep, $0) } }
                let all = ServiceEndpoint.takingTraffic(candidates) { $0.0 }
                let local = ServiceEndpoint.takingTraffic(candidates.filter { $0.0.nodeName != nil && $0.0.nodeName == node }) { $0.0 }
                func add(_ kind: ServiceFrontend.Kind, _ address: IPAddress?, local localOnly: Bool, port: UInt16) {
                    let chosen = localOnly ? local : all
                    let action: ServiceFrontend.Action = all.isEmpty ? .reject : chosen.isEmpty ? .drop
                        : .forward(chosen.map { ServiceBackend(pod: $0.0.pod, address: $0.0.address, port: $0.1, node: $0.0.nodeName, terminating: !$0.0.ready) })
                    // From outside (not ClusterIP) and not Local: masqueraded, so replies return here.
                    let masq = kind != .clusterIP && !localOnly && !chosen.isEmpty
                    out.append(ServiceFrontend(service: e.key, kind: kind, family: family, address: address, proto: p.proto, port: port, action: action,
                                               affinitySeconds: svc.affinityTimeout, masquerade: masq, localOnly: localOnly))
                }
                for ip in svc.clusterIPs where ip.family == family { add(.clusterIP, ip, local: svc.internalLocal, port: p.port) }
                for ip in svc.externalIPs where ip.family == family { add(.externalIP, ip, local: svc.externalLocal, port: p.port) }
                for ip in svc.loadBalancerIPs where ip.family == family { add(.loadBalancer, ip, local: svc.externalLocal, port: p.port) }
                if let np = p.nodePort, !all.isEmpty || svc.clusterIPs.contains(where: { $0.family == family }) {
                    add(.nodePort, nil, local: svc.externalLocal, port: np)
                }
            }
        }
        return out
    }

    /// The frontend a new connection to `address`:`port`/`proto` meets, if any.
    public static func frontend(_ entries: some Sequence<ServiceRules.Entry>, node: String?, address: IPAddress, port: UInt16, proto: String) -> ServiceFrontend? {
        for e in entries where (e.service.clusterIPs + e.service.externalIPs + e.service.loadBalancerIPs).contains(address) {
            if let f = frontends(e, node: node).first(where: { $0.address == address && $0.port == port && $0.proto == proto }) { return f }
        }
        return nil
    }

    /// The verdict the policy state gives a connection of the local pod at `pod` (no live part).
    public static func policyTrace(_ input: PolicyRules.Input, node: String, _ d: NetworkPolicy.Direction, pod: IPAddress, peer: IPAddress,
                                   port: UInt16?, proto: String) -> PolicyTrace {
        guard let judged = input.pods.first(where: { $0.selectable && $0.node == node && $0.addresses.contains(pod) }) else {
            return PolicyTrace(pod: nil, allowed: true, isolatedBy: [], allowedBy: [])
        }
        let peerPod = input.pods.first { $0.addresses.contains(peer) }
        let v = input.verdict(d, pod: judged, peer: peer, peerPod: peerPod, port: port, proto: proto)
        return PolicyTrace(pod: "\(judged.namespace)/\(judged.name)", allowed: v.allowed, isolatedBy: v.isolatedBy, allowedBy: v.allowedBy)
    }

    // MARK: the dump

    /// Everything a dataplane holds, as stable sorted text (golden files compare it): each
    /// service's frontends with the backends they pick, then each local pod with the policies
    /// isolating it and what their rules allow, peers resolved to addresses.
    public static func dump(services: some Sequence<ServiceRules.Entry>, policy: PolicyRules.Input?, node: String) -> String {
        var s = "node \(node)\n"
        for e in services.sorted(by: { $0.key < $1.key }) {
            let fronts = frontends(e, node: node)
            s += "service \(e.key)\(fronts.isEmpty ? " (no frontend: headless or ExternalName)" : "")\n"
            for f in fronts { s += text(of: f) }
        }
        guard let policy else { return s }
        let local = policy.pods.filter { $0.node == node && $0.selectable }.sorted { ($0.namespace, $0.name) < ($1.namespace, $1.name) }
        for pod in local {
            s += "pod \(pod.namespace)/\(pod.name) \(pod.addresses.map(\.description).sorted().joined(separator: " "))\n"
            for d in NetworkPolicy.Direction.allCases {
                let isolating = policy.isolating(pod, d).sorted { $0.id < $1.id }
                guard !isolating.isEmpty else { s += "  \(d.word): not isolated\n"; continue }
                s += "  \(d.word): isolated by \(isolating.map(\.id).joined(separator: ", "))\n"
                for p in isolating {
                    if p.rules(d).isEmpty { s += "    \(p.id): allows nothing\n" }
                    for r in p.rules(d) { s += "    \(p.id): \(text(of: r, d, policy: p, pod: pod, input: policy))\n" }
                }
            }
        }
        return s
    }

    static func text(of f: ServiceFrontend) -> String {
        let at = f.address.map { $0.family == .v6 ? "[\($0)]" : "\($0)" } ?? "*"
        var head = "  \(f.kind.rawValue) \(at):\(f.port)/\(f.proto)\(f.address == nil ? " \(f.family == .v4 ? "IPv4" : "IPv6")" : "")"
        if f.localOnly { head += " local" }
        switch f.action {
        case .reject: return head + ": reject (no endpoint takes traffic)\n"
        case .drop: return head + ": drop (traffic policy Local, no endpoint on this node)\n"
        case .forward(let backends):
            var s = head + ": \(backends.count) backend(s)"
            if let a = f.affinitySeconds { s += ", ClientIP affinity \(a)s" }
            if f.masquerade { s += ", masqueraded" }
            s += "\n"
            for b in backends.sorted(by: { ($0.address.description, $0.port) < ($1.address.description, $1.port) }) {
                let addr = b.address.family == .v6 ? "[\(b.address)]" : "\(b.address)"
                s += "    \(addr):\(b.port) \(b.pod.isEmpty ? "-" : b.pod) on \(b.node ?? "?")\(b.terminating ? " (terminating, serving)" : "")\n"
            }
            return s
        }
    }

    /// One rule: its peers with the addresses they stand for, and its ports.
    static func text(of r: NetworkPolicy.Rule, _ d: NetworkPolicy.Direction, policy p: NetworkPolicy, pod: PolicyPod, input: PolicyRules.Input) -> String {
        let peers: String
        if r.peers.isEmpty {
            peers = "any \(d == .ingress ? "source" : "destination")"
        } else {
            peers = r.peers.map { peer -> String in
                switch peer {
                case .ipBlock(let cidr, let except):
                    return except.isEmpty ? "\(cidr)" : "\(cidr) except \(except.map(\.description).joined(separator: ", "))"
                case .pods(let ps, let nss):
                    let what = "pods \(ps?.description ?? "<all>") in " + (nss.map { "namespaces \($0)" } ?? "namespace \(p.namespace)")
                    let matched = input.pods(of: peer, policyNamespace: p.namespace)
                    let addrs = matched.filter(\.selectable).flatMap(\.addresses).map(\.description).sorted()
                    var s = "\(what) [\(addrs.joined(separator: " "))]"
                    // Stand-ins (node DNS resolvers) are destinations on their own ports only.
                    let standIns = d == .egress ? matched.filter { !$0.selectable } : []
                    let served = standIns.flatMap { sp in sp.namedPorts.flatMap { k, port in sp.addresses.map { "\($0) \(k.split(separator: "/").last ?? "TCP")/\(port)" } } }.sorted()
                    if !served.isEmpty { s += " served [\(served.joined(separator: ", "))]" }
                    return s
                }
            }.joined(separator: "; ")
        }
        let ports = r.ports.isEmpty ? "any port" : r.ports.map { port -> String in
            switch port.port {
            case nil: return port.proto
            case .number(let n)?: return port.endPort.map { $0 != n ? "\(port.proto)/\(n)-\($0)" : "\(port.proto)/\(n)" } ?? "\(port.proto)/\(n)"
            case .name(let n)?:
                // Resolved on the destination: this pod for ingress, each peer for egress.
                guard d == .ingress else { return "\(port.proto)/\(n)" }
                return "\(port.proto)/\(n)=\(pod.namedPorts["\(n)/\(port.proto)"].map(String.init) ?? "undeclared")"
            }
        }.joined(separator: ", ")
        return "\(d == .ingress ? "from" : "to") \(peers); \(ports)"
    }
}
