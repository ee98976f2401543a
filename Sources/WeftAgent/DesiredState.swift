import WeftCore

/// What the agent's loops read from the datastore to compute a node's tables, in one place so
/// `weft doctor` computes exactly what the agent would write.
public enum DesiredState {
    /// Services with the endpoints their slices give; `skipped` is told of services weft cannot read.
    public static func serviceEntries(_ store: any Datastore, skipped: (KubeObject) -> Void = { _ in }) async throws -> [ServiceRules.Entry] {
        let services = try await store.list(prefix: Keys.services).items.compactMap { try? KubeObject(bytes: $0.value) }
        let slices = try await store.list(prefix: Keys.endpointSlices).items.compactMap { try? KubeObject(bytes: $0.value) }
        var entries: [ServiceRules.Entry] = []
        for o in services {
            guard let s = try? ClusterService(o) else { skipped(o); continue }
            entries.append(.init(service: s, endpoints: EndpointSlices.endpoints(for: s, in: slices)))
        }
        return entries
    }

    /// Policies, pods (and the node DNS resolvers as kube-dns peers), namespaces' labels, and
    /// node addresses → names. Policies weft cannot read are skipped (the API refuses them; one
    /// written around it must not take the others down) and told to `skipped`.
    public static func policyInput(_ store: any Datastore, skipped: (ManifestError) -> Void = { _ in }) async throws -> (PolicyRules.Input, [IPAddress: String]) {
        var policies: [NetworkPolicy] = []
        for kv in try await store.list(prefix: Keys.networkPolicies).items {
            guard let o = try? KubeObject(bytes: kv.value) else { continue }
            do { policies.append(try NetworkPolicy(o)) } catch { skipped(error) }
        }
        var pods = try await store.list(prefix: Keys.pods).items.compactMap { (try? KubeObject(bytes: $0.value)).flatMap(PolicyPod.init) }
        let slices = try await store.list(prefix: Keys.endpointSlices + NodeDNS.serviceNamespace + "/").items.compactMap { try? KubeObject(bytes: $0.value) }
        pods += NodeDNS.policyPeers(slices)
        var namespaces: [String: [String: String]] = [:]
        for kv in try await store.list(prefix: Keys.namespaces).items {
            if let o = try? KubeObject(bytes: kv.value) { namespaces[o.name] = o.labels }
        }
        var hosts: [IPAddress: String] = [:]
        for kv in try await store.list(prefix: Keys.nodes).items {
            if let n = (try? KubeObject(bytes: kv.value)).flatMap(NodeInfo.init) { hosts[n.hostIP] = n.name }
        }
        let input = PolicyRules.Input(policies: policies.sorted { $0.id < $1.id }, pods: pods.sorted { ($0.namespace, $0.name) < ($1.namespace, $1.name) },
                                      namespaces: namespaces)
        return (input, hosts)
    }
}
