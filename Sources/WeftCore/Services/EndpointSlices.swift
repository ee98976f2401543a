/// EndpointSlices (`discovery.k8s.io/v1`): what weft's controller writes for services with a
/// selector, and what the proxy and DNS read for every service, whoever wrote them, so that
/// slices of another controller (or written by hand for a service without a selector) are
/// honoured. Pure: the agent's controller stores the objects, the proxy reads them back.
public enum EndpointSlices {
    public static let serviceNameLabel = "kubernetes.io/service-name"
    public static let managedByLabel = "endpointslice.kubernetes.io/managed-by"
    public static let managedBy = "endpointslice-controller.weft.io"
    /// As Kubernetes' controller (`--max-endpoints-per-slice` default).
    public static let maxEndpointsPerSlice = 100

    /// The slices weft's controller wants for `service` (none without a selector): endpoints
    /// grouped by address family and by the ports they serve (pods resolve a named targetPort
    /// differently), at most `maxEndpointsPerSlice` each. Names are derived from the group, so
    /// the same endpoints give the same objects and a change rewrites only its slice.
    public static func desired(for service: ClusterService, endpoints: [ServiceEndpoint]) -> [KubeObject] {
        guard let selector = service.selector, !selector.isEmpty else { return [] }
        struct Group: Hashable { var family: IPFamily; var ports: [String: UInt16] }
        var groups: [Group: [ServiceEndpoint]] = [:]
        for e in endpoints { groups[Group(family: e.address.family, ports: e.ports), default: []].append(e) }
        var out: [KubeObject] = []
        for (g, members) in groups.sorted(by: { sliceBase(service, $0.key.family, $0.key.ports) < sliceBase(service, $1.key.family, $1.key.ports) }) {
            let base = sliceBase(service, g.family, g.ports)
            let sorted = members.sorted { $0.address < $1.address }
            for start in stride(from: 0, to: sorted.count, by: maxEndpointsPerSlice) {
                let chunk = sorted[start..<min(start + maxEndpointsPerSlice, sorted.count)]
                var o = KubeObject(apiVersion: "discovery.k8s.io/v1", kind: "EndpointSlice",
                                   name: start == 0 ? base : "\(base)-\(start / maxEndpointsPerSlice)", namespace: service.namespace)
                o.labels = [serviceNameLabel: service.name, managedByLabel: managedBy]
                o.setMeta("ownerReferences", .array([.object([("apiVersion", .string("v1")), ("kind", .string("Service")),
                                                               ("name", .string(service.name)), ("controller", .bool(true))])]))
                o.json = o.json.setting("addressType", to: .string(g.family == .v4 ? "IPv4" : "IPv6"))
                o.json = o.json.setting("endpoints", to: .array(chunk.map(endpointJSON)))
                o.json = o.json.setting("ports", to: .array(service.ports.compactMap { p in
                    g.ports[p.name ?? ""].map { port in
                        .object([("name", .string(p.name ?? "")), ("protocol", .string(p.proto)), ("port", .number(Double(port)))])
                    }
                }))
                out.append(o)
            }
        }
        return out
    }

    /// `<service>-<v4|v6>-<digest of the port mapping>`: stable for a group, within the 63
    /// characters of a label value even for long service names.
    static func sliceBase(_ s: ClusterService, _ f: IPFamily, _ ports: [String: UInt16]) -> String {
        let key = ports.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ",")
        return "\(s.name.prefix(40))-\(f == .v4 ? "v4" : "v6")-\(hex16(fnv1a64(key)).prefix(8))"
    }

    public static func endpointJSON(_ e: ServiceEndpoint) -> JSONValue {
        var fields: [(String, JSONValue)] = [
            ("addresses", .array([.string(e.address.description)])),
            ("conditions", .object([("ready", .bool(e.ready)), ("serving", .bool(e.serving)), ("terminating", .bool(e.terminating))])),
        ]
        if let n = e.nodeName { fields.append(("nodeName", .string(n))) }
        if let h = e.hostname { fields.append(("hostname", .string(h))) }
        if !e.pod.isEmpty { fields.append(("targetRef", .object([("kind", .string("Pod")), ("name", .string(e.pod))]))) }
        return .object(fields)
    }

    /// Checks a slice as the API server would, with messages naming the field and what is accepted.
    public static func validate(_ o: KubeObject) throws(ManifestError) {
        let w = "endpointslice \(o.namespace ?? "default")/\(o.name)"
        let type = o.json["addressType"]?.stringValue ?? ""
        guard ["IPv4", "IPv6", "FQDN"].contains(type) else {
            throw ManifestError("\(w): addressType \"\(type)\" must be IPv4, IPv6 or FQDN")
        }
        for (i, e) in (o.json["endpoints"]?.arrayValue ?? []).enumerated() {
            let addrs = e["addresses"]?.arrayValue ?? []
            guard !addrs.isEmpty else { throw ManifestError("\(w): endpoints[\(i)].addresses is empty; give at least one address") }
            for a in addrs where type != "FQDN" {
                guard let ip = a.stringValue.flatMap(IPAddress.init), (ip.family == .v4) == (type == "IPv4") else {
                    throw ManifestError("\(w): endpoints[\(i)].addresses entry \(a.serialized()) is not an \(type) address")
                }
            }
        }
        for (i, p) in (o.json["ports"]?.arrayValue ?? []).enumerated() {
            if let n = p["port"]?.intValue, !(1...65535).contains(n) {
                throw ManifestError("\(w): ports[\(i)].port \(n) must be a port number from 1 to 65535")
            }
            let proto = p["protocol"]?.stringValue ?? "TCP"
            guard ["TCP", "UDP", "SCTP"].contains(proto) else { throw ManifestError("\(w): ports[\(i)].protocol \"\(proto)\" must be TCP, UDP or SCTP") }
        }
    }

    /// Whether weft's controller owns `slice` (it never touches the others).
    public static func isManaged(_ slice: KubeObject) -> Bool { slice.labels[managedByLabel] == managedBy }

    /// The endpoints the slices give `service`: those of its namespace labelled with its name,
    /// whoever wrote them. Ports are matched by service port name, as kube-proxy does. Per the
    /// API, a missing `ready` means ready and a missing `serving` means as ready. An address in
    /// several slices (a controller moving it) counts once, ready if any says so. Entries weft
    /// cannot use (FQDN slices, bad addresses, ports out of range) are skipped.
    public static func endpoints(for service: ClusterService, in slices: [KubeObject]) -> [ServiceEndpoint] {
        var byAddress: [IPAddress: ServiceEndpoint] = [:]
        for slice in slices where (slice.namespace ?? "default") == service.namespace && slice.labels[serviceNameLabel] == service.name {
            let type = slice.json["addressType"]?.stringValue
            guard type == "IPv4" || type == "IPv6" else { continue }
            var ports: [String: UInt16] = [:]
            for p in slice.json["ports"]?.arrayValue ?? [] {
                guard let n = p["port"]?.intValue, (1...65535).contains(n) else { continue }
                ports[p["name"]?.stringValue ?? ""] = UInt16(n)
            }
            for e in slice.json["endpoints"]?.arrayValue ?? [] {
                let c = e["conditions"]
                let ready = c?["ready"]?.boolValue ?? true
                var ep = ServiceEndpoint(pod: e["targetRef"]?["name"]?.stringValue ?? "", address: IPAddress(family: .v4, value: 0),
                                         ready: ready, serving: c?["serving"]?.boolValue ?? ready,
                                         terminating: c?["terminating"]?.boolValue ?? false,
                                         nodeName: e["nodeName"]?.stringValue, ports: ports)
                ep.hostname = e["hostname"]?.stringValue
                for a in e["addresses"]?.arrayValue ?? [] {
                    guard let ip = a.stringValue.flatMap(IPAddress.init), (ip.family == .v4) == (type == "IPv4") else { continue }
                    var one = ep
                    one.address = ip
                    if let seen = byAddress[ip], seen.ready || !one.ready { continue }
                    byAddress[ip] = one
                }
            }
        }
        return byAddress.values.sorted { ($0.pod, $0.address) < ($1.pod, $1.address) }
    }
}
