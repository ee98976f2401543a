import ArgumentParser
import WeftAgent
import WeftCore
import WeftDatastore
import WeftLab
import WeftOS
#if canImport(Glibc)
import Glibc
#endif

/// Where a command finds the cluster: an explicit --datastore, or the lab named by --lab.
struct ClusterOptions: ParsableArguments {
    @Option(help: "Datastore URL: sqlite:///PATH or etcd://HOST:PORT[,...] (default: the lab's).") var datastore: String?
    @Option(help: "The lab to work on.") var lab = "weft"

    /// Opens the datastore. An etcd lab's members live on the lab's host network, which is
    /// reachable only from inside it: the command re-runs itself there (never touching the
    /// root namespace's configuration).
    func open() throws -> (any Datastore, LabState?) {
        if let datastore { return (try openDatastore(datastore), nil) }
        let state = try LabState.load(lab)
        if state.usesEtcd && getenv("WEFT_IN_LAB_NETWORK") == nil {
            reexec(in: state.hostNetwork)
        }
        return (try openDatastore(state.datastore), state)
    }
}

func reexec(in netns: String) -> Never {
    setenv("WEFT_IN_LAB_NETWORK", "1", 1)
    let args = ["/usr/sbin/ip", "netns", "exec", netns, siblingExecutable("weft")] + CommandLine.arguments.dropFirst()
    let argv = args.map { strdup($0) } + [nil]
    execv("/usr/sbin/ip", argv)
    fatalError("cannot run ip netns exec: \(String(cString: strerror(errno)))")
}

func readManifest(_ path: String, identityOnly: Bool = false) throws -> [KubeObject] {
    let text: String
    do { text = path == "-" ? String(decoding: try Files.read("/dev/stdin"), as: UTF8.self) : try Files.readString(path) } catch {
        throw ValidationError("cannot read \(path): \(error)")
    }
    return try Manifests.parse(text, source: path, identityOnly: identityOnly)
}

struct Apply: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Create or update objects from a manifest (YAML or JSON), as kubectl apply does; waits for pods to run.")
    @OptionGroup var cluster: ClusterOptions
    @Option(name: .shortAndLong, help: "Manifest file, or - for stdin.") var filename: String
    @Option(help: "Seconds to wait for pods to start (0: do not wait).") var wait = 60.0

    func run() async throws {
        // Open first: for an etcd lab this re-runs the command inside the lab's network, and
        // the re-run process must be the one that reads stdin.
        let (store, _) = try cluster.open()
        let objects = try readManifest(filename)
        let client = ClusterClient(store: store)
        let result = try await client.apply(objects, source: filename == "-" ? "stdin" : filename)
        for line in result.lines { print(line) }
        if wait > 0 && !result.pods.isEmpty {
            let failed = try await client.waitForPods(result.pods, timeoutSeconds: wait)
            if !failed.isEmpty {
                throw CLIError(failed.map { "pod \($0.key) failed: \($0.value)" }.sorted().joined(separator: "\n"))
            }
        }
        // As a rolling update ends: the new pods run, the old template's go.
        for line in try await client.finishRollouts(result.rollouts) { print(line) }
    }
}

struct Delete: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Delete the objects of a manifest (pods get CNI DEL on their node).",
        discussion: "Running pods terminate gracefully, as in Kubernetes: preStop hook, then their processes are stopped within the grace period; meanwhile they are terminating endpoints of their services.")
    @OptionGroup var cluster: ClusterOptions
    @Option(name: .shortAndLong, help: "Manifest file, or - for stdin.") var filename: String
    @Option(name: .customLong("grace-period"), help: "Seconds pods get to terminate (default: each pod's terminationGracePeriodSeconds, else 30); 0 deletes at once.")
    var gracePeriod: Int?
    @Option(help: "Wait until the pods are gone: true or false.") var wait = true

    func validate() throws {
        if let g = gracePeriod, g < 0 { throw ValidationError("--grace-period \(g): give 0 or more seconds") }
    }

    func run() async throws {
        // Open first: for an etcd lab this re-runs the command inside the lab's network, and
        // the re-run process must be the one that reads stdin.
        let (store, _) = try cluster.open()
        let objects = try readManifest(filename, identityOnly: true)
        for line in try await ClusterClient(store: store).delete(objects, gracePeriod: gracePeriod, wait: wait) { print(line) }
    }
}

struct Get: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List pods, nodes, namespaces, services, endpointslices, deployments or networkpolicies, as kubectl get does.")
    @OptionGroup var cluster: ClusterOptions
    @Argument(help: "pods, nodes, namespaces, services, endpointslices, deployments or networkpolicies.") var resource: String
    @Flag(name: [.customShort("A"), .customLong("all-namespaces")], help: "Pods of every namespace.") var allNamespaces = false
    @Option(name: .shortAndLong, help: "Namespace of the pods.") var namespace = "default"
    @Option(name: .shortAndLong, help: "Output: wide or json.") var output: String?

    func run() async throws {
        let (store, _) = try cluster.open()
        let client = ClusterClient(store: store)
        var objects: [KubeObject]
        switch resource {
        case "pods", "pod", "po":
            objects = try await client.list(Keys.pods).filter { allNamespaces || ($0.namespace ?? "default") == namespace }
        case "nodes", "node", "no": objects = try await client.nodeObjects()
        case "namespaces", "namespace", "ns": objects = try await client.list(Keys.namespaces)
        case "services", "service", "svc":
            objects = try await client.list(Keys.services).filter { allNamespaces || ($0.namespace ?? "default") == namespace }
        case "deployments", "deployment", "deploy":
            objects = try await client.list(Keys.deployments).filter { allNamespaces || ($0.namespace ?? "default") == namespace }
        case "endpointslices", "endpointslice":
            objects = try await client.list(Keys.endpointSlices).filter { allNamespaces || ($0.namespace ?? "default") == namespace }
        case "networkpolicies", "networkpolicy", "netpol":
            objects = try await client.list(Keys.networkPolicies).filter { allNamespaces || ($0.namespace ?? "default") == namespace }
        default: throw ValidationError("unknown resource \"\(resource)\"; expected pods, nodes, namespaces, services, endpointslices, deployments or networkpolicies")
        }
        objects.sort { ($0.namespace ?? "", $0.name) < ($1.namespace ?? "", $1.name) }
        if output == "json" {
            print(JSONValue.object([("apiVersion", .string("v1")), ("kind", .string("List")), ("items", .array(objects.map(\.json)))]).serialized(pretty: true))
            return
        }
        guard output == nil || output == "wide" else { throw ValidationError("-o \(output!): expected wide or json") }
        switch resource.prefix(2) {
        case "ne":
            // kubectl's columns, plus the policy types after defaulting.
            let header = ["NAMESPACE", "NAME", "POD-SELECTOR", "POLICY-TYPES"]
            print(Tables.render(allNamespaces ? header : Array(header.dropFirst()), objects.map { o in
                let p = try? NetworkPolicy(o)
                let row = [o.namespace ?? "default", o.name, p?.podSelector.description ?? "?",
                           p.map { $0.policyTypes.map(\.rawValue).sorted().joined(separator: ",") } ?? "?"]
                return allNamespaces ? row : Array(row.dropFirst())
            }))
        case "de":
            // kubectl's columns: pods of the current template running out of those wanted.
            let pods = try await client.list(Keys.pods)
            let header = ["NAMESPACE", "NAME", "READY", "UP-TO-DATE", "AVAILABLE"]
            print(Tables.render(allNamespaces ? header : Array(header.dropFirst()), objects.map { o in
                let d = try? Deployment(o)
                let current = pods.filter { p in d.map { $0.owns(p) && p.labels[Deployment.hashLabel] == $0.templateHash } ?? false }
                let running = current.filter { $0.status["phase"]?.stringValue == "Running" }.count
                let row = [o.namespace ?? "default", o.name, "\(running)/\(d?.replicas ?? 0)", "\(current.count)", "\(running)"]
                return allNamespaces ? row : Array(row.dropFirst())
            }))
        case "en":
            // kubectl's columns.
            let header = ["NAMESPACE", "NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS"]
            print(Tables.render(allNamespaces ? header : Array(header.dropFirst()), objects.map { o in
                let ports = (o.json["ports"]?.arrayValue ?? []).compactMap { $0["port"]?.intValue.map(String.init) }.joined(separator: ",")
                let addrs = (o.json["endpoints"]?.arrayValue ?? []).flatMap { ($0["addresses"]?.arrayValue ?? []).compactMap(\.stringValue) }
                let row = [o.namespace ?? "default", o.name, o.json["addressType"]?.stringValue ?? "?", ports.isEmpty ? "<unset>" : ports,
                           addrs.isEmpty ? "<unset>" : addrs.joined(separator: ",")]
                return allNamespaces ? row : Array(row.dropFirst())
            }))
        case "po":
            var header = ["NAMESPACE", "NAME", "STATUS", "IP"]
            if output == "wide" { header += ["NODE", "IPS"] }
            print(Tables.render(allNamespaces ? header : Array(header.dropFirst()), objects.map { p in
                var row = [p.namespace ?? "default", p.name, p.status["phase"]?.stringValue ?? "Pending", p.podIP ?? "<none>"]
                if output == "wide" { row += [p.nodeName ?? "<none>", (p.status["podIPs"]?.arrayValue ?? []).compactMap { $0["ip"]?.stringValue }.joined(separator: ",")] }
                return allNamespaces ? row : Array(row.dropFirst())
            }))
        case "se", "sv":
            // kubectl's columns, plus the ready endpoints its EndpointSlices list.
            let slices = try await client.list(Keys.endpointSlices)
            let header = ["NAMESPACE", "NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "ENDPOINTS"]
            print(Tables.render(allNamespaces ? header : Array(header.dropFirst()), objects.map { o in
                let s = try? ClusterService(o)
                let ports = (s?.ports ?? []).map { p in "\(p.port)\(p.nodePort.map { ":\($0)" } ?? "")/\(p.proto)" }.joined(separator: ",")
                // Ready endpoints of the service's address families, IPv6 in brackets.
                let eps = s.map { svc in
                    EndpointSlices.endpoints(for: svc, in: slices).filter { ep in ep.ready && svc.clusterIPs.contains { $0.family == ep.address.family } }.flatMap { ep in
                        svc.ports.compactMap { ep.port(for: $0).map { ep.address.family == .v4 ? "\(ep.address):\($0)" : "[\(ep.address)]:\($0)" } }
                    }
                } ?? []
                // As kubectl: a load balancer's addresses (pending until given one), else external IPs.
                let external = ((s?.loadBalancerIPs ?? []) + (s?.externalIPs ?? [])).map(\.description)
                let row = [o.namespace ?? "default", o.name, s?.kind.rawValue ?? "?", s?.headless == true ? "None" : (s?.clusterIPs.first?.description ?? "<pending>"),
                           !external.isEmpty ? external.joined(separator: ",") : (s?.kind == .loadBalancer ? "<pending>" : "<none>"),
                           ports.isEmpty ? "<none>" : ports, eps.isEmpty ? "<none>" : eps.joined(separator: ",")]
                return allNamespaces ? row : Array(row.dropFirst())
            }))
        case "no":
            print(Tables.render(["NAME", "STATUS", "INTERNAL-IP", "POD-CIDRS"], objects.map { n in
                let ready = n.status["conditions"]?.arrayValue?.first?["status"]?.stringValue == "True"
                return [n.name, ready ? "Ready" : "NotReady", NodeInfo(n)?.hostIP.description ?? "", (n.spec["podCIDRs"]?.arrayValue ?? []).compactMap(\.stringValue).joined(separator: ",")]
            }))
        default:
            print(Tables.render(["NAME", "LABELS"], objects.map { [$0.name, $0.labels.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ",")] }))
        }
    }
}

struct ConnectivityCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "connectivity",
        abstract: "Every pod to every pod and each node to its pods, with real packets, against what the NetworkPolicies allow; fails on a missing pair, a pair policy denies that connects, or a rewritten source.")
    @OptionGroup var cluster: ClusterOptions
    @Option(help: "Only this family: 4 or 6 (default: each pod's first address).") var family: Int?

    func run() async throws {
        let state = try LabState.load(cluster.lab)
        let (store, _) = try cluster.open()
        let pods = try await ClusterClient(store: store).list(Keys.pods)
        let fam: IPFamily? = family == 6 ? .v6 : (family == 4 ? .v4 : nil)
        let (policy, _) = try await DesiredState.policyInput(store)
        let result = Connectivity(state: state, weftBinary: siblingExecutable("weft")).run(pods: pods, family: fam, policy: policy)
        print(result.text)
        if !result.failures.isEmpty { throw ExitCode(1) }
    }
}

struct DoctorCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "doctor",
        abstract: "Check every node for the usual culprits: MTU, routes to peers, forwarding and rp_filter, leaked addresses, conntrack, drift from the desired state, a missing agent.")
    @OptionGroup var cluster: ClusterOptions

    func run() async throws {
        let state = try LabState.load(cluster.lab)
        let store: any Datastore
        do { (store, _) = try cluster.open() } catch {
            print("PROBLEM datastore: \(state.datastore) is out of reach: \(error)\n    fix: is the lab up (`weft lab up`)? for etcd, are its members running?")
            throw ExitCode(1)
        }
        let findings = try await LabDoctor(state: state, store: store).run()
        for f in findings { print(f) }
        let problems = findings.filter { $0.severity == .problem }.count
        print(findings.isEmpty ? "no problems found on \(state.nodes.count) node(s)"
              : "\(problems) problem(s), \(findings.count - problems) warning(s) on \(Set(findings.map(\.node)).count) of \(state.nodes.count) node(s)")
        if problems > 0 { throw ExitCode(1) }
    }
}

struct TraceCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "trace",
        abstract: "The path of a packet hop by hop (routes, veths, service translation, policy verdicts, encapsulation), from the desired state, each hop checked against the live kernel.")
    @OptionGroup var cluster: ClusterOptions
    @Argument(help: "The source pod: NAMESPACE/NAME or NAME (default namespace).") var source: String
    @Argument(help: "The destination: a pod, svc/NAMESPACE/NAME, node/NAME or an address, with :PORT and /TCP, /UDP or /SCTP (default TCP), e.g. web:80 or [fd00::5]:53/UDP.") var destination: String

    /// "x/web:80/UDP" → ("x/web", 80, "UDP"); IPv6 in brackets.
    static func split(_ s: String) -> (String, UInt16?, String) {
        var t = Substring(s), proto = "TCP"
        if let slash = t.lastIndex(of: "/"), ["TCP", "UDP", "SCTP"].contains(t[t.index(after: slash)...].uppercased()) {
            proto = t[t.index(after: slash)...].uppercased(); t = t[..<slash]
        }
        if t.hasPrefix("["), let close = t.firstIndex(of: "]") {
            let host = String(t[t.index(after: t.startIndex)..<close])
            let rest = t[t.index(after: close)...]
            return (host, rest.hasPrefix(":") ? UInt16(rest.dropFirst()) : nil, proto)
        }
        if IPAddress(t) != nil { return (String(t), nil, proto) }
        if let colon = t.lastIndex(of: ":"), let p = UInt16(t[t.index(after: colon)...]) { return (String(t[..<colon]), p, proto) }
        return (String(t), nil, proto)
    }

    func run() async throws {
        let state = try LabState.load(cluster.lab)
        let (store, _) = try cluster.open()
        let (dst, port, proto) = Self.split(destination)
        let started = ContinuousClock.now
        let result = try await LabTrace(state: state, store: store).run(from: source, to: dst, port: port, proto: proto)
        print("trace \(source) -> \(destination)\n")
        print(result.text, terminator: "")
        print("(\(Int((ContinuousClock.now - started).components.attoseconds / 1_000_000_000_000_000 + (ContinuousClock.now - started).components.seconds * 1000)) ms)")
        if !result.delivered || result.differences > 0 { throw ExitCode(1) }
    }
}

struct ObserveCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "observe",
        abstract: "Flows from every node: connections of pods starting and ending, and packets dropped with the reason, named with pods, services and nodes.")
    @OptionGroup var cluster: ClusterOptions
    @Option(help: "Only flows of this pod (NAMESPACE/NAME), either end.") var pod: String?
    @Option(name: .shortAndLong, help: "Only flows with a pod of this namespace at either end.") var namespace: String?
    @Option(help: "Only flows to this service (NAMESPACE/NAME).") var service: String?
    @Option(help: "forwarded or dropped.") var verdict: String?
    @Option(help: "Only flows to this port (the service's or the endpoint's).") var port: UInt16?
    @Option(help: "Only flows of the last DURATION: 30s, 5m, 1h.") var since: String?
    @Option(help: "Only flows recorded by this node.") var node: String?
    @Flag(name: .shortAndLong, help: "Keep printing new flows as they come.") var follow = false
    @Option(name: .shortAndLong, help: "Output: json (one object per line).") var output: String?

    func validate() throws {
        if let verdict, Flow.Verdict(rawValue: verdict) == nil { throw ValidationError("--verdict \(verdict): expected forwarded or dropped") }
        if let since, Self.seconds(since) == nil { throw ValidationError("--since \(since): expected a number with s, m or h, e.g. 30s or 5m") }
        if let output, output != "json" { throw ValidationError("-o \(output): expected json") }
    }

    /// "30s", "5m", "1h", or plain seconds.
    static func seconds(_ s: String) -> Double? {
        if let n = Double(s) { return n }
        guard let unit = s.last, let n = Double(s.dropLast()) else { return nil }
        switch unit { case "s": return n; case "m": return n * 60; case "h": return n * 3600; default: return nil }
    }

    func run() async throws {
        let state = try LabState.load(cluster.lab)
        let filter = FlowFilter(pod: pod, namespace: namespace, service: service, verdict: verdict.flatMap(Flow.Verdict.init), port: port,
                                since: since.flatMap(Self.seconds).map { Self.now() - $0 })
        var cursors: [String: UInt64] = [:]
        var unreachable: Set<String> = []
        repeat {
            var batch: [Flow] = []
            for n in state.nodes where node == nil || n.name == node {
                guard let (flows, next) = try AgentClient.flows(netns: n.netns, since: cursors[n.name] ?? 0) else {
                    if unreachable.insert(n.name).inserted {
                        let msg = Array("\(n.name): its agent does not answer on :\(AgentClient.port); its flows are missing\n".utf8)
                        _ = msg.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
                    }
                    continue
                }
                unreachable.remove(n.name)
                // A restarted agent numbers its flows from 1 again.
                cursors[n.name] = next < (cursors[n.name] ?? 0) ? 0 : next
                batch += flows.filter(filter.matches)
            }
            for f in batch.sorted(by: { $0.time < $1.time }) {
                if output == "json" { print(f.json.serialized()) } else {
                    print("\(Self.clock(f.time)) \(f.line)")
                }
            }
            fflush(nil)
            if follow { try await Task.sleep(for: .milliseconds(200)) }
        } while follow
    }

    static func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }

    static func clock(_ t: Double) -> String {
        var secs = time_t(t)
        var tm = tm()
        gmtime_r(&secs, &tm)
        return String(format: "%02d:%02d:%02d.%03d", tm.tm_hour, tm.tm_min, tm.tm_sec, Int((t - t.rounded(.down)) * 1000))
    }
}

struct PictureCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "picture",
        abstract: "Draw the lab from live state as one HTML page: host network, nodes with their routes, pods (isolated ones outlined), services and their endpoints; with --matrix, the connectivity matrix probed with real packets.")
    @OptionGroup var cluster: ClusterOptions
    @Option(name: .shortAndLong, help: "Where to write the page.") var output = "weft-lab.html"
    @Flag(help: "Probe every pod pair and draw the matrix (takes a few seconds).") var matrix = false

    func run() async throws {
        let state = try LabState.load(cluster.lab)
        let (store, _) = try cluster.open()
        let nodes = try await store.list(prefix: Keys.nodes).items.compactMap { (try? KubeObject(bytes: $0.value)).flatMap(NodeInfo.init) }
        let live = Set(try await store.list(prefix: Keys.nodeLeases).items.map { String($0.key.dropFirst(Keys.nodeLeases.count)) })
        let podObjects = try await ClusterClient(store: store).list(Keys.pods)
        let (policy, _) = try await DesiredState.policyInput(store)
        let services = try await DesiredState.serviceEntries(store)
        var views: [LabPicture.NodeView] = []
        for n in state.nodes {
            guard let info = nodes.first(where: { $0.name == n.name }) else { continue }
            let out = try? Subprocess.run("/usr/sbin/ip", arguments: ["-n", n.netns, "route", "show", "proto", "\(RouteEntry.weftProtocol)"],
                                          environment: ["PATH": "/usr/sbin:/usr/bin"], stdin: [])
            let routes = out.map { String(decoding: $0.stdout, as: UTF8.self).split(separator: "\n").map(String.init) } ?? []
            views.append(.init(info: info, live: live.contains(n.name), routes: routes))
        }
        let probed = matrix ? Connectivity(state: state, weftBinary: siblingExecutable("weft")).run(pods: podObjects, policy: policy) : nil
        let page = LabPicture(lab: state.name, mode: state.mode, nodes: views, pods: podObjects.compactMap(PolicyPod.init), services: services,
                              policy: policy, matrix: probed).html
        try Files.writeAtomically(output, Array(page.utf8))
        print("wrote \(output): \(views.count) node(s), \(podObjects.count) pod(s), \(services.count) service(s)\(probed.map { ", \($0.pairs - $0.failures.count)/\($0.pairs) pairs as expected" } ?? "")")
        if let probed, !probed.failures.isEmpty { throw ExitCode(1) }
    }
}
