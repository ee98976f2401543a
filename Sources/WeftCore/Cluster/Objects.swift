/// Kubernetes-shaped objects (apiVersion/kind/metadata/spec/status) as stored in the datastore.
/// The document is kept whole as JSON, so fields weft does not model survive a round trip; the
/// typed accessors below read and write the fields weft uses.
public struct KubeObject: Sendable, Equatable {
    public var json: JSONValue

    public init(json: JSONValue) { self.json = json }

    public init(apiVersion: String, kind: String, name: String, namespace: String? = nil) {
        var meta: [(String, JSONValue)] = [("name", .string(name))]
        if let namespace { meta.append(("namespace", .string(namespace))) }
        json = .object([("apiVersion", .string(apiVersion)), ("kind", .string(kind)), ("metadata", .object(meta))])
    }

    public var kind: String { json["kind"]?.stringValue ?? "" }
    public var apiVersion: String { json["apiVersion"]?.stringValue ?? "" }
    public var name: String { json["metadata"]?["name"]?.stringValue ?? "" }
    public var namespace: String? { json["metadata"]?["namespace"]?.stringValue }

    public var labels: [String: String] {
        get { stringMap(json["metadata"]?["labels"]) }
        set { setMeta("labels", newValue.isEmpty ? nil : .object(newValue.sorted { $0.key < $1.key }.map { ($0.key, .string($0.value)) })) }
    }
    public var annotations: [String: String] {
        get { stringMap(json["metadata"]?["annotations"]) }
        set { setMeta("annotations", newValue.isEmpty ? nil : .object(newValue.sorted { $0.key < $1.key }.map { ($0.key, .string($0.value)) })) }
    }

    public var spec: JSONValue { json["spec"] ?? .object([]) }
    public var status: JSONValue { json["status"] ?? .object([]) }

    public mutating func setMeta(_ key: String, _ value: JSONValue?) {
        json = json.setting("metadata", to: (json["metadata"] ?? .object([])).setting(key, to: value))
    }
    public mutating func setSpec(_ key: String, _ value: JSONValue?) {
        json = json.setting("spec", to: spec.setting(key, to: value))
    }
    public mutating func setStatus(_ key: String, _ value: JSONValue?) {
        json = json.setting("status", to: status.setting(key, to: value))
    }

    public var bytes: [UInt8] { Array(json.serialized().utf8) }
    public init(bytes: [UInt8]) throws { json = try JSONValue.parse(bytes) }

    private func stringMap(_ v: JSONValue?) -> [String: String] {
        guard case .object(let m)? = v else { return [:] }
        var out: [String: String] = [:]
        for (k, v) in m { if let s = v.stringValue { out[k] = s } }
        return out
    }
}

/// Where each kind lives in the datastore (etcd keys in Kubernetes' own layout).
public enum Keys {
    public static let nodes = "/registry/minions/"
    public static let namespaces = "/registry/namespaces/"
    public static let pods = "/registry/pods/"
    public static let services = "/registry/services/specs/"
    public static let endpointSlices = "/registry/endpointslices/"
    public static let networkPolicies = "/registry/networkpolicies/"
    public static let deployments = "/registry/deployments/"
    /// weft's own: a node's liveness (attached to its datastore lease).
    public static let nodeLeases = "/weft/nodeleases/"
    /// weft's own: pod ranges claimed by nodes, by compare-and-swap.
    public static let podRanges = "/weft/podranges/"
    public static let clusterConfig = "/weft/config"
    /// weft's own: each agent's heartbeat (on its node lease), written to time its watch.
    public static let heartbeats = "/weft/heartbeats/"
    /// weft's own: keys whose holder leads a cluster-wide job (on the holder's lease).
    public static let leaders = "/weft/leaders/"

    public static func node(_ name: String) -> String { nodes + name }
    public static func nodeLease(_ name: String) -> String { nodeLeases + name }
    public static func heartbeat(_ name: String) -> String { heartbeats + name }
    public static func namespace(_ name: String) -> String { namespaces + name }
    public static func pod(_ ns: String, _ name: String) -> String { pods + ns + "/" + name }
    public static func podRange(_ cidr: IPNetwork) -> String {
        podRanges + cidr.description.replacingSlashAndColons()
    }

    /// The key of any namespaced or cluster-scoped object weft stores.
    public static func key(for o: KubeObject) throws(ManifestError) -> String {
        switch o.kind {
        case "Node": return node(o.name)
        case "Namespace": return namespace(o.name)
        case "Pod": return pod(o.namespace ?? "default", o.name)
        case "Service": return services + (o.namespace ?? "default") + "/" + o.name
        case "EndpointSlice": return endpointSlices + (o.namespace ?? "default") + "/" + o.name
        case "NetworkPolicy": return networkPolicies + (o.namespace ?? "default") + "/" + o.name
        case "Deployment": return deployments + (o.namespace ?? "default") + "/" + o.name
        default: throw ManifestError("kind \"\(o.kind)\" is not supported; expected Namespace, Pod, Node, Service, EndpointSlice, Deployment or NetworkPolicy")
        }
    }
}

extension String {
    func replacingSlashAndColons() -> String { String(map { $0 == "/" ? "_" : ($0 == ":" ? "-" : $0) }) }
}

public struct ManifestError: Error, Sendable, Equatable, CustomStringConvertible {
    public var description: String
    public init(_ d: String) { description = d }

    /// Every refusal of a file, one a line, and that nothing of it was stored.
    public init(refused: [String], source: String) {
        description = refused.count == 1 ? refused[0] + "\nnothing of \(source) was applied"
            : "\(refused.count) objects of \(source) were refused:\n" + refused.map { "  " + $0 }.joined(separator: "\n") + "\nnothing of \(source) was applied"
    }
}

// MARK: Nodes

/// What weft knows about a node: its host address, pod ranges and VXLAN endpoint.
public struct NodeInfo: Sendable, Equatable {
    public var name: String
    public var hostIP: IPAddress
    public var podCIDRs: [IPNetwork]
    /// The MAC of the node's VXLAN device (vxlan mode).
    public var vtepMAC: [UInt8]?

    public init(name: String, hostIP: IPAddress, podCIDRs: [IPNetwork], vtepMAC: [UInt8]? = nil) {
        self.name = name; self.hostIP = hostIP; self.podCIDRs = podCIDRs; self.vtepMAC = vtepMAC
    }

    public static let vtepAnnotation = "weft.dev/vtep-mac"

    public init?(_ o: KubeObject) {
        guard o.kind == "Node" else { return nil }
        let addrs = o.status["addresses"]?.arrayValue ?? []
        guard let ipText = addrs.first(where: { $0["type"]?.stringValue == "InternalIP" })?["address"]?.stringValue,
              let ip = IPAddress(ipText) else { return nil }
        name = o.name
        hostIP = ip
        podCIDRs = (o.spec["podCIDRs"]?.arrayValue ?? []).compactMap { $0.stringValue.flatMap(IPNetwork.init) }
        vtepMAC = o.annotations[NodeInfo.vtepAnnotation].flatMap(parseMAC)
    }

    public var object: KubeObject {
        var o = KubeObject(apiVersion: "v1", kind: "Node", name: name)
        o.labels = ["kubernetes.io/hostname": name]
        if let vtepMAC { o.annotations = [NodeInfo.vtepAnnotation: formatMAC(vtepMAC)] }
        if let first = podCIDRs.first { o.setSpec("podCIDR", .string(first.description)) }
        o.setSpec("podCIDRs", .array(podCIDRs.map { .string($0.description) }))
        o.setStatus("addresses", .array([
            .object([("type", .string("InternalIP")), ("address", .string(hostIP.description))]),
            .object([("type", .string("Hostname")), ("address", .string(name))]),
        ]))
        return o
    }
}
