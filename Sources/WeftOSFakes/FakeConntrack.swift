#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import WeftCore
import WeftOS

/// One namespace's conntrack table in memory, filtered exactly as `Conntrack` filters the
/// kernel's dump. `failNext["entries" | "deleteEntries"] = errno` fails the next such call once;
/// `deleted` records every entry deleted, in order.
public final class FakeConntrack: ConntrackControl {
    public var table: [ConntrackEntry]
    public private(set) var deleted: [ConntrackEntry] = []
    public var failNext: [String: Int32] = [:]

    public init(_ table: [ConntrackEntry] = []) { self.table = table }

    public func entries(matching filter: ConntrackFilter) throws(NetlinkError) -> [ConntrackEntry] {
        if let e = failNext.removeValue(forKey: "entries") { throw NetlinkError(operation: "dump the conntrack table (injected)", errno: e) }
        try filter.validate()
        return table.filter(filter.matches)
    }

    public func deleteEntries(matching filter: ConntrackFilter) throws(NetlinkError) -> Int {
        if let e = failNext.removeValue(forKey: "deleteEntries") { throw NetlinkError(operation: "delete conntrack entries (injected)", errno: e) }
        try filter.validate()
        let gone = table.filter(filter.matches)
        table.removeAll(where: filter.matches)
        deleted += gone
        return gone.count
    }
}
