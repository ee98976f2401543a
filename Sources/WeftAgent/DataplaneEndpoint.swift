import WeftCore

/// The agent's `/dataplane` answers, for `weft trace` and `weft doctor` (which run outside the
/// agent and reach it inside the node): what the node's dataplane holds and what it does with a
/// packet, in the dataplane's own words, so the CLI never needs its layout.
/// - `/dataplane`: the dump (`DataplaneView.dump`) after a `kind` line.
/// - `/dataplane/service?address=A&port=P&protocol=TCP`: `ServiceTrace` as JSON (404: no frontend).
/// - `/dataplane/policy?direction=ingress&pod=A&peer=B&port=P&protocol=TCP`: `PolicyTrace` as JSON.
/// - `/dataplane/check`: the `DataplaneDrift`s as JSON.
/// Served to the node's loopback only, as `/flows` is: it names every pod and policy.
enum DataplaneEndpoint {
    static func respond(_ dataplane: any Dataplane, _ req: AgentHTTPServer.Request) -> AgentHTTPServer.Response {
        guard req.fromLoopback else {
            return .init(status: .forbidden, body: Array("the dataplane is served to this node's loopback only; run weft trace or doctor where it can enter the node\n".utf8))
        }
        func json(_ j: JSONValue) -> AgentHTTPServer.Response { .init(contentType: "application/json", body: Array(j.serialized().utf8)) }
        func bad(_ message: String) -> AgentHTTPServer.Response { .init(status: .badRequest, body: Array((message + "\n").utf8)) }
        let q = req.query
        let proto = (q["protocol"] ?? "TCP").uppercased()
        guard ["TCP", "UDP", "SCTP"].contains(proto) else { return bad("protocol \"\(q["protocol"] ?? "")\" is not TCP, UDP or SCTP") }
        switch req.path {
        case "/dataplane":
            return .init(body: Array("kind \(dataplane.kind)\n\(dataplane.dump())".utf8))
        case "/dataplane/service":
            guard let a = q["address"].flatMap(IPAddress.init) else { return bad("address \"\(q["address"] ?? "")\" is not an IP address") }
            guard let p = q["port"].flatMap(UInt16.init), p > 0 else { return bad("port \"\(q["port"] ?? "")\" is not a port number (1-65535)") }
            guard let t = dataplane.traceService(address: a, port: p, proto: proto) else {
                return .init(status: .notFound, body: Array("no service frontend at \(a):\(p)/\(proto)\n".utf8))
            }
            return json(t.json)
        case "/dataplane/policy":
            guard let d = NetworkPolicy.Direction.allCases.first(where: { $0.word == q["direction"] }) else {
                return bad("direction \"\(q["direction"] ?? "")\" is not ingress or egress")
            }
            guard let pod = q["pod"].flatMap(IPAddress.init) else { return bad("pod \"\(q["pod"] ?? "")\" is not an IP address") }
            guard let peer = q["peer"].flatMap(IPAddress.init) else { return bad("peer \"\(q["peer"] ?? "")\" is not an IP address") }
            var port: UInt16?
            if let p = q["port"] {
                guard let n = UInt16(p), n > 0 else { return bad("port \"\(p)\" is not a port number (1-65535)") }
                port = n
            }
            return json(dataplane.tracePolicy(d, pod: pod, peer: peer, port: port, proto: proto).json)
        case "/dataplane/check":
            do {
                return json(.object([("kind", .string(dataplane.kind.rawValue)), ("drift", .array(try dataplane.check().map(\.json)))]))
            } catch {
                return .init(status: .internalServerError, body: Array("cannot read the dataplane from the kernel: \(error)\n".utf8))
            }
        default:
            return .init(status: .notFound, body: Array("not found; try /dataplane, /dataplane/service, /dataplane/policy or /dataplane/check\n".utf8))
        }
    }
}
