import Foundation
import WeftAgent
import WeftCore
import WeftDatastore
import WeftOS

// The agent's whole pass for one endpoint change, from the embedded datastore: list Services
// and EndpointSlices (the agent reads them whole each pass; unchanged ones come from its
// cache by revision), build the entries, update the model in place, write the change as
// netlink batches. Everything but the watch's wake-up, which is a separate latency.

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
    say("| services × endpoints | fill the datastore | first pass (read + full sync) | one-endpoint change p50 / p99 (whole pass) | of which reading the datastore, p50 / p99 | RSS after |")
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
        let cache = DesiredState.ServiceCache()
        let nft = LibNFTables(), netlink = NFTablesNetlink()
        var model = ServiceRules.Model(node: "node0")
        let first = try await clock.measure {
            let entries = try await DesiredState.serviceEntries(store, cache: cache)
            model = ServiceRules.model(entries, node: "node0")
            let script = ServiceRules.fullScript(model, replacing: try netns.run { () throws(NFTablesError) in try nft.tableNames() })
            try netns.run { () throws(NFTablesError) in try nft.run(script) }
        }
        var passes: [Double] = [], reads: [Double] = []
        for k in 1...101 {
            let current = try await store.get(sliceKey)!
            try await store.update(sliceKey, value: Array(sliceJSON(0, shift: 1000 + k).utf8), expectedRevision: current.modRevision)
            var read = Duration.zero
            let pass = try await clock.measure {
                let t0 = ContinuousClock.now
                let entries = try await DesiredState.serviceEntries(store, cache: cache)
                read = ContinuousClock.now - t0
                guard entries.count == n else { fatalError("read \(entries.count) services, expected \(n)") }
                guard let change = model.update(with: entries) else { fatalError("change \(k) found nothing to write") }
                try netns.run { () throws(NFTablesError) in try netlink.apply(change.ops) }
            }
            if k > 1 { passes.append(ms(pass)); reads.append(ms(read)) }
        }
        say(String(format: "| %d × 10 | %.1f s | %.0f ms | %.1f / %.1f ms | %.1f / %.1f ms | %.0f MiB |", n, ms(fill) / 1000, ms(first),
                   percentile(passes, 0.5), percentile(passes, 0.99), percentile(reads, 0.5), percentile(reads, 0.99), rssMiB()))
    }
}
