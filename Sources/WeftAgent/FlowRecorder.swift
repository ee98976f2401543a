import Foundation
import Logging
import Synchronization
import WeftCore
import WeftOS

/// The node's flow log for `weft observe`: connections of pods starting and ending (conntrack
/// events of the node's namespace) and packets the policy table denied, each named with pods and
/// services, kept in a ring of the last `capacity` and served by `/flows?since=SEQ`.
final class FlowRecorder: Sendable {
    let node: String
    let capacity: Int
    private struct Ring { var flows: [Flow] = []; var next: UInt64 = 1 }
    private let ring = Mutex(Ring())
    private struct Names { var pods: [IPAddress: String] = [:]; var services: [IPAddress: String] = [:] }
    private let names = Mutex(Names())

    init(node: String, capacity: Int = 20_000) { self.node = node; self.capacity = capacity }

    func updatePods(_ pods: [PolicyPod]) {
        var m: [IPAddress: String] = [:]
        for p in pods where p.selectable { for a in p.addresses { m[a] = "\(p.namespace)/\(p.name)" } }
        names.withLock { $0.pods = m }
    }

    func updateServices(_ entries: [ServiceRules.Entry]) {
        var m: [IPAddress: String] = [:]
        for e in entries { for a in e.service.clusterIPs + e.service.externalIPs + e.service.loadBalancerIPs { m[a] = "\(e.service.namespace)/\(e.service.name)" } }
        names.withLock { $0.services = m }
    }

    /// Names the flow's ends and keeps it.
    func record(_ flow: Flow) {
        var f = flow
        names.withLock { n in
            // A spoofed source names an innocent pod: leave it unnamed (the reason names the interface).
            if f.event != "spoofed" { f.sourcePod = f.sourcePod ?? n.pods[f.source] }
            f.service = f.service ?? n.services[f.destination]
            f.destinationPod = f.destinationPod ?? n.pods[f.translated ?? f.destination]
        }
        ring.withLock { r in
            f.seq = r.next
            r.next += 1
            r.flows.append(f)
            // Trimmed in chunks: one removeFirst per event would move the whole ring each time.
            if r.flows.count > capacity + capacity / 4 { r.flows.removeFirst(r.flows.count - capacity) }
        }
    }

    /// At most `limit` flows after `seq` (sequence numbers ascend: binary search), and the
    /// cursor for the next call (the last flow returned; the newest when none is).
    func flows(after seq: UInt64, limit: Int = 5000) -> (flows: [Flow], next: UInt64) {
        ring.withLock { r in
            var lo = 0, hi = r.flows.count
            while lo < hi { let mid = (lo + hi) / 2; if r.flows[mid].seq <= seq { lo = mid + 1 } else { hi = mid } }
            let slice = Array(r.flows[lo..<min(r.flows.count, lo + limit)])
            return (slice, slice.last?.seq ?? (r.next - 1))
        }
    }

    /// Whether an entry concerns a pod or a service: the node's own traffic (to the datastore,
    /// its DNS upstreams) is not a flow anyone asked about.
    private func concernsPods(_ e: ConntrackEntry) -> Bool {
        names.withLock { n in
            [e.original.source, e.original.destination, e.reply.source].contains { n.pods[$0] != nil || n.services[$0] != nil }
        }
    }

    /// Reads conntrack events on a thread of its own (the read blocks) until cancelled.
    func followConntrack(logger: Logger, open: @escaping @Sendable () throws -> ConntrackEvents = { try ConntrackEvents() }) async {
        let events: ConntrackEvents
        do { events = try open() } catch {
            logger.error("cannot follow conntrack events; weft observe shows denials only", metadata: ["error": "\(error)"])
            return await waitForCancellation()
        }
        await readOnThread({ try events.receive(timeoutMilliseconds: 500) }, close: { events.close() }) { ev in
            if ev.kind != .update && concernsPods(ev.entry) { record(flow(ev)) }
        }
        if !Task.isCancelled { logger.error("reading conntrack events failed; weft observe shows denials only") }
        await waitForCancellation()
    }

    func flow(_ ev: ConntrackEvent) -> Flow {
        let o = ev.entry.original, r = ev.entry.reply
        var f = Flow(event: ev.kind == .new ? "new" : "end", verdict: .forwarded, time: Date().timeIntervalSince1970, node: node,
                     proto: o.proto.description.uppercased(), source: o.source, sourcePort: o.sourcePort, destination: o.destination, destinationPort: o.destinationPort)
        // A DNAT shows as a reply coming from somewhere else than the original destination.
        if r.source != o.destination || r.sourcePort != o.destinationPort { f.translated = r.source; f.translatedPort = r.sourcePort }
        if ev.kind == .destroy {
            if let p = ev.originalPackets { f.packets = p + (ev.replyPackets ?? 0) }
            if let b = ev.originalBytes { f.bytes = b + (ev.replyBytes ?? 0) }
        }
        return f
    }
}
