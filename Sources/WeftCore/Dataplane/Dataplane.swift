/// The node's packet-processing programs as the agent sees them: services (frontends, their
/// backends, affinity, traffic policies) and NetworkPolicy (which pods are isolated, what
/// allows them), in Kubernetes' terms rather than any one kernel mechanism's. The agent's loops
/// compute desired state and hand it over; the implementation (nftables today, eBPF next) owns
/// how it is written, how a failed write is repaired, which stale conntrack entries a change
/// leaves, and what its kernel objects are called. `weft trace`, `weft doctor` and the metrics
/// ask it their questions instead of knowing its layout.
///
/// Programming stores the desired state first and then writes it: when the write fails, the
/// implementation still holds what it was given and writes it whole at the next call, so a
/// caller never resends what it already handed over. Observing calls may come from other
/// threads (the agent's HTTP endpoint) while a loop programs.
public protocol Dataplane: AnyObject, Sendable {
    var kind: DataplaneKind { get }
    /// The node this dataplane is for: traffic policy Local keeps to its endpoints, and policy
    /// is enforced for its pods.
    var node: String { get }

    /// Brings the services to `update` (the whole set at start and at each resync, which also
    /// repairs drift; otherwise the services that changed). Stale conntrack entries the change
    /// leaves are cleared by the implementation once its rules are in, because what is stale
    /// depends on how it tracks connections (kernel conntrack here, its own maps for eBPF).
    @discardableResult func programServices(_ update: ServiceUpdate) throws -> DataplaneWrite

    /// Brings NetworkPolicy to `policy` (always the whole desired state; the implementation
    /// writes only the difference from what it holds unless `resync` asks it to rewrite all).
    @discardableResult func programPolicy(_ policy: PolicyRules.Input, resync: Bool) throws -> DataplaneWrite

    /// What the dataplane holds, logically (`DataplaneView.dump`): stable, sorted text.
    func dump() -> String
    /// What a new connection to `address`:`port`/`proto` meets; nil when no frontend has that address.
    func traceService(address: IPAddress, port: UInt16, proto: String) -> ServiceTrace?
    /// The verdict for a connection of the local pod at `pod` with `peer` (the source for
    /// ingress, the destination for egress).
    func tracePolicy(_ direction: NetworkPolicy.Direction, pod: IPAddress, peer: IPAddress, port: UInt16?, proto: String) -> PolicyTrace
    /// Rules and elements programmed, per kernel object (for metrics).
    func counts(_ part: DataplanePart) -> [DataplaneCount]
    /// Packets dropped so far, by reason (kernel counters; empty when there are none).
    func drops() throws -> [DropReason: UInt64]
    /// Differences between what the dataplane means to hold and what the kernel holds.
    func check() throws -> [DataplaneDrift]
}

/// Which implementation a node runs, as `weft get nodes -o wide`, metrics, doctor and trace name it.
public struct DataplaneKind: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: String
    public init(rawValue: String) { self.rawValue = rawValue }
    public static let nftables = DataplaneKind(rawValue: "nftables")
    /// The in-memory one tests drive the agent's loops with.
    public static let fake = DataplaneKind(rawValue: "fake")
    public var description: String { rawValue }
}

public enum DataplanePart: String, Sendable, CaseIterable { case services, policy }

/// What a services loop hands its dataplane.
public enum ServiceUpdate: Sendable {
    /// Every service: the dataplane holds exactly these afterwards, whatever it held before.
    case all([ServiceRules.Entry])
    /// Services new or different (`changed`) and gone (`removed`: "namespace/name"); every other
    /// service stays as it is, so the cost follows the change.
    case change(changed: [ServiceRules.Entry], removed: Set<String>)
}

/// What a program call did, for the loops' logs.
public enum DataplaneWrite: Sendable, Equatable {
    case unchanged
    /// Only the change was written.
    case updated
    /// Everything was written (first write, resync, or the change could not be made alone).
    case replaced
}

public struct DataplaneCount: Sendable, Equatable {
    public var part: DataplanePart
    /// The implementation's name for the object counted (an nftables table).
    public var name: String
    public var rules: Int
    public var elements: Int
    public init(part: DataplanePart, name: String, rules: Int, elements: Int) { self.part = part; self.name = name; self.rules = rules; self.elements = elements }
}

/// Why packets were dropped, as the metrics label them.
public enum DropReason: String, Sendable, CaseIterable {
    case policyIngress = "policy-ingress", policyEgress = "policy-egress", spoofed
}

/// How the kernel compares with one claim of the desired state, in the implementation's words.
public struct DataplaneLive: Sendable, Equatable {
    public var text: String
    public var agrees: Bool
    public init(text: String, agrees: Bool) { self.text = text; self.agrees = agrees }
}

/// The service hop of a trace.
public struct ServiceTrace: Sendable, Equatable {
    public var frontend: ServiceFrontend
    /// Where the implementation does it ("DNAT in inet weft-services-3"); nil when it has no place to name.
    public var place: String?
    /// The kernel's side; nil for a dataplane without one (the fake).
    public var live: DataplaneLive?
    public init(frontend: ServiceFrontend, place: String? = nil, live: DataplaneLive? = nil) { self.frontend = frontend; self.place = place; self.live = live }
}

/// The policy hop of a trace: `PolicyRules.Input.verdict` for the pods the dataplane was given.
public struct PolicyTrace: Sendable, Equatable {
    /// "namespace/name" of the pod judged; nil when no local pod has the address (not judged).
    public var pod: String?
    public var allowed: Bool
    public var isolatedBy: [String]
    public var allowedBy: [String]
    public var live: DataplaneLive?
    public init(pod: String?, allowed: Bool, isolatedBy: [String], allowedBy: [String], live: DataplaneLive? = nil) {
        self.pod = pod; self.allowed = allowed; self.isolatedBy = isolatedBy; self.allowedBy = allowedBy; self.live = live
    }
}

/// One kernel object that differs from what the dataplane means to hold.
public struct DataplaneDrift: Sendable, Equatable {
    /// "table inet weft-policy"
    public var object: String
    /// Absent from the kernel altogether.
    public var missing: Bool
    /// What differs ("chain antispoof: 3 rule(s), 4 meant").
    public var differences: [String]
    public init(object: String, missing: Bool, differences: [String] = []) { self.object = object; self.missing = missing; self.differences = differences }
}

// MARK: JSON, for the agent's /dataplane endpoint and the CLI reading it

extension DataplaneLive {
    public var json: JSONValue { .object([("text", .string(text)), ("agrees", .bool(agrees))]) }
    public init?(json j: JSONValue?) {
        guard let j, let t = j["text"]?.stringValue, let a = j["agrees"]?.boolValue else { return nil }
        self.init(text: t, agrees: a)
    }
}

extension ServiceBackend {
    public var json: JSONValue {
        var m: [(String, JSONValue)] = [("pod", .string(pod)), ("address", .string(address.description)), ("port", .number(Double(port))),
                                        ("terminating", .bool(terminating))]
        if let node { m.append(("node", .string(node))) }
        return .object(m)
    }
    public init?(json j: JSONValue) {
        guard let pod = j["pod"]?.stringValue, let a = j["address"]?.stringValue.flatMap(IPAddress.init),
              let p = j["port"]?.intValue.flatMap(UInt16.init(exactly:)) else { return nil }
        self.init(pod: pod, address: a, port: p, node: j["node"]?.stringValue, terminating: j["terminating"]?.boolValue ?? false)
    }
}

extension ServiceFrontend {
    public var json: JSONValue {
        var m: [(String, JSONValue)] = [("service", .string(service)), ("kind", .string(kind.rawValue)), ("family", .string(family == .v4 ? "IPv4" : "IPv6")),
                                        ("protocol", .string(proto)), ("port", .number(Double(port))), ("masquerade", .bool(masquerade)), ("local", .bool(localOnly))]
        if let address { m.append(("address", .string(address.description))) }
        if let affinitySeconds { m.append(("affinitySeconds", .number(Double(affinitySeconds)))) }
        switch action {
        case .forward(let b): m.append(("action", .string("forward"))); m.append(("backends", .array(b.map(\.json))))
        case .reject: m.append(("action", .string("reject")))
        case .drop: m.append(("action", .string("drop")))
        }
        return .object(m)
    }
    public init?(json j: JSONValue) {
        guard let s = j["service"]?.stringValue, let k = j["kind"]?.stringValue.flatMap(Kind.init(rawValue:)), let f = j["family"]?.stringValue,
              let proto = j["protocol"]?.stringValue, let port = j["port"]?.intValue.flatMap(UInt16.init(exactly:)) else { return nil }
        let action: Action
        switch j["action"]?.stringValue {
        case "forward": action = .forward((j["backends"]?.arrayValue ?? []).compactMap(ServiceBackend.init(json:)))
        case "reject": action = .reject
        case "drop": action = .drop
        default: return nil
        }
        self.init(service: s, kind: k, family: f == "IPv6" ? .v6 : .v4, address: j["address"]?.stringValue.flatMap(IPAddress.init), proto: proto, port: port,
                  action: action, affinitySeconds: j["affinitySeconds"]?.intValue, masquerade: j["masquerade"]?.boolValue ?? false,
                  localOnly: j["local"]?.boolValue ?? false)
    }
}

extension ServiceTrace {
    public var json: JSONValue {
        var m: [(String, JSONValue)] = [("frontend", frontend.json)]
        if let place { m.append(("place", .string(place))) }
        if let live { m.append(("live", live.json)) }
        return .object(m)
    }
    public init?(json j: JSONValue) {
        guard let f = j["frontend"].flatMap(ServiceFrontend.init(json:)) else { return nil }
        self.init(frontend: f, place: j["place"]?.stringValue, live: DataplaneLive(json: j["live"]))
    }
}

extension PolicyTrace {
    public var json: JSONValue {
        var m: [(String, JSONValue)] = [("allowed", .bool(allowed)), ("isolatedBy", .array(isolatedBy.map { .string($0) })),
                                        ("allowedBy", .array(allowedBy.map { .string($0) }))]
        if let pod { m.append(("pod", .string(pod))) }
        if let live { m.append(("live", live.json)) }
        return .object(m)
    }
    public init?(json j: JSONValue) {
        guard let allowed = j["allowed"]?.boolValue else { return nil }
        self.init(pod: j["pod"]?.stringValue, allowed: allowed, isolatedBy: (j["isolatedBy"]?.arrayValue ?? []).compactMap(\.stringValue),
                  allowedBy: (j["allowedBy"]?.arrayValue ?? []).compactMap(\.stringValue), live: DataplaneLive(json: j["live"]))
    }
}

extension DataplaneDrift {
    public var json: JSONValue {
        .object([("object", .string(object)), ("missing", .bool(missing)), ("differences", .array(differences.map { .string($0) }))])
    }
    public init?(json j: JSONValue) {
        guard let o = j["object"]?.stringValue else { return nil }
        self.init(object: o, missing: j["missing"]?.boolValue ?? false, differences: (j["differences"]?.arrayValue ?? []).compactMap(\.stringValue))
    }
}
