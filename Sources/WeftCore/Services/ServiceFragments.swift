extension ServiceRules {
    /// What one service puts in the tables: its chains and sets in its shard, its elements of
    /// the shard's maps and of the front table's no-endpoint maps.
    static func fragment(_ e: Entry, node: String?) -> NFT.Ruleset {
        var f = FragmentBuilder(shard: table(forKey: e.key), service: e.service)
        let svc = e.service
        guard !svc.headless, svc.kind != .externalName else { return f.ruleset }
        for p in svc.ports {
            // Per family the service has an address in (a DNAT cannot change the family): the
            // chain traffic from outside takes for a node port.
            var external: [(IPFamily, String)] = []
            for family in [IPFamily.v4, .v6] {
                if let chain = f.addPort(p, family: family, endpoints: e.endpoints, node: node) { external.append((family, chain)) }
            }
            guard let np = p.nodePort else { continue }
            let key = NFT.Key.protoPort(l4(p), np)
            if external.isEmpty {
                f.front(noEndpointNodePorts, key, .goto(rejectChain))
            } else {
                let nc = "\(chainName(svc, p))/nodeport"
                f.chains[nc] = external.map { NFT.Rule(.family($0.0), .verdict(.goto($0.1))) } + [NFT.Rule(.verdict(.goto(rejectChain)))]
                f.element(serviceNodePorts, key, .goto(nc))
            }
        }
        return f.ruleset
    }

    /// The endpoints traffic goes to (see `ServiceEndpoint.takingTraffic`).
    static func usable(_ endpoints: [(ServiceEndpoint, UInt16)]) -> [(ServiceEndpoint, UInt16)] {
        ServiceEndpoint.takingTraffic(endpoints) { $0.0 }
    }

    /// One service's fragment as it is built.
    struct FragmentBuilder {
        let shard: String
        let service: ClusterService
        var chains: [String: [NFT.Rule]] = [:]
        var sets: [String: NFT.NamedSet] = [:]
        var elements: [String: [NFT.Key: NFT.Verdict?]] = [:]
        var frontElements: [String: [NFT.Key: NFT.Verdict?]] = [:]

        init(shard: String, service: ClusterService) { self.shard = shard; self.service = service }

        mutating func element(_ map: String, _ key: NFT.Key, _ v: NFT.Verdict) { elements[map, default: [:]][key] = .some(v) }
        mutating func front(_ map: String, _ key: NFT.Key, _ v: NFT.Verdict) { frontElements[map, default: [:]][key] = .some(v) }

        var ruleset: NFT.Ruleset {
            var shardTable = NFT.Table()
            shardTable.chains = chains.mapValues { NFT.Chain(rules: $0) }
            shardTable.sets = sets
            shardTable.elements = elements
            var r = NFT.Ruleset()
            if !shardTable.isEmpty { r.tables[shard] = shardTable }
            if !frontElements.isEmpty {
                var front = NFT.Table()
                front.elements = frontElements
                r.tables[frontTable] = front
            }
            return r
        }

        /// One port in one family: the chains inside and outside traffic take and the service
        /// maps' elements; returns the chain a node port's traffic of that family takes (nil:
        /// the family has nothing for it).
        mutating func addPort(_ p: ClusterService.Port, family: IPFamily, endpoints: [ServiceEndpoint], node: String?) -> String? {
            let svc = service
            let vips = svc.clusterIPs.filter { $0.family == family }
            // External IPs and load balancer addresses: traffic from outside.
            let extIPs = (svc.externalIPs + svc.loadBalancerIPs).filter { $0.family == family }
            guard !vips.isEmpty || !extIPs.isEmpty || p.nodePort != nil else { return nil }
            let base = chainName(svc, p) + (family == .v6 ? "/v6" : "")
            let candidates = endpoints.filter { $0.address.family == family }.compactMap { ep in ep.port(for: p).map { (ep, $0) } }
            let ready = usable(candidates)
            let proto = l4(p)
            if ready.isEmpty {
                for ip in vips + extIPs { front(noEndpointServices(family), .addressProtoPort(ip, proto, p.port), .goto(rejectChain)) }
                return nil
            }
            let local = usable(candidates.filter { $0.0.nodeName != nil && $0.0.nodeName == node })
            let all = picker(base, p, family, ready)!
            let inside = svc.internalLocal ? picker(base + "/local", p, family, local) : all
            let outside: String?
            if p.nodePort == nil && extIPs.isEmpty {
                outside = nil   // no traffic from outside
            } else if svc.externalLocal {
                outside = picker(base + "/local", p, family, local)
            } else {
                // Traffic from outside comes back through this node only if masqueraded.
                chains[base + "/external"] = [NFT.Rule(.verdict(.jump(markForMasquerade))), NFT.Rule(.verdict(.goto(all)))]
                outside = base + "/external"
            }
            for ip in vips { element(serviceIPs(family), .addressProtoPort(ip, proto, p.port), inside.map { .goto($0) } ?? .drop) }
            for ip in extIPs { element(serviceIPs(family), .addressProtoPort(ip, proto, p.port), outside.map { .goto($0) } ?? .drop) }
            return p.nodePort == nil ? nil : (outside ?? dropChain)
        }

        /// A chain choosing at random among `backends` (session affinity first); nil when there
        /// is none, and then the traffic is dropped, as Kubernetes does for a Local policy
        /// without a local endpoint.
        mutating func picker(_ name: String, _ p: ClusterService.Port, _ family: IPFamily, _ backends: [(ServiceEndpoint, UInt16)]) -> String? {
            guard !backends.isEmpty else { return nil }
            var sticky: [NFT.Rule] = []
            let map = "\(name)/pick"
            sets[map] = NFT.NamedSet(key: .random, isMap: true)
            for (i, (ep, port)) in backends.enumerated() {
                let ec = endpoint(p, ep, port)
                if let t = service.affinityTimeout { sticky.append(NFT.Rule(.addressIn(.source, family, set: affinitySet(ec, t)), .verdict(.goto(ec)))) }
                element(map, .index(i), .goto(ec))
            }
            chains[name] = sticky + [NFT.Rule(.lookup(.random(modulus: backends.count), map: map))]
            return name
        }

        /// The set of clients an endpoint has under session affinity. The timeout is in the name:
        /// a set cannot be redefined in place on every kernel (before 6.5 the new timeout is
        /// ignored), so a new timeout makes a new set.
        func affinitySet(_ endpointChain: String, _ timeout: Int) -> String { "\(endpointChain)/affinity/\(timeout)" }

        /// The chain that DNATs to one endpoint (and remembers its clients under session affinity).
        mutating func endpoint(_ p: ClusterService.Port, _ ep: ServiceEndpoint, _ port: UInt16) -> String {
            let ec = endpointChain(service, p, ep, port)
            // Hairpin: the mark is set inline, not by a jump: the kernel walks every jump of a
            // table at each commit, and there is one such rule per endpoint.
            var rules = [NFT.Rule(.address(.source, ep.address), .setMarkBits(masqMarkBit))]
            if let timeout = service.affinityTimeout {
                // Session affinity as kube-proxy does it: each endpoint remembers its clients for
                // the timeout; a remembered client goes straight back (see `picker`).
                let set = affinitySet(ec, timeout)
                sets[set] = NFT.NamedSet(key: .address(ep.address.family), timeout: timeout)
                rules.append(NFT.Rule(.addSourceTo(set: set, ep.address.family)))
            }
            rules.append(NFT.Rule(.l4proto(l4(p)), .dnat(ep.address, port: port)))
            chains[ec] = rules
            return ec
        }
    }
}
