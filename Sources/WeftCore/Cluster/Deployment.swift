/// Deployments as weft reads them: a pod template stamped out `replicas` times. Pods carry the
/// template's labels plus `pod-template-hash` (a digest of the template, as Kubernetes' ReplicaSets
/// do), so a changed template gives new pods and the old ones can be told apart and removed.
public struct Deployment: Sendable, Equatable {
    public var namespace: String
    public var name: String
    public var replicas: Int
    public var selector: [String: String]
    public var template: JSONValue
    public var templateHash: String

    public static let hashLabel = "pod-template-hash"

    public init(_ o: KubeObject) throws(ManifestError) {
        namespace = o.namespace ?? "default"
        name = o.name
        let w = "deployment \(namespace)/\(name)"
        let r = o.spec["replicas"]
        if let r, r.intValue == nil { throw ManifestError("\(w): spec.replicas \(r.serialized()) must be a whole number of 0 or more") }
        replicas = r?.intValue ?? 1
        guard replicas >= 0 else { throw ManifestError("\(w): spec.replicas \(replicas) must be 0 or more") }
        guard case .object(let sel)? = o.spec["selector"]?["matchLabels"], !sel.isEmpty else {
            throw ManifestError("\(w): spec.selector.matchLabels is missing; give the labels that pick the deployment's pods (those of spec.template.metadata.labels)")
        }
        var m: [String: String] = [:]
        for (k, v) in sel { m[k] = v.stringValue ?? v.serialized() }
        selector = m
        guard let t = o.spec["template"], case .object = t else { throw ManifestError("\(w): spec.template is missing; give the pod template") }
        template = t
        let labels = KubeObject(json: t).labels
        for (k, v) in selector where labels[k] != v {
            throw ManifestError("\(w): spec.selector.matchLabels \(k)=\(v) does not match spec.template.metadata.labels; the deployment would never see its pods")
        }
        guard !(t["spec"]?["containers"]?.arrayValue ?? []).isEmpty else { throw ManifestError("\(w): spec.template.spec.containers is empty") }
        templateHash = String(hex16(fnv1a64(t.serialized())).prefix(10))
    }

    /// A new pod of the current template; `suffix` makes its name unique (5 characters, as
    /// Kubernetes' generateName).
    public func pod(suffix: String) -> KubeObject {
        var p = KubeObject(json: template)
        p.json = p.json.setting("apiVersion", to: .string("v1")).setting("kind", to: .string("Pod"))
        p.setMeta("name", .string("\(name)-\(templateHash)-\(suffix)"))
        p.setMeta("namespace", .string(namespace))
        var l = p.labels
        l[Self.hashLabel] = templateHash
        p.labels = l
        p.setMeta("ownerReferences", .array([.object([("apiVersion", .string("apps/v1")), ("kind", .string("Deployment")),
                                                       ("name", .string(name)), ("controller", .bool(true))])]))
        return p
    }

    /// Whether `pod` belongs to this deployment (its controller reference names it).
    public func owns(_ pod: KubeObject) -> Bool {
        (pod.namespace ?? "default") == namespace && (pod.json["metadata"]?["ownerReferences"]?.arrayValue ?? []).contains {
            $0["kind"]?.stringValue == "Deployment" && $0["name"]?.stringValue == name
        }
    }

    /// What to do with the pods there are: how many of the current template to add, and which
    /// to remove (surplus of the current template, newest first; every pod of an old template,
    /// after the new ones are up).
    public func plan(existing: [KubeObject]) -> (add: Int, removeNow: [KubeObject], removeAfterRollout: [KubeObject]) {
        let mine = existing.filter(owns)
        let current = mine.filter { $0.labels[Self.hashLabel] == templateHash && $0.json["metadata"]?["deletionTimestamp"] == nil }
        let old = mine.filter { $0.labels[Self.hashLabel] != templateHash && $0.json["metadata"]?["deletionTimestamp"] == nil }
        let surplus = current.count > replicas ? Array(current.sorted { $0.name > $1.name }.prefix(current.count - replicas)) : []
        return (max(replicas - current.count, 0), surplus, old)
    }
}
