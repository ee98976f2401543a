import WeftCore
import WeftOS

/// Every pod to every pod, and each node to its own pods, with real TCP connections to the
/// pods' test servers. A pair fails if nothing answers, the wrong pod answers, or the answer
/// shows the client's address rewritten (the Kubernetes model: pod to pod without NAT).
public struct Connectivity {
    public struct Result: Sendable {
        public var text: String
        public var failures: [String]
        public var pairs: Int
    }

    let state: LabState
    let weftBinary: String

    public init(state: LabState, weftBinary: String) { self.state = state; self.weftBinary = weftBinary }

    struct Target { var ns: String; var namespace: String; var name: String; var ip: String; var port: UInt16; var node: String }

    public func run(pods: [KubeObject], family: IPFamily? = nil) -> Result {
        let targets: [Target] = pods.compactMap { p in
            guard p.status["phase"]?.stringValue == "Running", let node = p.nodeName else { return nil }
            let ips = (p.status["podIPs"]?.arrayValue ?? []).compactMap { $0["ip"]?.stringValue }
            let ip = ips.first { family == nil || IPAddress($0)?.family == family } ?? p.podIP
            guard let ip else { return nil }
            let ns = p.namespace ?? "default"
            return Target(ns: NodeRuntime.netnsName(labID: state.id, namespace: ns, pod: p.name), namespace: ns, name: p.name, ip: ip,
                          port: p.containerPorts.first?.port ?? 8080, node: node)
        }.sorted { ($0.namespace, $0.name) < ($1.namespace, $1.name) }

        var failures: [String] = []
        var rows: [[String]] = []
        var pairs = 0
        for a in targets {
            var row = ["\(a.namespace)/\(a.name)"]
            for b in targets {
                if a.ns == b.ns { row.append("-"); continue }
                pairs += 1
                let verdict = probe(from: a.ns, to: b, expectSource: a.ip)
                row.append(verdict == nil ? "ok" : "FAIL")
                if let v = verdict { failures.append("\(a.namespace)/\(a.name) (\(a.node)) -> \(b.namespace)/\(b.name) \(b.ip) (\(b.node)): \(v)") }
            }
            rows.append(row)
        }
        var nodeRows: [[String]] = []
        for n in state.nodes {
            let mine = targets.filter { $0.node == n.name }
            var ok = 0
            for t in mine {
                pairs += 1
                if let v = probe(from: n.netns, to: t, expectSource: nil) { failures.append("node \(n.name) -> \(t.namespace)/\(t.name) \(t.ip): \(v)") } else { ok += 1 }
            }
            nodeRows.append([n.name, "\(ok)/\(mine.count)"])
        }
        let header = ["FROM \\ TO"] + targets.map { "\($0.name)@\($0.node)" }
        var text = Tables.render(header, rows)
        text += "\n\n" + Tables.render(["NODE", "OWN PODS REACHED"], nodeRows)
        text += "\n\n\(pairs - failures.count)/\(pairs) pairs reached" + (failures.isEmpty ? ", no source address rewritten" : "")
        if !failures.isEmpty { text += "\nfailures:\n" + failures.map { "  " + $0 }.joined(separator: "\n") }
        return Result(text: text, failures: failures, pairs: pairs)
    }

    /// nil when the right pod answered and saw the expected source address; else the reason.
    func probe(from ns: String, to t: Target, expectSource: String?) -> String? {
        let target = t.ip.contains(":") ? "[\(t.ip)]:\(t.port)" : "\(t.ip):\(t.port)"
        guard let out = try? Subprocess.run("/usr/sbin/ip", arguments: ["netns", "exec", ns, weftBinary, "probe", target, "--timeout", "1500"],
                                            environment: ["PATH": "/usr/sbin:/usr/bin:/sbin:/bin"], stdin: []) else { return "could not run the probe" }
        let reply = String(decoding: out.stdout, as: UTF8.self).split(separator: "\n").first.map(String.init) ?? ""
        guard out.status == 0 else { return "no answer (\(String(decoding: out.stderr, as: UTF8.self).split(separator: "\n").last ?? ""))" }
        let parts = reply.split(separator: " ")
        guard parts.count == 2, parts[0] == t.name else { return "answered by \"\(reply)\", expected \(t.name)" }
        if let expectSource, parts[1] != expectSource { return "source address rewritten: the pod saw \(parts[1]), expected \(expectSource)" }
        return nil
    }
}
