import WeftCore
import WeftOS

/// Keeps one nftables table equal to a desired model: the difference from the model last
/// written when there is one (its size follows the change, not the table), the whole table in
/// one transaction at first, after a failed write, when only that can do it, and every
/// `resync` (which repairs any drift). Neither touches conntrack.
struct TableWriter<Model> {
    enum Outcome { case unchanged, updated, replaced }

    /// Writes the whole table.
    let replace: (Model) throws -> Void
    /// Writes the difference from `have` to `want`: false when there is none, nil when only
    /// replacing the table can make the change.
    let update: (_ have: Model, _ want: Model) throws -> Bool?
    let resync: Duration
    private var applied: Model?
    private var lastFull = ContinuousClock.now

    init(resyncSeconds: Double, replace: @escaping (Model) throws -> Void, update: @escaping (Model, Model) throws -> Bool?) {
        self.replace = replace; self.update = update; resync = .milliseconds(Int(resyncSeconds * 1000))
    }

    /// Through libnftables: the whole table as `full`'s script, a change as `diff`'s scripts.
    init(nft: NFTablesRunner = LibNFTables(), resyncSeconds: Double, full: @escaping (Model) -> String,
         diff: @escaping (Model, Model) -> TableModel.Update) {
        self.init(resyncSeconds: resyncSeconds, replace: { try nft.run(full($0)) }, update: { have, want in
            switch diff(have, want) {
            case .none: return false
            case .full: return nil
            case .incremental(let update, let cleanup):
                if !update.isEmpty { try nft.run(update) }
                if !cleanup.isEmpty { try nft.run(cleanup) }
                return true
            }
        })
    }

    /// - onIncrementalFailure: told why an update failed before the table is replaced instead.
    mutating func write(_ want: Model, onIncrementalFailure: (Error) -> Void) throws -> Outcome {
        if let have = applied, ContinuousClock.now - lastFull < resync {
            applied = nil   // unknown until the update went through
            do {
                if let changed = try update(have, want) {
                    applied = want
                    return changed ? .updated : .unchanged
                }
            } catch {
                onIncrementalFailure(error)
            }
        }
        applied = nil
        try replace(want)
        applied = want
        lastFull = ContinuousClock.now
        return .replaced
    }

    /// After a failure elsewhere: the next write replaces the table.
    mutating func forget() { applied = nil }
}
