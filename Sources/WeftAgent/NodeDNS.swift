import Logging
import WeftCore

/// The node's part of cluster DNS: its resolver (`DNSServer`, answering from the zone the
/// services loop keeps current) published as an endpoint of `kube-system/kube-dns`. Every node
/// answers for its own pods (the service has internalTrafficPolicy Local), like NodeLocal
/// DNSCache, so a query never crosses the network. The endpoint's slice is bound to a lease of
/// its own: a node that dies drops out of the service when the lease runs out.
struct NodeDNS: Sendable {
    let store: any Datastore
    let logger: Logger
    let node: String
    let hostIP: IPAddress
    let server: DNSServer
    var leaseTTL: Int64 = 10

    static let serviceNamespace = "kube-system"
    static let serviceName = "kube-dns"
    static let managedBy = "weft-agent"

    func run() async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await server.run() }
            group.addTask { try await publish() }
            try await group.next()
            group.cancelAll()
        }
    }

    /// This node's resolver as an EndpointSlice of kube-dns (one per node, written by its agent).
    func slice() -> KubeObject {
        var o = KubeObject(apiVersion: "discovery.k8s.io/v1", kind: "EndpointSlice", name: "kube-dns-\(node)", namespace: Self.serviceNamespace)
        o.labels = [EndpointSlices.serviceNameLabel: Self.serviceName, EndpointSlices.managedByLabel: Self.managedBy]
        o.json = o.json.setting("addressType", to: .string(hostIP.family == .v4 ? "IPv4" : "IPv6"))
        o.json = o.json.setting("endpoints", to: .array([EndpointSlices.endpointJSON(
            ServiceEndpoint(pod: "", address: hostIP, ready: true, nodeName: node, ports: [:]))]))
        o.json = o.json.setting("ports", to: .array([
            .object([("name", .string("dns")), ("protocol", .string("UDP")), ("port", .number(Double(server.port)))]),
            .object([("name", .string("dns-tcp")), ("protocol", .string("TCP")), ("port", .number(Double(server.port)))]),
        ]))
        return o
    }

    /// Writes the slice under a lease kept alive here; writes it again (new lease) if the lease
    /// is lost or the slice deleted.
    private func publish() async throws {
        let key = Keys.endpointSlices + "\(Self.serviceNamespace)/kube-dns-\(node)"
        let value = slice().bytes
        while !Task.isCancelled {
            do {
                let lease = try await store.grantLease(ttlSeconds: leaseTTL)
                if let kv = try await store.get(key) {
                    try await store.update(key, value: value, expectedRevision: kv.modRevision, lease: lease)
                } else {
                    try await store.create(key, value: value, lease: lease)
                }
                logger.info("cluster DNS endpoint published", metadata: ["address": "\(hostIP):\(server.port)"])
                try await renewLease(store, lease, ttl: leaseTTL, while: { try await store.get(key) != nil })
            } catch is CancellationError {
                return
            } catch {
                logger.warning("publishing the cluster DNS endpoint failed; retrying", metadata: ["error": "\(error)"])
                try await Task.sleep(for: .seconds(1))
            }
        }
    }
}

extension NodeDNS {
    /// The node resolvers as NetworkPolicy peers: Kubernetes users allow DNS by selecting the
    /// kube-dns pods (`k8s-app: kube-dns` in kube-system); weft's resolvers are the agents,
    /// so each published endpoint stands in for such a pod (a peer only: never isolated).
    static func policyPeers(_ slices: [KubeObject]) -> [PolicyPod] {
        slices.filter { $0.labels[EndpointSlices.managedByLabel] == managedBy && $0.labels[EndpointSlices.serviceNameLabel] == serviceName }.flatMap { s in
            var ports: [String: UInt16] = [:]
            for p in s.json["ports"]?.arrayValue ?? [] {
                if let n = p["name"]?.stringValue, let v = p["port"]?.intValue, (1...65535).contains(v) { ports["\(n)/\(p["protocol"]?.stringValue ?? "TCP")"] = UInt16(v) }
            }
            return (s.json["endpoints"]?.arrayValue ?? []).map { e in
                PolicyPod(namespace: serviceNamespace, name: s.name, labels: ["k8s-app": serviceName],
                          addresses: (e["addresses"]?.arrayValue ?? []).compactMap { $0.stringValue.flatMap(IPAddress.init) },
                          node: e["nodeName"]?.stringValue, namedPorts: ports, selectable: false)
            }
        }
    }
}
