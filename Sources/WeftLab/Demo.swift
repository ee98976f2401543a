import WeftCore
import WeftOS

/// The one-node demo: a node namespace, pods wired by the real plugin, a ping matrix, DEL.
public struct DemoRun {
    let pods: Int
    let mode: String
    let plugin: String

    public init(pods: Int, mode: String, plugin: String) throws(LabError) {
        guard (1...50).contains(pods) else { throw LabError("--pods \(pods): choose 1 to 50") }
        guard mode == "bridge" || mode == "routed" else { throw LabError("--mode \(mode): expected bridge or routed") }
        guard Files.exists(plugin) else { throw LabError("weft-cni not found at \(plugin); build it with `swift build` or pass --plugin") }
        self.pods = pods; self.mode = mode; self.plugin = plugin
    }

    public func run(print: (String) -> Void) throws(LabError) {
        let lab = try Lab(plugin: plugin)
        defer {
            lab.tearDown()
            print("\nremoved namespaces, interfaces and IPAM state of \(lab.id)")
        }
        let config = """
        {"cniVersion": "1.1.0", "name": "demo", "type": "weft", "mode": "\(mode)", "bridge": "weft0",
         "ipMasq": true, "clusterCIDR": ["10.244.0.0/16", "fd00:244::/56"],
         "ipam": {"ranges": [[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00:244:0:1::/64"}]], "dataDir": "\(lab.dataDir)"}}
        """
        print("node namespace \(lab.node), mode \(mode), plugin \(plugin)\n")
        var rows: [(name: String, ns: String, v4: String, v6: String, id: String)] = []
        for i in 0..<pods {
            let name = "pod-\(i)"
            let ns = try lab.addPod(name)
            let id = "demo\(i)"
            let (status, out) = try lab.cni(.add, config: config, containerID: id, podNamespace: ns, podName: name)
            guard status == 0, let json = try? JSONValue.parse(out) else { throw LabError("ADD \(name) failed:\n\(out)") }
            let ips = json["ips"]?.arrayValue?.compactMap { $0["address"]?.stringValue } ?? []
            rows.append((name, ns, ips.first { !$0.contains(":") } ?? "-", ips.first { $0.contains(":") } ?? "-", id))
        }
        print(pad(["POD", "IPv4", "IPv6", "HOST VETH"], [8, 18, 26, 16]))
        for r in rows { print(pad([r.name, r.v4, r.v6, hostVethName(containerID: r.id, ifname: "eth0")], [8, 18, 26, 16])) }

        print("\nping matrix (IPv4 / IPv6), from row to column:")
        print(pad(["FROM\\TO"] + rows.map(\.name), [10] + rows.map { _ in 10 }))
        var failures = 0
        for a in rows {
            var cells = [a.name]
            for b in rows {
                if a.name == b.name { cells.append("-"); continue }
                let ok4 = lab.succeeds(["ip", "netns", "exec", a.ns, "ping", "-4", "-c1", "-W2", strip(b.v4)])
                let ok6 = lab.succeeds(["ip", "netns", "exec", a.ns, "ping", "-6", "-c1", "-W2", strip(b.v6)])
                if !ok4 || !ok6 { failures += 1 }
                cells.append("\(ok4 ? "ok" : "FAIL")/\(ok6 ? "ok" : "FAIL")")
            }
            print(pad(cells, [10] + rows.map { _ in 10 }))
        }
        print("\nroutes in \(rows[0].name):")
        print((try? lab.run(["ip", "netns", "exec", rows[0].ns, "ip", "route"])) ?? "")
        for r in rows {
            let (status, out) = try lab.cni(.del, config: config, containerID: r.id, podNamespace: r.ns, podName: r.name)
            if status != 0 { throw LabError("DEL \(r.name) failed:\n\(out)") }
        }
        print("DEL of \(rows.count) pods: ok")
        if failures > 0 { throw LabError("\(failures) pod pairs could not reach each other") }
    }

    private func strip(_ cidr: String) -> String { String(cidr.split(separator: "/").first ?? "") }
    private func pad(_ cells: [String], _ widths: [Int]) -> String {
        zip(cells, widths).map { c, w in c.count >= w ? c + " " : c + String(repeating: " ", count: w - c.count) }.joined()
    }
}
