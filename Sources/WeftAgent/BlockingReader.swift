import Foundation
import Synchronization

private final class StopFlag: Sendable { let flag = Atomic(false) }

/// Runs a blocking `receive` (a netlink read with a timeout) on a thread of its own — it would
/// otherwise hold one of the few cooperative threads — and hands each item to `each`, until the
/// calling task is cancelled or `receive` throws; `close` runs on the thread when it ends.
func readOnThread<T: Sendable>(_ receive: @escaping @Sendable () throws -> [T], close: @escaping @Sendable () -> Void,
                               each: (T) async -> Void) async {
    let stop = StopFlag()
    let (items, sink) = AsyncStream.makeStream(of: T.self, bufferingPolicy: .bufferingNewest(1000))
    let reader = Thread {
        while !stop.flag.load(ordering: .relaxed) {
            guard let batch = try? receive() else { break }
            for x in batch { sink.yield(x) }
        }
        close()
        sink.finish()
    }
    reader.start()
    await withTaskCancellationHandler {
        for await x in items { await each(x) }
    } onCancel: {
        stop.flag.store(true, ordering: .relaxed)
    }
}
