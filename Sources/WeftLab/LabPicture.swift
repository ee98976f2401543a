import Foundation
import WeftCore

/// `weft picture`: one self-contained HTML page of the lab drawn from live state — the host
/// network, each node with its address, pod ranges and the routes its kernel holds, its pods
/// (isolated ones outlined, the policies in their tooltip), services with lines to the pods
/// they send to — and, when probed, the connectivity matrix coloured by outcome.
public struct LabPicture {
    public struct NodeView: Sendable {
        public var info: NodeInfo
        public var live: Bool
        /// The kernel's weft routes (`ip route show proto 87`), one per line.
        public var routes: [String]
        public init(info: NodeInfo, live: Bool, routes: [String]) { self.info = info; self.live = live; self.routes = routes }
    }

    public var lab: String
    public var mode: RoutingMode
    public var nodes: [NodeView]
    public var pods: [PolicyPod]
    public var services: [ServiceRules.Entry]
    public var policy: PolicyRules.Input
    public var matrix: Connectivity.Result?

    public init(lab: String, mode: RoutingMode, nodes: [NodeView], pods: [PolicyPod], services: [ServiceRules.Entry], policy: PolicyRules.Input, matrix: Connectivity.Result?) {
        self.lab = lab; self.mode = mode; self.nodes = nodes; self.pods = pods; self.services = services; self.policy = policy; self.matrix = matrix
    }

    static func esc(_ s: String) -> String {
        s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;").replacingOccurrences(of: "'", with: "&#39;")
    }

    public var html: String {
        let colW = 300, gap = 30, left = 20, top = 70, lineH = 16, podH = 40
        var svg = ""
        var podCenter: [String: (x: Int, y: Int)] = [:]
        var bottom = 0
        for (i, n) in nodes.enumerated() {
            let x = left + i * (colW + gap)
            let mine = pods.filter { $0.node == n.info.name && $0.selectable }.sorted { ($0.namespace, $0.name) < ($1.namespace, $1.name) }
            let header = 3 + n.routes.count
            let h = 20 + header * lineH + 10 + mine.count * (podH + 8) + 10
            svg += "<line x1='\(x + colW / 2)' y1='40' x2='\(x + colW / 2)' y2='\(top)' stroke='#555'/>"
            svg += "<rect x='\(x)' y='\(top)' width='\(colW)' height='\(h)' rx='8' fill='\(n.live ? "#eef4fb" : "#f6e4e4")' stroke='#36c'/>"
            var y = top + 20
            func text(_ s: String, bold: Bool = false, size: Int = 12, color: String = "#222") {
                svg += "<text x='\(x + 10)' y='\(y)' font-size='\(size)' fill='\(color)'\(bold ? " font-weight='bold'" : "")>\(Self.esc(s))</text>"
                y += lineH
            }
            text("\(n.info.name)  \(n.info.hostIP)\(n.live ? "" : "  (lease expired)")", bold: true, size: 14)
            text("pods: " + n.info.podCIDRs.map(\.description).joined(separator: ", "))
            text("routes (\(mode.rawValue)):", color: "#555")
            for r in n.routes { text("  " + r, size: 10, color: "#555") }
            y += 10
            for p in mine {
                let ingress = policy.isolating(p, .ingress).map(\.id), egress = policy.isolating(p, .egress).map(\.id)
                let isolated = !(ingress.isEmpty && egress.isEmpty)
                let tip = "\(p.namespace)/\(p.name) \(p.addresses.map(\.description).joined(separator: " "))\nlabels: \(p.labels.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ","))"
                    + (ingress.isEmpty ? "" : "\ningress isolated by \(ingress.joined(separator: ", "))") + (egress.isEmpty ? "" : "\negress isolated by \(egress.joined(separator: ", "))")
                svg += "<g><title>\(Self.esc(tip))</title><rect x='\(x + 10)' y='\(y - 12)' width='\(colW - 20)' height='\(podH)' rx='5' fill='#fff' stroke='\(isolated ? "#c33" : "#999")' stroke-width='\(isolated ? 2 : 1)'/>"
                svg += "<text x='\(x + 18)' y='\(y + 4)' font-size='12' font-weight='bold'>\(Self.esc("\(p.namespace)/\(p.name)"))\(isolated ? " 🛡" : "")</text>"
                svg += "<text x='\(x + 18)' y='\(y + 20)' font-size='10' fill='#555'>\(Self.esc(p.addresses.map(\.description).joined(separator: "  ")))</text></g>"
                podCenter["\(p.namespace)/\(p.name)"] = (x + colW - 10, y + 8)
                y += podH + 8
            }
            bottom = max(bottom, top + h)
        }
        let width = left * 2 + max(1, nodes.count) * (colW + gap)
        // Services below the nodes, with a line to each endpoint pod.
        var sy = bottom + 40
        var serviceSVG = ""
        for e in services.sorted(by: { ($0.service.namespace, $0.service.name) < ($1.service.namespace, $1.service.name) }) where !e.service.clusterIPs.isEmpty || e.service.headless {
            let s = e.service
            let label = "svc \(s.namespace)/\(s.name)  \(s.headless ? "headless" : s.clusterIPs.map(\.description).joined(separator: ","))  \(s.ports.map { "\($0.port)/\($0.proto)" }.joined(separator: ","))"
            serviceSVG += "<rect x='\(left)' y='\(sy - 14)' width='\(min(width - 2 * left, 560))' height='22' rx='4' fill='#fdf5e6' stroke='#c90'/>"
            serviceSVG += "<text x='\(left + 8)' y='\(sy + 2)' font-size='12'>\(Self.esc(label))</text>"
            for ep in e.endpoints where ep.ready {
                guard let pod = pods.first(where: { $0.addresses.contains(ep.address) }), let c = podCenter["\(pod.namespace)/\(pod.name)"] else { continue }
                serviceSVG += "<path d='M \(left + 560) \(sy - 3) C \(left + 620) \(sy - 3), \(c.x + 40) \(c.y), \(c.x) \(c.y)' fill='none' stroke='#c90' stroke-opacity='0.6'/>"
            }
            sy += 30
        }
        let height = sy + 20
        var page = """
        <!doctype html><html><head><meta charset="utf-8"><title>weft lab \(Self.esc(lab))</title>
        <style>body{font-family:sans-serif;margin:20px} table{border-collapse:collapse} td,th{border:1px solid #ccc;padding:4px 8px;font-size:12px}
        td.ok{background:#cfc} td.denied{background:#ddd} td.wrong{background:#f99;font-weight:bold} td.self{background:#fff}</style></head><body>
        <h2>weft lab \(Self.esc(lab)) — \(nodes.count) node(s), \(mode.rawValue), \(pods.filter(\.selectable).count) pod(s), \(services.count) service(s), \(policy.policies.count) network polic\(policy.policies.count == 1 ? "y" : "ies")</h2>
        <p>Hover a pod for its labels and the policies isolating it (red outline). Drawn from the datastore and each node's kernel routes.</p>
        <svg xmlns="http://www.w3.org/2000/svg" width="\(width)" height="\(height)">
        <line x1="\(left)" y1="40" x2="\(width - left)" y2="40" stroke="#555" stroke-width="4"/><text x="\(left)" y="30" font-size="12" fill="#555">host network</text>
        \(svg)\(serviceSVG)</svg>

        """
        if let m = matrix {
            page += "<h3>Connectivity, probed with real packets (rows: from, columns: to)</h3><table><tr><th>from \\ to</th>"
            for p in m.pods { page += "<th>\(Self.esc(p))</th>" }
            page += "</tr>"
            for (i, from) in m.pods.enumerated() {
                page += "<tr><th>\(Self.esc(from))</th>"
                for cell in m.cells[i] {
                    switch cell {
                    case .itself: page += "<td class='self'></td>"
                    case .reached: page += "<td class='ok' title='reached'>✓</td>"
                    case .denied(let why): page += "<td class='denied' title='\(Self.esc("denied by policy, as expected: " + why))'>⊘</td>"
                    case .wrong(let why): page += "<td class='wrong' title='\(Self.esc(why))'>✗</td>"
                    }
                }
                page += "</tr>"
            }
            page += "</table><p>✓ reached · ⊘ denied by policy, as its rules say · ✗ not as expected (hover for why). \(m.pairs - m.failures.count)/\(m.pairs) pairs as expected.</p>"
        }
        return page + "</body></html>\n"
    }
}
