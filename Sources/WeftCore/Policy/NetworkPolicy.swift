/// `networking.k8s.io/v1` NetworkPolicy as weft reads it: every field of the spec, checked as
/// the API server checks it, with messages that name the field, the value and what is accepted.
/// The semantics (which pods a policy isolates, which peers and ports a rule allows) live in
/// `PolicyRules`; this file only parses.

/// A label selector (`matchLabels` and `matchExpressions`, all ANDed). An empty selector
/// selects everything; an absent one is a different thing and is modelled by the caller as nil.
public struct LabelSelector: Sendable, Hashable, CustomStringConvertible {
    public enum Operator: String, Sendable, Hashable { case `in` = "In", notIn = "NotIn", exists = "Exists", doesNotExist = "DoesNotExist" }
    public struct Requirement: Sendable, Hashable {
        public var key: String
        public var op: Operator
        public var values: [String]
        public init(key: String, op: Operator, values: [String] = []) { self.key = key; self.op = op; self.values = values }
    }

    public var matchLabels: [String: String]
    public var matchExpressions: [Requirement]

    public init(matchLabels: [String: String] = [:], matchExpressions: [Requirement] = []) {
        self.matchLabels = matchLabels; self.matchExpressions = matchExpressions
    }

    public static let everything = LabelSelector()
    public var isEmpty: Bool { matchLabels.isEmpty && matchExpressions.isEmpty }

    public func matches(_ labels: [String: String]) -> Bool {
        for (k, v) in matchLabels where labels[k] != v { return false }
        for r in matchExpressions {
            let v = labels[r.key]
            switch r.op {
            case .in: guard let v, r.values.contains(v) else { return false }
            case .notIn: if let v, r.values.contains(v) { return false }
            case .exists: guard v != nil else { return false }
            case .doesNotExist: guard v == nil else { return false }
            }
        }
        return true
    }

    /// `app=web,tier in (a,b),!legacy`, as kubectl prints selectors; `<all>` when empty.
    public var description: String {
        var parts = matchLabels.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
        for r in matchExpressions {
            switch r.op {
            case .in: parts.append("\(r.key) in (\(r.values.joined(separator: ",")))")
            case .notIn: parts.append("\(r.key) notin (\(r.values.joined(separator: ",")))")
            case .exists: parts.append(r.key)
            case .doesNotExist: parts.append("!\(r.key)")
            }
        }
        return parts.isEmpty ? "<all>" : parts.joined(separator: ",")
    }

    /// Parses a `metav1.LabelSelector`; `field` names it in errors (`spec.podSelector`).
    public init(json: JSONValue, field: String) throws(ManifestError) {
        guard json.objectMembers != nil else { throw ManifestError("\(field) is \(json.kindName); expected an object with matchLabels and/or matchExpressions") }
        try checkKnown(json, ["matchLabels", "matchExpressions"], field: field)
        var labels: [String: String] = [:]
        if let ml = json["matchLabels"], !ml.isNull {
            guard let members = ml.objectMembers else { throw ManifestError("\(field).matchLabels is \(ml.kindName); expected an object of label keys to values") }
            for (k, v) in members {
                try LabelSelector.checkKey(k, field: "\(field).matchLabels")
                guard let s = v.stringValue else { throw ManifestError("\(field).matchLabels[\"\(k)\"] is \(v.kindName); expected a string") }
                try LabelSelector.checkValue(s, field: "\(field).matchLabels[\"\(k)\"]")
                labels[k] = s
            }
        }
        var exprs: [Requirement] = []
        if let me = json["matchExpressions"], !me.isNull {
            guard let items = me.arrayValue else { throw ManifestError("\(field).matchExpressions is \(me.kindName); expected a list") }
            for (i, e) in items.enumerated() {
                let f = "\(field).matchExpressions[\(i)]"
                try checkKnown(e, ["key", "operator", "values"], field: f)
                guard let key = e["key"]?.stringValue else { throw ManifestError("\(f).key is missing; give the label key to test") }
                try LabelSelector.checkKey(key, field: "\(f).key")
                let opText = e["operator"]?.stringValue ?? ""
                guard let op = Operator(rawValue: opText) else {
                    throw ManifestError("\(f).operator \"\(opText)\" is not valid; expected In, NotIn, Exists or DoesNotExist")
                }
                var values: [String] = []
                if let vs = e["values"], !vs.isNull {
                    guard let arr = vs.arrayValue else { throw ManifestError("\(f).values is \(vs.kindName); expected a list of strings") }
                    for (j, v) in arr.enumerated() {
                        guard let s = v.stringValue else { throw ManifestError("\(f).values[\(j)] is \(v.kindName); expected a string") }
                        try LabelSelector.checkValue(s, field: "\(f).values[\(j)]")
                        values.append(s)
                    }
                }
                switch op {
                case .in, .notIn:
                    guard !values.isEmpty else { throw ManifestError("\(f).values is empty; operator \(op.rawValue) needs at least one value") }
                case .exists, .doesNotExist:
                    guard values.isEmpty else { throw ManifestError("\(f).values must be empty for operator \(op.rawValue)") }
                }
                exprs.append(Requirement(key: key, op: op, values: values))
            }
        }
        self.init(matchLabels: labels, matchExpressions: exprs)
    }

    /// A label key: an optional DNS-subdomain prefix and `/`, then a name of at most 63
    /// characters (alphanumerics, `-`, `_`, `.`, starting and ending alphanumeric).
    static func checkKey(_ key: String, field: String) throws(ManifestError) {
        let parts = key.split(separator: "/", omittingEmptySubsequences: false)
        let name = parts.last.map(String.init) ?? ""
        let prefixOK = parts.count == 1 || (parts.count == 2 && DNSName.isValidHostname(String(parts[0])) && !parts[0].hasSuffix("."))
        guard prefixOK, isLabelName(name), !name.isEmpty else {
            throw ManifestError("\(field): label key \"\(key)\" is not valid; expected an optional DNS subdomain prefix and '/', then a name of at most 63 characters (letters, digits, '-', '_', '.'), starting and ending with a letter or digit")
        }
    }

    static func checkValue(_ value: String, field: String) throws(ManifestError) {
        guard value.isEmpty || isLabelName(value) else {
            throw ManifestError("\(field): label value \"\(value)\" is not valid; expected at most 63 characters (letters, digits, '-', '_', '.'), starting and ending with a letter or digit, or empty")
        }
    }

    static func isLabelName(_ s: String) -> Bool {
        let u = Array(s.utf8)
        func alnum(_ b: UInt8) -> Bool { (b >= 97 && b <= 122) || (b >= 65 && b <= 90) || (b >= 48 && b <= 57) }
        guard !u.isEmpty else { return true }
        return u.count <= 63 && alnum(u[0]) && alnum(u[u.count - 1]) && u.allSatisfy { alnum($0) || $0 == 45 || $0 == 95 || $0 == 46 }
    }
}

/// Kubernetes rejects fields it does not know (kubectl's strict validation): a typo such as
/// `ingres` would otherwise silently turn into "no ingress rules", that is deny-all.
func checkKnown(_ j: JSONValue, _ known: [String], field: String) throws(ManifestError) {
    for (k, _) in j.objectMembers ?? [] where !known.contains(where: { $0.lowercased() == k.lowercased() }) {
        throw ManifestError("\(field): unknown field \"\(k)\"; expected \(known.joined(separator: ", "))")
    }
}

public struct NetworkPolicy: Sendable, Hashable {
    public enum Direction: String, Sendable, Hashable, CaseIterable {
        case ingress = "Ingress", egress = "Egress"
        /// "ingress" or "egress", as chain names, log prefixes and messages spell it.
        public var word: String { rawValue.lowercased() }
    }

    /// Who a rule allows: pods (by pod and namespace selectors) or addresses (`ipBlock`).
    public enum Peer: Sendable, Hashable {
        /// `podSelector` nil: every pod of the selected namespaces. `namespaceSelector` nil: the
        /// policy's own namespace only (the case implementations get wrong: an *absent*
        /// namespace selector is not an empty one).
        case pods(podSelector: LabelSelector?, namespaceSelector: LabelSelector?)
        case ipBlock(cidr: IPNetwork, except: [IPNetwork])
    }

    public enum PortValue: Sendable, Hashable {
        case number(UInt16)
        /// A container port name, resolved per destination pod.
        case name(String)
    }

    public struct Port: Sendable, Hashable {
        public var proto: String        // TCP, UDP or SCTP
        public var port: PortValue?     // nil: every port of the protocol
        public var endPort: UInt16?     // with a numbered port: the range port...endPort
        public init(proto: String = "TCP", port: PortValue? = nil, endPort: UInt16? = nil) { self.proto = proto; self.port = port; self.endPort = endPort }
    }

    /// One ingress or egress rule. Empty `peers`: every source (destination); empty `ports`:
    /// every port and protocol.
    public struct Rule: Sendable, Hashable {
        public var peers: [Peer]
        public var ports: [Port]
        public init(peers: [Peer] = [], ports: [Port] = []) { self.peers = peers; self.ports = ports }
    }

    public var namespace: String
    public var name: String
    public var podSelector: LabelSelector
    /// After Kubernetes' defaulting: Ingress always unless given, Egress when there are
    /// egress rules (or when given).
    public var policyTypes: Set<Direction>
    public var ingress: [Rule]
    public var egress: [Rule]

    public var id: String { "\(namespace)/\(name)" }

    public init(namespace: String, name: String, podSelector: LabelSelector = .everything, policyTypes: Set<Direction>? = nil,
                ingress: [Rule] = [], egress: [Rule] = []) {
        self.namespace = namespace; self.name = name; self.podSelector = podSelector
        self.ingress = ingress; self.egress = egress
        self.policyTypes = policyTypes ?? (egress.isEmpty ? [.ingress] : [.ingress, .egress])
    }

    public func rules(_ d: Direction) -> [Rule] { d == .ingress ? ingress : egress }

    public init(_ o: KubeObject) throws(ManifestError) {
        let ns = o.namespace ?? "default"
        let w = "networkpolicy \(ns)/\(o.name)"
        guard DNSName.isValidHostname(o.name), !o.name.hasSuffix(".") else {
            throw ManifestError("\(w): metadata.name \"\(o.name)\" is not valid; expected a lowercase DNS subdomain (letters, digits, '-', '.')")
        }
        let spec = o.spec
        do { try checkKnown(spec, ["podSelector", "policyTypes", "ingress", "egress"], field: "spec") } catch { throw ManifestError("\(w): \(error.description)") }
        func wrap<T>(_ body: () throws(ManifestError) -> T) throws(ManifestError) -> T {
            do { return try body() } catch { throw ManifestError("\(w): \(error.description)") }
        }
        // The API server requires podSelector but a Go zero value is the empty selector.
        let podSelector = try wrap { () throws(ManifestError) in
            guard let ps = spec["podSelector"], !ps.isNull else { return LabelSelector.everything }
            return try LabelSelector(json: ps, field: "spec.podSelector")
        }
        let ingress = try wrap { () throws(ManifestError) in try NetworkPolicy.rules(spec["ingress"], field: "spec.ingress", peersKey: "from") }
        let egress = try wrap { () throws(ManifestError) in try NetworkPolicy.rules(spec["egress"], field: "spec.egress", peersKey: "to") }
        var types: Set<Direction>?
        if let pt = spec["policyTypes"], !pt.isNull {
            guard let arr = pt.arrayValue else { throw ManifestError("\(w): spec.policyTypes is \(pt.kindName); expected a list of \"Ingress\" and/or \"Egress\"") }
            var set = Set<Direction>()
            for (i, v) in arr.enumerated() {
                guard let d = v.stringValue.flatMap(Direction.init) else {
                    throw ManifestError("\(w): spec.policyTypes[\(i)] \(v.serialized()) is not valid; expected \"Ingress\" or \"Egress\"")
                }
                guard set.insert(d).inserted else { throw ManifestError("\(w): spec.policyTypes[\(i)] \"\(d.rawValue)\" is given twice") }
            }
            if !set.isEmpty { types = set }
        }
        self.init(namespace: ns, name: o.name, podSelector: podSelector, policyTypes: types, ingress: ingress, egress: egress)
    }

    static func rules(_ json: JSONValue?, field: String, peersKey: String) throws(ManifestError) -> [Rule] {
        guard let json, !json.isNull else { return [] }
        guard let items = json.arrayValue else { throw ManifestError("\(field) is \(json.kindName); expected a list of rules") }
        var out: [Rule] = []
        for (i, r) in items.enumerated() {
            let f = "\(field)[\(i)]"
            guard r.objectMembers != nil else { throw ManifestError("\(f) is \(r.kindName); expected an object with \(peersKey) and/or ports") }
            try checkKnown(r, [peersKey, "ports"], field: f)
            var rule = Rule()
            if let ps = r[peersKey], !ps.isNull {
                guard let arr = ps.arrayValue else { throw ManifestError("\(f).\(peersKey) is \(ps.kindName); expected a list of peers") }
                for (j, p) in arr.enumerated() { rule.peers.append(try peer(p, field: "\(f).\(peersKey)[\(j)]")) }
            }
            if let ps = r["ports"], !ps.isNull {
                guard let arr = ps.arrayValue else { throw ManifestError("\(f).ports is \(ps.kindName); expected a list of ports") }
                for (j, p) in arr.enumerated() { rule.ports.append(try port(p, field: "\(f).ports[\(j)]")) }
            }
            out.append(rule)
        }
        return out
    }

    static func peer(_ p: JSONValue, field f: String) throws(ManifestError) -> Peer {
        guard p.objectMembers != nil else { throw ManifestError("\(f) is \(p.kindName); expected an object with podSelector, namespaceSelector or ipBlock") }
        try checkKnown(p, ["podSelector", "namespaceSelector", "ipBlock"], field: f)
        func present(_ k: String) -> JSONValue? { p[k].flatMap { $0.isNull ? nil : $0 } }
        let pod = present("podSelector"), ns = present("namespaceSelector"), block = present("ipBlock")
        if let block {
            guard pod == nil, ns == nil else {
                throw ManifestError("\(f): ipBlock cannot be combined with podSelector or namespaceSelector; use separate peers")
            }
            try checkKnown(block, ["cidr", "except"], field: "\(f).ipBlock")
            guard let c = block["cidr"], !c.isNull else { throw ManifestError("\(f).ipBlock.cidr is missing; give a CIDR such as 10.0.0.0/16") }
            guard let cidrText = c.stringValue else { throw ManifestError("\(f).ipBlock.cidr is \(c.kindName); expected a CIDR string such as \"10.0.0.0/16\"") }
            guard let cidr = IPNetwork(cidrText), cidrText.contains("/") else {
                throw ManifestError("\(f).ipBlock.cidr \"\(cidrText)\" is not a CIDR; expected an address and prefix length such as 10.0.0.0/16 or fd00::/64")
            }
            var except: [IPNetwork] = []
            if let ex = block["except"], !ex.isNull {
                guard let arr = ex.arrayValue else { throw ManifestError("\(f).ipBlock.except is \(ex.kindName); expected a list of CIDRs") }
                for (k, e) in arr.enumerated() {
                    let t = e.stringValue ?? e.serialized()
                    guard let n = IPNetwork(t), t.contains("/") else {
                        throw ManifestError("\(f).ipBlock.except[\(k)] \"\(t)\" is not a CIDR; expected an address and prefix length inside \(cidr)")
                    }
                    guard n.family == cidr.family, n.prefixLength > cidr.prefixLength, cidr.contains(n.address) else {
                        throw ManifestError("\(f).ipBlock.except[\(k)] \(n) must be a strict subset of the cidr \(cidr)")
                    }
                    except.append(n)
                }
            }
            return .ipBlock(cidr: cidr, except: except)
        }
        guard pod != nil || ns != nil else {
            throw ManifestError("\(f) is empty; a peer needs podSelector, namespaceSelector (or both) or ipBlock")
        }
        let ps = try pod.map { (j: JSONValue) throws(ManifestError) in try LabelSelector(json: j, field: "\(f).podSelector") }
        let nss = try ns.map { (j: JSONValue) throws(ManifestError) in try LabelSelector(json: j, field: "\(f).namespaceSelector") }
        return .pods(podSelector: ps, namespaceSelector: nss)
    }

    static func port(_ p: JSONValue, field f: String) throws(ManifestError) -> Port {
        guard p.objectMembers != nil else { throw ManifestError("\(f) is \(p.kindName); expected an object with protocol, port and endPort") }
        try checkKnown(p, ["protocol", "port", "endPort"], field: f)
        let protoText = p["protocol"].flatMap { $0.isNull ? nil : $0 }.map { $0.stringValue ?? $0.serialized() } ?? "TCP"
        guard ["TCP", "UDP", "SCTP"].contains(protoText) else {
            throw ManifestError("\(f).protocol \"\(protoText)\" is not supported; expected TCP, UDP or SCTP")
        }
        var out = Port(proto: protoText)
        if let v = p["port"], !v.isNull {
            if let n = v.intValue {
                guard (1...65535).contains(n) else { throw ManifestError("\(f).port \(n) is out of range; expected a port number from 1 to 65535 or a port name") }
                out.port = .number(UInt16(n))
            } else if let s = v.stringValue {
                if Int(s) != nil {
                    // A string is a port name, and a name needs a letter (as the API server checks).
                    throw ManifestError("\(f).port \"\(s)\" is a string, so a port name, and a name needs a letter; write the number without quotes")
                } else {
                    guard isPortName(s) else {
                        throw ManifestError("\(f).port \"\(s)\" is not a valid port name; expected at most 15 lowercase letters, digits and '-' with at least one letter, or a number from 1 to 65535")
                    }
                    out.port = .name(s)
                }
            } else {
                throw ManifestError("\(f).port is \(v.kindName); expected a port number or a port name")
            }
        }
        if let e = p["endPort"], !e.isNull {
            guard let n = e.intValue, (1...65535).contains(n) else {
                throw ManifestError("\(f).endPort \(e.serialized()) is not valid; expected a port number from 1 to 65535")
            }
            guard case .number(let start)? = out.port else {
                throw ManifestError("\(f).endPort needs a numbered port (a range cannot start at a named or absent port)")
            }
            guard n >= Int(start) else { throw ManifestError("\(f).endPort \(n) is below port \(start); expected endPort >= port") }
            out.endPort = UInt16(n)
        }
        return out
    }

    /// An IANA service name as Kubernetes checks container port names.
    static func isPortName(_ s: String) -> Bool {
        let u = Array(s.utf8)
        guard !u.isEmpty, u.count <= 15, u.first != 45, u.last != 45, !s.contains("--") else { return false }
        return u.allSatisfy { ($0 >= 97 && $0 <= 122) || ($0 >= 48 && $0 <= 57) || $0 == 45 } && u.contains { $0 >= 97 && $0 <= 122 }
    }
}
