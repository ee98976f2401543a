import Foundation
import Logging
import Synchronization
import WeftCore
import WeftOS

/// The agent's NetworkPolicy enforcement: follows policies, pods, namespaces and the cluster
/// DNS endpoints in the cluster cache, hands what they describe to the node's dataplane (which
/// writes only the difference: a pod changing labels moves set elements), and explains each
/// packet the dataplane logs as denied: which pod, which peer, which port, and which policies
/// isolate the pod without allowing it. Level-based like the service proxy; the dataplane
/// rewrites everything at start, after a failed write and every `resyncSeconds`.
final class PolicyEnforcer: Sendable {
    let cache: ClusterCache
    let logger: Logger
    let node: String
    let resyncSeconds: Double
    /// Opens the node's nflog group (nil in tests without a kernel).
    let openLog: @Sendable () throws -> NFLog?
    let metrics: AgentMetrics
    /// Parsed pods and policies kept between passes (only the apply loop reads with it).
    let parseCache = DesiredState.ParseCache()
    /// Told the pods (to name flows) and each denial (a dropped flow).
    let flows: FlowRecorder?
    /// Where policy is programmed (nftables in the agent, a fake in tests).
    let dataplane: any Dataplane

    init(cache: ClusterCache, logger: Logger, node: String, dataplane: any Dataplane, resyncSeconds: Double = 300, metrics: AgentMetrics = AgentMetrics(),
         flows: FlowRecorder? = nil, openLog: @escaping @Sendable () throws -> NFLog? = { try NFLog(group: PolicyRules.logGroup) }) {
        self.cache = cache; self.logger = logger; self.node = node; self.dataplane = dataplane; self.resyncSeconds = resyncSeconds; self.metrics = metrics
        self.flows = flows; self.openLog = openLog
    }

    /// What the last pass read, for explaining logged packets.
    let state = Mutex(PolicyRules.Input(policies: [], pods: [], namespaces: [:]))
    let nodeAddresses = Mutex([IPAddress: String]())

    func run() async throws {
        let changes = cache.subscribe(DesiredState.policyPrefixes)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await changes.tick(every: self.resyncSeconds) }
            group.addTask { try await self.apply(changes) }
            group.addTask { await self.explainDenials() }
            try await group.next()
            group.cancelAll()
        }
    }

    /// From the cache's copy: a pass reads no datastore.
    func readInput() -> PolicyRules.Input {
        let (input, hosts) = DesiredState.policyInput(reading: cache.items, cache: parseCache) { error in
            logger.warning("skipping a network policy weft cannot read", metadata: ["error": "\(error)"])
        }
        nodeAddresses.withLock { $0 = hosts }
        flows?.updatePods(input.pods)
        return input
    }

    private func apply(_ changes: ClusterCache.Subscription) async throws {
        var resynced: ContinuousClock.Instant?   // the last whole write; nil: none yet
        while await changes.next() != nil {
            let started = ContinuousClock.now
            do {
                let input = readInput()
                state.withLock { $0 = input }
                let meta: Logger.Metadata = ["policies": "\(input.policies.count)", "pods": "\(input.pods.count)"]
                let resync = resynced.map { started - $0 >= .milliseconds(Int(resyncSeconds * 1000)) } ?? true
                // Whatever becomes of the write: a dataplane whose write failed writes whole next.
                if resync { resynced = started }
                let outcome = try dataplane.programPolicy(input, resync: resync)
                metrics.reconciled("policy", took: ContinuousClock.now - started, failed: false)
                metrics.programmed(dataplane.counts(.policy))
                switch outcome {
                case .unchanged: break
                case .updated: logger.info("network policies updated", metadata: meta)
                case .replaced: logger.info("network policies programmed (full sync)", metadata: meta)
                }
            } catch {
                metrics.reconciled("policy", took: ContinuousClock.now - started, failed: true)
                logger.error("programming network policies failed; retrying at the next change or resync", metadata: ["error": "\(error)"])
            }
        }
    }

    static func interfaceName(_ index: UInt32) -> String? {
        var buf = [CChar](repeating: 0, count: Int(IF_NAMESIZE) + 1)
        guard if_indextoname(index, &buf) != nil else { return nil }
        return String(cString: buf)
    }

    /// Reads the packets the table logs (on a thread of its own: the read blocks) and logs each
    /// with its explanation.
    private func explainDenials() async {
        let log: NFLog
        do {
            guard let l = try openLog() else { return await waitForCancellation() }
            log = l
        } catch {
            logger.error("cannot read denied packets (nflog); verdicts are still counted, not explained", metadata: ["error": "\(error)"])
            return await waitForCancellation()
        }
        await readOnThread({ try log.receive(timeoutMilliseconds: 500) }, close: { log.close() }) { p in
            let input = self.state.withLock { $0 }
            let hosts = self.nodeAddresses.withLock { $0 }
            let d = PolicyVerdict.explain(p.prefix, source: p.source, destination: p.destination, proto: p.proto,
                                          sourcePort: p.sourcePort, destinationPort: p.destinationPort,
                                          interface: p.inInterface.flatMap(Self.interfaceName), input: input, nodes: hosts)
            self.metrics.denialLogged(d)
            var f = Flow(event: d.direction == "spoofed" ? "spoofed" : "denied", verdict: .dropped, time: Date().timeIntervalSince1970, node: self.node,
                         proto: d.proto, source: p.source, sourcePort: p.sourcePort, destination: p.destination, destinationPort: p.destinationPort)
            f.reason = d.direction == "spoofed" ? "source address not the pod's; sent by the pod behind \(d.interface ?? "?")" : "\(d.direction): no policy allows it; isolated by \(d.policies.joined(separator: ", "))"
            self.flows?.record(f)
            self.logger.notice("\(d.summary)", metadata: d.metadata.mapValues { .string($0) })
        }
        // The reader stopped on an error: this best-effort task must not end the agent's group.
        await waitForCancellation()
    }
}
