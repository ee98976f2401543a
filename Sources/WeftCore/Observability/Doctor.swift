/// `weft doctor`: the usual culprits, checked per node by comparing what the node's kernel holds
/// (observed) with what the cluster's state says it should hold (desired). Pure: the lab (or a
/// node) gathers both; each finding says what is wrong and what to do.
public struct Finding: Sendable, Equatable, CustomStringConvertible {
    public enum Severity: String, Sendable { case problem = "PROBLEM", warning = "warning" }
    public var node: String
    public var check: String       // mtu, routes, sysctl, ipam, conntrack, drift, agent, datastore
    public var severity: Severity
    public var message: String
    public var fix: String

    public init(node: String, check: String, severity: Severity = .problem, message: String, fix: String) {
        self.node = node; self.check = check; self.severity = severity; self.message = message; self.fix = fix
    }

    public var description: String { "\(severity.rawValue) [\(node)] \(check): \(message)\n    fix: \(fix)" }
}

/// What the node's kernel and files hold.
public struct NodeObservation: Sendable {
    public var node: String
    public var uplink: String
    public var uplinkMTU: Int?
    /// The MTU the CNI config gives pods (nil: no config written).
    public var configuredPodMTU: Int?
    /// Host ends of pods' veths (name → MTU).
    public var podInterfaceMTUs: [String: Int] = [:]
    /// Every link of the node (name → MTU); nil: the links were not read.
    public var linkMTUs: [String: Int]?
    /// weft's routes (protocol 87, main table).
    public var routes: [(destination: IPNetwork, gateway: IPAddress?, device: String)] = []
    /// sysctl path under /proc/sys (`net/ipv4/ip_forward`) → value; missing keys were unreadable.
    public var sysctls: [String: String] = [:]
    /// Addresses the IPAM store holds on this node.
    public var ipamHeld: Set<IPAddress> = []
    public var conntrackCount: Int?
    public var conntrackMax: Int?
    /// What the node's dataplane finds differing between what it means to hold and the kernel
    /// (`Dataplane.check`); nil when it could not be asked.
    public var dataplaneDrift: [DataplaneDrift]?
    /// Why the dataplane could not be asked, when the agent answers but its dataplane does not.
    public var dataplaneUnreadable: String?
    /// The agent's /healthz answered.
    public var agentAnswers: Bool = true

    public init(node: String, uplink: String) { self.node = node; self.uplink = uplink }
}

/// What the cluster's state says the node should hold.
public struct NodeExpectation: Sendable {
    /// The cluster's routing backend: the MTU, device and settings the node needs.
    public var backend: any RoutingBackend
    /// The family of the node's host address: what the encapsulation costs depends on it.
    public var hostFamily: IPFamily
    public var routing: RoutingState
    /// Node names whose pod ranges the routes go to, for messages (range → node).
    public var rangeOwners: [IPNetwork: String] = [:]
    /// Addresses of the pods the datastore places on this node.
    public var podAddresses: Set<IPAddress> = []
    /// The node holds a live lease (its agent is registered).
    public var leaseLive: Bool = true
    public var hasIPv6PodRange: Bool = false

    public init(backend: any RoutingBackend, hostFamily: IPFamily, routing: RoutingState) {
        self.backend = backend; self.hostFamily = hostFamily; self.routing = routing
    }
}

public enum Doctor {
    public static func check(_ o: NodeObservation, _ want: NodeExpectation) -> [Finding] {
        var out: [Finding] = []
        let n = o.node
        func add(_ check: String, _ msg: String, _ fix: String) {
            out.append(Finding(node: n, check: check, severity: .problem, message: msg, fix: fix))
        }
        func warn(_ check: String, _ msg: String, _ fix: String) {
            out.append(Finding(node: n, check: check, severity: .warning, message: msg, fix: fix))
        }

        // Agent and lease first: without them everything else drifts.
        if !want.leaseLive {
            add("agent", "the node holds no live lease: its agent is down or cannot reach the datastore, and peers have withdrawn their routes to its pods",
                "look at the agent's log (lab: /run/weft/lab/LAB/\(n)/agent.log) and restart it")
        } else if !o.agentAnswers {
            warn("agent", "the agent's /healthz on port 9464 does not answer", "the agent may be stuck or started with --metrics-port 0")
        }

        out += mtuFindings(o, want)

        // The mode's device, then routes to peers.
        if let name = want.backend.deviceName, let links = o.linkMTUs, links[name] == nil {
            add("routes", "\(name), the \(want.backend.mode.rawValue) device, is missing: this node's pods cannot reach other nodes' pods",
                "restart the agent (it makes the device at start)")
        }
        let have = Set(o.routes.map { "\($0.destination)|\($0.gateway?.description ?? "")|\($0.device)" })
        for r in want.routing.routes.sorted(by: { $0.destination.description < $1.destination.description }) {
            let key = "\(r.destination)|\(r.gateway?.description ?? "")|\(r.device)"
            guard !have.contains(key) else { continue }
            let owner = want.rangeOwners[r.destination].map { "\($0)'s pods " } ?? ""
            if o.routes.contains(where: { $0.destination == r.destination }) {
                add("routes", "the route to \(owner)\(r.destination) goes the wrong way (want \(r))", "the agent replaces it at its next resync; if it stays, the agent is not running")
            } else {
                add("routes", "no route to \(owner)\(r.destination) (want \(r)): this node's pods cannot reach them",
                    "the agent adds it at its next resync (seconds); if it stays missing, the agent is not running or cannot read the datastore")
            }
        }
        let wantDest = Set(want.routing.routes.map(\.destination))
        for r in o.routes where !wantDest.contains(r.destination) {
            add("routes", "a stale route to \(r.destination) via \(r.device): no live node owns that range", "the agent removes it at its next resync; or `ip route del \(r.destination)`")
        }

        // Forwarding and reverse-path filtering.
        if o.sysctls["net/ipv4/ip_forward"].map({ $0 != "1" }) ?? false {
            add("sysctl", "IPv4 forwarding is off: no pod traffic leaves the node", "sysctl -w net.ipv4.ip_forward=1 (the agent sets it at start)")
        }
        if want.hasIPv6PodRange, o.sysctls["net/ipv6/conf/all/forwarding"].map({ $0 != "1" }) ?? false {
            add("sysctl", "IPv6 forwarding is off: no IPv6 pod traffic leaves the node", "sysctl -w net.ipv6.conf.all.forwarding=1 (the agent sets it at start)")
        }
        for s in want.backend.sysctls(uplink: o.uplink) {
            guard let v = o.sysctls[s.key], v != s.value else { continue }
            add("sysctl", "\(s.key) is \(v) but \(want.backend.mode.rawValue) mode needs \(s.value): \(s.why)",
                "sysctl -w \(s.key)=\(s.value) (the agent sets it at start)")
        }
        let all = Int(o.sysctls["net/ipv4/conf/all/rp_filter"] ?? "0") ?? 0
        let arrival = want.backend.arrivalDevice(uplink: o.uplink)
        for dev in [o.uplink] + (arrival == o.uplink ? [] : [arrival]) {
            guard let v = o.sysctls["net/ipv4/conf/\(dev)/rp_filter"].flatMap({ Int($0) }) else { continue }
            if max(all, v) == 1 {
                warn("sysctl", "strict reverse-path filtering on \(dev) (rp_filter 1) drops packets that arrive where the reply would not leave",
                    "sysctl -w net.ipv4.conf.\(dev).rp_filter=2 (loose) and net.ipv4.conf.all.rp_filter=2")
            }
        }

        // IPAM: addresses held for no pod leak the range away.
        let leaked = o.ipamHeld.subtracting(want.podAddresses).sorted()
        if !leaked.isEmpty {
            add("ipam", "\(leaked.count) address(es) held in IPAM by no pod of this node: \(leaked.prefix(5).map(\.description).joined(separator: ", "))\(leaked.count > 5 ? ", …" : "")",
                "the runtime's CNI GC frees them (at its start), or remove the files from the IPAM data directory (ipam.dataDir/weft/ADDRESS)")
        }
        let unheld = want.podAddresses.subtracting(o.ipamHeld).sorted()
        if !unheld.isEmpty && !o.ipamHeld.isEmpty {
            warn("ipam", "\(unheld.count) pod address(es) are not recorded in IPAM (\(unheld.prefix(3).map(\.description).joined(separator: ", "))): another pod may be given them",
                "recreate those pods")
        }

        // Conntrack.
        if let c = o.conntrackCount, let m = o.conntrackMax, m > 0, Double(c) >= 0.9 * Double(m) {
            add("conntrack", "the conntrack table is \(Int(Double(c) / Double(m) * 100)) % full (\(c) of \(m)): new connections will be dropped",
                "raise net.netfilter.nf_conntrack_max, or find the client opening connections without end")
        }

        // Drift between what the agent's dataplane means to hold and what the kernel holds.
        if let why = o.dataplaneUnreadable {
            warn("drift", "the agent's dataplane could not be compared with the kernel: \(why)", "look at the agent's log; `weft doctor` again once it answers")
        }
        for d in o.dataplaneDrift ?? [] {
            if d.missing {
                add("drift", "\(d.object) is missing from the kernel", "restart the agent (it writes the whole dataplane at start)")
            } else {
                add("drift", "\(d.object) differs from what the agent means to hold: \(d.differences.prefix(4).joined(separator: "; "))\(d.differences.count > 4 ? "; …" : "") (changed by hand, or a write failed)",
                    "the agent rewrites it at its next full resync (every 5 minutes) or restart; run `weft doctor` again in a few seconds to rule out a change in flight")
            }
        }
        return out
    }

    /// MTU: pods must not send more than the host network carries, less the backend's
    /// encapsulation over the host address's family; the mode's device must carry what pods send.
    static func mtuFindings(_ o: NodeObservation, _ want: NodeExpectation) -> [Finding] {
        var out: [Finding] = []
        let n = o.node
        func add(_ msg: String, _ fix: String, _ severity: Finding.Severity = .problem) {
            out.append(Finding(node: n, check: "mtu", severity: severity, message: msg, fix: fix))
        }
        if let uplink = o.uplinkMTU {
            let fits = want.backend.podMTU(uplinkMTU: uplink, hostFamily: want.hostFamily)
            let carries = "\(o.uplink) carries \(uplink)\(fits == uplink ? "" : "\(want.backend.overheadText(hostFamily: want.hostFamily)) = \(fits)")"
            if let conf = o.configuredPodMTU, conf > fits {
                add("pods are given MTU \(conf) but \(carries): full-size packets are dropped (TCP stalls after the handshake, small pings work)",
                    "give \(o.uplink) its MTU back, or restart the agent (it writes the CNI config from the uplink's MTU) and recreate the pods")
            }
            let tooBig = o.podInterfaceMTUs.filter { $0.value > fits }.keys.sorted()
            if !tooBig.isEmpty {
                add("\(tooBig.count) pod interface(s) have an MTU above \(fits) (\(tooBig.prefix(3).joined(separator: ", "))\(tooBig.count > 3 ? ", …" : "")): their large packets are dropped on the way out",
                    "recreate those pods (or set their MTU to \(fits) on both veth ends)")
            }
            if let name = want.backend.deviceName, let dev = o.linkMTUs?[name] {
                if dev > fits {
                    add("\(name) has MTU \(dev) but \(carries): full-size packets between nodes are dropped once encapsulated",
                        "restart the agent (it sets \(name)'s MTU from the uplink's), or `ip link set \(name) mtu \(fits)`")
                } else if let conf = o.configuredPodMTU, conf > dev {
                    add("pods are given MTU \(conf) but \(name) carries \(dev): full-size packets from pods to other nodes are dropped",
                        "restart the agent (it writes \(name)'s MTU and the CNI config from the uplink's) and recreate the pods")
                }
            }
        }
        if let conf = o.configuredPodMTU, out.isEmpty { // a problem above explains these already
            let odd = o.podInterfaceMTUs.filter { $0.value != conf }.keys.sorted()
            if !odd.isEmpty {
                add("\(odd.count) pod interface(s) differ from the configured MTU \(conf) (\(odd.prefix(3).joined(separator: ", ")))",
                    "pods made before an MTU change keep the old one: recreate them", .warning)
            }
        }
        return out
    }
}
