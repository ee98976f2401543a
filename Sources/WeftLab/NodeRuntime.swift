import Logging
import ServiceLifecycle
import WeftCore
import WeftOS
#if canImport(Glibc)
import Glibc
#endif

/// The lab's container runtime for one node, doing what kubelet + containerd do for
/// networking: for each Pod bound to this node, a network namespace, the CNI conflist the agent
/// wrote (run plugin by plugin as libcni does, with containerd's CNI_ARGS), the test server on
/// the pod's container ports, and the pod's IPs written to its status; CNI DEL when it goes.
/// Runs inside the node's network namespace, so the plugins configure that node.
public final class NodeRuntime: Service, @unchecked Sendable {
    public struct Config: Sendable {
        public var nodeName: String
        public var labID: String
        public var cniConfDir: String
        public var cniBinDir: String
        public var cacheDir: String
        public var weftBinary: String
        public init(nodeName: String, labID: String, cniConfDir: String, cniBinDir: String, cacheDir: String, weftBinary: String) {
            self.nodeName = nodeName; self.labID = labID; self.cniConfDir = cniConfDir; self.cniBinDir = cniBinDir
            self.cacheDir = cacheDir; self.weftBinary = weftBinary
        }
    }

    let config: Config
    let store: any Datastore
    let logger: Logger
    /// Pods this runtime has wired: key -> (container ID, namespace name). Touched only by the
    /// watch loop (`sync`).
    private var running: [String: (id: String, netns: String)] = [:]
    /// Pods being terminated by a task of their own; the task removes the pod's key when done.
    private var terminating: Set<String> = []
    /// The cluster DNS address pods get as their nameserver (kubelet's --cluster-dns).
    private var clusterDNS: IPAddress?
    static let clusterDomain = "cluster.local"

    public init(config: Config, store: any Datastore, logger: Logger) {
        self.config = config; self.store = store; self.logger = logger
    }

    public static func netnsName(labID: String, namespace: String, pod: String) -> String { "\(labID)-\(namespace)-\(pod)" }

    public func run() async throws {
        try Files.makeDirectories(config.cacheDir)
        clusterDNS = try await ClusterClient(store: store).ensureClusterDNS()
        // SIGTERM stops watching at once; wired pods stay as they are.
        try await cancelWhenGracefulShutdown { try await self.watchPods() }
    }

    func watchPods() async throws {
        while !Task.isCancelled {
            do {
                let (items, rev) = try await store.list(prefix: Keys.pods)
                try await sync(items)
                for try await _ in store.watch(prefix: Keys.pods, afterRevision: rev) {
                    let (now, _) = try await store.list(prefix: Keys.pods)
                    try await sync(now)
                }
            } catch is CancellationError { return } catch {
                logger.warning("pod watch interrupted; relisting", metadata: ["error": "\(error)"])
                try? await Task.sleep(for: .milliseconds(300))
            }
        }
    }

    /// Level-based: wire every pod bound here that is not wired, unwire every wired pod gone.
    func sync(_ items: [KeyValue]) async throws {
        var present = Set<String>()
        for kv in items {
            guard let pod = try? KubeObject(bytes: kv.value), pod.nodeName == config.nodeName else { continue }
            present.insert(kv.key)
            if let wired = running[kv.key] {
                if pod.json["metadata"]?["deletionTimestamp"] != nil && !terminating.contains(kv.key) {
                    terminating.insert(kv.key)
                    Task { await self.terminate(pod, key: kv.key, id: wired.id, netns: wired.netns) }
                }
                continue
            }
            if pod.json["metadata"]?["deletionTimestamp"] != nil {
                // Terminating but never wired here (this runtime restarted): nothing runs; remove it.
                try? await store.delete(kv.key, expectedRevision: kv.modRevision)
                continue
            }
            let id = "\(pod.namespace ?? "default")-\(pod.name)-\(kv.createRevision)"
            let netns = NodeRuntime.netnsName(labID: config.labID, namespace: pod.namespace ?? "default", pod: pod.name)
            do {
                let result = try startPod(pod, id: id, netns: netns)
                running[kv.key] = (id, netns)
                try await writeStatus(key: kv.key, result: result, error: nil)
            } catch {
                logger.error("pod failed to start", metadata: ["pod": "\(pod.namespace ?? "default")/\(pod.name)", "error": "\(error)"])
                // As kubelet does after a failed sandbox: tear down what was made (CNI DEL
                // included); the pod is tried again on the next change.
                stopPod(id: id, netns: netns, name: String(kv.key.dropFirst(Keys.pods.count)))
                try? await writeStatus(key: kv.key, result: nil, error: "\(error)")
            }
        }
        for (key, pod) in running where !present.contains(key) {
            // A terminating pod's task has stopped it already (or is about to).
            if !terminating.contains(key) { stopPod(id: pod.id, netns: pod.netns, name: String(key.dropFirst(Keys.pods.count))) }
            running[key] = nil
            terminating.remove(key)
        }
    }

    /// Kubelet's graceful termination: the preStop hook (only `sleep` exists here; the pod keeps
    /// serving meanwhile, as a terminating endpoint), then SIGTERM to the pod's processes,
    /// SIGKILL to those left when the grace period ends, the Ready condition false, CNI DEL,
    /// and the pod object removed.
    func terminate(_ pod: KubeObject, key: String, id: String, netns: String) async {
        let grace = pod.json["metadata"]?["deletionGracePeriodSeconds"]?.intValue ?? 30
        let deadline = ContinuousClock.now + .seconds(grace)
        let preStop = (pod.spec["containers"]?.arrayValue ?? []).compactMap { $0["lifecycle"]?["preStop"]?["sleep"]?["seconds"]?.intValue }.max() ?? 0
        if preStop > 0 { try? await Task.sleep(until: min(ContinuousClock.now + .seconds(preStop), deadline)) }
        signalPod(netns, SIGTERM)
        while ContinuousClock.now < deadline, !podPIDs(netns).isEmpty { try? await Task.sleep(for: .milliseconds(50)) }
        try? await setReady(key: key, false)
        stopPod(id: id, netns: netns, name: String(key.dropFirst(Keys.pods.count)))
        do { try await store.delete(key, expectedRevision: nil) } catch {
            logger.error("could not remove a terminated pod", metadata: ["pod": "\(key)", "error": "\(error)"])
        }
    }

    func podPIDs(_ netns: String) -> [pid_t] {
        ((try? run(["ip", "netns", "pids", netns])) ?? "").split(separator: "\n").compactMap { pid_t($0) }
    }

    func signalPod(_ netns: String, _ signal: Int32) {
        for pid in podPIDs(netns) { kill(pid, signal) }
    }

    func setReady(key: String, _ ready: Bool) async throws {
        while true {
            guard let kv = try await store.get(key) else { return }
            var pod = try KubeObject(bytes: kv.value)
            pod.setStatus("conditions", .array([.object([("type", .string("Ready")), ("status", .string(ready ? "True" : "False"))])]))
            do { try await store.update(key, value: pod.bytes, expectedRevision: kv.modRevision); return } catch DatastoreError.conflict { continue }
        }
    }

    func startPod(_ pod: KubeObject, id: String, netns: String) throws -> JSONValue {
        _ = try? run(["ip", "netns", "del", netns]) // a leftover from a crashed runtime
        try run(["ip", "netns", "add", netns])
        try run(["ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up"])
        try writeResolvConf(pod, netns: netns)
        let result = try cni(.add, id: id, netns: netns, pod: pod)
        try Files.writeAtomically("\(config.cacheDir)/\(id).json", Array(result.serialized().utf8))
        // The test server, like agnhost: HTTP naming the pod and the client, or the raw greeting.
        var ports = Set(pod.containerPorts.map(\.port))
        if ports.isEmpty { ports = [8080] }
        for port in ports.sorted() {
            try spawnDetached(["ip", "netns", "exec", netns, config.weftBinary, "serve", "--name", pod.name, "--namespace", pod.namespace ?? "default",
                               "--tcp", "\(port)", "--udp", "\(port)"])
        }
        return result
    }

    /// The pod's resolv.conf as kubelet writes it for dnsPolicy ClusterFirst: the cluster DNS,
    /// the search path from the pod's namespace out, ndots 5. `ip netns exec` (how the pod's
    /// processes are started) bind-mounts /etc/netns/NAME/resolv.conf over /etc/resolv.conf.
    /// dnsPolicy Default (or no cluster DNS) leaves the node's; None takes dnsConfig alone.
    func writeResolvConf(_ pod: KubeObject, netns: String) throws {
        let policy = pod.spec["dnsPolicy"]?.stringValue ?? "ClusterFirst"
        let extra = pod.spec["dnsConfig"]
        var servers: [String] = [], search: [String] = [], options: [String] = []
        if policy == "ClusterFirst" || policy == "ClusterFirstWithHostNet", let dns = clusterDNS {
            let ns = pod.namespace ?? "default", d = Self.clusterDomain
            servers = [dns.description]
            search = ["\(ns).svc.\(d)", "svc.\(d)", d]
            options = ["ndots:5"]
        } else if policy != "None" {
            return
        }
        servers += (extra?["nameservers"]?.arrayValue ?? []).compactMap(\.stringValue)
        search += (extra?["searches"]?.arrayValue ?? []).compactMap(\.stringValue)
        options += (extra?["options"]?.arrayValue ?? []).compactMap { o in o["name"]?.stringValue.map { n in o["value"]?.stringValue.map { "\(n):\($0)" } ?? n } }
        guard !servers.isEmpty else { return }
        var text = "nameserver " + servers.prefix(3).joined(separator: "\nnameserver ") + "\n"
        if !search.isEmpty { text += "search \(search.joined(separator: " "))\n" }
        if !options.isEmpty { text += "options \(options.joined(separator: " "))\n" }
        try Files.makeDirectories("/etc/netns/\(netns)")
        try Files.writeAtomically("/etc/netns/\(netns)/resolv.conf", Array(text.utf8))
    }

    func stopPod(id: String, netns: String, name: String) {
        signalPod(netns, SIGKILL)
        let podParts = name.split(separator: "/")
        var pod = KubeObject(apiVersion: "v1", kind: "Pod", name: podParts.count == 2 ? String(podParts[1]) : name, namespace: podParts.count == 2 ? String(podParts[0]) : nil)
        if let cached = try? Files.read("\(config.cacheDir)/\(id).json"), let j = try? JSONValue.parse(cached) { pod.setStatus("cached", j) }
        do { _ = try cni(.del, id: id, netns: netns, pod: pod) } catch {
            logger.error("CNI DEL failed", metadata: ["pod": "\(name)", "error": "\(error)"])
        }
        _ = try? run(["ip", "netns", "del", netns])
        _ = try? run(["rm", "-rf", "\(config.cacheDir)/\(id).json", "/etc/netns/\(netns)"])
    }

    /// libcni's conflist execution: name and cniVersion injected into every plugin, the previous
    /// result as prevResult, runtimeConfig only for declared capabilities; DEL in reverse order
    /// with the cached ADD result.
    func cni(_ command: CNICommand, id: String, netns: String, pod: KubeObject) throws -> JSONValue {
        let files = try Files.list(config.cniConfDir).filter { $0.hasSuffix(".conflist") }.sorted()
        guard let file = files.first else { throw LabError("no CNI configuration in \(config.cniConfDir) yet (the agent writes it)") }
        let conflist = try JSONValue.parse(try Files.read("\(config.cniConfDir)/\(file)"))
        var plugins = conflist["plugins"]?.arrayValue ?? []
        let hostPorts: [JSONValue] = pod.containerPorts.compactMap { p in
            p.hostPort.map { .object([("hostPort", .number(Double($0))), ("containerPort", .number(Double(p.port))), ("protocol", .string(p.proto.lowercased()))]) }
        }
        var prev: JSONValue? = command == .del ? pod.status["cached"] : nil
        if command == .del { plugins.reverse() }
        let env: [String: String] = [
            "CNI_COMMAND": command.rawValue, "CNI_CONTAINERID": id, "CNI_NETNS": "/run/netns/\(netns)", "CNI_IFNAME": "eth0",
            "CNI_PATH": config.cniBinDir, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=\(pod.namespace ?? "default");K8S_POD_NAME=\(pod.name);K8S_POD_INFRA_CONTAINER_ID=\(id)",
        ]
        for p in plugins {
            let type = p["type"]?.stringValue ?? ""
            var c = p.setting("name", to: conflist["name"]).setting("cniVersion", to: conflist["cniVersion"])
            if let prev { c = c.setting("prevResult", to: prev) }
            if p["capabilities"]?["portMappings"]?.boolValue == true { c = c.setting("runtimeConfig", to: .object([("portMappings", .array(hostPorts))])) }
            let out = try Subprocess.run("\(config.cniBinDir)/\(type)", environment: env, stdin: Array(c.serialized().utf8))
            guard out.status == 0 else {
                throw LabError("CNI \(command.rawValue) with \(type) failed: \(String(decoding: out.stdout, as: UTF8.self))")
            }
            if command == .add { prev = try JSONValue.parse(out.stdout) }
        }
        return prev ?? .null
    }

    func writeStatus(key: String, result: JSONValue?, error: String?) async throws {
        let ips = result?["ips"]?.arrayValue?.compactMap { $0["address"]?.stringValue?.split(separator: "/").first.map(String.init) } ?? []
        while true {
            guard let kv = try await store.get(key) else { return }
            var pod = try KubeObject(bytes: kv.value)
            pod.setStatus("phase", .string(error == nil ? "Running" : "Failed"))
            pod.setStatus("conditions", .array([.object([("type", .string("Ready")), ("status", .string(error == nil ? "True" : "False"))])]))
            pod.setStatus("hostIP", .string(hostIP()))
            if let first = ips.first { pod.setStatus("podIP", .string(first)) }
            pod.setStatus("podIPs", ips.isEmpty ? nil : .array(ips.map { .object([("ip", .string($0))]) }))
            pod.setStatus("message", error.map { .string($0) })
            do { try await store.update(key, value: pod.bytes, expectedRevision: kv.modRevision); return } catch DatastoreError.conflict { continue }
        }
    }

    private func hostIP() -> String {
        (try? run(["ip", "-4", "-o", "addr", "show", "dev", "eth0"]))?.split(separator: " ").dropFirst(3).first.map { String($0.split(separator: "/")[0]) } ?? ""
    }

    @discardableResult
    func run(_ args: [String]) throws -> String {
        let out = try Subprocess.run("/usr/bin/env", arguments: args, environment: ["PATH": "/usr/sbin:/usr/bin:/sbin:/bin"], stdin: [])
        guard out.status == 0 else { throw LabError("\(args.joined(separator: " ")): \(String(decoding: out.stderr, as: UTF8.self))") }
        return String(decoding: out.stdout, as: UTF8.self)
    }
}

/// Starts a process that outlives its parent's interest in it (the lab's servers and agents):
/// its own session, stdin from /dev/null, output to `log` (or /dev/null).
public func spawnDetached(_ args: [String], log: String? = nil) throws {
    var attr = posix_spawnattr_t()
    posix_spawnattr_init(&attr)
    defer { posix_spawnattr_destroy(&attr) }
    let setsid: Int16 = 0x80 // POSIX_SPAWN_SETSID (glibc hides it behind _GNU_SOURCE)
    posix_spawnattr_setflags(&attr, setsid)
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 1, log ?? "/dev/null", O_WRONLY | O_CREAT | O_APPEND, 0o644)
    posix_spawn_file_actions_adddup2(&actions, 1, 2)
    let path = args[0].hasPrefix("/") ? args[0] : "/usr/bin/env"
    let argv: [UnsafeMutablePointer<CChar>?] = (args[0].hasPrefix("/") ? args : ["/usr/bin/env"] + args).map { strdup($0) } + [nil]
    let env: [UnsafeMutablePointer<CChar>?] = [strdup("PATH=/usr/sbin:/usr/bin:/sbin:/bin"), nil]
    defer { argv.forEach { free($0) }; env.forEach { free($0) } }
    var pid: pid_t = 0
    let rc = posix_spawn(&pid, path, &actions, &attr, argv, env)
    guard rc == 0 else { throw LabError("start \(args.joined(separator: " ")): \(String(cString: strerror(rc)))") }
}
