import WeftCore
import WeftOS

/// ADD: an address from IPAM, a veth pair with one end in the pod, addresses and routes on both
/// sides, masquerade if asked. Every step that changes the kernel registers its undo, so a
/// failure part-way leaves nothing behind (no interface, no allocation).
struct AddCommand {
    let node: NodeSystem
    let env: CNIEnvironment
    let config: NetworkConfig

    func run() throws(CNIError) -> CNIResult {
        let ns = try openPodNamespace(node, env.netns, code: 4)
        let pod = try kernel("open netlink in \(env.netns)") { try ns.control() }
        if try kernel("look up \(env.ifname) in the pod", { try pod.link(named: env.ifname) }) != nil {
            throw .interfaceExists("interface \(env.ifname) already exists in \(env.netns); DEL the earlier attachment first or pick another CNI_IFNAME")
        }
        let mac: [UInt8]? = config.requestedMAC.flatMap(parseMAC)

        // IPAM first: exhaustion and bad requests fail before anything else is touched.
        let ipam = IPAMClient(node: node, env: env, config: config)
        let lease = try ipam.add()
        var undo = Undo()
        undo.push { try? ipam.release() }
        do throws(CNIError) {
            let result = try wire(ns: ns, pod: pod, lease: lease, mac: mac, undo: &undo)
            if config.ipMasq {
                let podRanges = lease.addresses.map(\.address.network)
                // The pod's own subnet is never masqueraded, whatever clusterCIDR says (as the
                // reference bridge plugin does). With br_netfilter, bridged pod-to-pod packets
                // pass this nat hook; a clusterCIDR not covering the subnet (or none, with
                // delegated IPAM) would SNAT them to the gateway and route them via the node.
                var keep = config.noMasqueradeDestinations
                keep += podRanges.filter { r in !keep.contains { $0.prefixLength <= r.prefixLength && $0.contains(r.address) } }
                // Every pod of a node has the same ranges, so the chain is nearly always right
                // already: read it (cheap) and write only when it differs (a transaction is not).
                let want = Masquerade.ruleComments(podRanges: podRanges, clusterRanges: keep)
                try kernel("set up masquerade in nftables table inet \(Masquerade.table)") {
                    let nft = try node.nftables()
                    if try nft.ruleComments(table: Masquerade.table, chain: Masquerade.chain(network: config.name)) != want {
                        try nft.run(Masquerade.ensureScript(network: config.name, podRanges: podRanges, clusterRanges: keep))
                    }
                }
            }
            return result
        } catch {
            undo.run()
            throw error
        }
    }

    private func wire(ns: PodNamespace, pod: NetworkControl, lease: IPAMResult, mac: [UInt8]?, undo: inout Undo) throws(CNIError) -> CNIResult {
        let host = try kernel("open netlink on the node") { try node.hostNetwork() }
        let hostName = hostVethName(containerID: env.containerID, ifname: env.ifname)
        let families = Set(lease.addresses.map(\.address.address.family))

        // A host veth of this name can only be left from an earlier ADD of this attachment that
        // died part-way: replace it.
        if let stale = try kernel("look up \(hostName)", { try host.link(named: hostName) }) {
            try kernel("remove stale \(hostName)") { try host.deleteLink(index: stale.index) }
        }

        var bridge: Link?
        if config.mode == .bridge {
            let b = try ensureBridge(host)
            for a in lease.addresses {
                guard let gw = a.gateway else { continue }
                let gwAddr = IPInterfaceAddress(address: gw, prefixLength: a.address.prefixLength)
                try kernel("add gateway \(gwAddr) to bridge \(config.bridge)") { try host.ensureAddress(gwAddr, index: b.index, noDAD: true) }
            }
            bridge = b
        }

        try kernel("create veth pair \(hostName) / \(env.ifname)") {
            try host.createLink(.veth(name: hostName, mtu: config.mtu, peerName: env.ifname, peerNamespace: ns, peerMAC: mac))
        }
        undo.push { if let l = try? host.link(named: hostName) { try? host.deleteLink(index: l.index) } }
        guard let hostLink = try kernel("look up \(hostName)", { try host.link(named: hostName) }) else {
            throw .kernel("veth \(hostName) vanished right after it was created")
        }
        if families.contains(.v6) {
            // The host end must answer neighbour solicitation at once, not after DAD.
            try kernel("disable DAD on \(hostName)") { try node.ensureSysctl("net/ipv6/conf/\(hostName)/accept_dad", "0") }
        }
        if let bridge {
            try kernel("attach \(hostName) to \(config.bridge)") { try host.setMaster(index: hostLink.index, master: bridge.index) }
            if config.hairpinMode { try kernel("enable hairpin on \(hostName)") { try host.setHairpin(index: hostLink.index, on: true) } }
        }
        try kernel("bring up \(hostName)") { try host.setUp(index: hostLink.index) }

        // Pod side.
        guard let podLink = try kernel("look up \(env.ifname) in the pod", { try pod.link(named: env.ifname) }) else {
            throw .kernel("\(env.ifname) is missing in the pod right after the veth was created")
        }
        if families.contains(.v6) {
            try kernel("disable DAD on \(env.ifname) in the pod") { try ns.setSysctl("net/ipv6/conf/\(env.ifname)/accept_dad", "0") }
        }
        let routed = config.mode == .routed
        var ips: [CNIResult.IPConfig] = []
        for a in lease.addresses {
            let addr = routed ? IPInterfaceAddress(address: a.address.address, prefixLength: a.address.address.family.bitWidth) : a.address
            try kernel("add \(addr) to \(env.ifname) in the pod") { try pod.ensureAddress(addr, index: podLink.index, noDAD: true) }
            let gw = routed ? routedGateway(a.address.address.family) : a.gateway
            ips.append(.init(address: addr, gateway: gw, interface: routed ? 1 : 2))
        }
        try kernel("bring up \(env.ifname) in the pod") { try pod.setUp(index: podLink.index) }
        if let lo = try? pod.link(named: "lo"), !lo.isUp { try? pod.setUp(index: lo.index) }

        if routed {
            // The pod's gateway is a link-local address the host end stands for; a permanent
            // neighbour entry makes it resolve without ARP/NDP, as Cilium does.
            for fam in families {
                let gw = routedGateway(fam)
                try kernel("add neighbour \(gw) in the pod") { try pod.ensureNeighbor(NeighborEntry(linkIndex: podLink.index, address: gw, mac: hostLink.mac)) }
            }
        }
        var routes: [CNIResult.Route] = []
        let wanted = lease.routes ?? families.sorted { $0 == .v4 && $1 == .v6 }.map { CNIResult.Route(dst: $0 == .v4 ? .defaultV4 : .defaultV6) }
        for r in wanted {
            let gw = r.gw ?? (routed ? routedGateway(r.dst.family) : lease.addresses.first { $0.address.address.family == r.dst.family }?.gateway)
            let entry = RouteEntry(destination: r.dst, gateway: gw, linkIndex: podLink.index, onLink: routed && gw != nil,
                                   table: UInt32(r.table ?? 254), metric: r.priority.map(UInt32.init), mtu: r.mtu, advmss: r.advmss)
            try kernel("add route \(r.dst) in the pod") { try pod.ensureRoute(entry) }
            var reported = r
            reported.gw = gw
            routes.append(reported)
        }

        if routed {
            for a in lease.addresses {
                let dst = IPNetwork(containing: a.address.address, prefixLength: a.address.address.family.bitWidth)
                try kernel("add host route \(dst) via \(hostName)") { try host.ensureRoute(RouteEntry(destination: dst, linkIndex: hostLink.index, scope: .link)) }
            }
        }
        // Pods reach beyond the node only if the node forwards.
        if families.contains(.v4) { try kernel("enable IPv4 forwarding") { try node.ensureSysctl("net/ipv4/ip_forward", "1") } }
        if families.contains(.v6) { try kernel("enable IPv6 forwarding") { try node.ensureSysctl("net/ipv6/conf/all/forwarding", "1") } }

        var interfaces: [CNIResult.Interface] = []
        if let bridge { interfaces.append(.init(name: bridge.name, mac: formatMAC(bridge.mac), mtu: bridge.mtu)) }
        interfaces.append(.init(name: hostName, mac: formatMAC(hostLink.mac), mtu: hostLink.mtu))
        interfaces.append(.init(name: env.ifname, mac: formatMAC(podLink.mac), mtu: podLink.mtu, sandbox: env.netns))
        return CNIResult(interfaces: interfaces, ips: ips, routes: routes, dns: lease.dns)
    }

    private func routedGateway(_ f: IPFamily) -> IPAddress {
        f == .v4 ? NetworkConfig.routedGatewayV4 : NetworkConfig.routedGatewayV6
    }

    /// Creates the node bridge on first use. Parallel ADDs may race to create it; the loser
    /// sees EEXIST and uses the winner's.
    private func ensureBridge(_ host: NetworkControl) throws(CNIError) -> Link {
        let name = config.bridge
        if let b = try kernel("look up bridge \(name)", { try host.link(named: name) }) {
            guard b.kind == "bridge" else {
                throw .invalidConfig("bridge \"\(name)\" names an existing interface that is not a bridge (it is \(b.kind ?? "a device")); choose another bridge name")
            }
            if !b.isUp { try kernel("bring up \(name)") { try host.setUp(index: b.index) } }
            return b
        }
        do {
            try host.createLink(.bridge(name: name, mtu: config.mtu))
            // The bridge's link-local must be usable at once: the node sends neighbour
            // solicitations for pods from it, and DAD would hold them back for 1-2 s.
            try? node.ensureSysctl("net/ipv6/conf/\(name)/accept_dad", "0")
            if let b = try host.link(named: name) {
                // Pin the MAC: an unpinned bridge takes its lowest port's MAC, and pods' cached
                // gateway entries would go stale every time that port comes or goes.
                try host.setMAC(index: b.index, mac: b.mac)
            }
        } catch where error.isExists {
        } catch {
            throw .kernel("create bridge \(name): \(error)")
        }
        guard let b = try kernel("look up bridge \(name)", { try host.link(named: name) }) else { throw .kernel("bridge \(name) vanished after creation") }
        try kernel("bring up \(name)") { try host.setUp(index: b.index) }
        return b
    }
}

/// Undo actions for a multi-step kernel change, run newest first.
struct Undo {
    private var steps: [() -> Void] = []
    mutating func push(_ step: @escaping () -> Void) { steps.append(step) }
    func run() { for s in steps.reversed() { s() } }
}

func openPodNamespace(_ node: NodeSystem, _ path: String, code: Int) throws(CNIError) -> PodNamespace {
    do { return try node.openNamespace(path) } catch {
        throw CNIError(code: code, msg: "CNI_NETNS \(path): \(error)")
    }
}
