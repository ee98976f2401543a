import CWeftLinux
#if canImport(Glibc)
import Glibc
#endif
import WeftCore

/// A tiny agnhost-style server for proving connectivity: every TCP connection and every UDP
/// datagram is answered with "NAME CLIENT-ADDRESS", so a test sees who answered and whether
/// the source address was rewritten on the way.
public enum EchoServer {
    /// Serves TCP on `port` (IPv4 and IPv6) until the process ends.
    public static func serveTCP(port: UInt16, name: String) throws(SystemError) -> Never {
        let fd = try listenSocket(type: SOCK_STREAM, port: port)
        while true {
            var peer = sockaddr_storage()
            var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let c = withUnsafeMutablePointer(to: &peer) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { accept(fd, $0, &len) } }
            if c < 0 { continue }
            let reply = Array("\(name) \(describe(peer))\n".utf8)
            _ = reply.withUnsafeBytes { write(c, $0.baseAddress, $0.count) }
            close(c)
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

    /// Connects (TCP) or sends one datagram (UDP) and returns the server's reply.
    public static func probe(host: IPAddress, port: UInt16, udp: Bool, timeoutMilliseconds: Int32 = 2000) throws(SystemError) -> String {
        let fd = socket(AF_INET6, Int32((udp ? SOCK_DGRAM : SOCK_STREAM).rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SystemError("socket") }
        defer { close(fd) }
        var tv = timeval(tv_sec: Int(timeoutMilliseconds / 1000), tv_usec: Int(timeoutMilliseconds % 1000) * 1000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var addr = sockaddr_in6()
        addr.sin6_family = sa_family_t(AF_INET6)
        addr.sin6_port = port.bigEndian
        let mapped = host.family == .v4 ? [UInt8](repeating: 0, count: 10) + [0xff, 0xff] + host.bytes : host.bytes
        withUnsafeMutableBytes(of: &addr.sin6_addr) { $0.copyBytes(from: mapped) }
        let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) } }
        guard rc == 0 else { throw SystemError("connect \(host) port \(port)") }
        if udp { _ = send(fd, "?", 1, 0) }
        var buf = [UInt8](repeating: 0, count: 512)
        let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        guard n > 0 else { throw SystemError("no reply from \(host) port \(port)", errno: n == 0 ? ECONNRESET : errno) }
        return String(decoding: buf[0..<n], as: UTF8.self).trimmingTrailingNewlines()
    }
}
