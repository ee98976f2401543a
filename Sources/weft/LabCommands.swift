import ArgumentParser
import Logging
import ServiceLifecycle
import WeftAgent
import WeftCore
import WeftDatastore
import WeftLab
import WeftOS
#if canImport(Glibc)
import Glibc
#endif

struct LabCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "lab", abstract: "A whole cluster on this machine, in network namespaces.",
                                                    subcommands: [LabUp.self, LabDown.self, LabExec.self, LabRoutes.self, LabWaitReady.self])
}

struct LabUp: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "up", abstract: "Build a host network, N nodes, the datastore, and an agent and a runtime per node.")
    @Option(help: "Lab name.") var name = "weft"
    @Option(help: "Number of nodes.") var nodes = 3
    @Option(help: "vxlan, native or underlay.") var mode = "vxlan"
    @Option(help: "sqlite (embedded default) or etcd (a three-member cluster on the host network).") var datastore = "sqlite"
    @Option(help: "Node lease TTL in seconds: how long a dead node's routes linger.") var leaseTTL = 10

    func run() async throws {
        guard let m = RoutingMode(rawValue: mode) else { throw ValidationError("--mode \(mode): expected vxlan, native or underlay") }
        guard datastore == "sqlite" || datastore == "etcd" else { throw ValidationError("--datastore \(datastore): expected sqlite or etcd") }
        var spec = LabSpec(weftBinary: siblingExecutable("weft"), cniBinary: siblingExecutable("weft-cni"))
        spec.name = name; spec.nodes = nodes; spec.mode = m; spec.etcd = datastore == "etcd"; spec.leaseTTL = leaseTTL
        let state = try LabCluster.up(spec) { print($0) }
        // Wait for every node to register, from where the datastore is reachable.
        var waitArgs = [siblingExecutable("weft"), "lab", "wait-ready", "--lab", name, "--nodes", "\(nodes)"]
        if state.usesEtcd { waitArgs = ["/usr/sbin/ip", "netns", "exec", state.hostNetwork] + waitArgs }
        let out = try Subprocess.run(waitArgs[0], arguments: Array(waitArgs.dropFirst()), environment: ["PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "WEFT_IN_LAB_NETWORK": "1"], stdin: [])
        print(String(decoding: out.stdout, as: UTF8.self), terminator: "")
        if out.status != 0 {
            let logs = state.nodes.map { n in "--- \(n.name) agent.log:\n" + ((try? Files.readString("\(state.dir)/\(n.name)/agent.log")) ?? "").suffix(800) }
            LabCluster.down(state)
            throw CLIError("the lab did not come up: \(String(decoding: out.stderr, as: UTF8.self))\n\(logs.joined(separator: "\n"))")
        }
    }
}

struct LabWaitReady: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "wait-ready", abstract: "Wait until N nodes are registered with pod ranges.", shouldDisplay: false)
    @OptionGroup var cluster: ClusterOptions
    @Option var nodes: Int
    @Option var timeout = 60.0

    func run() async throws {
        let (store, _) = try cluster.open()
        let client = ClusterClient(store: store)
        try await client.waitForNodes(nodes, timeoutSeconds: timeout)
        try await client.ensureDefaultNamespace()
        print("\(nodes) nodes ready")
    }
}

struct LabDown: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "down", abstract: "Remove the lab: every namespace, process and file it made.")
    @Option(help: "Lab name.") var name = "weft"
    func run() async throws {
        let state = try LabState.load(name)
        LabCluster.down(state)
        print("lab \(name) removed")
    }
}

struct LabExec: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "exec", abstract: "Run a command in a pod's network namespace: weft lab exec NS/POD -- CMD...")
    @Option(help: "Lab name.") var lab = "weft"
    @Argument(help: "NAMESPACE/POD (or POD in default).") var pod: String
    @Argument(parsing: .captureForPassthrough) var command: [String] = []

    func run() async throws {
        let state = try LabState.load(lab)
        let parts = pod.split(separator: "/").map(String.init)
        let (ns, name) = parts.count == 2 ? (parts[0], parts[1]) : ("default", pod)
        let netns = NodeRuntime.netnsName(labID: state.id, namespace: ns, pod: name)
        guard Files.exists("/run/netns/\(netns)") else { throw CLIError("pod \(ns)/\(name) is not running in lab \(lab)") }
        let cmd = command.first == "--" ? Array(command.dropFirst()) : command
        guard !cmd.isEmpty else { throw ValidationError("give a command after --, e.g. weft lab exec default/web -- ip addr") }
        let argv = (["ip", "netns", "exec", netns] + cmd).map { strdup($0) } + [nil]
        execv("/usr/sbin/ip", argv)
        throw ValidationError("cannot run ip netns exec")
    }
}

struct LabRoutes: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "routes", abstract: "The routes weft's agent programmed on each node.")
    @Option(help: "Lab name.") var lab = "weft"
    func run() async throws {
        let state = try LabState.load(lab)
        for n in state.nodes {
            let out = try Subprocess.run("/usr/sbin/ip", arguments: ["netns", "exec", n.netns, "ip", "route", "show", "proto", "\(RouteEntry.weftProtocol)"],
                                         environment: ["PATH": "/usr/sbin:/usr/bin"], stdin: [])
            print("\(n.name) (\(n.hostIP)):")
            let text = String(decoding: out.stdout, as: UTF8.self)
            print(text.isEmpty ? "  (none)" : text.split(separator: "\n").map { "  " + $0 }.joined(separator: "\n"))
        }
    }
}

struct Agent: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "The node agent: registers the node, claims its pod range, programs routes to its peers.")
    @Option(help: "This node's name.") var node: String
    @Option(help: "Datastore URL: sqlite:///PATH or etcd://HOST:PORT[,...].") var datastore: String
    @Option(help: "vxlan, native or underlay.") var mode = "vxlan"
    @Option(help: "Cluster pod range (repeat for IPv6).") var clusterCidr: [String] = []
    @Option(help: "IPv4 block size per node.") var blockPrefixV4 = 24
    @Option(help: "IPv6 block size per node.") var blockPrefixV6 = 80
    @Option(help: "The host network interface.") var uplink = "eth0"
    @Option(help: "This node's host address (default: the uplink's).") var hostIp: String?
    @Option(help: "Where the CNI conflist is written.") var cniConfDir = "/etc/cni/net.d"
    @Option(help: "IPAM data directory for the plugin.") var ipamDataDir = NetworkConfig.defaultDataDir
    @Option(help: "Node lease TTL, seconds.") var leaseTTL: Int64 = 10
    @Option(help: "A range of the host network for LoadBalancer addresses (repeatable); the nodes announce them.")
    var loadBalancerCidr: [String] = []
    @Option(help: "Port of the node's cluster DNS resolver on its host address (0: no DNS).") var dnsPort = 53
    @Option(help: "Port of the agent's HTTP endpoint (/metrics for Prometheus, /flows for weft observe) on every address of the node (0: none).") var metricsPort = 9464
    @Option(help: "The cluster's DNS domain.") var clusterDomain = "cluster.local"
    @Option(help: "Where names outside the cluster domain are forwarded (repeatable; default: none, refused).")
    var dnsUpstream: [String] = []

    func run() async throws {
        guard let m = RoutingMode(rawValue: mode) else { throw ValidationError("--mode \(mode): expected vxlan, native or underlay") }
        var cidrs: [IPNetwork] = []
        for c in clusterCidr {
            guard let n = IPNetwork(c) else { throw ValidationError("--cluster-cidr \(c) is not a CIDR; expected e.g. 10.244.0.0/16") }
            cidrs.append(n)
        }
        var hostIP: IPAddress?
        if let hostIp { guard let a = IPAddress(hostIp) else { throw ValidationError("--host-ip \(hostIp) is not an address") }; hostIP = a }
        var pools: [IPNetwork] = []
        for c in loadBalancerCidr {
            guard let n = IPNetwork(c) else { throw ValidationError("--load-balancer-cidr \(c) is not a CIDR; expected e.g. 192.168.100.64/28") }
            pools.append(n)
        }
        let cluster = ClusterConfig(mode: m, clusterCIDRs: cidrs, blockPrefixV4: blockPrefixV4, blockPrefixV6: blockPrefixV6, loadBalancerCIDRs: pools)
        try cluster.validate()
        var logger = Logger(label: "weft.agent")
        logger[metadataKey: "node"] = "\(node)"
        let store = try openDatastore(datastore)
        var config = AgentConfig(nodeName: node, hostIP: hostIP, uplink: uplink, cluster: cluster, cniConfDir: cniConfDir,
                                 ipamDataDir: ipamDataDir, leaseTTL: leaseTTL)
        guard (0...65535).contains(dnsPort) else { throw ValidationError("--dns-port \(dnsPort): give a port from 1 to 65535, or 0 for no DNS") }
        config.dnsPort = dnsPort == 0 ? nil : dnsPort
        guard (0...65535).contains(metricsPort) else { throw ValidationError("--metrics-port \(metricsPort): give a port from 1 to 65535, or 0 for none") }
        config.metricsPort = metricsPort == 0 ? nil : metricsPort
        do { _ = try DNSName(clusterDomain) } catch { throw ValidationError("--cluster-domain \(clusterDomain) is not a DNS name; expected e.g. cluster.local") }
        config.clusterDomain = clusterDomain
        for u in dnsUpstream {
            guard let a = IPAddress(u) else { throw ValidationError("--dns-upstream \(u) is not an IP address; expected e.g. 192.168.100.1") }
            config.dnsUpstreams.append(DNSUpstream(address: a))
        }
        let agent = NodeAgent(config: config,
                              store: store, net: try Rtnetlink(), servicesNet: try Rtnetlink(), logger: logger)
        let group = ServiceGroup(configuration: .init(services: [agent], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
    }
}

struct Runtime: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "The lab's container runtime for one node: pods bound to it get a namespace and CNI.", shouldDisplay: false)
    @Option var node: String
    @Option var datastore: String
    @Option var labId: String
    @Option var cniConfDir: String
    @Option var cniBinDir: String
    @Option var cacheDir: String

    func run() async throws {
        let logger = Logger(label: "weft.runtime")
        let rt = NodeRuntime(config: .init(nodeName: node, labID: labId, cniConfDir: cniConfDir, cniBinDir: cniBinDir, cacheDir: cacheDir, weftBinary: siblingExecutable("weft")),
                             store: try openDatastore(datastore), logger: logger)
        let group = ServiceGroup(configuration: .init(services: [rt], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
    }
}
