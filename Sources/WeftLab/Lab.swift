import WeftCore
import WeftOS
#if canImport(Glibc)
import Glibc
#endif

/// Emulated nodes and pods for the demo: network namespaces made with iproute2, the plugin
/// run inside the node's namespace exactly as a container runtime on that node would run it.
/// Never touches the root namespace; `tearDown` removes everything it made.
public final class Lab {
    public let id: String
    public let node: String
    public let dataDir: String
    public let plugin: String
    public private(set) var namespaces: [String] = []

    public init(prefix: String = "weft-demo", plugin: String) throws(LabError) {
        id = "\(prefix)-\(getpid())-\(String(UInt32.random(in: 0..<UInt32.max), radix: 36))"
        node = id + "-node"
        dataDir = "/tmp/\(id)-ipam"
        self.plugin = plugin
        try addNamespace(node)
        try run(["ip", "netns", "exec", node, "ip", "link", "set", "lo", "up"])
    }

    public func addNamespace(_ name: String) throws(LabError) {
        try run(["ip", "netns", "add", name])
        namespaces.append(name)
    }

    /// A pod: its own namespace, loopback up (the runtime's loopback plugin's job).
    public func addPod(_ name: String) throws(LabError) -> String {
        let ns = "\(id)-\(name)"
        try addNamespace(ns)
        try run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"])
        return ns
    }

    /// Runs the CNI plugin in the node namespace with containerd's environment.
    public func cni(_ command: CNICommand, config: String, containerID: String, podNamespace: String?, podName: String, ifname: String = "eth0") throws(LabError) -> (status: Int32, output: String) {
        let env = [
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "CNI_COMMAND": command.rawValue, "CNI_CONTAINERID": containerID, "CNI_IFNAME": ifname,
            "CNI_NETNS": podNamespace.map { "/run/netns/\($0)" } ?? "", "CNI_PATH": "/opt/cni/bin:/usr/lib/cni",
            "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=\(podName);K8S_POD_INFRA_CONTAINER_ID=\(containerID)",
        ]
        do {
            let out = try Subprocess.run("/usr/sbin/ip", arguments: ["netns", "exec", node, plugin], environment: env, stdin: Array(config.utf8))
            return (out.status, String(decoding: out.stdout, as: UTF8.self))
        } catch { throw LabError("run \(plugin): \(error)") }
    }

    @discardableResult
    public func run(_ args: [String]) throws(LabError) -> String {
        let out: Subprocess.Output
        do { out = try Subprocess.run("/usr/bin/env", arguments: args, environment: ["PATH": "/usr/sbin:/usr/bin:/sbin:/bin"], stdin: []) } catch {
            throw LabError("\(args.joined(separator: " ")): \(error)")
        }
        guard out.status == 0 else {
            throw LabError("\(args.joined(separator: " ")) failed: \(String(decoding: out.stderr, as: UTF8.self))")
        }
        return String(decoding: out.stdout, as: UTF8.self)
    }

    public func succeeds(_ args: [String]) -> Bool { (try? run(args)) != nil }

    public func tearDown() {
        for ns in namespaces.reversed() { _ = try? run(["ip", "netns", "del", ns]) }
        namespaces = []
        _ = try? run(["rm", "-rf", dataDir])
    }
}

public struct LabError: Error, CustomStringConvertible {
    public var description: String
    public init(_ d: String) { description = d }
}
