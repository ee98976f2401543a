import CNFTables

/// Runs nftables scripts through libnftables in the calling thread's network namespace.
/// A script is one transaction: the kernel applies all of it or none.
public protocol NFTablesRunner: AnyObject {
    func run(_ script: String) throws(NFTablesError)
    /// The ruleset listing of one table, or nil when the table does not exist.
    func list(table: String, family: String) throws(NFTablesError) -> String?
}

public struct NFTablesError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public init(message: String) { self.message = message }
    public var description: String { message }
}

public final class LibNFTables: NFTablesRunner {
    private let ctx: OpaquePointer

    public init() throws(NFTablesError) {
        guard let c = nft_ctx_new(UInt32(NFT_CTX_DEFAULT)) else { throw NFTablesError(message: "cannot create an nftables context") }
        ctx = c
        nft_ctx_buffer_output(ctx)
        nft_ctx_buffer_error(ctx)
    }

    deinit { nft_ctx_free(ctx) }

    public func run(_ script: String) throws(NFTablesError) {
        let rc = nft_run_cmd_from_buffer(ctx, script)
        if rc != 0 {
            let err = nft_ctx_get_error_buffer(ctx).map { String(cString: $0) } ?? ""
            throw NFTablesError(message: err.isEmpty ? "nftables transaction failed" : err.trimmingTrailingNewlines())
        }
    }

    public func list(table: String, family: String) throws(NFTablesError) -> String? {
        let rc = nft_run_cmd_from_buffer(ctx, "list table \(family) \(table)")
        if rc != 0 {
            let err = nft_ctx_get_error_buffer(ctx).map { String(cString: $0) } ?? ""
            if err.contains("No such file or directory") { return nil }
            throw NFTablesError(message: err.trimmingTrailingNewlines())
        }
        return nft_ctx_get_output_buffer(ctx).map { String(cString: $0) } ?? ""
    }
}

extension String {
    func trimmingTrailingNewlines() -> String {
        var s = self
        while s.last == "\n" { s.removeLast() }
        return s
    }
}
