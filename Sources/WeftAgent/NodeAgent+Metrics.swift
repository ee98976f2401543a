import Foundation
import WeftCore
import WeftOS

extension NodeAgent {
    /// What the metrics read by polling, every `period`: the CNI plugin's event log (from where
    /// the last read ended), IPAM use, conntrack, the dataplane's drop counters.
    func collectMetrics(ranges: [IPRange], period: Duration = .seconds(2)) async {
        // Events from before this agent started were counted by its predecessor, if at all.
        var offset = (try? Files.read(config.cniEventLog).count) ?? 0
        while !Task.isCancelled {
            offset = readCNIEvents(from: offset)
            let held = Set(((try? Files.list(config.ipamDataDir + "/weft")) ?? []).compactMap(IPAddress.init))
            for r in ranges {
                metrics.ipam(range: r.subnet.description, capacity: Int(min(r.capacity, UInt128(Int.max))), allocated: held.filter(r.contains).count)
            }
            if let n = try? Files.readString("/proc/sys/net/netfilter/nf_conntrack_count"), let m = try? Files.readString("/proc/sys/net/netfilter/nf_conntrack_max"),
               let count = Int(n.trimmingCharacters(in: .whitespacesAndNewlines)), let max = Int(m.trimmingCharacters(in: .whitespacesAndNewlines)) {
                metrics.conntrack(entries: count, limit: max)
            }
            if let drops = try? dataplane.drops() {
                for (reason, packets) in drops.sorted(by: { $0.key.rawValue < $1.key.rawValue }) { metrics.dropped(reason: reason.rawValue, packets: packets) }
            }
            try? await Task.sleep(for: period)
        }
    }

    /// Reads the plugin's events after `offset`; returns where the next read starts. The log is
    /// emptied past 4 MiB (a few events written meanwhile may be lost; metrics, not an audit).
    func readCNIEvents(from offset: Int) -> Int {
        let path = config.cniEventLog
        guard let bytes = try? Files.read(path) else { return 0 }
        let start = bytes.count < offset ? 0 : offset   // emptied by someone: start over
        let (events, used) = CNIEvent.parse(bytes[start...])
        for e in events { metrics.cni(e) }
        if start + used > 4 << 20 {
            _ = truncate(path, 0)
            return 0
        }
        return start + used
    }

    /// Watch lag, measured: the agent writes its heartbeat key (on its node lease) every
    /// `period` and times how long its own watch takes to deliver each write.
    func heartbeat(lease: Int64, period: Duration = .seconds(5)) async throws {
        let key = Keys.heartbeat(config.nodeName)
        let sent = SentTimes()
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                while !Task.isCancelled {
                    do {
                        let (_, rev) = try await self.store.list(prefix: key)
                        // The key is a prefix of others' (node1 of node10): only ours counts.
                        for try await e in self.store.watch(prefix: key, afterRevision: rev) where e.kv.key == key {
                            if let at = await sent.take(String(decoding: e.kv.value, as: UTF8.self)) { self.metrics.watchLag(ContinuousClock.now - at) }
                        }
                    } catch is CancellationError { return } catch {
                        self.metrics.watchRestarted(key)
                        try await Task.sleep(for: .milliseconds(200))
                    }
                }
            }
            group.addTask {
                var seq = 0
                while !Task.isCancelled {
                    try await Task.sleep(for: period)
                    seq += 1
                    let value = Array("\(seq)".utf8)
                    do {
                        let existing = try await self.store.get(key)
                        await sent.put("\(seq)", ContinuousClock.now)
                        if let kv = existing {
                            try await self.store.update(key, value: value, expectedRevision: kv.modRevision, lease: lease)
                        } else {
                            try await self.store.create(key, value: value, lease: lease)
                        }
                    } catch is CancellationError { return } catch {
                        self.metrics.datastoreErrors()
                    }
                }
            }
            try await group.next()
            group.cancelAll()
        }
    }
}

/// Heartbeats written and not yet seen back.
actor SentTimes {
    private var times: [String: ContinuousClock.Instant] = [:]
    func put(_ k: String, _ t: ContinuousClock.Instant) { times[k] = t; if times.count > 100 { times.removeAll() } }
    func take(_ k: String) -> ContinuousClock.Instant? { times.removeValue(forKey: k) }
}
