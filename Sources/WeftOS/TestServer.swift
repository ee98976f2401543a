import CWeftLinux
#if canImport(Glibc)
import Glibc
#endif
import WeftCore

/// A tiny agnhost-style server for proving connectivity: every answer names the server
/// (the pod) and the client's address, so a test sees who answered and whether the source
/// address was rewritten on the way. TCP speaks HTTP to clients that send a request, and the
/// raw greeting-then-echo to clients that do not (`TestServerSession` decides); UDP answers
/// every datagram with "NAME CLIENT-ADDRESS".
public enum EchoServer {
    /// Serves TCP on `port` (IPv4 and IPv6) until the process ends. One thread, poll(2) over
    /// the listener and every open connection; sockets are non-blocking and each connection
    /// queues what it could not send yet, so a client that stops reading holds up only itself.
    /// An idle connection costs its descriptor and a few hundred bytes.
    public static func serveTCP(port: UInt16, name: String, namespace: String = "default") throws(SystemError) -> Never {
        let listener = try listenSocket(type: SOCK_STREAM, port: port, nonBlocking: true)
        var connections: [Int32: TestServerConnection] = [:]
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            var fds = [pollfd(fd: listener, events: Int16(POLLIN), revents: 0)]
            fds += connections.values.map { pollfd(fd: $0.fd, events: $0.pollEvents, revents: 0) }
            let deadline = connections.values.compactMap(\.deadline).min()
            if poll(&fds, nfds_t(fds.count), deadline.map(pollTimeout) ?? -1) < 0 { continue }
            for p in fds where p.revents != 0 {
                if p.fd == listener {
                    while let accepted = acceptConnection(listener) {
                        let (fd, peer) = accepted
                        let (address, port) = endpoint(peer)
                        connections[fd] = TestServerConnection(fd: fd, context: TestServerContext(pod: name, namespace: namespace, clientAddress: address, clientPort: port))
                    }
                } else if let c = connections[p.fd], !c.handle(p.revents, buffer: &buf) {
                    close(c.fd)
                    connections[p.fd] = nil
                }
            }
            let now = ContinuousClock.now
            for c in connections.values where c.deadline.map({ $0 <= now }) ?? false {
                if !c.deadlinePassed() { close(c.fd); connections[c.fd] = nil }
            }
        }
    }

    /// Milliseconds from now until `deadline`, rounded up (poll's unit), at least 0.
    static func pollTimeout(_ deadline: ContinuousClock.Instant) -> Int32 {
        let left = deadline - ContinuousClock.now
        guard left > .zero else { return 0 }
        let (s, atto) = left.components
        return Int32(clamping: s * 1000 + (atto + 999_999_999_999_999) / 1_000_000_000_000_000)
    }

    /// The next pending connection (non-blocking, close-on-exec) and its peer; nil when none is left.
    static func acceptConnection(_ listener: Int32) -> (Int32, sockaddr_storage)? {
        var peer = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let fd = withUnsafeMutablePointer(to: &peer) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { accept(listener, $0, &len) }
        }
        guard fd >= 0 else { return nil }
        // (accept4 is not in Swift's Glibc module.)
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        return (fd, peer)
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
    static func listenSocket(type: __socket_type, port: UInt16, nonBlocking: Bool = false) throws(SystemError) -> Int32 {
        let fd = socket(AF_INET6, Int32(type.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | (nonBlocking ? Int32(SOCK_NONBLOCK.rawValue) : 0), 0)
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
    static func describe(_ s: sockaddr_storage) -> String { endpoint(s).address.description }

    /// The client's address (IPv4-mapped IPv6 as plain IPv4) and port.
    static func endpoint(_ s: sockaddr_storage) -> (address: IPAddress, port: UInt16) {
        var s = s
        return withUnsafePointer(to: &s) { p in
            p.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { a in
                let bytes = withUnsafeBytes(of: a.pointee.sin6_addr) { Array($0) }
                let port = UInt16(bigEndian: a.pointee.sin6_port)
                if bytes[0..<10].allSatisfy({ $0 == 0 }) && bytes[10] == 0xff && bytes[11] == 0xff {
                    return (IPAddress(bytes: Array(bytes[12...]))!, port)
                }
                return (IPAddress(bytes: bytes)!, port)
            }
        }
    }

    /// Holds one TCP connection for `seconds`, sending a numbered line every `intervalMs` and
    /// expecting it echoed back within `timeoutMilliseconds`. Returns how many round trips
    /// succeeded; throws at the first that fails, saying when (the flow broke).
    public static func hold(host: IPAddress, port: UInt16, seconds: Double, intervalMs: Int, timeoutMilliseconds: Int32 = 2000) throws(SystemError) -> Int {
        let fd = try connected(host: host, port: port, udp: false, timeoutMilliseconds: timeoutMilliseconds)
        defer { close(fd) }
        _ = try greeting(fd, host: host, port: port)
        var buf = [UInt8](repeating: 0, count: 512)
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
        guard udp else { return try greeting(fd, host: host, port: port) }
        _ = send(fd, "?", 1, 0)
        var buf = [UInt8](repeating: 0, count: 512)
        let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        guard n > 0 else { throw SystemError("no reply from \(host) port \(port)", errno: n == 0 ? ECONNRESET : errno) }
        return String(decoding: buf[0..<n], as: UTF8.self).trimmingTrailingNewlines()
    }

    /// The raw greeting of a TCP test server, without its newline. Sends a newline first: not
    /// the start of an HTTP request, so the server greets at once instead of waiting out its
    /// window for the client to speak (connectivity matrices run many probes); the greeting and
    /// the newline's echo are both read, so the stream is at a clean start for `hold` and the
    /// close leaves nothing unread. A server from before HTTP greets on accept and echoes the
    /// newline too: the same bytes. A server that greets without echoing still gives its line
    /// once the timeout passes.
    static func greeting(_ fd: Int32, host: IPAddress, port: UInt16) throws(SystemError) -> String {
        guard send(fd, "\n", 1, Int32(MSG_NOSIGNAL)) == 1 else { throw SystemError("send to \(host) port \(port)") }
        var got: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 512)
        while got.count(where: { $0 == UInt8(ascii: "\n") }) < 2 {
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            guard n > 0 else {
                let e = n == 0 ? ECONNRESET : errno
                if got.contains(UInt8(ascii: "\n")) { break }
                throw SystemError("no greeting from \(host) port \(port)", errno: e)
            }
            got += buf[0..<n]
        }
        return String(decoding: got.prefix { $0 != UInt8(ascii: "\n") }, as: UTF8.self)
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

/// One accepted connection of `EchoServer.serveTCP`: carries out what its session says —
/// queues and sends its output, runs its window, closes when told.
final class TestServerConnection {
    /// After its last answer the server shuts its sending side and drops what still arrives
    /// until the client closes too, or for this long: closing a socket with unread input
    /// sends a reset that can destroy the response still on its way (lingering close, as
    /// Apache and nginx do it).
    static let linger: Duration = .seconds(2)

    let fd: Int32
    private var session: TestServerSession
    private var outbox: [UInt8] = []
    private var sent = 0
    private var closeWhenSent = false
    private var inputEnded = false
    private var windowEnds: ContinuousClock.Instant?
    private var lingerEnds: ContinuousClock.Instant?

    init(fd: Int32, context: TestServerContext) {
        self.fd = fd
        session = TestServerSession(context: context)
        windowEnds = .now + TestServerSession.window
    }

    /// When this connection next needs attention without the client doing anything.
    var deadline: ContinuousClock.Instant? { lingerEnds ?? windowEnds }

    /// Nothing more is read while output waits to be sent: a client that does not read its
    /// answers (or its echo) is not buffered without bound.
    var pollEvents: Int16 { Int16(outbox.isEmpty ? POLLIN : POLLOUT) }

    /// Handles readiness; false when the connection is finished and should be closed.
    func handle(_ revents: Int16, buffer: inout [UInt8]) -> Bool {
        if !outbox.isEmpty { return flush() }
        let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if n < 0 { return errno == EAGAIN || errno == EINTR }
        if n == 0 {
            inputEnded = true
            return lingerEnds == nil && carryOut(session.inputEnded())
        }
        return lingerEnds != nil || carryOut(session.received(Array(buffer[0..<n])))
    }

    /// The window or the linger has run out; false when the connection should be closed.
    func deadlinePassed() -> Bool {
        guard lingerEnds == nil else { return false }
        windowEnds = nil
        return carryOut(session.windowClosed())
    }

    private func carryOut(_ output: TestServerSession.Output) -> Bool {
        if !session.isWaiting { windowEnds = nil }
        outbox += output.bytes
        if output.close { closeWhenSent = true }
        return flush()
    }

    private func flush() -> Bool {
        while sent < outbox.count {
            let n = outbox[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n < 0 { return errno == EAGAIN || errno == EINTR }
            sent += n
        }
        outbox = []
        sent = 0
        guard closeWhenSent else { return true }
        closeWhenSent = false
        if inputEnded { return false }
        shutdown(fd, Int32(SHUT_WR))
        lingerEnds = .now + Self.linger
        return true
    }
}
