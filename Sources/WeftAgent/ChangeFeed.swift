import Logging
import WeftCore

/// Wakes `wake` once after listing `prefix` and then on every event under it, relisting after
/// a broken watch (compaction, datastore restart). For level-based loops that recompute from a
/// fresh list on each wake-up: bursts coalesce in a `bufferingNewest(1)` stream.
func wakeOnChanges(_ store: any Datastore, prefix: String, logger: Logger, wake: AsyncStream<Void>.Continuation) async throws {
    while !Task.isCancelled {
        do {
            let (_, rev) = try await store.list(prefix: prefix)
            wake.yield()
            for try await _ in store.watch(prefix: prefix, afterRevision: rev) { wake.yield() }
        } catch is CancellationError { return } catch {
            logger.warning("watch interrupted; relisting", metadata: ["prefix": "\(prefix)", "error": "\(error)"])
            try await Task.sleep(for: .milliseconds(200))
        }
    }
}
