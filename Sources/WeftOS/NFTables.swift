import CWeftLinux
#if canImport(Glibc)
import Glibc
#endif

/// Runs nftables scripts in the calling thread's network namespace, and reads back what a
/// chain holds. A script is one transaction: the kernel applies all of it or none.
public protocol NFTablesRunner: AnyObject {
    func run(_ script: String) throws(NFTablesError)
    /// The ruleset listing of one table, or nil when the table does not exist.
    func list(table: String, family: String) throws(NFTablesError) -> String?
    /// The comment of every rule in an `inet` chain, in order; empty when the chain or its
    /// table does not exist. Cheap: lets a caller skip a transaction that would change nothing.
    func ruleComments(table: String, chain: String) throws(NFTablesError) -> [String]
}

public struct NFTablesError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public init(message: String) { self.message = message }
    public var description: String { message }
}

/// Scripts go through libnftables, the library `nft` itself is built on, loaded with dlopen on
/// first use: most CNI calls only read the rules (over raw netlink, below) and never pay for
/// loading it and its dependencies. Reads use an NETLINK_NETFILTER socket opened in the
/// namespace of the thread that makes the first read.
public final class LibNFTables: NFTablesRunner {
    private var ctx: OpaquePointer?
    private var socket: NetlinkSocket?

    public init() {}

    deinit { if let ctx { LibNFTablesSymbols.shared?.ctxFree(ctx) } }

    private func context() throws(NFTablesError) -> (OpaquePointer, LibNFTablesSymbols) {
        guard let lib = LibNFTablesSymbols.shared else {
            throw NFTablesError(message: "cannot load libnftables (\(LibNFTablesSymbols.loadError)); install Debian's libnftables1 (it comes with the nftables package)")
        }
        if let ctx { return (ctx, lib) }
        guard let c = lib.ctxNew(0) else { throw NFTablesError(message: "cannot create an nftables context") }
        _ = lib.bufferOutput(c)
        _ = lib.bufferError(c)
        ctx = c
        return (c, lib)
    }

    public func run(_ script: String) throws(NFTablesError) {
        let (ctx, lib) = try context()
        let rc = lib.runCommand(ctx, script)
        if rc != 0 {
            let err = lib.errorBuffer(ctx).map { String(cString: $0) } ?? ""
            throw NFTablesError(message: err.isEmpty ? "nftables transaction failed" : err.trimmingTrailingNewlines())
        }
    }

    public func list(table: String, family: String) throws(NFTablesError) -> String? {
        let (ctx, lib) = try context()
        let rc = lib.runCommand(ctx, "list table \(family) \(table)")
        if rc != 0 {
            let err = lib.errorBuffer(ctx).map { String(cString: $0) } ?? ""
            if err.contains("No such file or directory") { return nil }
            throw NFTablesError(message: err.trimmingTrailingNewlines())
        }
        return lib.outputBuffer(ctx).map { String(cString: $0) } ?? ""
    }

    public func ruleComments(table: String, chain: String) throws(NFTablesError) -> [String] {
        do {
            if socket == nil { socket = try NetlinkSocket(protocol: NETLINK_NETFILTER) }
            var req = NetlinkRequest(type: (k(NFNL_SUBSYS_NFTABLES) << 8) | k(NFT_MSG_GETRULE), flags: NLM_F_DUMP)
            req.append(UInt8(NFPROTO_INET))   // nfgenmsg: family, version, res_id
            req.append(UInt8(NFNETLINK_V0))
            req.append(UInt16(0))
            req.attr(k(NFTA_RULE_TABLE), string: table)
            req.attr(k(NFTA_RULE_CHAIN), string: chain)
            let replies = try socket!.exchange(req) { "list the rules of chain inet \(table) \(chain)" }
            return replies.map { msg in
                let attrs = NetlinkAttributes(bytes: msg.payload.dropFirst(4))
                return attrs[k(NFTA_RULE_USERDATA)].flatMap(Self.comment(inUserData:)) ?? ""
            }
        } catch {
            if error.isNotFound { return [] }
            throw NFTablesError(message: "\(error)")
        }
    }

    /// The names of the namespace's `inet` tables (a raw dump: no libnftables cache).
    public func tableNames() throws(NFTablesError) -> [String] {
        do {
            if socket == nil { socket = try NetlinkSocket(protocol: NETLINK_NETFILTER) }
            var req = NetlinkRequest(type: (k(NFNL_SUBSYS_NFTABLES) << 8) | k(NFT_MSG_GETTABLE), flags: NLM_F_DUMP)
            req.append(UInt8(NFPROTO_INET))
            req.append(UInt8(NFNETLINK_V0))
            req.append(UInt16(0))
            return try socket!.exchange(req, { "list the inet tables" }).compactMap { NetlinkAttributes(bytes: $0.payload.dropFirst(4)).string(k(NFTA_TABLE_NAME)) }
        } catch {
            throw NFTablesError(message: "\(error)")
        }
    }

    /// How many rules each chain of each of `tables` (`inet`) holds, for comparing the kernel
    /// with what was meant to be written: one dump of rules and one of chains (the kernel
    /// dumps every chain of the namespace whatever table is asked for), bucketed by table.
    /// Tables that do not exist are absent.
    public func ruleCounts(tables: [String]) throws(NFTablesError) -> [String: [String: Int]] {
        let wanted = Set(tables)
        do {
            if socket == nil { socket = try NetlinkSocket(protocol: NETLINK_NETFILTER) }
            func dump(_ type: Int32) -> NetlinkRequest {
                var req = NetlinkRequest(type: (k(NFNL_SUBSYS_NFTABLES) << 8) | type, flags: NLM_F_DUMP)
                req.append(UInt8(NFPROTO_INET))
                req.append(UInt8(NFNETLINK_V0))
                req.append(UInt16(0))
                if tables.count == 1 { req.attr(k(NFTA_RULE_TABLE), string: tables[0]) }   // NFTA_CHAIN_TABLE is the same number
                return req
            }
            var out: [String: [String: Int]] = [:]
            // Chains first: a chain without rules appears in no rule.
            for msg in try socket!.exchange(dump(k(NFT_MSG_GETCHAIN)), { "list the chains of inet tables" }) {
                let attrs = NetlinkAttributes(bytes: msg.payload.dropFirst(4))
                guard let t = attrs.string(k(NFTA_CHAIN_TABLE)), wanted.contains(t), let name = attrs.string(k(NFTA_CHAIN_NAME)) else { continue }
                out[t, default: [:]][name] = 0
            }
            for msg in try socket!.exchange(dump(k(NFT_MSG_GETRULE)), { "list the rules of inet tables" }) {
                let attrs = NetlinkAttributes(bytes: msg.payload.dropFirst(4))
                guard let t = attrs.string(k(NFTA_RULE_TABLE)), out[t] != nil, let chain = attrs.string(k(NFTA_RULE_CHAIN)) else { continue }
                out[t]![chain, default: 0] += 1
            }
            return out
        } catch {
            if error.isNotFound { return [:] }
            throw NFTablesError(message: "\(error)")
        }
    }

    /// The named counters of an `inet` table: name → (packets, bytes); empty when the table does
    /// not exist. A raw NETLINK_NETFILTER dump (no libnftables cache), cheap enough to poll.
    public func counters(table: String) throws(NFTablesError) -> [String: (packets: UInt64, bytes: UInt64)] {
        do {
            if socket == nil { socket = try NetlinkSocket(protocol: NETLINK_NETFILTER) }
            var req = NetlinkRequest(type: (k(NFNL_SUBSYS_NFTABLES) << 8) | k(NFT_MSG_GETOBJ), flags: NLM_F_DUMP)
            req.append(UInt8(NFPROTO_INET))
            req.append(UInt8(NFNETLINK_V0))
            req.append(UInt16(0))
            req.attr(k(NFTA_OBJ_TABLE), string: table)
            req.attr(k(NFTA_OBJ_TYPE), u32: UInt32(NFT_OBJECT_COUNTER).bigEndian)
            var out: [String: (packets: UInt64, bytes: UInt64)] = [:]
            for msg in try socket!.exchange(req, { "list the counters of table inet \(table)" }) {
                let attrs = NetlinkAttributes(bytes: msg.payload.dropFirst(4))
                guard attrs.string(k(NFTA_OBJ_TABLE)) == table, let name = attrs.string(k(NFTA_OBJ_NAME)),
                      attrs.u32(k(NFTA_OBJ_TYPE)).map(UInt32.init(bigEndian:)) == UInt32(NFT_OBJECT_COUNTER),
                      let data = attrs.nested(k(NFTA_OBJ_DATA)) else { continue }
                func be64(_ t: Int32) -> UInt64 {
                    guard let d = data[t], d.count == 8 else { return 0 }
                    return d.reduce(0) { $0 << 8 | UInt64($1) }
                }
                out[name] = (be64(k(NFTA_COUNTER_PACKETS)), be64(k(NFTA_COUNTER_BYTES)))
            }
            return out
        } catch {
            if error.isNotFound { return [:] }
            throw NFTablesError(message: "\(error)")
        }
    }

    /// libnftnl's rule user data: (type u8, length u8, value) records; type 0 is the comment,
    /// a NUL-terminated string.
    static func comment(inUserData data: ArraySlice<UInt8>) -> String? {
        var i = data.startIndex
        while i + 2 <= data.endIndex {
            let type = data[i], len = Int(data[i + 1])
            guard i + 2 + len <= data.endIndex else { return nil }
            if type == 0 { return String(decoding: data[(i + 2)..<(i + 2 + len)].prefix { $0 != 0 }, as: UTF8.self) }
            i += 2 + len
        }
        return nil
    }
}

/// The few libnftables entry points weft calls, resolved once per process.
struct LibNFTablesSymbols: @unchecked Sendable {
    typealias CtxNew = @convention(c) (UInt32) -> OpaquePointer?
    typealias CtxFree = @convention(c) (OpaquePointer) -> Void
    typealias Buffer = @convention(c) (OpaquePointer) -> Int32
    typealias Run = @convention(c) (OpaquePointer, UnsafePointer<CChar>) -> Int32
    typealias Get = @convention(c) (OpaquePointer) -> UnsafePointer<CChar>?

    let ctxNew: CtxNew, ctxFree: CtxFree, bufferOutput: Buffer, bufferError: Buffer
    let runCommand: Run, errorBuffer: Get, outputBuffer: Get

    nonisolated(unsafe) static var loadError = ""
    static let shared: LibNFTablesSymbols? = load()

    private static func load() -> LibNFTablesSymbols? {
        guard let h = dlopen("libnftables.so.1", RTLD_NOW | RTLD_LOCAL) else {
            loadError = dlerror().map { String(cString: $0) } ?? "dlopen failed"
            return nil
        }
        func sym<T>(_ name: String, _: T.Type) -> T? { dlsym(h, name).map { unsafeBitCast($0, to: T.self) } }
        guard let a = sym("nft_ctx_new", CtxNew.self), let b = sym("nft_ctx_free", CtxFree.self),
              let c = sym("nft_ctx_buffer_output", Buffer.self), let d = sym("nft_ctx_buffer_error", Buffer.self),
              let e = sym("nft_run_cmd_from_buffer", Run.self), let f = sym("nft_ctx_get_error_buffer", Get.self),
              let g = sym("nft_ctx_get_output_buffer", Get.self) else {
            loadError = "libnftables.so.1 lacks an expected symbol"
            return nil
        }
        return LibNFTablesSymbols(ctxNew: a, ctxFree: b, bufferOutput: c, bufferError: d, runCommand: e, errorBuffer: f, outputBuffer: g)
    }
}

extension String {
    func trimmingTrailingNewlines() -> String {
        var s = self
        while s.last == "\n" { s.removeLast() }
        return s
    }
}
