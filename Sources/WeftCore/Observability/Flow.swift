/// One flow record, as an agent keeps it and `weft observe` shows it: a connection starting or
/// ending (from conntrack events) or a packet denied (from the policy table's log), with the pods,
/// service and node it concerns.
public struct Flow: Sendable, Equatable {
    public enum Verdict: String, Sendable { case forwarded, dropped }
    /// new, end (conntrack) or denied (policy), spoofed.
    public var event: String
    public var verdict: Verdict
    /// Per agent, increasing; a client asks for flows after the last it saw.
    public var seq: UInt64 = 0
    /// Unix seconds.
    public var time: Double
    public var node: String
    public var proto: String
    public var source: IPAddress
    public var sourcePort: UInt16?
    /// Where the client sent it (a service's address for service traffic).
    public var destination: IPAddress
    public var destinationPort: UInt16?
    /// The endpoint a service translated it to.
    public var translated: IPAddress?
    public var translatedPort: UInt16?
    public var sourcePod: String?
    public var destinationPod: String?
    public var service: String?
    public var reason: String?
    public var packets: UInt64?
    public var bytes: UInt64?

    public init(event: String, verdict: Verdict, time: Double, node: String, proto: String, source: IPAddress, sourcePort: UInt16?,
                destination: IPAddress, destinationPort: UInt16?) {
        self.event = event; self.verdict = verdict; self.time = time; self.node = node; self.proto = proto
        self.source = source; self.sourcePort = sourcePort; self.destination = destination; self.destinationPort = destinationPort
    }

    public var json: JSONValue {
        var m: [(String, JSONValue)] = [("seq", .number(Double(seq))), ("time", .number(time)), ("node", .string(node)), ("event", .string(event)),
                                        ("verdict", .string(verdict.rawValue)), ("protocol", .string(proto)), ("source", .string(source.description)),
                                        ("destination", .string(destination.description))]
        func opt(_ k: String, _ v: JSONValue?) { if let v { m.append((k, v)) } }
        opt("sourcePort", sourcePort.map { .number(Double($0)) })
        opt("destinationPort", destinationPort.map { .number(Double($0)) })
        opt("translated", translated.map { .string($0.description) })
        opt("translatedPort", translatedPort.map { .number(Double($0)) })
        opt("sourcePod", sourcePod.map { .string($0) })
        opt("destinationPod", destinationPod.map { .string($0) })
        opt("service", service.map { .string($0) })
        opt("reason", reason.map { .string($0) })
        opt("packets", packets.map { .number(Double($0)) })
        opt("bytes", bytes.map { .number(Double($0)) })
        return .object(m)
    }

    public init?(json j: JSONValue) {
        guard let event = j["event"]?.stringValue, let v = j["verdict"]?.stringValue.flatMap(Verdict.init), let time = j["time"]?.doubleValue,
              let node = j["node"]?.stringValue, let proto = j["protocol"]?.stringValue,
              let src = j["source"]?.stringValue.flatMap(IPAddress.init), let dst = j["destination"]?.stringValue.flatMap(IPAddress.init) else { return nil }
        self.init(event: event, verdict: v, time: time, node: node, proto: proto, source: src, sourcePort: j["sourcePort"]?.intValue.map(UInt16.init),
                  destination: dst, destinationPort: j["destinationPort"]?.intValue.map(UInt16.init))
        seq = UInt64(j["seq"]?.intValue ?? 0)
        translated = j["translated"]?.stringValue.flatMap(IPAddress.init)
        translatedPort = j["translatedPort"]?.intValue.map(UInt16.init)
        sourcePod = j["sourcePod"]?.stringValue
        destinationPod = j["destinationPod"]?.stringValue
        service = j["service"]?.stringValue
        reason = j["reason"]?.stringValue
        packets = j["packets"]?.intValue.map(UInt64.init)
        bytes = j["bytes"]?.intValue.map(UInt64.init)
    }

    /// One line: `node0 x/a 10.244.1.2:40000 -> svc x/web 10.96.0.16:8000 => x/b 10.244.2.3:80 TCP new forwarded`.
    public var line: String {
        func ep(_ a: IPAddress, _ p: UInt16?) -> String { p.map { a.family == .v6 ? "[\(a)]:\($0)" : "\(a):\($0)" } ?? a.description }
        var s = "\(node) \(sourcePod.map { $0 + " " } ?? "")\(ep(source, sourcePort)) -> "
        if let service { s += "svc \(service) \(ep(destination, destinationPort))" + (translated.map { " => \(destinationPod.map { $0 + " " } ?? "")\(ep($0, translatedPort))" } ?? "") }
        else { s += "\(destinationPod.map { $0 + " " } ?? "")\(ep(destination, destinationPort))" }
        s += " \(proto) \(event) \(verdict.rawValue.uppercased())"
        if let reason { s += " (\(reason))" }
        if let packets { s += " \(packets) pkts" }
        if let bytes { s += " \(bytes) B" }
        return s
    }
}

/// `weft observe`'s filters; nil matches anything.
public struct FlowFilter: Sendable {
    public var pod: String?          // namespace/name, either end
    public var namespace: String?    // either end's pod namespace
    public var service: String?      // namespace/name
    public var verdict: Flow.Verdict?
    public var port: UInt16?         // destination or translated port
    public var since: Double?        // unix seconds
    public init(pod: String? = nil, namespace: String? = nil, service: String? = nil, verdict: Flow.Verdict? = nil, port: UInt16? = nil, since: Double? = nil) {
        self.pod = pod; self.namespace = namespace; self.service = service; self.verdict = verdict; self.port = port; self.since = since
    }

    public func matches(_ f: Flow) -> Bool {
        if let pod, f.sourcePod != pod, f.destinationPod != pod { return false }
        if let namespace, ![f.sourcePod, f.destinationPod].contains(where: { $0?.hasPrefix(namespace + "/") == true }) { return false }
        if let service, f.service != service { return false }
        if let verdict, f.verdict != verdict { return false }
        if let port, f.destinationPort != port, f.translatedPort != port { return false }
        if let since, f.time < since { return false }
        return true
    }
}

extension JSONValue {
    public var doubleValue: Double? { if case .number(let d) = self { return d }; return nil }
}
