import CWeftLinux
#if canImport(Glibc)
import Glibc
#endif
import WeftCore

/// A tiny agnhost-style server for proving connectivity: every TCP connection and every UDP
/// datagram is answered with "NAME CLIENT-ADDRESS", so a test sees who answered and whether
/// the source address was rewritten on the way.
public enum EchoServer {
    /// Serves TCP on `port` (IPv4 and IPv6) until the process ends. Each connection gets the
    /// greeting, then whatever the client sends is echoed back until it closes: a long-lived
    /// flow for tests that check established connections survive (agent restarts, datastore
    /// failures). One thread, poll(2) over the listener and every open connection.
    public static func serveTCP(port: UInt16, name: String) throws(SystemError) -> Never {
        let listener = try listenSocket(type: SOCK_STREAM, port: port)
        var fds = [pollfd(fd: listener, events: Int16(POLLIN), revents: 0)]
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            if poll(&fds, nfds_t(fds.count), -1) < 0 { continue }
            var closed: Set<Int32> = []
            for p in fds where p.revents != 0 {
                if p.fd == listener {
                    var peer = sockaddr_storage()
                    var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
                    let c = withUnsafeMutablePointer(to: &peer) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { accept(listener, $0, &len) } }
                    if c < 0 { continue }
                    let reply = Array("\(name) \(describe(peer))\n".utf8)
                    _ = reply.withUnsafeBytes { write(c, $0.baseAddress, $0.count) }
                    fds.append(pollfd(fd: c, events: Int16(POLLIN), revents: 0))
                    continue
                }
                let n = buf.withUnsafeMutableBytes { read(p.fd, $0.baseAddress, $0.count) }
                if n <= 0 { close(p.fd); closed.insert(p.fd); continue }
                _ = buf.withUnsafeBytes { write(p.fd, $0.baseAddress, n) }
            }
            if !closed.isEmpty { fds.removeAll { closed.contains($0.fd) } }
        }
    }

    public static func serveUDP(port: UInt16, name: String) throws(SystemError) -> Never {
        let fd = try listenSocket(type: SOCK_DGRAM, port: port)
        var buf = [UInt8](repeating: 0, count: 2048)
        while true {
            var peer = sockaddr_storage()
            var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let n = withUnsafeMutablePointer(to: &peer) { p in
                p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in buf.withUnsafeMutableBytes { recvfrom(fd, $0.baseAddress, $0.count, 0, sa, &len) } }
            }
            if n < 0 { continue }
            let reply = Array("\(name) \(describe(peer))\n".utf8)
            _ = withUnsafePointer(to: &peer) { p in
                p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in reply.withUnsafeBytes { sendto(fd, $0.baseAddress, $0.count, 0, sa, len) } }
            }
        }
    }

    /// One dual-stack socket (IPV6_V6ONLY off) listening on every address.
    static func listenSocket(type: __socket_type, port: UInt16) throws(SystemError) -> Int32 {
        let fd = socket(AF_INET6, Int32(type.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SystemError("socket") }
        var zero: Int32 = 0, one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &zero, socklen_t(MemoryLayout<Int32>.size))
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var addr = sockaddr_in6()
        addr.sin6_family = sa_family_t(AF_INET6)
        addr.sin6_port = port.bigEndian
        let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) } }
        guard rc == 0 else { throw SystemError("bind port \(port)") }
        if type == SOCK_STREAM { guard listen(fd, 128) == 0 else { throw SystemError("listen") } }
        return fd
    }

    /// The client's address, with IPv4-mapped IPv6 shown as plain IPv4.
    static func describe(_ s: sockaddr_storage) -> String {
        var s = s
        return withUnsafePointer(to: &s) { p -> String in
            p.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { a in
                let bytes = withUnsafeBytes(of: a.pointee.sin6_addr) { Array($0) }
                guard let ip = IPAddress(bytes: bytes) else { return "?" }
                if bytes[0..<10].allSatisfy({ $0 == 0 }) && bytes[10] == 0xff && bytes[11] == 0xff {
                    return IPAddress(bytes: Array(bytes[12...]))!.description
                }
                return ip.description
            }
        }
    }

    /// Holds one TCP connection for `seconds`, sending a numbered line every `intervalMs` and
    /// expecting it echoed back within `timeoutMilliseconds`. Returns how many round trips
    /// succeeded; throws at the first that fails, saying when (the flow broke).
    public static func hold(host: IPAddress, port: UInt16, seconds: Double, intervalMs: Int, timeoutMilliseconds: Int32 = 2000) throws(SystemError) -> Int {
        let fd = try connected(host: host, port: port, udp: false, timeoutMilliseconds: timeoutMilliseconds)
        defer { close(fd) }
        var buf = [UInt8](repeating: 0, count: 512)
        guard buf.withUnsafeMutableBytes({ recv(fd, $0.baseAddress, $0.count, 0) }) > 0 else {
            throw SystemError("no greeting from \(host) port \(port)", errno: ECONNRESET)
        }
        let start = ContinuousClock.now
        var exchanges = 0
        while ContinuousClock.now - start < .milliseconds(Int(seconds * 1000)) {
            let line = Array("ping \(exchanges)\n".utf8)
            let at = ContinuousClock.now - start
            guard line.withUnsafeBytes({ send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }) == line.count else {
                throw SystemError("the flow broke after \(at) (\(exchanges) round trips): send", errno: errno)
            }
            var got: [UInt8] = []
            while got.count < line.count {
                let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                guard n > 0 else { throw SystemError("the flow broke after \(at) (\(exchanges) round trips): no echo", errno: n == 0 ? ECONNRESET : errno) }
                got += buf[0..<n]
            }
            guard got == line else { throw SystemError("the flow returned \(String(decoding: got, as: UTF8.self)) for ping \(exchanges)", errno: EPROTO) }
            exchanges += 1
            usleep(useconds_t(intervalMs * 1000))
        }
        return exchanges
    }

    /// Connects (TCP) or sends one datagram (UDP) and returns the server's reply.
    /// - sourcePort: send from this port (0: any), so that successive probes are one UDP flow.
    public static func probe(host: IPAddress, port: UInt16, udp: Bool, timeoutMilliseconds: Int32 = 2000, sourcePort: UInt16 = 0) throws(SystemError) -> String {
        let fd = try connected(host: host, port: port, udp: udp, timeoutMilliseconds: timeoutMilliseconds, sourcePort: sourcePort)
        defer { close(fd) }
        if udp { _ = send(fd, "?", 1, 0) }
        var buf = [UInt8](repeating: 0, count: 512)
        let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        guard n > 0 else { throw SystemError("no reply from \(host) port \(port)", errno: n == 0 ? ECONNRESET : errno) }
        return String(decoding: buf[0..<n], as: UTF8.self).trimmingTrailingNewlines()
    }

    /// A socket connected to host:port (IPv4 through a mapped address), with send/receive timeouts.
    static func connected(host: IPAddress, port: UInt16, udp: Bool, timeoutMilliseconds: Int32, sourcePort: UInt16 = 0) throws(SystemError) -> Int32 {
        let fd = socket(AF_INET6, Int32((udp ? SOCK_DGRAM : SOCK_STREAM).rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SystemError("socket") }
        var tv = timeval(tv_sec: Int(timeoutMilliseconds / 1000), tv_usec: Int(timeoutMilliseconds % 1000) * 1000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        if sourcePort != 0 {
            var one: Int32 = 1
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
            var local = sockaddr_in6()
            local.sin6_family = sa_family_t(AF_INET6)
            local.sin6_port = sourcePort.bigEndian
            let brc = withUnsafePointer(to: &local) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) } }
            guard brc == 0 else { let e = SystemError("bind source port \(sourcePort)"); close(fd); throw e }
        }
        var addr = sockaddr_in6()
        addr.sin6_family = sa_family_t(AF_INET6)
        addr.sin6_port = port.bigEndian
        let mapped = host.family == .v4 ? [UInt8](repeating: 0, count: 10) + [0xff, 0xff] + host.bytes : host.bytes
        withUnsafeMutableBytes(of: &addr.sin6_addr) { $0.copyBytes(from: mapped) }
        let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) } }
        guard rc == 0 else { let e = SystemError("connect \(host) port \(port)"); close(fd); throw e }
        return fd
    }
}
