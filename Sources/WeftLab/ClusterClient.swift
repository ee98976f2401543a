#if canImport(Glibc)
import Glibc
#endif
import WeftCore
import WeftOS

/// What `weft apply/get/delete` do against the datastore: Kubernetes' API semantics for the
/// kinds weft handles, with the scheduler's one job (picking a node) done at apply time.
public struct ClusterClient: Sendable {
    public let store: any Datastore
    public init(store: any Datastore) { self.store = store }

    public struct ApplyResult: Sendable {
        public var lines: [String] = []
        /// Pods to wait for (namespace/name): those applied and those a deployment created.
        public var pods: [String] = []
        /// Deployments whose old-template pods go once the new ones run (`finishRollouts`).
        public var rollouts: [Deployment] = []
    }

    /// Applies a file as one: every object is checked first (against the datastore and the
    /// file's own objects), and if any is refused, every refusal is reported and nothing is
    /// stored. A write that still fails (another client took an address meanwhile) undoes what
    /// this apply had written, so a file is never half applied.
    public func apply(_ objects: [KubeObject], source: String = "the file") async throws -> ApplyResult {
        // Namespaces first, so the objects in them find them.
        let ordered = objects.filter { $0.kind == "Namespace" } + objects.filter { $0.kind != "Namespace" }
        let refusals = try await refusals(ordered)
        guard refusals.isEmpty else { throw ManifestError(refused: refusals, source: source) }
        var result = ApplyResult()
        var undo = AppliedWrites()
        do {
            for o in ordered { try await write(o, into: &result, undo: &undo) }
        } catch {
            let left = await undo.revert(store)
            guard left.isEmpty else {
                throw ManifestError("\(error)\nwhat this apply had written is undone, except \(left.joined(separator: ", ")), changed meanwhile by another client")
            }
            throw ManifestError("\(error)\nnothing of \(source) was kept: what this apply had written is undone")
        }
        return result
    }

    /// What the API server (and, for pods, the scheduler) would refuse, object by object, with
    /// nothing written: allocations are tried against the datastore and each other, not claimed.
    func refusals(_ objects: [KubeObject]) async throws -> [String] {
        let namespacesInFile = Set(objects.filter { $0.kind == "Namespace" }.map(\.name))
        let tentative = ServiceAllocator.Reservations()
        var refusals: [String] = []
        for var o in objects {
            do {
                if Self.namespacedKinds.contains(o.kind) {
                    let ns = o.namespace ?? "default"
                    if o.namespace == nil { o.setMeta("namespace", .string(ns)) }
                    if ns != "default", !namespacesInFile.contains(ns), try await store.get(Keys.namespace(ns)) == nil {
                        throw ManifestError("\(o.kind.lowercased()) \(ns)/\(o.name): namespace \"\(ns)\" does not exist; apply a Namespace named \(ns) first")
                    }
                }
                let stored = try await store.get(try Keys.key(for: o)).map { try KubeObject(bytes: $0.value) }
                switch o.kind {
                case "Service":
                    _ = try await ServiceAllocator(store: store, dryRun: tentative).allocate(o, existing: stored)
                case "Pod":
                    try await checkPlacement(o)
                    if let stored, stored.spec.setting("nodeName", to: nil) != o.spec.setting("nodeName", to: nil) {
                        throw ManifestError("pod \(o.namespace ?? "default")/\(o.name): a pod's spec cannot change; delete it and apply again")
                    }
                case "Deployment":
                    _ = try await schedule() // its pods need a node
                default: break
                }
            } catch let e as ManifestError {
                refusals.append(e.description)
            }
        }
        return refusals
    }

    static let namespacedKinds: Set<String> = ["Service", "Pod", "EndpointSlice", "Deployment", "NetworkPolicy"]

    /// A pod names a node of the cluster, or some node is ready to take it.
    func checkPlacement(_ pod: KubeObject) async throws {
        guard let node = pod.nodeName else { _ = try await schedule(); return }
        if try await store.get(Keys.node(node)) == nil {
            throw ManifestError("pod \(pod.namespace ?? "default")/\(pod.name): spec.nodeName \"\(node)\" is not a node of this cluster; name one of `weft get nodes`, or leave it out to have one picked")
        }
    }

    /// Stores one checked object (created or configured) and notes how to take it back.
    func write(_ o: KubeObject, into result: inout ApplyResult, undo: inout AppliedWrites) async throws {
        var o = o
        if o.kind == "Namespace" {
            // As Kubernetes does: every namespace carries its own name as a label.
            var l = o.labels
            l["kubernetes.io/metadata.name"] = o.name
            o.labels = l
        }
        if Self.namespacedKinds.contains(o.kind) { try await placeInNamespace(&o) }
        let key = try Keys.key(for: o)
        let stored = try await store.get(key)
        if o.kind == "Service" {
            let existing = try stored.map { try KubeObject(bytes: $0.value) }
            o = try await ServiceAllocator(store: store).allocate(o, existing: existing)
            undo.allocated.append((o, existing))
        }
        if o.kind == "Pod" {
            if o.nodeName == nil { o.setSpec("nodeName", .string(try await schedule())) } else { try await checkPlacement(o) }
        }
        if let kv = stored {
            var existing = try KubeObject(bytes: kv.value)
            if o.kind == "Pod" && existing.spec.setting("nodeName", to: nil) != o.spec.setting("nodeName", to: nil) {
                throw ManifestError("pod \(o.namespace ?? "default")/\(o.name): a pod's spec cannot change; delete it and apply again")
            }
            existing.labels = o.labels
            existing.annotations = o.annotations
            if o.kind == "EndpointSlice" {
                // Its data sits beside metadata, not in a spec.
                for f in ["addressType", "endpoints", "ports"] { existing.json = existing.json.setting(f, to: o.json[f]) }
            } else if o.kind != "Pod" {
                existing.json = existing.json.setting("spec", to: o.json["spec"])
            }
            // A load balancer's address lives in status, which the allocator fills in.
            if o.kind == "Service" { existing.json = existing.json.setting("status", to: o.json["status"]) }
            let rev = try await store.update(key, value: existing.bytes, expectedRevision: kv.modRevision)
            undo.updated.append((key, kv.value, rev))
            result.lines.append("\(o.kind.lowercased())/\(o.name) configured")
        } else {
            let rev = try await store.create(key, value: o.bytes)
            undo.created.append((key, rev))
            result.lines.append("\(o.kind.lowercased())/\(o.name) created")
        }
        if o.kind == "Pod" { result.pods.append("\(o.namespace ?? "default")/\(o.name)") }
        if o.kind == "Deployment" {
            let d = try Deployment(o)
            result.pods += try await scale(d, created: &undo.created)
            result.rollouts.append(d)
        }
    }

    /// The Deployment controller's part that runs at apply time: pods of the current template
    /// created or removed to match `replicas`. Returns the current template's pods.
    func scale(_ d: Deployment, created: inout [(key: String, revision: Int64)]) async throws -> [String] {
        let plan = d.plan(existing: try await list(Keys.pods + d.namespace + "/"))
        for _ in 0..<plan.add {
            let suffix = String((0..<5).map { _ in "bcdfghjklmnpqrstvwxz2456789".randomElement()! })
            var pod = d.pod(suffix: suffix)
            pod.setSpec("nodeName", .string(try await schedule()))
            let key = try Keys.key(for: pod)
            created.append((key, try await store.create(key, value: pod.bytes)))
        }
        if !plan.removeNow.isEmpty { _ = try await delete(plan.removeNow, wait: false) }
        return try await list(Keys.pods + d.namespace + "/")
            .filter { d.owns($0) && $0.labels[Deployment.hashLabel] == d.templateHash && $0.json["metadata"]?["deletionTimestamp"] == nil }
            .map { "\(d.namespace)/\($0.name)" }
    }

    /// After the new pods run: the pods of older templates go (gracefully).
    public func finishRollouts(_ rollouts: [Deployment]) async throws -> [String] {
        var lines: [String] = []
        for d in rollouts {
            let old = d.plan(existing: try await list(Keys.pods + d.namespace + "/")).removeAfterRollout
            if !old.isEmpty {
                _ = try await delete(old, wait: false)
                lines.append("deployment/\(d.name): \(old.count) pod(s) of the previous template terminating")
            }
        }
        return lines
    }

    /// Namespaced objects: metadata.namespace filled in ("default" when absent) and checked to
    /// exist; "default" is created on first use, as Kubernetes always has it.
    func placeInNamespace(_ o: inout KubeObject) async throws {
        let ns = o.namespace ?? "default"
        if o.namespace == nil { o.setMeta("namespace", .string(ns)) }
        guard try await store.get(Keys.namespace(ns)) == nil else { return }
        if ns == "default" { return try await ensureDefaultNamespace() }
        throw ManifestError("\(o.kind.lowercased()) \(ns)/\(o.name): namespace \"\(ns)\" does not exist; apply a Namespace named \(ns) first")
    }

    /// The cluster DNS service, as a cluster installer adds it: `kube-system/kube-dns` on the
    /// well-known address 10.96.0.10, DNS over UDP and TCP, no selector (every agent publishes
    /// its own resolver as an endpoint) and internalTrafficPolicy Local (a pod asks its own
    /// node). Returns its address; idempotent.
    public func ensureClusterDNS() async throws -> IPAddress {
        let key = Keys.services + "kube-system/kube-dns"
        while true {
            if let kv = try await store.get(key), let ip = try ClusterService(KubeObject(bytes: kv.value)).clusterIPs.first { return ip }
            var ns = KubeObject(apiVersion: "v1", kind: "Namespace", name: "kube-system")
            ns.labels = ["kubernetes.io/metadata.name": "kube-system"]
            do { try await store.create(Keys.namespace("kube-system"), value: ns.bytes) } catch DatastoreError.conflict {}
            var svc = KubeObject(json: try JSONValue.parse(#"""
                {"apiVersion":"v1","kind":"Service","metadata":{"name":"kube-dns","namespace":"kube-system","labels":{"k8s-app":"kube-dns"}},
                 "spec":{"clusterIP":"\#(Self.clusterDNSAddress)","internalTrafficPolicy":"Local",
                         "ports":[{"name":"dns","port":53,"protocol":"UDP"},{"name":"dns-tcp","port":53,"protocol":"TCP"}]}}
                """#))
            svc = try await ServiceAllocator(store: store).allocate(svc, existing: nil)
            do { try await store.create(key, value: svc.bytes) } catch DatastoreError.conflict { continue }
        }
    }

    public static let clusterDNSAddress = "10.96.0.10"

    public func ensureDefaultNamespace() async throws {
        var ns = KubeObject(apiVersion: "v1", kind: "Namespace", name: "default")
        ns.labels = ["kubernetes.io/metadata.name": "default"]
        do { try await store.create(Keys.namespace("default"), value: ns.bytes) } catch DatastoreError.conflict {}
    }

    /// The live node with the fewest pods (ties by name).
    func schedule() async throws -> String {
        let nodes = try await liveNodes()
        guard !nodes.isEmpty else { throw ManifestError("no node is ready to run pods; is the lab up and are its agents running?") }
        let pods = try await list(Keys.pods)
        let load = Dictionary(grouping: pods.compactMap(\.nodeName), by: { $0 }).mapValues(\.count)
        return nodes.map(\.name).min { (load[$0] ?? 0, $0) < (load[$1] ?? 0, $1) }!
    }

    /// What an apply wrote, to take back if a later write of the same file fails.
    struct AppliedWrites {
        var created: [(key: String, revision: Int64)] = []
        var updated: [(key: String, previous: [UInt8], revision: Int64)] = []
        /// Services as allocated, with the version stored before (nil: new).
        var allocated: [(KubeObject, KubeObject?)] = []

        /// Newest first. A key this apply created goes even if its status was written since (the
        /// runtime records a pod's addresses at once); a key someone else re-created or updated is
        /// theirs and left alone. Returns the keys that could not be taken back.
        func revert(_ store: any Datastore) async -> [String] {
            var left: [String] = []
            for (key, rev) in created.reversed() {
                guard let kv = try? await store.get(key) else { continue }
                guard kv.createRevision == rev, (try? await store.delete(key, expectedRevision: kv.modRevision)) != nil else { left.append(key); continue }
            }
            for (key, previous, rev) in updated.reversed() where (try? await store.update(key, value: previous, expectedRevision: rev)) == nil {
                left.append(key)
            }
            for (service, before) in allocated.reversed() { try? await ServiceAllocator(store: store).release(service, keeping: before) }
            return left
        }
    }

    /// Deletes what `objects` name. A running pod is deleted gracefully, as Kubernetes does: it
    /// gets a deletionTimestamp and its node's runtime runs the preStop hook, stops its
    /// processes within the grace period (`gracePeriod`, else the pod's
    /// terminationGracePeriodSeconds, else 30 s) and removes it; meanwhile it is a terminating
    /// endpoint. Grace 0, or a pod that never ran, goes at once. With `wait`, returns when every
    /// pod named is gone.
    public func delete(_ objects: [KubeObject], gracePeriod: Int? = nil, wait: Bool = true) async throws -> [String] {
        var lines: [String] = []
        var draining: [String] = []
        for o in objects {
            var o = o
            if ["Pod", "Service", "EndpointSlice", "Deployment"].contains(o.kind) && o.namespace == nil { o.setMeta("namespace", .string("default")) }
            let key = try Keys.key(for: o)
            if o.kind == "Node" {
                // A departed node's pod ranges go back to the pool.
                for kv in try await store.list(prefix: Keys.podRanges).items where (try? JSONValue.parse(kv.value)["node"]?.stringValue) == o.name {
                    try await store.delete(kv.key, expectedRevision: nil)
                }
            }
            guard let stored = try await store.get(key) else { lines.append("\(o.kind.lowercased())/\(o.name) not found"); continue }
            if o.kind == "Pod", try await markTerminating(key: key, gracePeriod: gracePeriod) {
                draining.append(key)
                lines.append("pod/\(o.name) deleted")
                continue
            }
            try await store.delete(key, expectedRevision: nil)
            if o.kind == "Service" { try await ServiceAllocator(store: store).release(try KubeObject(bytes: stored.value)) }
            if o.kind == "Deployment", let d = try? Deployment(try KubeObject(bytes: stored.value)) {
                // Its pods go with it (graceful, like any pod deletion).
                let pods = try await list(Keys.pods + d.namespace + "/").filter(d.owns)
                lines += try await delete(pods, gracePeriod: gracePeriod, wait: wait).map { "  " + $0 }
            }
            lines.append("\(o.kind.lowercased())/\(o.name) deleted")
        }
        if wait {
            for key in draining {
                let grace = (try? await store.get(key)).flatMap { $0 }.flatMap { try? KubeObject(bytes: $0.value) }?
                    .json["metadata"]?["deletionGracePeriodSeconds"]?.intValue ?? 30
                let deadline = ContinuousClock.now + .seconds(grace + 30)
                while try await store.get(key) != nil {
                    guard ContinuousClock.now < deadline else {
                        throw ManifestError("\(key.dropFirst(Keys.pods.count)) is still terminating after \(grace + 30) s; is its node's runtime running?")
                    }
                    try await Task.sleep(for: .milliseconds(100))
                }
            }
        }
        return lines
    }

    /// Sets deletionTimestamp and deletionGracePeriodSeconds on a running pod (its runtime does
    /// the rest); false when the pod should simply be removed (never ran, or grace 0).
    func markTerminating(key: String, gracePeriod: Int?) async throws -> Bool {
        while true {
            guard let kv = try await store.get(key) else { return true } // gone meanwhile: nothing left to do
            var pod = try KubeObject(bytes: kv.value)
            let grace = gracePeriod ?? pod.spec["terminationGracePeriodSeconds"]?.intValue ?? 30
            guard grace > 0, pod.status["phase"]?.stringValue == "Running" else { return false }
            if pod.json["metadata"]?["deletionTimestamp"] != nil {
                // Already terminating: only a shorter grace period is taken, as Kubernetes does.
                guard grace < pod.json["metadata"]?["deletionGracePeriodSeconds"]?.intValue ?? .max else { return true }
            } else {
                pod.setMeta("deletionTimestamp", .string(rfc3339Now()))
            }
            pod.setMeta("deletionGracePeriodSeconds", .number(Double(grace)))
            do { try await store.update(key, value: pod.bytes, expectedRevision: kv.modRevision); return true } catch DatastoreError.conflict { continue }
        }
    }

    public func list(_ prefix: String) async throws -> [KubeObject] {
        try await store.list(prefix: prefix).items.compactMap { try? KubeObject(bytes: $0.value) }
    }

    public func liveNodes() async throws -> [NodeInfo] {
        let live = Set(try await store.list(prefix: Keys.nodeLeases).items.map { String($0.key.dropFirst(Keys.nodeLeases.count)) })
        return try await list(Keys.nodes).compactMap(NodeInfo.init).filter { live.contains($0.name) && !$0.podCIDRs.isEmpty }
    }

    /// Nodes as `kubectl get nodes -o json` shows them, with a Ready condition from the lease.
    public func nodeObjects() async throws -> [KubeObject] {
        let live = Set(try await store.list(prefix: Keys.nodeLeases).items.map { String($0.key.dropFirst(Keys.nodeLeases.count)) })
        return try await list(Keys.nodes).map { n in
            var n = n
            n.setStatus("conditions", .array([.object([("type", .string("Ready")), ("status", .string(live.contains(n.name) ? "True" : "Unknown"))])]))
            return n
        }
    }

    /// Waits until every pod in `names` (ns/name) has a phase; returns those that failed.
    public func waitForPods(_ names: [String], timeoutSeconds: Double) async throws -> [String: String] {
        let deadline = ContinuousClock.now + .milliseconds(Int(timeoutSeconds * 1000))
        while ContinuousClock.now < deadline {
            let pods = try await list(Keys.pods)
            var pending = 0
            var failed: [String: String] = [:]
            for n in names {
                guard let p = pods.first(where: { "\($0.namespace ?? "default")/\($0.name)" == n }) else { continue }
                switch p.status["phase"]?.stringValue {
                case "Running": break
                case "Failed": failed[n] = p.status["message"]?.stringValue ?? "failed"
                default: pending += 1
                }
            }
            if pending == 0 { return failed }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw ManifestError("pods did not start within \(Int(timeoutSeconds)) s; see `weft get pods -A` and the runtime logs in /run/weft/lab/NAME/NODE/")
    }

    /// Waits until `count` nodes are live and have pod ranges.
    public func waitForNodes(_ count: Int, timeoutSeconds: Double) async throws {
        let deadline = ContinuousClock.now + .milliseconds(Int(timeoutSeconds * 1000))
        while ContinuousClock.now < deadline {
            if (try? await liveNodes().count) ?? 0 >= count { return }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw ManifestError("only \((try? await liveNodes().count) ?? 0) of \(count) nodes became ready within \(Int(timeoutSeconds)) s; see the agent logs")
    }
}

/// Kubectl-style tables.
public enum Tables {
    public static func render(_ header: [String], _ rows: [[String]]) -> String {
        let widths = header.indices.map { i in ([header[i]] + rows.map { i < $0.count ? $0[i] : "" }).map(\.count).max()! + 3 }
        func line(_ cells: [String]) -> String {
            var s = ""
            for (i, c) in cells.enumerated() { s += i == cells.count - 1 ? c : c + String(repeating: " ", count: widths[i] - c.count) }
            return s
        }
        return ([line(header)] + rows.map(line)).joined(separator: "\n")
    }
}

/// The current time as Kubernetes writes timestamps (RFC 3339, UTC, seconds).
func rfc3339Now() -> String {
    var t = time(nil)
    var parts = tm()
    gmtime_r(&t, &parts)
    var buf = [CChar](repeating: 0, count: 32)
    let n = strftime(&buf, buf.count, "%Y-%m-%dT%H:%M:%SZ", &parts)
    return String(decoding: buf[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
}
