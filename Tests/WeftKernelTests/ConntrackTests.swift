import Testing
import WeftCore
import WeftOS
#if canImport(Glibc)
import Glibc
#endif

/// Stale UDP conntrack entries on a real kernel: a client namespace sends through a UDP "VIP"
/// that a server namespace DNATs to an endpoint; once the DNAT target changes, the client's
/// flow keeps going to the old endpoint until its entry is deleted by reply source (the old
/// endpoint), and deleting by original destination (VIP and port) leaves other ports alone.
@Suite(.serialized, .enabled(if: isRoot, "needs root to create network namespaces"))
struct ConntrackKernelTests {
    struct Plan {
        var family: IPFamily
        var client: IPAddress, endpointA: IPAddress, endpointB: IPAddress, vip: IPAddress
        var prefix: Int
        var vipRoute: String
        var nftFamily: String { family == .v4 ? "ip" : "ip6" }
        func target(_ a: IPAddress, _ port: UInt16) -> String { family == .v4 ? "\(a):\(port)" : "[\(a)]:\(port)" }
    }

    static let plans: [Plan] = [
        Plan(family: .v4, client: IPAddress("10.77.0.1")!, endpointA: IPAddress("10.77.0.2")!, endpointB: IPAddress("10.77.0.3")!,
             vip: IPAddress("10.96.77.10")!, prefix: 24, vipRoute: "10.96.77.0/24"),
        Plan(family: .v6, client: IPAddress("fd77::1")!, endpointA: IPAddress("fd77::2")!, endpointB: IPAddress("fd77::3")!,
             vip: IPAddress("fd96::10")!, prefix: 64, vipRoute: "fd96::/64"),
    ]

    /// The server namespace's DNAT: VIP:53 to `dns`, VIP:54 always to endpoint B port 9001.
    func natScript(_ p: Plan, dns: String) -> String {
        """
        table inet weftct {}
        flush table inet weftct
        table inet weftct {
            chain prerouting {
                type nat hook prerouting priority dstnat; policy accept;
                \(p.nftFamily) daddr \(p.vip) udp dport 53 dnat \(p.nftFamily) to \(dns)
                \(p.nftFamily) daddr \(p.vip) udp dport 54 dnat \(p.nftFamily) to \(p.target(p.endpointB, 9001))
            }
        }
        """
    }

    @Test(arguments: plans)
    func staleUDPEntriesAreDeletedByEndpointAndByService(_ p: Plan) throws {
        let lab = try KernelLab()
        defer { lab.close() }
        let server = lab.node
        let client = try lab.pod("client")
        let nodad = p.family == .v6 ? ["nodad"] : []

        // client (veth c0) <-> server (veth s0), the endpoints' addresses on s0.
        try check(lab.inNode(["ip", "link", "add", "s0", "type", "veth", "peer", "name", "c0", "netns", client]))
        try check(lab.inNode(["ip", "addr", "add", "\(p.endpointA)/\(p.prefix)", "dev", "s0"] + nodad))
        try check(lab.inNode(["ip", "addr", "add", "\(p.endpointB)/\(p.prefix)", "dev", "s0"] + nodad))
        try check(lab.inNode(["ip", "link", "set", "s0", "up"]))
        try check(lab.inNS(client, ["ip", "addr", "add", "\(p.client)/\(p.prefix)", "dev", "c0"] + nodad))
        try check(lab.inNS(client, ["ip", "link", "set", "c0", "up"]))
        try check(lab.inNS(client, ["ip", "route", "add", p.vipRoute, "via", p.endpointA.description]))
        try check(sh(["ip", "netns", "exec", server, "nft", "-f", "-"], stdin: natScript(p, dns: p.target(p.endpointA, 9000))))

        let serverNS = try NetworkNamespace(path: "/run/netns/\(server)")
        let clientNS = try NetworkNamespace(path: "/run/netns/\(client)")
        // Endpoints: sockets bound to their own address, so replies leave from it.
        let endpoints = [
            try serverNS.run { () throws(SystemError) -> UDPSocket in try UDPSocket(bind: p.endpointA, port: 9000, name: "a") },
            try serverNS.run { () throws(SystemError) -> UDPSocket in try UDPSocket(bind: p.endpointB, port: 9000, name: "b") },
            try serverNS.run { () throws(SystemError) -> UDPSocket in try UDPSocket(bind: p.endpointB, port: 9001, name: "b9001") },
        ]
        // Two client flows with fixed source ports: the service port 53, and another port.
        let dns = try clientNS.run { () throws(SystemError) -> UDPSocket in try UDPSocket(bind: p.client, port: 40000, name: "dns", connect: (p.vip, 53)) }
        let other = try clientNS.run { () throws(SystemError) -> UDPSocket in try UDPSocket(bind: p.client, port: 40001, name: "other", connect: (p.vip, 54)) }
        // The table is the server namespace's; this socket stays bound to it.
        let conntrack = try serverNS.run { () throws(NetlinkError) -> Conntrack in try Conntrack() }

        #expect(try exchange(dns, endpoints) == "a")
        #expect(try exchange(other, endpoints) == "b9001")

        let service = ConntrackFilter(family: p.family, proto: .udp, originalDestination: p.vip, originalDestinationPort: 53)
        let otherPort = ConntrackFilter(family: p.family, proto: .udp, originalDestination: p.vip, originalDestinationPort: 54)
        let found = try conntrack.entries(matching: service)
        #expect(found.count == 1)
        if let e = found.first {
            #expect(e.original == ConntrackTuple(source: p.client, destination: p.vip, proto: .udp, sourcePort: 40000, destinationPort: 53))
            #expect(e.reply == ConntrackTuple(source: p.endpointA, destination: p.client, proto: .udp, sourcePort: 9000, destinationPort: 40000))
            #expect(e.id != nil)
        }
        #expect(try conntrack.entries(matching: ConntrackFilter(family: p.family, proto: .udp, originalDestination: p.vip)).count == 2)
        #expect(try conntrack.entries(matching: ConntrackFilter(family: p.family, proto: .tcp, originalDestination: p.vip)).isEmpty)
        let otherFamily = p.family == .v4 ? IPFamily.v6 : .v4
        #expect(try conntrack.entries(matching: ConntrackFilter(family: otherFamily, proto: .udp)).isEmpty)
        // A VIP of the wrong family is refused, naming the field.
        let bad = ConntrackFilter(family: otherFamily, proto: .udp, originalDestination: p.vip)
        let refused = #expect(throws: NetlinkError.self) { try conntrack.deleteEntries(matching: bad) }
        #expect(refused?.errno == EINVAL)
        #expect(refused?.description.contains("originalDestination") == true)

        // The endpoint changes; the flow sticks to the old one through its conntrack entry...
        try check(sh(["ip", "netns", "exec", server, "nft", "-f", "-"], stdin: natScript(p, dns: p.target(p.endpointB, 9000))))
        #expect(try exchange(dns, endpoints) == "a")
        // ...until the entries whose reply source is the removed endpoint are deleted.
        #expect(try conntrack.deleteEntries(matching: ConntrackFilter(family: p.family, proto: .udp, replySource: p.endpointA)) == 1)
        #expect(try conntrack.entries(matching: service).isEmpty)
        #expect(try conntrack.entries(matching: otherPort).count == 1)
        #expect(try exchange(dns, endpoints) == "b")
        #expect(try conntrack.entries(matching: service).first?.reply.source == p.endpointB)

        // By original destination: the service's port only; the other port's entry survives.
        #expect(try conntrack.deleteEntries(matching: service) == 1)
        #expect(try conntrack.entries(matching: service).isEmpty)
        #expect(try conntrack.entries(matching: otherPort).count == 1)
        #expect(try conntrack.deleteEntries(matching: service) == 0)
        #expect(try exchange(other, endpoints) == "b9001")
    }

    func check(_ r: CommandResult) throws {
        guard r.status == 0 else { throw LabError("command failed (\(r.status)): \(r.stderr)") }
    }

    /// Sends one datagram on `flow`; the endpoint that receives it answers with its name from
    /// its own address, which the flow's connected socket only accepts if conntrack un-NATs it
    /// back to the VIP. Returns the answer.
    func exchange(_ flow: UDPSocket, _ endpoints: [UDPSocket]) throws -> String {
        try flow.send(Array("?".utf8))
        var fds = endpoints.map { pollfd(fd: $0.fd, events: Int16(POLLIN), revents: 0) }
        guard poll(&fds, nfds_t(fds.count), 3000) > 0, let i = fds.firstIndex(where: { $0.revents & Int16(POLLIN) != 0 }) else {
            throw LabError("no endpoint received the datagram of flow \(flow.name)")
        }
        let (_, peer) = try endpoints[i].receive()
        try endpoints[i].send(Array(endpoints[i].name.utf8), to: peer)
        let (reply, _) = try flow.receive()
        return String(decoding: reply, as: UTF8.self)
    }
}

/// A UDP socket bound to one address and port (in the namespace it was opened in), optionally
/// connected, with a 3 s receive timeout.
final class UDPSocket {
    let fd: Int32
    let name: String

    init(bind address: IPAddress, port: UInt16, name: String, connect peer: (IPAddress, UInt16)? = nil) throws(SystemError) {
        self.name = name
        fd = socket(address.family == .v4 ? AF_INET : AF_INET6, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SystemError("socket") }
        var tv = timeval(tv_sec: 3, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var one: Int32 = 1
        if address.family == .v6 { setsockopt(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &one, socklen_t(MemoryLayout<Int32>.size)) }
        var ss = UDPSocket.address(address, port)
        guard withUnsafePointer(to: &ss.0, { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.bind(fd, $0, ss.1) } }) == 0 else {
            let e = SystemError("bind \(address) port \(port)"); close(fd); throw e
        }
        if let (a, p) = peer {
            var ps = UDPSocket.address(a, p)
            guard withUnsafePointer(to: &ps.0, { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, ps.1) } }) == 0 else {
                let e = SystemError("connect \(a) port \(p)"); close(fd); throw e
            }
        }
    }

    deinit { close(fd) }

    static func address(_ a: IPAddress, _ port: UInt16) -> (sockaddr_storage, socklen_t) {
        var ss = sockaddr_storage()
        if a.family == .v4 {
            withUnsafeMutablePointer(to: &ss) { $0.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { sin in
                sin.pointee.sin_family = sa_family_t(AF_INET)
                sin.pointee.sin_port = port.bigEndian
                withUnsafeMutableBytes(of: &sin.pointee.sin_addr) { $0.copyBytes(from: a.bytes) }
            } }
            return (ss, socklen_t(MemoryLayout<sockaddr_in>.size))
        }
        withUnsafeMutablePointer(to: &ss) { $0.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { sin6 in
            sin6.pointee.sin6_family = sa_family_t(AF_INET6)
            sin6.pointee.sin6_port = port.bigEndian
            withUnsafeMutableBytes(of: &sin6.pointee.sin6_addr) { $0.copyBytes(from: a.bytes) }
        } }
        return (ss, socklen_t(MemoryLayout<sockaddr_in6>.size))
    }

    func send(_ bytes: [UInt8], to peer: (sockaddr_storage, socklen_t)? = nil) throws(SystemError) {
        let n: Int
        if var peer {
            n = withUnsafePointer(to: &peer.0) { p in
                p.withMemoryRebound(to: Glibc.sockaddr.self, capacity: 1) { sa in bytes.withUnsafeBytes { sendto(fd, $0.baseAddress, $0.count, 0, sa, peer.1) } }
            }
        } else {
            n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, 0) }
        }
        guard n == bytes.count else { throw SystemError("send on \(name)") }
    }

    func receive() throws(SystemError) -> ([UInt8], (sockaddr_storage, socklen_t)) {
        var buf = [UInt8](repeating: 0, count: 512)
        var peer = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let n = withUnsafeMutablePointer(to: &peer) { p in
            p.withMemoryRebound(to: Glibc.sockaddr.self, capacity: 1) { sa in buf.withUnsafeMutableBytes { recvfrom(fd, $0.baseAddress, $0.count, 0, sa, &len) } }
        }
        guard n >= 0 else { throw SystemError("receive on \(name)") }
        return (Array(buf[0..<n]), (peer, len))
    }
}
