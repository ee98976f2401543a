/// When to write a table whole and when to write only a change: the change when the kernel is
/// known to hold what was last written, the whole table at first, after a failed write, when
/// only that can make the change, and every `resync` (which repairs any drift). The caller
/// says how to do each; neither touches conntrack.
struct TableWriter {
    enum Outcome { case unchanged, updated, replaced }

    let resync: Duration
    /// The kernel holds what was last written.
    private var inKernel = false
    private var lastFull = ContinuousClock.now

    init(resyncSeconds: Double) { resync = .milliseconds(Int(resyncSeconds * 1000)) }

    /// - update: writes the change since the last write: false when there is none, nil when
    ///   only replacing the table can make it.
    /// - replace: writes the whole table.
    /// - onIncrementalFailure: told why an update failed before the table is replaced instead.
    mutating func write(update: () throws -> Bool?, replace: () throws -> Void, onIncrementalFailure: (Error) -> Void) throws -> Outcome {
        if inKernel, ContinuousClock.now - lastFull < resync {
            inKernel = false   // unknown until the update went through
            do {
                if let changed = try update() {
                    inKernel = true
                    return changed ? .updated : .unchanged
                }
            } catch {
                onIncrementalFailure(error)
            }
        }
        inKernel = false
        try replace()
        inKernel = true
        lastFull = ContinuousClock.now
        return .replaced
    }

    /// After a failure elsewhere: the next write replaces the table.
    mutating func forget() { inKernel = false }
}
