/// A packet the policy table denied, explained in Kubernetes' terms: the pod it was judged for,
/// the peer, the port, the direction, and why (no policy allows it; these policies isolate the
/// pod). Built from what nflog reports (addresses, ports, the rule's prefix) and the state the
/// rules were computed from.
public struct PolicyVerdict: Sendable, Equatable {
    public var direction: String          // ingress, egress or spoofed
    public var pod: String?               // namespace/name of the pod judged
    public var peer: String               // a pod (namespace/name), a node (node/name) or an address
    public var proto: String
    public var port: UInt16?
    public var source: IPAddress
    public var destination: IPAddress
    /// The policies isolating the pod in this direction (none of which allows the packet).
    public var policies: [String]
    /// The node-side interface the packet came in on (names the sender of a spoofed packet).
    public var interface: String?

    public var summary: String {
        let what = "\(proto)\(port.map { " port \($0)" } ?? "")"
        switch direction {
        case "spoofed":
            return "spoofed packet dropped: the pod behind \(interface ?? "a pod interface") sent from \(source), an address that does not route back to it (to \(destination), \(what))"
        case "ingress":
            return "policy denied ingress to \(pod ?? destination.description) from \(peer), \(what): no policy allows it; isolated by \(policies.isEmpty ? "(none now)" : policies.joined(separator: ", "))"
        default:
            return "policy denied egress from \(pod ?? source.description) to \(peer), \(what): no policy allows it; isolated by \(policies.isEmpty ? "(none now)" : policies.joined(separator: ", "))"
        }
    }

    public var metadata: [String: String] {
        var m = ["direction": direction, "peer": peer, "protocol": proto, "source": source.description, "destination": destination.description,
                 "policies": policies.joined(separator: ",")]
        if let pod { m["pod"] = pod }
        if let port { m["port"] = "\(port)" }
        if let interface { m["interface"] = interface }
        return m
    }

    public static func protocolName(_ p: UInt8) -> String {
        switch p {
        case 6: "TCP"
        case 17: "UDP"
        case 132: "SCTP"
        case 1: "ICMP"
        case 58: "ICMPv6"
        default: "IP protocol \(p)"
        }
    }

    /// - prefix: the log prefix of the rule that logged the packet (`PolicyRules.logPrefix` + direction).
    /// - nodes: node host addresses → node names, to name peers that are nodes.
    public static func explain(_ prefix: String, source: IPAddress, destination: IPAddress, proto: UInt8, sourcePort: UInt16?, destinationPort: UInt16?,
                               interface: String? = nil, input: PolicyRules.Input, nodes: [IPAddress: String]) -> PolicyVerdict {
        let direction = prefix.hasPrefix(PolicyRules.logPrefix) ? String(prefix.dropFirst(PolicyRules.logPrefix.count)) : prefix
        func pod(at a: IPAddress) -> PolicyPod? { input.pods.first { $0.selectable && $0.addresses.contains(a) } ?? input.pods.first { $0.addresses.contains(a) } }
        func name(_ a: IPAddress) -> String {
            if let p = pod(at: a) { return "\(p.namespace)/\(p.name)" }
            if let n = nodes[a] { return "node/\(n)" }
            return a.description
        }
        let judged = direction == "ingress" ? destination : source
        let peer = direction == "ingress" ? source : destination
        // A spoofed source names nobody (or an innocent pod): the interface names the sender.
        let judgedPod = direction == "spoofed" ? nil : pod(at: judged)
        var policies: [String] = []
        if let judgedPod, let d = NetworkPolicy.Direction(rawValue: direction.prefix(1).uppercased() + direction.dropFirst()) {
            policies = input.isolating(judgedPod, d).map(\.id).sorted()
        }
        return PolicyVerdict(direction: direction, pod: judgedPod.map { "\($0.namespace)/\($0.name)" }, peer: name(peer), proto: protocolName(proto),
                             port: destinationPort, source: source, destination: destination, policies: policies, interface: interface)
    }
}
