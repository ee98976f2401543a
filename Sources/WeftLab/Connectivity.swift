import Foundation
import WeftCore
import WeftOS

/// Every pod to every pod, and each node to its own pods, with real TCP connections to the
/// pods' test servers. A pair fails if nothing answers, the wrong pod answers, or the answer
/// shows the client's address rewritten (the Kubernetes model: pod to pod without NAT).
public struct Connectivity {
    public enum Cell: Sendable, Equatable {
        case itself
        case reached
        /// Not reached, as policy says (why).
        case denied(String)
        /// Not as expected: the reason.
        case wrong(String)
    }

    public struct Result: Sendable {
        public var text: String
        public var failures: [String]
        public var pairs: Int
        /// Rows and columns: the pods (namespace/name); cells[from][to].
        public var pods: [String] = []
        public var cells: [[Cell]] = []
    }

    let state: LabState
    let weftBinary: String

    public init(state: LabState, weftBinary: String) { self.state = state; self.weftBinary = weftBinary }

    struct Target { var ns: String; var namespace: String; var name: String; var ip: String; var port: UInt16; var node: String }

    /// - policy: the NetworkPolicy state; pairs it denies are expected not to connect.
    public func run(pods: [KubeObject], family: IPFamily? = nil, policy: PolicyRules.Input? = nil) -> Result {
        let targets: [Target] = pods.compactMap { p in
            guard p.status["phase"]?.stringValue == "Running", let node = p.nodeName else { return nil }
            let ips = (p.status["podIPs"]?.arrayValue ?? []).compactMap { $0["ip"]?.stringValue }
            let ip = ips.first { family == nil || IPAddress($0)?.family == family } ?? p.podIP
            guard let ip else { return nil }
            let ns = p.namespace ?? "default"
            return Target(ns: NodeRuntime.netnsName(labID: state.id, namespace: ns, pod: p.name), namespace: ns, name: p.name, ip: ip,
                          port: p.containerPorts.first?.port ?? 8080, node: node)
        }.sorted { ($0.namespace, $0.name) < ($1.namespace, $1.name) }

        // Every probe at once: a pair a policy denies costs a whole timeout.
        var jobs: [(from: String, to: Target, expectSource: String?)] = []
        for a in targets { for b in targets where a.ns != b.ns { jobs.append((a.ns, b, a.ip)) } }
        for n in state.nodes { for t in targets where t.node == n.name { jobs.append((n.netns, t, nil)) } }
        let results = probeAll(jobs)
        var verdicts: [String: String?] = [:]
        for (i, j) in jobs.enumerated() { verdicts["\(j.from)>\(j.to.ns)"] = results[i] }

        var failures: [String] = []
        var rows: [[String]] = []
        var cells: [[Cell]] = []
        var pairs = 0
        func policyPod(_ t: Target) -> PolicyPod? { policy?.pods.first { $0.namespace == t.namespace && $0.name == t.name } }
        for a in targets {
            var row = ["\(a.namespace)/\(a.name)"]
            var cellRow: [Cell] = []
            for b in targets {
                if a.ns == b.ns { row.append("-"); cellRow.append(.itself); continue }
                pairs += 1
                let problem = verdicts["\(a.ns)>\(b.ns)"] ?? "not probed"
                // What Kubernetes' policy semantics say about this pair (allowed when no policy input).
                var expected = true
                var why = ""
                if let policy, let pa = policyPod(a), let pb = policyPod(b), let src = IPAddress(a.ip), let dst = IPAddress(b.ip) {
                    let out = policy.verdict(.egress, pod: pa, peer: dst, peerPod: pb, port: b.port, proto: "TCP")
                    let into = policy.verdict(.ingress, pod: pb, peer: src, peerPod: pa, port: b.port, proto: "TCP")
                    expected = out.allowed && into.allowed
                    why = !out.allowed ? "egress isolated by \(out.isolatedBy.joined(separator: ","))" : (!into.allowed ? "ingress isolated by \(into.isolatedBy.joined(separator: ","))" : "")
                }
                let reached = problem == nil
                if reached && expected { row.append("ok"); cellRow.append(.reached) }
                else if !reached && !expected { row.append("denied"); cellRow.append(.denied(why)) }
                else {
                    row.append(reached ? "LEAK" : "FAIL")
                    cellRow.append(.wrong(reached ? "reached, but policy denies it (\(why))" : problem!))
                    failures.append("\(a.namespace)/\(a.name) (\(a.node)) -> \(b.namespace)/\(b.name) \(b.ip) (\(b.node)): "
                                    + (reached ? "reached, but policy denies it (\(why))" : problem!))
                }
            }
            rows.append(row)
            cells.append(cellRow)
        }
        var nodeRows: [[String]] = []
        for n in state.nodes {
            let mine = targets.filter { $0.node == n.name }
            var ok = 0
            for t in mine {
                pairs += 1
                if let v = verdicts["\(n.netns)>\(t.ns)"] ?? "not probed" { failures.append("node \(n.name) -> \(t.namespace)/\(t.name) \(t.ip): \(v)") } else { ok += 1 }
            }
            nodeRows.append([n.name, "\(ok)/\(mine.count)"])
        }
        let header = ["FROM \\ TO"] + targets.map { "\($0.name)@\($0.node)" }
        var text = Tables.render(header, rows)
        text += "\n\n" + Tables.render(["NODE", "OWN PODS REACHED"], nodeRows)
        let denied = cells.joined().filter { if case .denied = $0 { return true }; return false }.count
        text += "\n\n\(pairs - failures.count)/\(pairs) pairs as expected" + (denied > 0 ? " (\(denied) denied by policy, as it says)" : "")
            + (failures.isEmpty ? ", no source address rewritten" : "")
        if !failures.isEmpty { text += "\nfailures:\n" + failures.map { "  " + $0 }.joined(separator: "\n") }
        return Result(text: text, failures: failures, pairs: pairs, pods: targets.map { "\($0.namespace)/\($0.name)" }, cells: cells)
    }

    /// Runs every probe concurrently; nil where the probe succeeded, else the reason.
    func probeAll(_ jobs: [(from: String, to: Target, expectSource: String?)]) -> [String?] {
        // In batches: each probe holds two pipes, and the descriptor limit is finite.
        stride(from: 0, to: jobs.count, by: 64).flatMap { probeBatch(Array(jobs[$0..<min(jobs.count, $0 + 64)])) }
    }

    func probeBatch(_ jobs: [(from: String, to: Target, expectSource: String?)]) -> [String?] {
        var running: [(Process, Pipe, Pipe)] = []
        for j in jobs {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/usr/sbin/ip")
            let target = j.to.ip.contains(":") ? "[\(j.to.ip)]:\(j.to.port)" : "\(j.to.ip):\(j.to.port)"
            p.arguments = ["netns", "exec", j.from, weftBinary, "probe", target, "--timeout", "1500"]
            let out = Pipe(), err = Pipe()
            p.standardOutput = out
            p.standardError = err
            do { try p.run() } catch { running.append((p, out, err)); continue }
            running.append((p, out, err))
        }
        return zip(jobs, running).map { j, r in
            let (p, out, err) = r
            guard p.processIdentifier != 0 else { return "could not run the probe" }
            let stdout = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            let stderr = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            p.waitUntilExit()
            guard p.terminationStatus == 0 else { return "no answer (\(stderr.split(separator: "\n").last ?? ""))" }
            let parts = (stdout.split(separator: "\n").first ?? "").split(separator: " ")
            guard parts.count == 2, parts[0] == j.to.name else { return "answered by \"\(stdout.split(separator: "\n").first ?? "")\", expected \(j.to.name)" }
            if let e = j.expectSource, parts[1] != e { return "source address rewritten: the pod saw \(parts[1]), expected \(e)" }
            return nil
        }
    }
}
