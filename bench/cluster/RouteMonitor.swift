import WeftCore
import WeftOS
#if canImport(Glibc)
import Glibc
#endif

/// Route changes in one node's namespace as the kernel announces them: an rtnetlink socket
/// made inside the namespace (it stays bound to it) and subscribed to the IPv4/IPv6 route
/// groups — what `ip monitor route` reads, without a process per node. Subscribed before the
/// event being measured, so nothing is missed; each message is timestamped on receipt with the
/// monotonic clock the benchmark's start instants use.
final class RouteMonitor {
    struct Event {
        var time: Double
        var added: Bool
        var destination: String
        var gateway: String?
    }

    let namespace: String
    let fd: Int32
    /// The kernel dropped messages (receive buffer overrun): fall back to `ip route` for this node.
    private(set) var overflowed = false
    private var buffer = [UInt8](repeating: 0, count: 1 << 16)

    init(namespace: String) throws {
        self.namespace = namespace
        let ns = try NetworkNamespace(path: "/run/netns/\(namespace)")
        let fd: Int32 = try ns.run { () -> Int32 in
            let fd = socket(AF_NETLINK, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0 /* NETLINK_ROUTE */)
            guard fd >= 0 else { return -errno }
            // struct sockaddr_nl { u16 family; u16 pad; u32 pid; u32 groups }
            var addr = [UInt8](repeating: 0, count: 12)
            addr[0] = UInt8(AF_NETLINK)
            let groups: UInt32 = 0x40 | 0x400 // RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE
            withUnsafeBytes(of: groups.littleEndian) { for i in 0..<4 { addr[8 + i] = $0[i] } }
            let rc = addr.withUnsafeBytes { bind(fd, $0.baseAddress!.assumingMemoryBound(to: sockaddr.self), 12) }
            guard rc == 0 else { let e = errno; close(fd); return -e }
            var size: Int32 = 4 << 20
            _ = setsockopt(fd, SOL_SOCKET, 33 /* SO_RCVBUFFORCE */, &size, 4)
            return fd
        }
        guard fd >= 0 else { throw BenchError("rtnetlink socket in \(namespace): \(String(cString: strerror(-fd)))") }
        self.fd = fd
    }

    deinit { close(fd) }

    /// Reads every pending message; weft's routes (protocol 87, main table) only.
    func drain(at time: Double) -> [Event] {
        var events: [Event] = []
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            if n < 0 {
                if errno == ENOBUFS { overflowed = true; continue }
                return events
            }
            if n == 0 { return events }
            parse(count: n, time: time, into: &events)
        }
    }

    private func parse(count: Int, time: Double, into events: inout [Event]) {
        func u16(_ o: Int) -> Int { Int(buffer[o]) | Int(buffer[o + 1]) << 8 }
        func u32(_ o: Int) -> Int { u16(o) | u16(o + 2) << 16 }
        var off = 0
        while off + 16 <= count {
            let len = u32(off)
            guard len >= 16, off + len <= count else { return }
            let type = u16(off + 4)
            if (type == 24 || type == 25), len >= 28 { // RTM_NEWROUTE, RTM_DELROUTE; struct rtmsg is 12 bytes
                let family = buffer[off + 16], dstLen = Int(buffer[off + 17]), table = buffer[off + 20], proto = buffer[off + 21]
                if proto == 87 && table == 254 {
                    var dst: String?, gw: String?
                    var a = off + 28
                    while a + 4 <= off + len {
                        let alen = u16(a), atype = u16(a + 2)
                        guard alen >= 4, a + alen <= off + len else { break }
                        let payload = Array(buffer[(a + 4)..<(a + alen)])
                        if atype == 1 { dst = address(family: family, payload) } // RTA_DST
                        if atype == 5 { gw = address(family: family, payload) }  // RTA_GATEWAY
                        a += (alen + 3) & ~3
                    }
                    events.append(Event(time: time, added: type == 24, destination: "\(dst ?? (family == 2 ? "0.0.0.0" : "::"))/\(dstLen)", gateway: gw))
                }
            }
            off += (len + 3) & ~3
        }
    }

    private func address(family: UInt8, _ b: [UInt8]) -> String {
        var v: UInt128 = 0
        for x in b { v = v << 8 | UInt128(x) }
        return IPAddress(family: family == 2 ? .v4 : .v6, value: v).description
    }
}

/// Waits on many monitors at once: returns after the first batch of events (or the timeout),
/// every event stamped with the instant poll() returned.
func pollMonitors(_ monitors: [RouteMonitor], timeout: Double) -> [(Int, RouteMonitor.Event)] {
    var fds = monitors.map { pollfd(fd: $0.fd, events: Int16(POLLIN), revents: 0) }
    let r = poll(&fds, nfds_t(fds.count), Int32(max(0, timeout * 1000)))
    let t = now()
    guard r > 0 else { return [] }
    var out: [(Int, RouteMonitor.Event)] = []
    for (i, f) in fds.enumerated() where f.revents != 0 {
        for e in monitors[i].drain(at: t) { out.append((i, e)) }
    }
    return out
}
