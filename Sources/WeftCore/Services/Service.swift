/// Kubernetes Services as weft reads them: the parts of `spec` the dataplane acts on, checked
/// with messages that name the field, the value and what is accepted.
public struct ClusterService: Sendable, Equatable {
    public enum Kind: String, Sendable { case clusterIP = "ClusterIP", nodePort = "NodePort", loadBalancer = "LoadBalancer", externalName = "ExternalName" }
    public enum TargetPort: Sendable, Equatable { case number(UInt16), name(String) }
    public struct Port: Sendable, Equatable {
        public var name: String?
        public var proto: String   // TCP, UDP or SCTP
        public var port: UInt16
        public var targetPort: TargetPort
        public var nodePort: UInt16?
    }

    public var namespace: String
    public var name: String
    public var kind: Kind
    /// Empty until allocated; `headless` services have none.
    public var clusterIPs: [IPAddress]
    public var headless: Bool
    public var ports: [Port]
    public var selector: [String: String]?
    /// The address families to allocate ClusterIPs in, first the primary: from `ipFamilies`
    /// and `ipFamilyPolicy` (SingleStack: one; PreferDualStack and RequireDualStack: both).
    public var families: [IPFamily]
    /// `sessionAffinity: ClientIP`: seconds a client stays with the endpoint it first got
    /// (`sessionAffinityConfig.clientIP.timeoutSeconds`, default 10800); nil for None.
    public var affinityTimeout: Int?
    /// `spec.externalIPs`: addresses routed to the nodes by someone else, served like the VIP.
    public var externalIPs: [IPAddress]
    /// `internalTrafficPolicy: Local`: traffic from inside the cluster only to this node's endpoints.
    public var internalLocal: Bool
    /// `externalTrafficPolicy: Local`: traffic from outside (node ports, external IPs) only to
    /// this node's endpoints, with the client's address kept (no masquerade).
    public var externalLocal: Bool
    /// A LoadBalancer's addresses (`status.loadBalancer.ingress[].ip`), served like external IPs.
    public var loadBalancerIPs: [IPAddress]
    /// `spec.loadBalancerIP`: the address asked for (deprecated in Kubernetes, still honoured).
    public var requestedLoadBalancerIP: IPAddress?
    /// `spec.healthCheckNodePort`: where each node tells load balancers whether it has a local
    /// endpoint (LoadBalancer with externalTrafficPolicy Local).
    public var healthCheckNodePort: UInt16?
    /// `spec.externalName`: the DNS name an ExternalName service is a CNAME to; nil for other types.
    public var externalName: String?

    public static let nodePortRange: ClosedRange<Int> = 30000...32767

    public init(_ o: KubeObject) throws(ManifestError) {
        namespace = o.namespace ?? "default"
        name = o.name
        let w = "service \(namespace)/\(name)"
        let s = o.spec
        let typeText = s["type"]?.stringValue ?? "ClusterIP"
        guard let k = Kind(rawValue: typeText) else {
            throw ManifestError("\(w): spec.type \"\(typeText)\" must be ClusterIP, NodePort, LoadBalancer or ExternalName")
        }
        kind = k
        let ipText = s["clusterIP"]?.stringValue ?? ""
        headless = ipText == "None"
        var ips: [IPAddress] = []
        for t in (s["clusterIPs"]?.arrayValue?.compactMap(\.stringValue) ?? (ipText.isEmpty || headless ? [] : [ipText])) where t != "None" {
            guard let a = IPAddress(t) else { throw ManifestError("\(w): spec.clusterIP \"\(t)\" is not an IP address (or \"None\" for a headless service)") }
            ips.append(a)
        }
        clusterIPs = ips
        let policy = s["ipFamilyPolicy"]?.stringValue ?? "SingleStack"
        guard ["SingleStack", "PreferDualStack", "RequireDualStack"].contains(policy) else {
            throw ManifestError("\(w): spec.ipFamilyPolicy \"\(policy)\" must be SingleStack, PreferDualStack or RequireDualStack")
        }
        var fams: [IPFamily] = []
        for f in s["ipFamilies"]?.arrayValue ?? [] {
            switch f.stringValue {
            case "IPv4": fams.append(.v4)
            case "IPv6": fams.append(.v6)
            default: throw ManifestError("\(w): spec.ipFamilies entry \(f.serialized()) must be IPv4 or IPv6")
            }
        }
        if fams.isEmpty { fams = ips.isEmpty ? [.v4] : ips.map(\.family) }
        if policy != "SingleStack" && fams.count == 1 { fams.append(fams[0] == .v4 ? .v6 : .v4) }
        if policy == "SingleStack" && fams.count > 1 {
            throw ManifestError("\(w): spec.ipFamilies lists two families but ipFamilyPolicy is SingleStack; use PreferDualStack or RequireDualStack")
        }
        families = fams
        externalIPs = []
        for v in s["externalIPs"]?.arrayValue ?? [] {
            guard let a = v.stringValue.flatMap(IPAddress.init) else {
                throw ManifestError("\(w): spec.externalIPs entry \(v.serialized()) is not an IP address")
            }
            externalIPs.append(a)
        }
        func trafficPolicy(_ field: String) throws(ManifestError) -> Bool {
            let v = s[field]?.stringValue ?? "Cluster"
            guard v == "Cluster" || v == "Local" else { throw ManifestError("\(w): spec.\(field) \"\(v)\" must be Cluster or Local") }
            return v == "Local"
        }
        loadBalancerIPs = []
        for (i, v) in (o.status["loadBalancer"]?["ingress"]?.arrayValue ?? []).enumerated() {
            guard let t = v["ip"]?.stringValue else { continue }   // hostname-only ingress: nothing to serve here
            guard let a = IPAddress(t) else { throw ManifestError("\(w): status.loadBalancer.ingress[\(i)].ip \"\(t)\" is not an IP address") }
            loadBalancerIPs.append(a)
        }
        requestedLoadBalancerIP = nil
        if let t = s["loadBalancerIP"]?.stringValue, !t.isEmpty {
            guard k == .loadBalancer else { throw ManifestError("\(w): spec.loadBalancerIP is only allowed for type LoadBalancer") }
            guard let a = IPAddress(t) else { throw ManifestError("\(w): spec.loadBalancerIP \"\(t)\" is not an IP address") }
            requestedLoadBalancerIP = a
        }
        healthCheckNodePort = nil
        if let h = s["healthCheckNodePort"]?.intValue {
            guard ClusterService.nodePortRange.contains(h) else {
                throw ManifestError("\(w): spec.healthCheckNodePort \(h) is outside the node port range \(ClusterService.nodePortRange.lowerBound)-\(ClusterService.nodePortRange.upperBound)")
            }
            healthCheckNodePort = UInt16(h)
        }
        internalLocal = try trafficPolicy("internalTrafficPolicy")
        externalLocal = try trafficPolicy("externalTrafficPolicy")
        if externalLocal && k != .nodePort && k != .loadBalancer && externalIPs.isEmpty {
            throw ManifestError("\(w): spec.externalTrafficPolicy Local needs type NodePort or LoadBalancer (or externalIPs); this service has no traffic from outside")
        }
        switch s["sessionAffinity"]?.stringValue ?? "None" {
        case "None": affinityTimeout = nil
        case "ClientIP":
            let t = s["sessionAffinityConfig"]?["clientIP"]?["timeoutSeconds"]?.intValue ?? 10800
            guard (1...86400).contains(t) else {
                throw ManifestError("\(w): spec.sessionAffinityConfig.clientIP.timeoutSeconds \(t) must be from 1 to 86400")
            }
            affinityTimeout = t
        case let other: throw ManifestError("\(w): spec.sessionAffinity \"\(other)\" must be None or ClientIP")
        }
        if case .object(let sel)? = s["selector"] {
            var m: [String: String] = [:]
            for (key, v) in sel { m[key] = v.stringValue ?? v.serialized() }
            selector = m
        } else {
            selector = nil
        }
        var out: [Port] = []
        let list = s["ports"]?.arrayValue ?? []
        if list.isEmpty && k != .externalName && !headless {
            throw ManifestError("\(w): spec.ports is empty; a service needs at least one port")
        }
        for (i, p) in list.enumerated() {
            let f = "\(w): spec.ports[\(i)]"
            guard let port = p["port"]?.intValue, (1...65535).contains(port) else {
                throw ManifestError("\(f).port \(p["port"]?.serialized() ?? "(missing)") must be a port number from 1 to 65535")
            }
            let proto = p["protocol"]?.stringValue ?? "TCP"
            guard ["TCP", "UDP", "SCTP"].contains(proto) else { throw ManifestError("\(f).protocol \"\(proto)\" must be TCP, UDP or SCTP") }
            let target: TargetPort
            switch p["targetPort"] {
            case nil: target = .number(UInt16(port))
            case let v?:
                if let n = v.intValue {
                    guard (1...65535).contains(n) else { throw ManifestError("\(f).targetPort \(n) must be a port number from 1 to 65535 or a container port's name") }
                    target = .number(UInt16(n))
                } else if let n = v.stringValue, !n.isEmpty, n.count <= 15, n.allSatisfy({ $0.isLowercase || $0.isNumber || $0 == "-" }) {
                    target = .name(n)
                } else {
                    throw ManifestError("\(f).targetPort \(v.serialized()) must be a port number or a container port's name (lowercase letters, digits and '-', at most 15)")
                }
            }
            var nodePort: UInt16?
            if let np = p["nodePort"]?.intValue {
                guard k == .nodePort || k == .loadBalancer else { throw ManifestError("\(f).nodePort is only allowed for type NodePort or LoadBalancer") }
                guard ClusterService.nodePortRange.contains(np) else {
                    throw ManifestError("\(f).nodePort \(np) is outside the node port range \(ClusterService.nodePortRange.lowerBound)-\(ClusterService.nodePortRange.upperBound)")
                }
                nodePort = UInt16(np)
            }
            let pname = p["name"]?.stringValue
            if list.count > 1 && (pname ?? "").isEmpty { throw ManifestError("\(f).name is required when a service has several ports") }
            if out.contains(where: { $0.port == UInt16(port) && $0.proto == proto }) {
                throw ManifestError("\(f): port \(port)/\(proto) is listed twice")
            }
            out.append(Port(name: pname, proto: proto, port: UInt16(port), targetPort: target, nodePort: nodePort))
        }
        ports = out
        if k == .externalName {
            let v = s["externalName"]
            guard let e = v?.stringValue, DNSName.isValidHostname(e) else {
                throw ManifestError("\(w): spec.externalName \(v?.serialized() ?? "(missing)") must be a DNS name for type ExternalName: lowercase letters, digits, '-' and '.', labels of at most 63, at most 253 in all (e.g. db.example.com)")
            }
            externalName = e
        }
    }
}

/// One backend of a service as an EndpointSlice lists it: an address with its conditions and
/// the port it serves each service port on.
public struct ServiceEndpoint: Sendable, Equatable {
    public var pod: String
    public var address: IPAddress
    /// Ready for new traffic (Running, Ready, not being deleted).
    public var ready: Bool
    /// Would be ready but for being deleted: still answers while it drains.
    public var serving: Bool
    /// Being deleted (its pod has a deletionTimestamp).
    public var terminating: Bool
    public var nodeName: String?
    /// The pod's `spec.hostname` when its `spec.subdomain` names this service: its DNS name
    /// under a headless service (`HOSTNAME.SERVICE.NS.svc`).
    public var hostname: String?
    /// Service port name ("" for an unnamed port) → the endpoint's port for it; a service port
    /// missing here (a named targetPort the pod does not declare) is not served by this endpoint.
    public var ports: [String: UInt16]

    public init(pod: String, address: IPAddress, ready: Bool, serving: Bool? = nil, terminating: Bool = false,
                nodeName: String?, ports: [String: UInt16]) {
        self.pod = pod; self.address = address; self.ready = ready; self.serving = serving ?? ready
        self.terminating = terminating; self.nodeName = nodeName; self.ports = ports
    }

    /// The endpoint's port for a service port; nil when it does not serve it.
    public func port(for p: ClusterService.Port) -> UInt16? { ports[p.name ?? ""] }
}

extension ServiceEndpoint {
    /// Of `items`, those whose endpoint takes traffic: the ready ones; when there is none, those
    /// still serving while they terminate (Kubernetes' fallback, so a rollout's last pods drain
    /// instead of refusing connections). The one rule for the dataplane, load balancer
    /// announcement and health checks.
    public static func takingTraffic<T>(_ items: [T], _ endpoint: (T) -> ServiceEndpoint) -> [T] {
        let ready = items.filter { endpoint($0).ready }
        return ready.isEmpty ? items.filter { endpoint($0).serving && endpoint($0).terminating } : ready
    }
}

extension ClusterService {
    /// The pods this service selects (same namespace, every selector label matching, with an
    /// address), as the EndpointSlice controller lists them: per address, its conditions and the
    /// pod port each service port leads to (a named targetPort through the pod's container
    /// ports). A service without a selector has none here: its slices are written by others.
    public func endpoints(from pods: [KubeObject]) -> [ServiceEndpoint] {
        guard let selector, !selector.isEmpty else { return [] }
        return pods.flatMap { p -> [ServiceEndpoint] in
            guard (p.namespace ?? "default") == namespace, selector.allSatisfy({ p.labels[$0.key] == $0.value }) else { return [] }
            // Every address of the pod (status.podIPs; podIP alone from older writers).
            var ips = (p.status["podIPs"]?.arrayValue ?? []).compactMap { $0["ip"]?.stringValue.flatMap(IPAddress.init) }
            if ips.isEmpty, let one = p.status["podIP"]?.stringValue.flatMap(IPAddress.init) { ips = [one] }
            var named: [String: UInt16] = [:]
            for c in p.spec["containers"]?.arrayValue ?? [] {
                for port in c["ports"]?.arrayValue ?? [] {
                    if let n = port["name"]?.stringValue, let v = port["containerPort"]?.intValue { named[n] = UInt16(v) }
                }
            }
            var resolved: [String: UInt16] = [:]
            for sp in ports {
                switch sp.targetPort {
                case .number(let n): resolved[sp.name ?? ""] = n
                case .name(let n): if let v = named[n] { resolved[sp.name ?? ""] = v }
                }
            }
            // Serving: running and, when the pod reports conditions, its Ready condition true.
            let readyCondition = p.status["conditions"]?.arrayValue?.first { $0["type"]?.stringValue == "Ready" }
            let serving = p.status["phase"]?.stringValue == "Running" && (readyCondition == nil || readyCondition?["status"]?.stringValue == "True")
            let terminating = p.json["metadata"]?["deletionTimestamp"] != nil
            // As the EndpointSlice controller: a pod names itself under the service that is its subdomain.
            let hostname = p.spec["subdomain"]?.stringValue == name ? p.spec["hostname"]?.stringValue : nil
            return ips.map {
                var ep = ServiceEndpoint(pod: p.name, address: $0, ready: serving && !terminating, serving: serving, terminating: terminating,
                                         nodeName: p.spec["nodeName"]?.stringValue, ports: resolved)
                ep.hostname = hostname
                return ep
            }
        }.sorted { ($0.pod, $0.address) < ($1.pod, $1.address) }
    }
}
