import WeftCore

/// When the nftables dataplane writes a table whole and when only a change: the change when the
/// kernel is known to hold what was last written; the whole table at first, after a failed
/// write, when only that can make the change, and when the caller asks (a resync, which
/// repairs any drift). The caller says how to do each; neither touches conntrack.
struct TableWriter {
    /// The kernel holds what was last written.
    private var inKernel = false

    /// - whole: write the whole table even if a change would do.
    /// - update: writes the change since the last write: false when there is none, nil when
    ///   only replacing the table can make it.
    /// - replace: writes the whole table.
    /// - onIncrementalFailure: told why an update failed before the table is replaced instead.
    mutating func write(whole: Bool = false, update: () throws -> Bool?, replace: () throws -> Void, onIncrementalFailure: (Error) -> Void) throws -> DataplaneWrite {
        if inKernel, !whole {
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
        return .replaced
    }

    /// After a failure elsewhere: the next write replaces the table.
    mutating func forget() { inKernel = false }
}
