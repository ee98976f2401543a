import WeftCore
import Yams

/// Reads Kubernetes manifests (YAML or JSON, several documents, `kind: List` flattened) and
/// checks the fields weft acts on, naming the document, field and value on error.
public enum Manifests {
    /// - identityOnly: check only what names each object (kind, name, namespace), as deleting
    ///   needs; `weft delete` takes `kind`, `metadata.name` alone, as kubectl does.
    public static func parse(_ text: String, source: String, identityOnly: Bool = false) throws(ManifestError) -> [KubeObject] {
        let docs: [Any?]
        do {
            // load_all's sequence stops silently at a syntax error; the parser reports it.
            let parser = try Parser(yaml: text)
            while try parser.nextRoot() != nil {}
            docs = Array(try Yams.load_all(yaml: text))
        } catch {
            throw ManifestError("\(source): not valid YAML: \(error)")
        }
        var out: [KubeObject] = []
        // Every object is checked, so one run reports every mistake of the file, not the first.
        var refusals: [String] = []
        func check(_ json: JSONValue, _ w: String) {
            do { out.append(try validate(KubeObject(json: json), where: w, identityOnly: identityOnly)) } catch { refusals.append("\(error)") }
        }
        for (i, d) in docs.enumerated() {
            guard let d else { continue }
            let where_ = docs.count > 1 ? "\(source) document \(i + 1)" : source
            let json = try toJSON(d, path: where_)
            if json["kind"]?.stringValue == "List" {
                for (j, item) in (json["items"]?.arrayValue ?? []).enumerated() { check(item, "\(where_) items[\(j)]") }
            } else {
                check(json, where_)
            }
        }
        guard refusals.isEmpty else { throw ManifestError(refused: refusals, source: source) }
        guard !out.isEmpty else { throw ManifestError("\(source): no objects found") }
        return out
    }

    static func toJSON(_ v: Any, path: String) throws(ManifestError) -> JSONValue {
        switch v {
        case let s as String: return .string(s)
        case let b as Bool: return .bool(b)
        case let i as Int: return .number(Double(i))
        case let d as Double: return .number(d)
        case let a as [Any?]:
            var out: [JSONValue] = []
            for x in a { out.append(try x.map { (x) throws(ManifestError) in try toJSON(x, path: path) } ?? .null) }
            return .array(out)
        case let m as [AnyHashable: Any?]:
            var out: [(String, JSONValue)] = []
            for (k, x) in m { out.append(("\(k)", try x.map { (x) throws(ManifestError) in try toJSON(x, path: path) } ?? .null)) }
            return .object(out.sorted { $0.0 < $1.0 })
        default: return .string("\(v)")
        }
    }

    /// RFC 1123 label: what Kubernetes requires of namespace and pod names.
    static func isDNSLabel(_ s: String) -> Bool {
        guard !s.isEmpty, s.count <= 63, let f = s.first, let l = s.last, f.isLetter || f.isNumber, l.isLetter || l.isNumber else { return false }
        return s.allSatisfy { ($0.isASCII && ($0.isLowercase || $0.isNumber)) || $0 == "-" }
    }

    static func validate(_ o: KubeObject, where w: String, identityOnly: Bool = false) throws(ManifestError) -> KubeObject {
        guard !o.kind.isEmpty else { throw ManifestError("\(w): kind is missing") }
        guard !o.apiVersion.isEmpty else { throw ManifestError("\(w): apiVersion is missing") }
        guard isDNSLabel(o.name) else {
            throw ManifestError("\(w): metadata.name \"\(o.name)\" is not a valid name; use lowercase letters, digits and '-', at most 63, starting and ending with a letter or digit")
        }
        if let ns = o.namespace, !isDNSLabel(ns) { throw ManifestError("\(w): metadata.namespace \"\(ns)\" is not a valid namespace name") }
        _ = try Keys.key(for: o)
        if identityOnly { return o }
        if o.kind == "Service" { _ = try ClusterService(o) }
        if o.kind == "EndpointSlice" { try EndpointSlices.validate(o) }
        // Checked with the rest of the file before anything is written: a bad policy is refused
        // with its field named, and the policies in force stay as they are.
        if o.kind == "NetworkPolicy" { _ = try NetworkPolicy(o) }
        if o.kind == "Deployment" {
            let d = try Deployment(o)
            _ = try validate(d.pod(suffix: "xxxxx"), where: "\(w) spec.template")
        }
        if o.kind == "Pod" {
            for (i, c) in (o.spec["containers"]?.arrayValue ?? []).enumerated() {
                for (j, p) in (c["ports"]?.arrayValue ?? []).enumerated() {
                    let f = "\(w): spec.containers[\(i)].ports[\(j)]"
                    guard let port = p["containerPort"]?.intValue, (1...65535).contains(port) else {
                        throw ManifestError("\(f).containerPort \(p["containerPort"]?.serialized() ?? "(missing)") must be a port number from 1 to 65535")
                    }
                    let proto = p["protocol"]?.stringValue ?? "TCP"
                    guard ["TCP", "UDP", "SCTP"].contains(proto) else {
                        throw ManifestError("\(f).protocol \"\(proto)\" must be TCP, UDP or SCTP")
                    }
                }
            }
        }
        return o
    }
}

/// A pod's container ports, as the lab's test server serves them.
public struct ContainerPort: Sendable, Equatable {
    public var name: String?
    public var port: UInt16
    public var proto: String
    public var hostPort: UInt16?
}

extension KubeObject {
    public var containerPorts: [ContainerPort] {
        (spec["containers"]?.arrayValue ?? []).flatMap { c in
            (c["ports"]?.arrayValue ?? []).compactMap { p in
                p["containerPort"]?.intValue.map { ContainerPort(name: p["name"]?.stringValue, port: UInt16($0), proto: p["protocol"]?.stringValue ?? "TCP",
                                                                hostPort: p["hostPort"]?.intValue.map(UInt16.init)) }
            }
        }
    }
    public var nodeName: String? { spec["nodeName"]?.stringValue }
    public var podIP: String? { status["podIP"]?.stringValue }
}
