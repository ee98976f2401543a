import Logging
import WeftCore
import WeftOS

/// The agent's kube-proxy: follows Services and Pods in the datastore and keeps the node's
/// `inet weft-services` table equal to what they describe. Level-based: each change (bursts
/// coalesce) recomputes the whole table from the datastore; an unchanged result is not
/// written again, except at the periodic resync, which repairs drift. Replacing the table is
/// one transaction and leaves conntrack alone, so established connections keep their NAT.
struct ServiceProxy: Sendable {
    let store: any Datastore
    let logger: Logger
    var resyncSeconds: Double = 30

    func run() async throws {
        let (changes, wake) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await follow(Keys.services, wake: wake) }
            group.addTask { try await follow(Keys.pods, wake: wake) }
            group.addTask {
                while !Task.isCancelled {
                    try await Task.sleep(for: .milliseconds(Int(resyncSeconds * 1000)))
                    wake.yield()
                }
            }
            group.addTask { try await apply(changes) }
            try await group.next()
            group.cancelAll()
        }
    }

    /// Wakes the applier on every event under `prefix`; relists after a broken watch.
    private func follow(_ prefix: String, wake: AsyncStream<Void>.Continuation) async throws {
        while !Task.isCancelled {
            do {
                let (_, rev) = try await store.list(prefix: prefix)
                wake.yield()
                for try await _ in store.watch(prefix: prefix, afterRevision: rev) { wake.yield() }
            } catch is CancellationError { return } catch {
                logger.warning("services watch interrupted; relisting", metadata: ["prefix": "\(prefix)", "error": "\(error)"])
                try await Task.sleep(for: .milliseconds(200))
            }
        }
    }

    private func apply(_ changes: AsyncStream<Void>) async throws {
        let nft = LibNFTables()
        var applied: String?
        var lastWrite = ContinuousClock.now
        for await _ in changes {
            do {
                let services = try await store.list(prefix: Keys.services).items.compactMap { try? KubeObject(bytes: $0.value) }
                let pods = try await store.list(prefix: Keys.pods).items.compactMap { try? KubeObject(bytes: $0.value) }
                var entries: [ServiceRules.Entry] = []
                for o in services {
                    guard let s = try? ClusterService(o) else {
                        logger.warning("skipping a service the datastore holds but weft cannot read", metadata: ["service": "\(o.namespace ?? "default")/\(o.name)"])
                        continue
                    }
                    entries.append(.init(service: s, endpoints: s.endpoints(from: pods)))
                }
                let script = ServiceRules.script(entries)
                let due = ContinuousClock.now - lastWrite >= .milliseconds(Int(resyncSeconds * 1000))
                if script != applied || due {
                    try nft.run(script)
                    if script != applied {
                        logger.info("services programmed", metadata: ["services": "\(entries.count)",
                                                                     "endpoints": "\(entries.reduce(0) { $0 + $1.endpoints.filter(\.ready).count })"])
                    }
                    applied = script
                    lastWrite = ContinuousClock.now
                }
            } catch {
                logger.error("programming services failed; retrying at the next change or resync", metadata: ["error": "\(error)"])
            }
        }
    }
}
