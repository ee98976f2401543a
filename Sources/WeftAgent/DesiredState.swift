import WeftCore

/// What the agent's loops read from the datastore to compute a node's tables, in one place so
/// `weft doctor` computes exactly what the agent would write.
public enum DesiredState {
    /// Services with the endpoints their slices give; `skipped` is told of services weft cannot
    /// read. Each entry's `source` is the datastore revisions it was made from. A fresh read for
    /// one-off callers (`weft doctor`, `trace`); the agent keeps a `ServiceSource` instead.
    public static func serviceEntries(_ store: any Datastore, skipped: (KubeObject) -> Void = { _ in }) async throws -> [ServiceRules.Entry] {
        let services = try await store.list(prefix: Keys.services).items
        // Slices by the service they name: one pass, not one per service.
        var slices: [String: [ServiceSlice]] = [:]
        for kv in try await store.list(prefix: Keys.endpointSlices).items {
            guard let slice = ServiceSlice(kv) else { continue }
            slices[slice.service, default: []].append(slice)
        }
        return services.compactMap { kv in
            serviceEntry(kv, slices: slices[String(kv.key.dropFirst(Keys.services.count))] ?? [], skipped: skipped)
        }
    }

    /// An EndpointSlice as the services read it: parsed once, with the service it names.
    struct ServiceSlice {
        let key: String
        let revision: Int64
        let object: KubeObject
        /// "namespace/name" of the service (its `kubernetes.io/service-name` label).
        let service: String

        init?(_ kv: KeyValue) {
            guard let o = try? KubeObject(bytes: kv.value), let name = o.labels[EndpointSlices.serviceNameLabel] else { return nil }
            key = kv.key; revision = kv.modRevision; object = o; service = "\(o.namespace ?? "default")/\(name)"
        }
    }

    /// One service's entry from its datastore record and its slices; nil (and `skipped` told,
    /// when it parsed as an object) when weft cannot read it.
    static func serviceEntry(_ kv: KeyValue, slices: [ServiceSlice], skipped: (KubeObject) -> Void) -> ServiceRules.Entry? {
        guard let o = try? KubeObject(bytes: kv.value) else { return nil }
        guard let s = try? ClusterService(o) else { skipped(o); return nil }
        let mine = slices.sorted { $0.key < $1.key }
        let source = "\(kv.modRevision)" + mine.map { " \($0.revision)" }.joined()
        return ServiceRules.Entry(service: s, endpoints: EndpointSlices.endpoints(for: s, in: mine.map(\.object)), source: source)
    }

    /// Policies, pods (and the node DNS resolvers as kube-dns peers), namespaces' labels, and
    /// node addresses → names. Policies weft cannot read are skipped (the API refuses them; one
    /// written around it must not take the others down) and told to `skipped`.
    /// Parsed pods and policies by key and revision, kept between passes by a long-running
    /// reader: at a thousand of each, decoding them again is most of a pass.
    public final class ParseCache: @unchecked Sendable {
        var pods: [String: (revision: Int64, pod: PolicyPod?)] = [:]
        var policies: [String: (revision: Int64, policy: Result<NetworkPolicy, ManifestError>?)] = [:]
        public init() {}
    }

    public static func policyInput(_ store: any Datastore, cache: ParseCache = ParseCache(),
                                   skipped: (ManifestError) -> Void = { _ in }) async throws -> (PolicyRules.Input, [IPAddress: String]) {
        var listed: [String: [KeyValue]] = [:]
        for prefix in policyPrefixes { listed[prefix] = try await store.list(prefix: prefix).items }
        return policyInput(reading: { listed[$0] ?? [] }, cache: cache, skipped: skipped)
    }

    /// What the policy input is read from.
    static let policyPrefixes = [Keys.networkPolicies, Keys.pods, Keys.endpointSlices + NodeDNS.serviceNamespace + "/", Keys.namespaces, Keys.nodes]

    /// The same from what `read` gives for each of `policyPrefixes` (the agent's cluster cache).
    static func policyInput(reading read: (String) -> [KeyValue], cache: ParseCache = ParseCache(),
                            skipped: (ManifestError) -> Void = { _ in }) -> (PolicyRules.Input, [IPAddress: String]) {
        var policies: [NetworkPolicy] = []
        let policyItems = read(Keys.networkPolicies)
        var seenPolicies: [String: (revision: Int64, policy: Result<NetworkPolicy, ManifestError>?)] = [:]
        for kv in policyItems {
            let parsed = cache.policies[kv.key].flatMap { $0.revision == kv.modRevision ? $0.policy : nil }
                ?? (try? KubeObject(bytes: kv.value)).map { o in Result { () throws(ManifestError) in try NetworkPolicy(o) } }
            seenPolicies[kv.key] = (kv.modRevision, parsed)
            switch parsed {
            case .success(let p)?: policies.append(p)
            case .failure(let e)?: skipped(e)
            case nil: break
            }
        }
        cache.policies = seenPolicies
        var seenPods: [String: (revision: Int64, pod: PolicyPod?)] = [:]
        var pods: [PolicyPod] = []
        for kv in read(Keys.pods) {
            let pod = cache.pods[kv.key].flatMap { $0.revision == kv.modRevision ? .some($0.pod) : nil } ?? (try? KubeObject(bytes: kv.value)).flatMap(PolicyPod.init)
            seenPods[kv.key] = (kv.modRevision, pod)
            if let pod { pods.append(pod) }
        }
        cache.pods = seenPods
        let slices = read(Keys.endpointSlices + NodeDNS.serviceNamespace + "/").compactMap { try? KubeObject(bytes: $0.value) }
        pods += NodeDNS.policyPeers(slices)
        var namespaces: [String: [String: String]] = [:]
        for kv in read(Keys.namespaces) {
            if let o = try? KubeObject(bytes: kv.value) { namespaces[o.name] = o.labels }
        }
        var hosts: [IPAddress: String] = [:]
        for kv in read(Keys.nodes) {
            if let n = (try? KubeObject(bytes: kv.value)).flatMap(NodeInfo.init) { hosts[n.hostIP] = n.name }
        }
        let input = PolicyRules.Input(policies: policies.sorted { $0.id < $1.id }, pods: pods.sorted { ($0.namespace, $0.name) < ($1.namespace, $1.name) },
                                      namespaces: namespaces)
        return (input, hosts)
    }
}
