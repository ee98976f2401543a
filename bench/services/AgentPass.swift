import Foundation
import WeftAgent
import WeftCore
import WeftDatastore
import WeftOS

// The agent's way from an EndpointSlice written in the embedded datastore (SQLite) to the
// rules in the kernel, with 100-10,000 services in both: the watch delivers the event to the
// agent's `ServiceSource` (a copy of Services and slices kept from one list and the events),
// which rebuilds that service's entry; the model is updated with the change alone and written
// as a netlink batch. Measured two ways per change: from the datastore write (includes the
// SQLite watch's polling, every 50 ms) and from the event's arrival (the agent's own pass).

private func serviceJSON(_ i: Int) -> String {
    let ip = "10.96.\((16 + i) >> 8 & 0xff).\((16 + i) & 0xff)"
    return #"{"apiVersion":"v1","kind":"Service","metadata":{"name":"s\#(i)","namespace":"bench"},"spec":{"clusterIP":"\#(ip)","selector":{"app":"s\#(i)"},"ports":[{"port":80,"targetPort":8080}]}}"#
}

private func sliceJSON(_ i: Int, shift: Int = 0) -> String {
    let eps = (0..<10).map { e -> String in
        let v = 0x0AF4_0000 + i * 16 + e + (e == 0 ? shift : 0)
        let ip = "\(v >> 24 & 0xff).\(v >> 16 & 0xff).\(v >> 8 & 0xff).\(v & 0xff)"
        return #"{"addresses":["\#(ip)"],"conditions":{"ready":true},"nodeName":"node0","targetRef":{"kind":"Pod","name":"s\#(i)-\#(e)","namespace":"bench"}}"#
    }.joined(separator: ",")
    return #"{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","metadata":{"name":"s\#(i)-a","namespace":"bench","labels":{"kubernetes.io/service-name":"s\#(i)"}},"addressType":"IPv4","ports":[{"port":8080}],"endpoints":[\#(eps)]}"#
}

func agentPass(sizes: [Int], netns: NetworkNamespace) async throws {
    say("| services × endpoints | fill the datastore | first pass (list + full sync) | datastore write → rules in the kernel, p50 / p99 | event → rules in the kernel (the agent's pass), p50 / p99 | RSS after |")
    say("| --- | --- | --- | --- | --- | --- |")
    let clock = ContinuousClock()
    for n in sizes {
        let dir = NSTemporaryDirectory() + "weft-bench-agent-\(getpid())-\(n)"
        try? FileManager.default.removeItem(atPath: dir)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let store = try SQLiteDatastore(path: dir + "/weft.db")
        let sliceKey = Keys.endpointSlices + "bench/s0-a"
        let fill = try await clock.measure {
            for i in 0..<n {
                try await store.create(Keys.services + "bench/s\(i)", value: Array(serviceJSON(i).utf8))
                try await store.create(Keys.endpointSlices + "bench/s\(i)-a", value: Array(sliceJSON(i).utf8))
            }
        }
        // As the agent feeds its source (ChangeFeed's wakeOnChanges): list, then each event.
        let source = ServiceSource()
        let (arrivals, arrived) = AsyncStream.makeStream(of: ContinuousClock.Instant.self, bufferingPolicy: .bufferingNewest(1))
        let feeds = [Keys.services, Keys.endpointSlices].map { prefix in
            Task {
                let (items, rev) = try await store.list(prefix: prefix)
                source.replace(prefix: prefix, with: items)
                arrived.yield(.now)
                for try await e in store.watch(prefix: prefix, afterRevision: rev) {
                    source.apply(e)
                    arrived.yield(.now)
                }
            }
        }
        defer { feeds.forEach { $0.cancel() } }
        var wakes = arrivals.makeAsyncIterator()
        let nft = LibNFTables(), netlink = NFTablesNetlink()
        var model = ServiceRules.Model(node: "node0")
        let t0 = ContinuousClock.now
        while !source.isSynced { _ = await wakes.next() }
        _ = source.take()
        model = ServiceRules.model(source.entries, node: "node0")
        // The agent's full sync: one netlink transaction.
        let ops = ServiceRules.fullSync(model, replacing: try netns.run { () throws(NFTablesError) in try nft.tableNames() })
        try netns.run { () throws(NFTablesError) in try netlink.apply(ops) }
        let first = ContinuousClock.now - t0
        var endToEnd: [Double] = [], passes: [Double] = []
        for k in 1...101 {
            let current = try await store.get(sliceKey)!
            let written = ContinuousClock.now
            try await store.update(sliceKey, value: Array(sliceJSON(0, shift: 1000 + k).utf8), expectedRevision: current.modRevision)
            var delta = ServiceSource.Delta()
            var at = written
            while delta.isEmpty {
                guard let t = await wakes.next() else { fatalError("the watch ended") }
                at = t
                delta = source.take()
            }
            guard delta.changed.count == 1, delta.removed.isEmpty else { fatalError("change \(k): expected one service changed, got \(delta.changed.count) and \(delta.removed.count) removed") }
            guard let change = model.update(changed: delta.changed, removed: delta.removed), !change.isEmpty else { fatalError("change \(k) found nothing to write") }
            try netns.run { () throws(NFTablesError) in try netlink.apply(change.ops) }
            let done = ContinuousClock.now
            if k > 1 { endToEnd.append(ms(done - written)); passes.append(ms(done - at)) }
        }
        say(String(format: "| %d × 10 | %.1f s | %.0f ms | %.1f / %.1f ms | %.1f / %.1f ms | %.0f MiB |", n, ms(fill) / 1000, ms(first),
                   percentile(endToEnd, 0.5), percentile(endToEnd, 0.99), percentile(passes, 0.5), percentile(passes, 0.99), rssMiB()))
    }
}
