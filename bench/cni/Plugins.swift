// The plugins under test, their configurations, and one timed invocation.
import WeftCore
import WeftOS
#if canImport(Glibc)
import Glibc
#endif

struct PluginSpec: Sendable {
    /// Short, container-ID-safe key: "weft", "ref", "routed".
    let key: String
    /// What the table calls it.
    let label: String
    let binary: String
    let network: String
    /// IPAM data directory (weft's built-in store or host-local's), inside the run's temp dir.
    let dataDir: String
    let config: JSONValue
    let cniPath: String
    let configBytes: [UInt8]

    init(key: String, label: String, binary: String, network: String, dataDir: String, config: JSONValue, cniPath: String) {
        self.key = key; self.label = label; self.binary = binary; self.network = network
        self.dataDir = dataDir; self.config = config; self.cniPath = cniPath
        configBytes = Array(config.serialized().utf8)
    }

    // Address plan: 10.192.0.0/12 is the cluster; each network gets its own /16 so up to
    // 65k pods fit and no two networks overlap.
    static let clusterCIDR = "10.192.0.0/12"

    static func weft(binary: String, mode: String, subnet: String, bridge: String, tmp: String, cniPath: String) -> PluginSpec {
        let key = mode == "routed" ? "routed" : "weft"
        let network = "wb-weft-\(mode)"
        let dataDir = tmp + "/ipam-weft-\(mode)"
        var fields: [(String, JSONValue)] = [
            ("cniVersion", .string("1.1.0")),
            ("name", .string(network)),
            ("type", .string("weft")),
            ("mode", .string(mode)),
        ]
        if mode == "bridge" { fields.append(("bridge", .string(bridge))) }
        fields += [
            ("ipMasq", .bool(true)),
            ("clusterCIDR", .string(clusterCIDR)),
            ("ipam", .object([
                ("ranges", .array([.array([.object([("subnet", .string(subnet))])])])),
                ("dataDir", .string(dataDir)),
            ])),
        ]
        return PluginSpec(key: key, label: "weft (\(mode))", binary: binary, network: network, dataDir: dataDir,
                          config: .object(fields), cniPath: cniPath)
    }

    /// The reference: containernetworking `bridge` + `host-local`, set up to do the same work as
    /// weft's bridge mode (gateway on the bridge, default route, hairpin, masquerade).
    static func reference(cniPath: String, subnet: String, bridge: String, tmp: String) -> PluginSpec {
        let network = "wb-ref"
        let dataDir = tmp + "/ipam-ref"
        let config: JSONValue = .object([
            ("cniVersion", .string("1.0.0")),
            ("name", .string(network)),
            ("type", .string("bridge")),
            ("bridge", .string(bridge)),
            ("isGateway", .bool(true)),
            ("ipMasq", .bool(true)),
            ("hairpinMode", .bool(true)),
            ("ipam", .object([
                ("type", .string("host-local")),
                ("ranges", .array([.array([.object([("subnet", .string(subnet))])])])),
                ("routes", .array([.object([("dst", .string("0.0.0.0/0"))])])),
                ("dataDir", .string(dataDir)),
            ])),
        ])
        return PluginSpec(key: "ref", label: "reference bridge+host-local", binary: cniPath + "/bridge", network: network,
                          dataDir: dataDir, config: config, cniPath: cniPath)
    }
}

/// One plugin invocation: CNI environment (nothing inherited, identical for every plugin),
/// config on stdin. The clock covers posix_spawn to waitpid and nothing else. The calling
/// thread must already be in the node's network namespace: the child inherits it.
///
/// `cpu` is the CPU time (user + system) of the plugin and everything it ran and waited for
/// (host-local, iptables), from RUSAGE_CHILDREN: exact when invocations run one at a time,
/// meaningless in the parallel phase (where it is ignored). Unlike wall time it does not
/// depend on what else the machine is doing.
func invokePlugin(_ spec: PluginSpec, _ command: String, containerID: String, netns: String, pod: Int) throws(BenchError) -> (nanos: UInt64, cpu: UInt64, address: String?) {
    let env: [String: String] = [
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": containerID,
        "CNI_NETNS": netns,
        "CNI_IFNAME": "eth0",
        "CNI_PATH": spec.cniPath,
        // What containerd passes for a Kubernetes pod.
        "CNI_ARGS": "K8S_POD_INFRA_CONTAINER_ID=\(containerID);K8S_POD_UID=00000000-0000-0000-0000-\(String(1_000_000_000_000 + pod).suffix(12));IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=pod-\(pod)",
        "PATH": basePath,
    ]
    let out: Subprocess.Output
    let cpu0 = childrenCPUNanos()
    let t0 = monotonicNanos()
    do {
        out = try Subprocess.run(spec.binary, environment: env, stdin: spec.configBytes)
    } catch {
        throw BenchError("cannot start \(spec.binary): \(error)")
    }
    let elapsed = monotonicNanos() - t0
    let cpu = childrenCPUNanos() &- cpu0
    // A Ctrl-C reaches the plugin too (same process group): report the interruption, not a
    // plugin failure.
    try checkInterrupted()

    func failure(_ why: String) -> BenchError {
        var m = "\(spec.label) \(command) failed for pod \(pod) (CNI_CONTAINERID=\(containerID) CNI_NETNS=\(netns)): \(why)\n"
        m += "  exit status: \(out.status)\n"
        m += "  stdout: \(String(decoding: out.stdout, as: UTF8.self).trimmed)\n"
        m += "  stderr: \(String(decoding: out.stderr, as: UTF8.self).trimmed)\n"
        m += "  config: \(spec.config.serialized())"
        return BenchError(m)
    }
    guard out.status == 0 else { throw failure("non-zero exit") }
    guard command == "ADD" else { return (elapsed, cpu, nil) }

    guard let json = try? JSONValue.parse(out.stdout) else { throw failure("the result on stdout is not JSON") }
    guard let ips = json["ips"]?.arrayValue, let first = ips.first?["address"]?.stringValue,
          IPInterfaceAddress(first) != nil else {
        throw failure("the result holds no IP address")
    }
    return (elapsed, cpu, first)
}

/// User + system CPU of all terminated, waited-for children of this process (and theirs).
func childrenCPUNanos() -> UInt64 {
    var ru = rusage()
    getrusage(RUSAGE_CHILDREN.rawValue, &ru)
    func ns(_ t: timeval) -> UInt64 { UInt64(t.tv_sec) * 1_000_000_000 + UInt64(t.tv_usec) * 1_000 }
    return ns(ru.ru_utime) + ns(ru.ru_stime)
}
