import WeftCore
import WeftOS

/// Keeps one nftables table equal to a desired model: the difference from the model last
/// written when there is one (its size follows the change, not the table), the whole table in
/// one transaction at first, after a failed write, when only that can do it, and every
/// `resync` (which repairs any drift). Neither touches conntrack.
struct TableWriter<Model: Equatable> {
    enum Outcome { case unchanged, updated, replaced }

    let nft: NFTablesRunner
    let full: (Model) -> String
    let diff: (Model, Model) -> TableModel.Update
    let resync: Duration
    private var applied: Model?
    private var lastFull = ContinuousClock.now

    init(nft: NFTablesRunner = LibNFTables(), resyncSeconds: Double, full: @escaping (Model) -> String,
         diff: @escaping (Model, Model) -> TableModel.Update) {
        self.nft = nft; self.full = full; self.diff = diff; resync = .milliseconds(Int(resyncSeconds * 1000))
    }

    /// - onIncrementalFailure: told why an update failed before the table is replaced instead.
    mutating func write(_ want: Model, onIncrementalFailure: (Error) -> Void) throws -> Outcome {
        if let have = applied, ContinuousClock.now - lastFull < resync {
            switch diff(have, want) {
            case .none: return .unchanged
            case .incremental(let update, let cleanup):
                applied = nil   // unknown until both transactions went through
                do {
                    if !update.isEmpty { try nft.run(update) }
                    if !cleanup.isEmpty { try nft.run(cleanup) }
                    applied = want
                    return .updated
                } catch {
                    onIncrementalFailure(error)
                }
            case .full: break
            }
        }
        applied = nil
        try nft.run(full(want))
        applied = want
        lastFull = ContinuousClock.now
        return .replaced
    }

    /// After a failure elsewhere: the next write replaces the table.
    mutating func forget() { applied = nil }
}
