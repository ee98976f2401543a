import CWeftLinux
#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// A failed kernel request: the operation, the errno, and the kernel's extended-ack text when
/// it gave one ("Invalid prefix for given prefix length").
public struct NetlinkError: Error, Sendable, CustomStringConvertible {
    public var operation: String
    public var errno: Int32
    public var kernelMessage: String?

    public init(operation: String, errno: Int32, kernelMessage: String? = nil) {
        self.operation = operation; self.errno = errno; self.kernelMessage = kernelMessage
    }

    public var description: String {
        var s = "\(operation): \(String(cString: strerror(errno)))"
        if let m = kernelMessage, !m.isEmpty { s += " (\(m))" }
        return s
    }
    public var isExists: Bool { errno == EEXIST }
    public var isNotFound: Bool { errno == ENODEV || errno == ENOENT || errno == ESRCH || errno == EADDRNOTAVAIL }
}

/// One netlink socket (NETLINK_ROUTE unless told otherwise). It belongs to the network namespace it was created in, whatever
/// thread later uses it: that is how weft works inside a pod without staying switched into it.
public final class NetlinkSocket {
    let fd: Int32
    private var seq: UInt32 = 0
    private var buffer = [UInt8](repeating: 0, count: 1 << 16)

    public init(protocol proto: Int32 = NETLINK_ROUTE) throws(NetlinkError) {
        fd = socket(AF_NETLINK, k(SOCK_RAW) | k(SOCK_CLOEXEC), proto)
        guard fd >= 0 else { throw NetlinkError(operation: "open netlink socket", errno: Glibc.errno) }
        var one: Int32 = 1
        // Extended acks carry the kernel's reason; capped acks keep error replies small.
        _ = setsockopt(fd, Int32(SOL_NETLINK), NETLINK_EXT_ACK, &one, socklen_t(MemoryLayout<Int32>.size))
        _ = setsockopt(fd, Int32(SOL_NETLINK), NETLINK_CAP_ACK, &one, socklen_t(MemoryLayout<Int32>.size))
        var addr = sockaddr_nl()
        addr.nl_family = sa_family_t(AF_NETLINK)
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_nl>.size)) }
        }
        guard rc == 0 else {
            let e = Glibc.errno
            close(fd)
            throw NetlinkError(operation: "bind netlink socket", errno: e)
        }
    }

    deinit { close(fd) }

    /// Sends a request and waits for its ACK; throws the kernel's error if there is one.
    func execute(_ request: NetlinkRequest, _ operation: @autoclosure () -> String) throws(NetlinkError) {
        _ = try exchange(request, operation)
    }

    /// Sends a request (a dump, or a GET for one object) and returns every reply message.
    func exchange(_ request: NetlinkRequest, _ operation: () -> String) throws(NetlinkError) -> [NetlinkMessage] {
        let (wire, seq) = numbered(request)
        let sent = wire.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) }
        guard sent == wire.count else { throw NetlinkError(operation: operation(), errno: sent < 0 ? Glibc.errno : EIO) }

        var replies: [NetlinkMessage] = []
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 {
                if Glibc.errno == EINTR { continue }
                throw NetlinkError(operation: operation(), errno: Glibc.errno)
            }
            for m in headers(in: n) {
                guard m.seq == seq else { continue } // a stale reply to an earlier request
                let payload = buffer[m.payload]
                if m.type == UInt16(NLMSG_ERROR) {
                    if let failure = error(in: NetlinkMessage(type: m.type, flags: m.flags, seq: m.seq, payload: payload), operation()) { throw failure }
                    return replies  // the ACK
                }
                if m.type == UInt16(NLMSG_DONE) {
                    // A dump's end (dumps get no separate ACK); it may carry the dump's error.
                    let err = payload.count >= 4 ? Int32(bitPattern: load(UInt32.self, at: m.payload.lowerBound)) : 0
                    if err < 0 { throw NetlinkError(operation: operation(), errno: -err) }
                    return replies
                }
                replies.append(NetlinkMessage(type: m.type, flags: m.flags, seq: m.seq, payload: ArraySlice(payload)))
            }
        }
    }

    /// Sends an nf_tables batch (BEGIN, `messages`, END) in one write and returns once the
    /// kernel has applied or refused it: it processes and commits the batch inside the write, so
    /// every error it has (one per refused message, or one for the commit) is queued by then.
    /// Messages ask for no ACK, as `nft` does, so a batch of any size answers only its errors.
    /// - describe: what message `i` does, for the error.
    func sendBatch(_ messages: consuming [NetlinkRequest], describe: (Int) -> String) throws(NetlinkError) {
        let total = messages.count
        var wire: [UInt8] = []
        wire.reserveCapacity(messages.reduce(64) { $0 + $1.bytes.count })   // no copies as it grows
        func batchMark(_ type: Int32) -> [UInt8] {
            var m = NetlinkRequest(type: type, flags: 0, ack: false)
            m.append(UInt8(AF_UNSPEC))
            m.append(UInt8(NFNETLINK_V0))
            m.append(UInt16(NFNL_SUBSYS_NFTABLES).bigEndian)
            seq &+= 1
            return m.finish(seq: seq)
        }
        wire += batchMark(k(NFNL_MSG_BATCH_BEGIN))
        let first = seq &+ 1
        for i in messages.indices {
            seq &+= 1
            messages[i].finish(seq: seq, into: &wire)
        }
        wire += batchMark(k(NFNL_MSG_BATCH_END))
        // The kernel refuses a message larger than the send buffer: grow it (FORCE passes the
        // system's cap; without the privilege for that, as far as the cap allows).
        var have: Int32 = 0
        var haveLen = socklen_t(MemoryLayout<Int32>.size)
        if getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &have, &haveLen) == 0, Int(have) < wire.count + 4096 {
            var size = Int32(clamping: wire.count + 65536)
            if setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &size, socklen_t(MemoryLayout<Int32>.size)) != 0 {
                _ = setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size))
            }
        }
        let sent = wire.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) }
        guard sent == wire.count else { throw NetlinkError(operation: "send an nf_tables batch of \(total) messages", errno: sent < 0 ? Glibc.errno : EIO) }
        var failure: NetlinkError?
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            if n < 0 {
                let e = Glibc.errno
                if e == EINTR { continue }
                if e == EAGAIN || e == EWOULDBLOCK { break }
                // ENOBUFS: more errors than the receive buffer holds: the batch failed all the
                // same; read on, so none of its errors is left for the next batch.
                if e == ENOBUFS {
                    failure = failure ?? NetlinkError(operation: "apply an nf_tables batch of \(total) messages", errno: e)
                    continue
                }
                throw failure ?? NetlinkError(operation: "apply an nf_tables batch of \(total) messages", errno: e)
            }
            // Only this batch's replies (BEGIN … END; sequence numbers wrap).
            for m in headers(in: n) where m.type == UInt16(NLMSG_ERROR) && failure == nil && m.seq &- (first &- 1) <= UInt32(total + 1) {
                let index = Int(m.seq &- first)
                failure = error(in: NetlinkMessage(type: m.type, flags: m.flags, seq: m.seq, payload: buffer[m.payload]),
                                index >= 0 && index < total ? describe(index) : "commit an nf_tables batch of \(total) messages")
            }
        }
        if let failure { throw failure }
    }

    /// Joins a multicast group (RTNLGRP_LINK, …) of the socket's namespace.
    func join(group: Int32, _ what: @autoclosure () -> String) throws(NetlinkError) {
        var g = group
        guard setsockopt(fd, Int32(SOL_NETLINK), NETLINK_ADD_MEMBERSHIP, &g, socklen_t(MemoryLayout<Int32>.size)) == 0 else {
            let e = Glibc.errno
            throw NetlinkError(operation: "join \(what())\(e == EPERM ? ": needs CAP_NET_ADMIN in this network namespace" : "")", errno: e)
        }
    }

    /// Leaves a group and drops what it queued, so the socket serves requests again unmixed.
    func leave(group: Int32) {
        var g = group
        _ = setsockopt(fd, Int32(SOL_NETLINK), NETLINK_DROP_MEMBERSHIP, &g, socklen_t(MemoryLayout<Int32>.size))
        _ = try? pending()
    }

    /// The next request's wire form, numbered as `exchange` would number it.
    func numbered(_ request: NetlinkRequest) -> (wire: [UInt8], seq: UInt32) {
        seq &+= 1
        var req = request
        return (req.finish(seq: seq), seq)
    }

    /// Every message queued now, without waiting. An overrun (ENOBUFS: the kernel dropped
    /// multicasts) is skipped: readers of multicasts cope with gaps.
    func pending() throws(NetlinkError) -> [NetlinkMessage] {
        var out: [NetlinkMessage] = []
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            if n < 0 {
                let e = Glibc.errno
                if e == EINTR || e == ENOBUFS { continue }
                if e == EAGAIN || e == EWOULDBLOCK { return out }
                throw NetlinkError(operation: "receive netlink messages", errno: e)
            }
            for m in headers(in: n) {
                out.append(NetlinkMessage(type: m.type, flags: m.flags, seq: m.seq, payload: buffer[m.payload]))
            }
        }
    }

    /// The error an NLMSG_ERROR message carries: nil for an ACK.
    func error(in m: NetlinkMessage, _ operation: @autoclosure () -> String) -> NetlinkError? {
        guard m.payload.count >= 4 else { return NetlinkError(operation: operation(), errno: EIO) }
        let err = m.payload.withUnsafeBytes { Int32(bitPattern: $0.loadUnaligned(as: UInt32.self)) }
        guard err != 0 else { return nil }
        return NetlinkError(operation: operation(), errno: -err, kernelMessage: extAckMessage(m.payload, flags: m.flags))
    }

    /// The messages in the first `n` bytes of the buffer: type, flags, seq and where the payload is.
    private func headers(in n: Int) -> [(type: UInt16, flags: UInt16, seq: UInt32, payload: Range<Int>)] {
        var out: [(type: UInt16, flags: UInt16, seq: UInt32, payload: Range<Int>)] = []
        var i = 0
        while i + 16 <= n {
            let len = Int(load(UInt32.self, at: i))
            guard len >= 16, i + len <= n else { break }
            out.append((load(UInt16.self, at: i + 4), load(UInt16.self, at: i + 6), load(UInt32.self, at: i + 8), (i + 16)..<(i + len)))
            i += (len + 3) & ~3
        }
        return out
    }

    private func load<T: FixedWidthInteger>(_: T.Type, at off: Int) -> T {
        buffer.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: off, as: T.self) }
    }

    /// NLMSGERR_ATTR_MSG from an extended ack, after the (capped) original header.
    private func extAckMessage(_ payload: ArraySlice<UInt8>, flags: UInt16) -> String? {
        guard flags & UInt16(NLM_F_ACK_TLVS) != 0 else { return nil }
        let capped = flags & UInt16(NLM_F_CAPPED) != 0
        let skip = 4 + 16 + (capped ? 0 : Int(payload.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 4, as: UInt32.self) }) - 16)
        guard payload.count > skip else { return nil }
        return NetlinkAttributes(bytes: payload.dropFirst(skip)).string(k(NLMSGERR_ATTR_MSG))
    }
}

/// A netlink socket that receives what the kernel multicasts (nflog packets, conntrack events),
/// shared by their readers: closable from another thread while a receive waits, and overruns
/// (ENOBUFS: the kernel dropped messages the reader was too slow for) counted, not thrown —
/// these readers are best effort by design.
final class MulticastReceiver: @unchecked Sendable {
    /// Carries the (non-Sendable) socket out of the lock; a receive keeps its fd alive while it
    /// polls even if `close()` runs meanwhile.
    private final class SocketBox: @unchecked Sendable {
        let socket: NetlinkSocket
        init(_ s: NetlinkSocket) { socket = s }
    }
    private let state: Mutex<SocketBox?>
    private let overrunCount = Atomic<Int>(0)
    let what: String

    init(_ socket: NetlinkSocket, what: String) { state = Mutex(SocketBox(socket)); self.what = what }

    var overruns: Int { overrunCount.load(ordering: .relaxed) }

    /// The kernel unbinds the socket's groups once it is closed; a receive already waiting keeps
    /// it until its timeout.
    func close() { state.withLock { $0 = nil } }

    /// Waits up to `timeoutMilliseconds` (negative: for ever) for datagrams, then drains up to
    /// `batch` of them (bounded, so a flood cannot keep the caller) and decodes each; [] on timeout.
    func receive<T>(timeoutMilliseconds: Int32, batch: Int, decode: (ArraySlice<UInt8>) -> [T]) throws -> [T] {
        guard let box = state.withLock({ $0 }) else { throw NetlinkError(operation: "receive \(what): closed", errno: EBADF) }
        let fd = box.socket.fd
        func nowMs() -> Int64 {
            var ts = timespec()
            clock_gettime(CLOCK_MONOTONIC, &ts)
            return Int64(ts.tv_sec) * 1000 + Int64(ts.tv_nsec) / 1_000_000
        }
        let deadline = timeoutMilliseconds < 0 ? nil : nowMs() + Int64(timeoutMilliseconds)
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let wait = deadline.map { Int32(clamping: max(0, $0 - nowMs())) } ?? -1
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let ready = poll(&pfd, 1, wait)
            if ready < 0 {
                if errno == EINTR { continue }
                throw NetlinkError(operation: "wait for \(what)", errno: errno)
            }
            if ready == 0 { return [] }
            var out: [T] = []
            for _ in 0..<batch {
                let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
                if n < 0 {
                    let e = errno
                    if e == EINTR { continue }
                    if e == EAGAIN || e == EWOULDBLOCK { break }
                    if e == ENOBUFS { overrunCount.add(1, ordering: .relaxed); continue }
                    throw NetlinkError(operation: "receive \(what)", errno: e)
                }
                out += decode(buffer[0..<n])
            }
            if !out.isEmpty { return out }
            if wait == 0 { return [] }
        }
    }
}
