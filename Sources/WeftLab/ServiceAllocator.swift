import WeftCore
import WeftOS

/// What the API server does for a Service on create: checks it, gives it a ClusterIP from the
/// service range and a node port per port for NodePort/LoadBalancer types. Each address and
/// node port is claimed by creating its key in the datastore (compare-and-swap), so two
/// clients never hand out the same one.
struct ServiceAllocator {
    let store: any Datastore
    /// Set: a dry run (what `weft apply` checks before it writes): claims are tried against the
    /// datastore and the file's earlier services, and kept here instead of written.
    var dryRun: Reservations?

    init(store: any Datastore, dryRun: Reservations? = nil) { self.store = store; self.dryRun = dryRun }

    /// Keys a dry run has claimed (key -> owner), so two services of one file asking for the same
    /// address or port are caught before either is stored.
    actor Reservations {
        var owners: [String: String] = [:]
        func owner(of key: String) -> String? { owners[key] }
        func reserve(_ key: String, for owner: String) { owners[key] = owner }
        func release(_ keys: [String]) { for k in keys { owners[k] = nil } }
        func keys(under prefix: String) -> [String] { owners.keys.filter { $0.hasPrefix(prefix) } }
    }

    static let ipKeys = "/weft/serviceips/"
    static let nodePortKeys = "/weft/nodeports/"
    static let loadBalancerIPKeys = "/weft/loadbalancerips/"
    /// The cluster's service ranges (IPv4 as kube-apiserver's default).
    static let serviceCIDR = IPNetwork("10.96.0.0/16")!
    static let serviceCIDR6 = IPNetwork("fd00:96::/112")!
    static func range(_ f: IPFamily) -> IPNetwork { f == .v4 ? serviceCIDR : serviceCIDR6 }

    /// Returns the object to store: spec.clusterIP(s) and nodePorts filled in. `existing` is
    /// the stored version of the same service (an update keeps its allocations).
    func allocate(_ o: KubeObject, existing: KubeObject?) async throws -> KubeObject {
        var svc = try ClusterService(o)
        let owner = "\(svc.namespace)/\(svc.name)"
        let w = "service \(owner)"
        var out = o
        var claimed: [String] = []
        do {
            let old = try existing.map(ClusterService.init)
            if svc.kind != .externalName && !svc.headless {
                if let keep = old?.clusterIPs, !keep.isEmpty {
                    if !svc.clusterIPs.isEmpty && svc.clusterIPs != keep {
                        throw ManifestError("\(w): spec.clusterIP cannot change (it is \(keep.map(\.description).joined(separator: ","))); delete the service and apply it again")
                    }
                    svc.clusterIPs = keep
                } else {
                    // The addresses asked for, then a free one in each other family wanted.
                    for wanted in svc.clusterIPs {
                        guard Self.range(wanted.family).contains(wanted) else {
                            throw ManifestError("\(w): spec.clusterIP \(wanted) is outside the service range \(Self.range(wanted.family)); leave it empty to get one, or pick one inside the range")
                        }
                        guard try await claim(Self.ipKeys + wanted.description, owner: owner) else {
                            throw ManifestError("\(w): spec.clusterIP \(wanted) is already allocated to another service; leave it empty to get a free one")
                        }
                        claimed.append(Self.ipKeys + wanted.description)
                    }
                    for f in svc.families where !svc.clusterIPs.contains(where: { $0.family == f }) {
                        let ip = try await claimFreeIP(in: Self.range(f), owner: owner)
                        claimed.append(Self.ipKeys + ip.description)
                        svc.clusterIPs.append(ip)
                    }
                }
            }
            var ports = o.spec["ports"]?.arrayValue ?? []
            if svc.kind == .nodePort || svc.kind == .loadBalancer {
                for (i, p) in svc.ports.enumerated() {
                    let kept = old?.ports.first { $0.port == p.port && $0.proto == p.proto }?.nodePort
                    var np = p.nodePort ?? kept
                    if let n = np, n != kept {
                        guard try await claim(Self.nodePortKeys + "\(p.proto.lowercased())-\(n)", owner: owner) else {
                            throw ManifestError("\(w): spec.ports[\(i)].nodePort \(n) is already used by another service; leave it out to get a free one")
                        }
                        claimed.append(Self.nodePortKeys + "\(p.proto.lowercased())-\(n)")
                    } else if np == nil {
                        np = try await claimFreeNodePort(proto: p.proto, owner: owner)
                        claimed.append(Self.nodePortKeys + "\(p.proto.lowercased())-\(np!)")
                    }
                    ports[i] = ports[i].setting("nodePort", to: .number(Double(np!)))
                }
            }
            var healthCheckPort: UInt16?
            if svc.kind == .loadBalancer && svc.externalLocal {
                // As the API server: a health-check node port for a Local LoadBalancer.
                let kept = old?.healthCheckNodePort
                if let n = svc.healthCheckNodePort ?? kept {
                    if n != kept {
                        guard try await claim(Self.nodePortKeys + "tcp-\(n)", owner: owner) else {
                            throw ManifestError("\(w): spec.healthCheckNodePort \(n) is already used by another service; leave it out to get a free one")
                        }
                        claimed.append(Self.nodePortKeys + "tcp-\(n)")
                    }
                    healthCheckPort = n
                } else {
                    healthCheckPort = try await claimFreeNodePort(proto: "TCP", owner: owner)
                    claimed.append(Self.nodePortKeys + "tcp-\(healthCheckPort!)")
                }
            }
            var ingress = old?.loadBalancerIPs ?? []
            if svc.kind == .loadBalancer && ingress.isEmpty, let pool = try await loadBalancerPool(), !pool.isEmpty {
                // What a load balancer controller does: an address from the pool, in status.
                let ip = try await claimLoadBalancerIP(svc.requestedLoadBalancerIP, pool: pool, owner: owner, what: w)
                claimed.append(Self.loadBalancerIPKeys + ip.description)
                ingress = [ip]
            }
            if svc.kind == .loadBalancer {
                out.setStatus("loadBalancer", .object([("ingress", .array(ingress.map { .object([("ip", .string($0.description)), ("ipMode", .string("VIP"))]) }))]))
            }
            var spec = out.spec
            spec = spec.setting("healthCheckNodePort", to: healthCheckPort.map { .number(Double($0)) })
            if !svc.clusterIPs.isEmpty {
                spec = spec.setting("clusterIP", to: .string(svc.clusterIPs[0].description))
                    .setting("clusterIPs", to: .array(svc.clusterIPs.map { .string($0.description) }))
                    .setting("ipFamilies", to: .array(svc.clusterIPs.map { .string($0.family == .v4 ? "IPv4" : "IPv6") }))
            }
            spec = spec.setting("ports", to: .array(ports)).setting("type", to: .string(svc.kind.rawValue))
            out.json = out.json.setting("spec", to: spec)
            return out
        } catch {
            if let dryRun { await dryRun.release(claimed) } else {
                for key in claimed { try? await store.delete(key, expectedRevision: nil) }
            }
            throw error
        }
    }

    /// The keys holding a service's addresses and node ports.
    static func allocationKeys(_ o: KubeObject) -> Set<String> {
        guard let svc = try? ClusterService(o) else { return [] }
        var keys = Set(svc.clusterIPs.map { ipKeys + $0.description })
        for p in svc.ports { if let n = p.nodePort { keys.insert(nodePortKeys + "\(p.proto.lowercased())-\(n)") } }
        if let n = svc.healthCheckNodePort { keys.insert(nodePortKeys + "tcp-\(n)") }
        for ip in svc.loadBalancerIPs { keys.insert(loadBalancerIPKeys + ip.description) }
        return keys
    }

    /// Gives back a deleted service's address and node ports; with `keeping`, only those the
    /// earlier version did not hold (an update taken back).
    func release(_ o: KubeObject, keeping before: KubeObject? = nil) async throws {
        let kept = before.map(Self.allocationKeys) ?? []
        for key in Self.allocationKeys(o).subtracting(kept).sorted() { try await store.delete(key, expectedRevision: nil) }
    }

    /// The cluster's load balancer ranges (the agents' --load-balancer-cidr); nil before any
    /// agent has written the cluster configuration.
    private func loadBalancerPool() async throws -> [IPNetwork]? {
        guard let kv = try await store.get(Keys.clusterConfig), let c = ClusterConfig(json: try JSONValue.parse(kv.value)) else { return nil }
        return c.loadBalancerCIDRs
    }

    /// `requested` if it is in the pool and free, else the first free address of the pool
    /// (network and broadcast addresses left out).
    private func claimLoadBalancerIP(_ requested: IPAddress?, pool: [IPNetwork], owner: String, what w: String) async throws -> IPAddress {
        if let r = requested {
            guard pool.contains(where: { $0.contains(r) }) else {
                throw ManifestError("\(w): spec.loadBalancerIP \(r) is outside the load balancer ranges \(pool.map(\.description).joined(separator: ",")); leave it out to get one")
            }
            guard try await claim(Self.loadBalancerIPKeys + r.description, owner: owner) else {
                throw ManifestError("\(w): spec.loadBalancerIP \(r) is already used by another service; leave it out to get a free one")
            }
            return r
        }
        let taken = try await takenNames(under: Self.loadBalancerIPKeys)
        for range in pool {
            var candidate: IPAddress? = range.prefixLength >= range.family.bitWidth - 1 ? range.first : range.first.advanced(by: 1)
            while let ip = candidate, range.contains(ip) {
                if ip == range.last && range.family == .v4 && range.prefixLength < 31 { break }
                if !taken.contains(ip.description), try await claim(Self.loadBalancerIPKeys + ip.description, owner: owner) { return ip }
                candidate = ip.advanced(by: 1)
            }
        }
        throw ManifestError("\(w): the load balancer ranges \(pool.map(\.description).joined(separator: ",")) have no free address left; delete unused LoadBalancer services or widen --load-balancer-cidr")
    }

    /// What is held under `prefix` (the part after it), also by this dry run's reservations.
    private func takenNames(under prefix: String) async throws -> Set<String> {
        var keys = try await store.list(prefix: prefix).items.map(\.key)
        if let dryRun { keys += await dryRun.keys(under: prefix) }
        return Set(keys.map { String($0.dropFirst(prefix.count)) })
    }

    private func claim(_ key: String, owner: String) async throws -> Bool {
        if let dryRun {
            if let holder = await dryRun.owner(of: key) { return holder == owner }
            if let kv = try await store.get(key), String(decoding: kv.value, as: UTF8.self) != owner { return false }
            await dryRun.reserve(key, for: owner)
            return true
        }
        do {
            try await store.create(key, value: Array(owner.utf8))
            return true
        } catch DatastoreError.conflict {
            return try await store.get(key).map { String(decoding: $0.value, as: UTF8.self) == owner } ?? false
        }
    }

    /// The lowest free address from .16 on (the first ones are left for well-known services,
    /// as Kubernetes keeps .1 for the API and .10 for DNS).
    private func claimFreeIP(in range: IPNetwork, owner: String) async throws -> IPAddress {
        let taken = try await takenNames(under: Self.ipKeys)
        var candidate = range.first.advanced(by: 16)
        while let ip = candidate, range.contains(ip), ip != range.last {
            if !taken.contains(ip.description), try await claim(Self.ipKeys + ip.description, owner: owner) { return ip }
            candidate = ip.advanced(by: 1)
        }
        throw ManifestError("service \(owner): the service range \(range) has no free address left; delete unused services")
    }

    private func claimFreeNodePort(proto: String, owner: String) async throws -> UInt16 {
        let taken = try await takenNames(under: Self.nodePortKeys)
        for n in ClusterService.nodePortRange where !taken.contains("\(proto.lowercased())-\(n)") {
            if try await claim(Self.nodePortKeys + "\(proto.lowercased())-\(n)", owner: owner) { return UInt16(n) }
        }
        throw ManifestError("service \(owner): no free node port left in \(ClusterService.nodePortRange.lowerBound)-\(ClusterService.nodePortRange.upperBound)")
    }
}
