import Logging
import ServiceLifecycle
import WeftCore
import WeftOS
#if canImport(Glibc)
import Glibc
#endif

public struct AgentConfig: Sendable {
    public var nodeName: String
    /// The node's address on the host network; nil: the first global address of `uplink`.
    public var hostIP: IPAddress?
    public var uplink: String
    /// What this agent proposes if the cluster has no configuration yet; otherwise it must match.
    public var cluster: ClusterConfig
    public var cniConfDir: String
    public var ipamDataDir: String
    public var leaseTTL: Int64
    public var resyncSeconds: Double
    /// The port of the node's cluster DNS resolver on its host address; nil: no DNS.
    public var dnsPort: Int? = 53
    public var clusterDomain = "cluster.local"
    /// Where names outside the cluster domain are forwarded; none: refused.
    public var dnsUpstreams: [DNSUpstream] = []
    /// The agent's HTTP endpoint (/metrics, /flows) on every address of the node; nil: none.
    public var metricsPort: Int? = 9464
    /// Where the CNI plugin records each invocation for the metrics (it is named in the CNI config).
    public var cniEventLog: String { ipamDataDir + "/weft-cni-events.log" }

    public init(nodeName: String, hostIP: IPAddress?, uplink: String, cluster: ClusterConfig, cniConfDir: String,
                ipamDataDir: String = NetworkConfig.defaultDataDir, leaseTTL: Int64 = 10, resyncSeconds: Double = 5) {
        self.nodeName = nodeName; self.hostIP = hostIP; self.uplink = uplink; self.cluster = cluster; self.cniConfDir = cniConfDir
        self.ipamDataDir = ipamDataDir; self.leaseTTL = leaseTTL; self.resyncSeconds = resyncSeconds
    }
}

public struct AgentError: Error, CustomStringConvertible {
    public var description: String
    public init(_ d: String) { description = d }
}

/// The node agent: registers the node, claims its pod ranges, writes the CNI config (so the
/// plugin never needs the agent on the ADD path), keeps its lease alive, and keeps the routes
/// to every live peer programmed. Flow is one way: datastore -> desired state -> kernel.
public final class NodeAgent: Service, @unchecked Sendable {
    let config: AgentConfig
    let store: any Datastore
    let net: NetworkControl
    /// A netlink socket of the services loop's own (load balancer addresses), so it never
    /// interleaves with the route reconciler's requests.
    let servicesNet: NetworkControl
    let logger: Logger
    /// The one copy of the cluster every loop reads.
    let cache: ClusterCache
    let metrics: AgentMetrics
    let flows: FlowRecorder
    /// Writes a sysctl of the node (only when it differs); replaced in tests without root.
    var ensureSysctl: (String, String) throws -> Void = { key, value in try Sysctl.ensure(key, value) }
    /// Where services and policy are programmed, and what trace, doctor and metrics read.
    let dataplane: any Dataplane

    /// - dataplane: nil: nftables in the agent's network namespace.
    public init(config: AgentConfig, store: any Datastore, net: NetworkControl, servicesNet: NetworkControl, logger: Logger, dataplane: (any Dataplane)? = nil) {
        self.config = config; self.store = store; self.net = net; self.servicesNet = servicesNet; self.logger = logger
        flows = FlowRecorder(node: config.nodeName)
        let metrics = AgentMetrics()
        self.metrics = metrics
        cache = ClusterCache(store: store, logger: logger, metrics: metrics)
        self.dataplane = dataplane ?? NFTablesDataplane(node: config.nodeName, logger: logger)
    }

    /// Runs until the caller's service group shuts down gracefully (SIGTERM/SIGINT: the
    /// kernel state stays, so pods keep their traffic across an agent restart) or until
    /// something it cannot recover from. The loops run as services of a group of their own,
    /// which follows the caller's graceful shutdown and traps no signal itself.
    public func run() async throws {
        let loops: [ServiceGroupConfiguration.ServiceConfiguration]
        do {
            loops = try await cancelWhenGracefulShutdown { try await self.start() }
        } catch is CancellationError {
            logger.info("shut down while starting", metadata: ["node": "\(config.nodeName)"])
            return
        }
        try await ServiceGroup(configuration: .init(services: loops, logger: logger)).run()
        // Leave the kernel as it is: routes keep flows alive across an agent restart, and
        // peers withdraw theirs when this node's lease runs out.
        logger.info("shut down; routes stay until the lease expires", metadata: ["node": "\(config.nodeName)"])
    }

    /// Registers the node and prepares it, then returns its loops, in start order (a graceful
    /// shutdown stops them in reverse: the cache last). Essential loops end the agent when they
    /// end; best-effort ones (DNS, flows, metrics, the heartbeat) are logged and left.
    func start() async throws -> [ServiceGroupConfiguration.ServiceConfiguration] {
        let cluster = try await agreeOnClusterConfig()
        let hostIP = try config.hostIP ?? detectHostIP(loadBalancerRanges: cluster.loadBalancerCIDRs)
        if let hostNetwork = try hostNetwork(of: hostIP) { try cluster.check(hostNetwork: hostNetwork, uplink: config.uplink) }
        let vtepMAC = try routing(cluster).ensureDevice(hostIP: hostIP)

        var lease = try await claimNodeName(hostIP: hostIP)
        let ranges = try await claimPodRanges(cluster: cluster)
        // Renew before the keepalive loop starts: claiming ranges on a busy datastore can take
        // longer than a short TTL; if it did, register again rather than give up.
        do { try await store.keepAlive(lease: lease) } catch DatastoreError.leaseNotFound {
            logger.warning("the lease expired while claiming pod ranges; registering again", metadata: ["node": "\(config.nodeName)"])
            lease = try await claimNodeName(hostIP: hostIP)
        }
        let heldLease = lease
        let me = NodeInfo(name: config.nodeName, hostIP: hostIP, podCIDRs: ranges, vtepMAC: vtepMAC)
        try await publish(me)
        try prepareNode(cluster: cluster, ranges: ranges)
        try writeCNIConfig(cluster: cluster, ranges: ranges, hostIP: hostIP)
        let domain = try DNSName(config.clusterDomain)
        let dns = try await bindDNS(hostIP: hostIP, domain: domain)
        logger.info("node registered", metadata: ["node": "\(config.nodeName)", "hostIP": "\(hostIP)", "podCIDRs": "\(ranges.map(\.description))", "mode": "\(cluster.mode.rawValue)"])
        let podRanges = try ipRanges(cluster: cluster, ranges: ranges)
        let metricsServer = await serveMetrics()

        let addresses = cluster.loadBalancerCIDRs.isEmpty ? nil
            : LoadBalancerAddresses(net: servicesNet, uplink: config.uplink, ranges: cluster.loadBalancerCIDRs, logger: logger)
        let services = ServiceProxy(cache: cache, logger: logger, node: config.nodeName, addresses: addresses, healthChecks: HealthCheckServer(logger: logger),
                                    dns: dns, clusterDomain: domain, dataplane: dataplane, metrics: metrics, flows: flows)
        let policy = PolicyEnforcer(cache: cache, logger: logger, node: config.nodeName, dataplane: dataplane, metrics: metrics, flows: flows)
        let slices = EndpointSliceController(store: store, cache: cache, logger: logger, node: config.nodeName, leaseTTL: config.leaseTTL)
        func loop(_ name: String, restartAfter: Duration? = nil, _ body: @escaping @Sendable () async throws -> Void) -> AgentLoop {
            AgentLoop(name, restartAfter: restartAfter, logger: logger, body)
        }
        var loops = [
            loop("cluster cache") { try await self.cache.run() }.essential(),
            loop("lease keepalive") { try await self.keepAlive(lease: heldLease, hostIP: hostIP) }.essential(),
            loop("routes") { try await self.routeLoop(backend: cluster.backend) }.essential(),
            loop("services") { try await services.run() }.essential(),
            loop("policy") { try await policy.run() }.essential(),
            loop("EndpointSlice controller") { try await slices.run() }.essential(),
            loop("heartbeat", restartAfter: .seconds(1)) { try await self.heartbeat(lease: heldLease) }.bestEffort(),
            loop("flows") { await self.flows.followConntrack(logger: self.logger) }.bestEffort(),
            loop("metrics collection") { await self.collectMetrics(ranges: podRanges) }.bestEffort(),
        ]
        if let dns {
            let nodeDNS = NodeDNS(store: store, logger: logger, node: config.nodeName, hostIP: hostIP, server: dns, leaseTTL: config.leaseTTL)
            // Restarted: its lease keeps this node's kube-dns endpoint, and pods here ask only it.
            loops.append(loop("cluster DNS", restartAfter: .seconds(1)) { try await nodeDNS.run() }.bestEffort())
        }
        if let server = metricsServer {
            loops.append(loop("metrics server") {
                try await withTaskCancellationHandler { try await server.channel.closeFuture.get() } onCancel: { Task { await server.close() } }
            }.bestEffort())
        }
        return loops
    }

    /// The agent's HTTP endpoint; a port that cannot be bound is logged, not a stop.
    func serveMetrics() async -> AgentHTTPServer? {
        guard let port = config.metricsPort else { return nil }
        do {
            return try await AgentHTTPServer.bind(host: "0.0.0.0", port: port) { [metrics, flows, dataplane] req in
                if req.path == "/dataplane" || req.path.hasPrefix("/dataplane/") { return DataplaneEndpoint.respond(dataplane, req) }
                switch req.path {
                case "/metrics": return .init(contentType: "text/plain; version=0.0.4; charset=utf-8", body: metrics.text())
                case "/flows":
                    // Who talked to whom is not for every pod to read: the node itself only
                    // (`weft observe` connects from inside the node).
                    guard req.fromLoopback else {
                        return .init(status: .forbidden, body: Array("flows are served to this node's loopback only; run weft observe where it can enter the node\n".utf8))
                    }
                    // Flows after the `since` sequence number the client saw last (0: all kept).
                    let (list, next) = flows.flows(after: UInt64(req.query["since"] ?? "0") ?? 0)
                    let body = JSONValue.object([("next", .number(Double(next))), ("flows", .array(list.map(\.json)))]).serialized()
                    return .init(contentType: "application/json", body: Array(body.utf8))
                case "/healthz": return .init(body: Array("ok\n".utf8))
                default: return .init(status: .notFound, body: Array("not found; try /metrics, /flows, /dataplane or /healthz\n".utf8))
                }
            }
        } catch {
            logger.error("cannot serve metrics; everything else goes on", metadata: ["port": "\(port)", "error": "\(error)"])
            return nil
        }
    }

    // MARK: cluster configuration

    /// The node's resolver on its host address, empty until the services loop gives it a zone.
    /// A port that cannot be bound is an error in the log, not a stop: routes and services go on.
    func bindDNS(hostIP: IPAddress, domain: DNSName) async throws -> DNSServer? {
        guard let port = config.dnsPort else { return nil }
        do {
            return try await DNSServer.bind(host: hostIP.description, port: port, zone: ClusterDNS(domain: domain, entries: []), upstreams: config.dnsUpstreams)
        } catch {
            logger.error("cannot serve cluster DNS; pods on this node will not resolve service names until the agent restarts with the port free (or another --dns-port)",
                         metadata: ["address": "\(hostIP):\(port)", "error": "\(error)"])
            return nil
        }
    }

    func agreeOnClusterConfig() async throws -> ClusterConfig {
        try config.cluster.validate()
        if let kv = try await store.get(Keys.clusterConfig) {
            guard let existing = ClusterConfig(json: try JSONValue.parse(kv.value)) else {
                throw AgentError("the cluster configuration at \(Keys.clusterConfig) is unreadable")
            }
            // Load balancer ranges are the cluster's: an agent that names none takes them.
            var asked = config.cluster
            if asked.loadBalancerCIDRs.isEmpty { asked.loadBalancerCIDRs = existing.loadBalancerCIDRs }
            guard existing == asked else {
                throw AgentError("this agent asks for \(describe(config.cluster)) but the cluster runs \(describe(existing)); start it with the cluster's settings")
            }
            return existing
        }
        do {
            try await store.create(Keys.clusterConfig, value: Array(config.cluster.json.serialized().utf8))
            return config.cluster
        } catch DatastoreError.conflict {
            return try await agreeOnClusterConfig() // another agent wrote it first
        }
    }

    private func describe(_ c: ClusterConfig) -> String {
        "mode \(c.mode.rawValue), ranges \(c.clusterCIDRs.map(\.description).joined(separator: ",")), blocks /\(c.blockPrefixV4) and /\(c.blockPrefixV6)"
            + (c.loadBalancerCIDRs.isEmpty ? "" : ", load balancer ranges \(c.loadBalancerCIDRs.map(\.description).joined(separator: ","))")
    }

    // MARK: registration

    /// The node's liveness key, bound to its lease. If the key is live and was written from
    /// this node's own address, it is this agent's previous run: adopt its lease, so peers never
    /// see the node leave during a restart. Held from another address, it is another agent
    /// under the same name: refuse rather than fight over routes.
    func claimNodeName(hostIP: IPAddress) async throws -> Int64 {
        let key = Keys.nodeLease(config.nodeName)
        while true {
            if let kv = try await store.get(key) {
                let j = try? JSONValue.parse(kv.value)
                let holder = j?["holder"]?.stringValue ?? "?"
                guard holder == hostIP.description else {
                    throw AgentError("node name \(config.nodeName) is already registered by a running agent at \(holder); pick another --node name or stop that agent")
                }
                if (try? await store.keepAlive(lease: kv.lease)) != nil {
                    logger.info("adopted the lease of this node's previous agent")
                    return kv.lease
                }
                try? await store.delete(key, expectedRevision: kv.modRevision)
                continue
            }
            let lease = try await store.grantLease(ttlSeconds: config.leaseTTL)
            let value = Array(JSONValue.object([("holder", .string(hostIP.description))]).serialized().utf8)
            do {
                try await store.create(key, value: value, lease: lease)
                return lease
            } catch DatastoreError.conflict {
                try? await store.revokeLease(lease)
            }
        }
    }

    /// Reuses the ranges this node already holds (a restarted agent keeps its pods' addresses),
    /// otherwise claims the first free block of each cluster range by compare-and-swap.
    func claimPodRanges(cluster: ClusterConfig) async throws -> [IPNetwork] {
        var mine: [IPNetwork] = []
        for cidr in cluster.clusterCIDRs {
            let (items, _) = try await store.list(prefix: Keys.podRanges)
            var taken = Set<IPNetwork>()
            var held: IPNetwork?
            for kv in items {
                guard let j = try? JSONValue.parse(kv.value), let c = j["cidr"]?.stringValue.flatMap(IPNetwork.init), c.family == cidr.family else { continue }
                taken.insert(c)
                if j["node"]?.stringValue == config.nodeName, cidr.contains(c.address) { held = c }
            }
            if let held { mine.append(held); continue }
            var claimed: IPNetwork?
            // Each node starts its search at its own place among the first free blocks, so nodes
            // that join together do not all race for the same block.
            let free = Array(freeBlocks(of: cidr, prefix: cluster.blockPrefix(cidr.family), taken: taken).prefix(256))
            let start = free.isEmpty ? 0 : Int(fnv1a64(config.nodeName) % UInt64(free.count))
            for block in free[start...] + free[..<start] {
                let value = Array(JSONValue.object([("cidr", .string(block.description)), ("node", .string(config.nodeName))]).serialized().utf8)
                do {
                    try await store.create(Keys.podRange(block), value: value)
                    claimed = block
                    break
                } catch DatastoreError.conflict { continue } // another node took it meanwhile
            }
            guard let claimed else {
                throw AgentError("cluster range \(cidr) has no free /\(cluster.blockPrefix(cidr.family)) block left for node \(config.nodeName) (\(taken.count) blocks are held); widen the range, use smaller blocks, or delete departed nodes")
            }
            mine.append(claimed)
        }
        return mine
    }

    func publish(_ me: NodeInfo) async throws {
        let key = Keys.node(config.nodeName)
        while true {
            if let kv = try await store.get(key) {
                var o = try KubeObject(bytes: kv.value)
                let fresh = me.object
                o.json = o.json.setting("spec", to: fresh.spec).setting("status", to: fresh.status)
                o.annotations = o.annotations.merging(fresh.annotations) { $1 }
                o.labels = o.labels.merging(fresh.labels) { $1 }
                do { try await store.update(key, value: o.bytes, expectedRevision: kv.modRevision); return } catch DatastoreError.conflict { continue }
            }
            do { try await store.create(key, value: me.object.bytes); return } catch DatastoreError.conflict { continue }
        }
    }

    // MARK: the node's own dataplane

    func detectHostIP(loadBalancerRanges: [IPNetwork]) throws -> IPAddress {
        guard let link = try net.link(named: config.uplink) else {
            throw AgentError("uplink \(config.uplink) does not exist on this node; pass --uplink with the host network interface")
        }
        // Not a load balancer address this node announced before a restart.
        let announced = { (a: IPInterfaceAddress) in
            a.prefixLength == a.address.family.bitWidth && loadBalancerRanges.contains { $0.contains(a.address) }
        }
        guard let a = try net.addresses().first(where: { $0.linkIndex == link.index && !$0.address.address.isLinkLocal && !announced($0.address) })?.address.address else {
            throw AgentError("uplink \(config.uplink) has no address; give it one or pass --host-ip")
        }
        return a
    }

    /// The subnet of the host address on this node, if the node carries it.
    func hostNetwork(of hostIP: IPAddress) throws -> IPNetwork? {
        try net.addresses().first { $0.address.address == hostIP }.map { $0.address.network }
    }

    /// The cluster's routing backend, carried out on this node's netlink and sysctls.
    func routing(_ cluster: ClusterConfig) -> RoutingSetup {
        RoutingSetup(backend: cluster.backend, net: net, uplink: config.uplink, ensureSysctl: ensureSysctl)
    }

    func prepareNode(cluster: ClusterConfig, ranges: [IPNetwork]) throws {
        try ensureSysctl("net/ipv4/ip_forward", "1")
        if ranges.contains(where: { $0.family == .v6 }) { try ensureSysctl("net/ipv6/conf/all/forwarding", "1") }
        // Flow records carry packet and byte counts (conntrack accounting); best effort.
        try? ensureSysctl("net/netfilter/nf_conntrack_acct", "1")
        try routing(cluster).ensureNode(blocks: ranges)
    }

    /// The IPAM ranges of the node's pod ranges, as the CNI config gives them to the plugin.
    func ipRanges(cluster: ClusterConfig, ranges: [IPNetwork]) throws -> [IPRange] {
        let backend = cluster.backend
        return try ranges.map { r in try IPRange(subnet: r, rangeStart: backend.podRangeStart(of: r)) }
    }

    /// The conflist the container runtime reads. Written atomically; rewritten only if changed.
    /// The pod MTU is the backend's for the uplink and the host address's family.
    func writeCNIConfig(cluster: ClusterConfig, ranges: [IPNetwork], hostIP: IPAddress) throws {
        let mtu = try routing(cluster).podMTU(hostIP: hostIP)
        let sets: [JSONValue] = try ipRanges(cluster: cluster, ranges: ranges).map { r in
            var range: [(String, JSONValue)] = [("subnet", .string(r.subnet.description))]
            if r.rangeStart != r.subnet.first.advanced(by: 1) { range.append(("rangeStart", .string(r.rangeStart.description))) }
            return .array([.object(range)])
        }
        let weft: JSONValue = .object([
            ("type", .string("weft")),
            ("mode", .string("routed")),
            ("bridge", .string("weft0")),
            ("mtu", .number(Double(mtu))),
            ("ipMasq", .bool(true)),
            ("clusterCIDR", .array(cluster.clusterCIDRs.map { .string($0.description) })),
            ("ipam", .object([("ranges", .array(sets)), ("dataDir", .string(config.ipamDataDir))])),
            ("eventLog", .string(config.cniEventLog)),
        ])
        let conflist: JSONValue = .object([
            // 1.0.0: what Debian's chained plugins (portmap) accept; weft speaks 1.1.0 too.
            ("cniVersion", .string("1.0.0")), ("name", .string("weft")),
            ("plugins", .array([weft, .object([("type", .string("portmap")), ("capabilities", .object([("portMappings", .bool(true))]))])])),
        ])
        try Files.makeDirectories(config.cniConfDir)
        let path = config.cniConfDir + "/10-weft.conflist"
        let text = Array(conflist.serialized(pretty: true).utf8)
        if (try? Files.read(path)) != text { try Files.writeAtomically(path, text) }
    }

    // MARK: loops

    /// Renews the node's lease at a third of its TTL. If the lease is gone anyway (the
    /// datastore was out of reach for longer than the TTL, so peers already withdrew this
    /// node's routes), register again under a new lease: peers add the routes back.
    func keepAlive(lease initial: Int64, hostIP: IPAddress) async throws {
        var lease = initial
        let period = max(Double(config.leaseTTL) / 3, 0.5)
        while !Task.isCancelled {
            try await Task.sleep(for: .milliseconds(Int(period * 1000)))
            do { try await store.keepAlive(lease: lease) } catch DatastoreError.leaseNotFound {
                logger.warning("this node's lease expired (the datastore was out of reach for longer than the TTL); registering again",
                               metadata: ["node": "\(config.nodeName)", "ttlSeconds": "\(config.leaseTTL)"])
                do { lease = try await claimNodeName(hostIP: hostIP) } catch let e as AgentError { throw e } catch {
                    logger.error("registering again failed; retrying", metadata: ["error": "\(error)"])
                }
            } catch is CancellationError { return } catch {
                logger.error("lease keepalive failed; retrying", metadata: ["error": "\(error)"])
            }
        }
    }

    /// Reconciles when nodes or leases change (bursts coalesce into one pass) and every
    /// `resyncSeconds`, so drift (a route someone deleted by hand) is repaired; sleeps
    /// otherwise. Reads the cache: the first pass waits until both kinds are listed (before,
    /// every node would look dead and a pass would withdraw routes still wanted).
    func routeLoop(backend: any RoutingBackend) async throws {
        let changes = cache.subscribe([Keys.nodes, Keys.nodeLeases])
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await changes.tick(every: self.config.resyncSeconds) }
            group.addTask {
                let reconciler = RouteReconciler(net: self.net)
                while await changes.next() != nil { self.reconcileRoutes(reconciler, backend: backend) }
            }
            try await group.next()
            group.cancelAll()
        }
    }

    private func reconcileRoutes(_ reconciler: RouteReconciler, backend: any RoutingBackend) {
        let nodes = PeerState.liveNodes(nodes: cache.items(Keys.nodes), leases: cache.items(Keys.nodeLeases))
        let want = backend.desiredRouting(me: config.nodeName, nodes: nodes, uplink: config.uplink)
        let started = ContinuousClock.now
        do {
            let report = try reconciler.reconcile(want)
            metrics.reconciled("routes", took: ContinuousClock.now - started, failed: false)
            metrics.routesProgrammed(want.routes.count)
            if !report.isEmpty { logger.info("routes reconciled", metadata: ["added": "\(report.added)", "removed": "\(report.removed)", "peers": "\(nodes.count - 1)"]) }
        } catch {
            metrics.reconciled("routes", took: ContinuousClock.now - started, failed: true)
            logger.error("reconcile failed; retrying at the next change or resync", metadata: ["error": "\(error)"])
        }
    }
}

/// The route loop's view of the cluster: the nodes that hold a live lease.
enum PeerState {
    /// Live nodes only: a node whose lease expired has its routes withdrawn everywhere.
    static func liveNodes(nodes: [KeyValue], leases: [KeyValue]) -> [NodeInfo] {
        let live = Set(leases.map { String($0.key.dropFirst(Keys.nodeLeases.count)) })
        return nodes.compactMap { kv in (try? KubeObject(bytes: kv.value)).flatMap(NodeInfo.init) }
            .filter { live.contains($0.name) }.sorted { $0.name < $1.name }
    }
}
