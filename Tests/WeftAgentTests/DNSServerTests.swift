#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Testing
import WeftAgent
import WeftCore

/// A minimal DNS client on loopback. Non-blocking sockets polled with short sleeps, so a test
/// waiting for an answer never holds one of the few threads the server's own tasks run on.
enum LoopbackClient {
    struct Failure: Error, CustomStringConvertible { var description: String }

    static func socket(_ type: Int32, port: Int) throws -> Int32 {
        let fd = Glibc.socket(AF_INET, type, 0)
        guard fd >= 0 else { throw Failure(description: "socket: errno \(errno)") }
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_port = UInt16(port).bigEndian
        a.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &a) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard rc == 0 else { close(fd); throw Failure(description: "connect to 127.0.0.1:\(port): errno \(errno)") }
        return fd
    }

    /// Reads what is there now: nil when nothing yet, [] at end of stream.
    static func readNow(_ fd: Int32) throws -> [UInt8]? {
        var buf = [UInt8](repeating: 0, count: 65536)
        let n = recv(fd, &buf, buf.count, Int32(MSG_DONTWAIT))
        if n < 0 {
            if errno == EAGAIN || errno == EWOULDBLOCK { return nil }
            throw Failure(description: "recv: errno \(errno)")
        }
        return Array(buf.prefix(n))
    }

    static func udp(_ query: [UInt8], port: Int, wait: Duration = .seconds(10)) async throws -> [UInt8]? {
        let fd = try socket(Int32(SOCK_DGRAM.rawValue), port: port)
        defer { close(fd) }
        guard send(fd, query, query.count, 0) == query.count else { throw Failure(description: "send: errno \(errno)") }
        let deadline = ContinuousClock.now + wait
        while ContinuousClock.now < deadline {
            if let reply = try readNow(fd) { return reply }
            try await Task.sleep(for: .milliseconds(5))
        }
        return nil
    }

    /// Sends every query on one connection at once (pipelined), then reads one reply for each.
    static func tcp(_ queries: [[UInt8]], port: Int) async throws -> [[UInt8]] {
        let fd = try socket(Int32(SOCK_STREAM.rawValue), port: port)
        defer { close(fd) }
        let out = queries.flatMap { [UInt8($0.count >> 8), UInt8($0.count & 0xff)] + $0 }
        guard send(fd, out, out.count, 0) == out.count else { throw Failure(description: "send: errno \(errno)") }
        var buffer: [UInt8] = []
        var replies: [[UInt8]] = []
        let deadline = ContinuousClock.now + .seconds(10)
        while replies.count < queries.count {
            guard ContinuousClock.now < deadline else { throw Failure(description: "no reply over TCP") }
            if let got = try readNow(fd) {
                guard !got.isEmpty else { throw Failure(description: "server closed the connection") }
                buffer += got
                while buffer.count >= 2, buffer.count >= 2 + (Int(buffer[0]) << 8 | Int(buffer[1])) {
                    let n = Int(buffer[0]) << 8 | Int(buffer[1])
                    replies.append(Array(buffer[2..<2 + n]))
                    buffer.removeFirst(2 + n)
                }
            } else {
                try await Task.sleep(for: .milliseconds(5))
            }
        }
        return replies
    }

    /// A UDP socket on loopback that never answers: an upstream that has gone away.
    static func silentPeer() throws -> (fd: Int32, port: Int) {
        let fd = Glibc.socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafeMutablePointer(to: &a) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) == 0 && getsockname(fd, $0, &len) == 0 }
        }
        guard fd >= 0, ok else { throw Failure(description: "silent peer: errno \(errno)") }
        return (fd, Int(UInt16(bigEndian: a.sin_port)))
    }
}

@Suite(.serialized, .timeLimit(.minutes(2)))
struct DNSServerTests {
    static func service(_ spec: String, name: String) throws -> ClusterService {
        let j = try JSONValue.parse(Array(#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"\#(name)","namespace":"default"},"spec":\#(spec)}"#.utf8))
        return try ClusterService(KubeObject(json: j))
    }

    static func pods(_ n: Int) throws -> [KubeObject] {
        try (0..<n).map { i in
            KubeObject(json: try JSONValue.parse(Array(#"""
            {"apiVersion":"v1","kind":"Pod","metadata":{"name":"p\#(i)","namespace":"default","labels":{"app":"big"}},
             "spec":{"nodeName":"node0"},"status":{"phase":"Running","podIP":"10.244.\#(i / 200).\#(i % 200 + 1)"}}
            """#.utf8)))
        }
    }

    static func zone(domain: DNSName = "cluster.local", extra: [ClusterService] = []) throws -> ClusterDNS {
        var web = try service(#"{"ports":[{"name":"http","port":80}]}"#, name: "web")
        web.clusterIPs = [try #require(IPAddress("10.96.0.20"))]
        let big = try service(#"{"clusterIP":"None","selector":{"app":"big"}}"#, name: "big")
        let pods = try pods(100)
        return ClusterDNS(domain: domain, services: ([web, big] + extra).map { ($0, $0.endpoints(from: pods)) })
    }

    /// Runs `body` against a server on a free loopback port, then cancels it: the group only
    /// returns once `run()` has, so every test also checks the shutdown.
    func withServer<T: Sendable>(_ zone: ClusterDNS, upstreams: [DNSUpstream] = [],
                                 _ body: @Sendable (DNSServer) async throws -> T) async throws -> T {
        let server = try await DNSServer.bind(host: "127.0.0.1", port: 0, zone: zone, upstreams: upstreams)
        return try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await server.run() }
            let result = try await body(server)
            group.cancelAll()
            try await group.waitForAll()
            return result
        }
    }

    static func query(_ name: DNSName, _ type: DNSType = .a, id: UInt16 = 0x4242, edns: EDNS? = nil) -> [UInt8] {
        DNSMessage.query(id: id, name: name, type: type, edns: edns).encoded()
    }

    static func addresses(_ m: DNSMessage) -> [String] {
        m.answers.compactMap { if case .address(let a) = $0.data { "\(a)" } else { nil } }
    }

    @Test func answersOverUDPAndTCP() async throws {
        try await withServer(try Self.zone()) { server in
            let udp = try DNSMessage(parsing: try #require(await LoopbackClient.udp(Self.query("web.default.svc.cluster.local"), port: server.port)))
            #expect(udp.id == 0x4242 && udp.rcode == .noError && Self.addresses(udp) == ["10.96.0.20"])
            let replies = try await LoopbackClient.tcp([Self.query("web.default.svc.cluster.local", id: 1),
                                                        Self.query("_http._tcp.web.default.svc.cluster.local", .srv, id: 2),
                                                        Self.query("nope.default.svc.cluster.local", id: 3)], port: server.port)
            let m = try replies.map(DNSMessage.init(parsing:))
            #expect(m.map(\.id) == [1, 2, 3])
            #expect(Self.addresses(m[0]) == ["10.96.0.20"])
            #expect(m[1].answers.map(\.data) == [.srv(priority: 0, weight: 100, port: 80, target: "web.default.svc.cluster.local")])
            #expect(m[2].rcode == .nameError)
        }
    }

    @Test func bigAnswersAreTruncatedOverUDPAndWholeOverTCP() async throws {
        try await withServer(try Self.zone()) { server in
            let q = Self.query("big.default.svc.cluster.local", edns: EDNS(udpPayloadSize: 4096))
            let udpBytes = try #require(await LoopbackClient.udp(q, port: server.port))
            let udp = try DNSMessage(parsing: udpBytes)
            #expect(udp.truncated && udpBytes.count <= 1232 && udp.answers.count < 100)
            let tcp = try DNSMessage(parsing: try #require(await LoopbackClient.tcp([q], port: server.port).first))
            #expect(!tcp.truncated && tcp.answers.count == 100)
        }
    }

    @Test func updateSwapsTheZone() async throws {
        try await withServer(try Self.zone()) { server in
            let name: DNSName = "api.default.svc.cluster.local"
            let before = try DNSMessage(parsing: try #require(await LoopbackClient.udp(Self.query(name), port: server.port)))
            #expect(before.rcode == .nameError)
            var api = try Self.service(#"{"ports":[{"port":443}]}"#, name: "api")
            api.clusterIPs = [try #require(IPAddress("10.96.0.44"))]
            server.update(try Self.zone(extra: [api]))
            let after = try DNSMessage(parsing: try #require(await LoopbackClient.udp(Self.query(name), port: server.port)))
            #expect(Self.addresses(after) == ["10.96.0.44"])
        }
    }

    @Test func malformedQueriesGetFormErrOrNothing() async throws {
        try await withServer(try Self.zone()) { server in
            let bad: [UInt8] = [0x77, 0x01, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1]
            let reply = try DNSMessage(parsing: try #require(await LoopbackClient.udp(bad, port: server.port)))
            #expect(reply.id == 0x7701 && reply.rcode == .formatError)
            #expect(try await LoopbackClient.udp([1, 2, 3], port: server.port, wait: .milliseconds(300)) == nil)
            // Still serving after both.
            let ok = try DNSMessage(parsing: try #require(await LoopbackClient.udp(Self.query("web.default.svc.cluster.local"), port: server.port)))
            #expect(Self.addresses(ok) == ["10.96.0.20"])
            // A TCP frame of garbage: FORMERR on the same connection.
            let tcp = try await LoopbackClient.tcp([bad], port: server.port)
            #expect(try DNSMessage(parsing: tcp[0]).rcode == .formatError)
        }
    }

    @Test func namesOutsideAreRefusedWithoutUpstream() async throws {
        try await withServer(try Self.zone()) { server in
            let m = try DNSMessage(parsing: try #require(await LoopbackClient.udp(Self.query("example.com"), port: server.port)))
            #expect(m.rcode == .refused && !m.recursionAvailable)
        }
    }

    @Test func forwardsOtherNamesAndFollowsExternalNames() async throws {
        // The upstream: another server, authoritative for example.com.
        try await withServer(try Self.zone(domain: "example.com")) { upstream in
            let ext = try Self.service(#"{"type":"ExternalName","externalName":"web.default.svc.example.com"}"#, name: "ext")
            let ups = [DNSUpstream(address: try #require(IPAddress("127.0.0.1")), port: UInt16(upstream.port))]
            try await withServer(try Self.zone(extra: [ext]), upstreams: ups) { server in
                let q = Self.query("web.default.svc.example.com", id: 0x1111)
                let relayed = try DNSMessage(parsing: try #require(await LoopbackClient.udp(q, port: server.port)))
                #expect(relayed.id == 0x1111 && Self.addresses(relayed) == ["10.96.0.20"], "relayed from the upstream, our ID restored")
                let nx = try DNSMessage(parsing: try #require(await LoopbackClient.udp(Self.query("nope.example.com"), port: server.port)))
                #expect(nx.rcode == .nameError && nx.authority.first?.name == "example.com")
                let tcp = try DNSMessage(parsing: try #require(await LoopbackClient.tcp([q], port: server.port).first))
                #expect(Self.addresses(tcp) == ["10.96.0.20"], "forwarded for TCP clients too")
                let chased = try DNSMessage(parsing: try #require(await LoopbackClient.udp(Self.query("ext.default.svc.cluster.local"), port: server.port)))
                #expect(chased.answers.map(\.data) == [.cname("web.default.svc.example.com"), .address(try #require(IPAddress("10.96.0.20")))])
                #expect(chased.recursionAvailable)
            }
        }
    }

    @Test func silentUpstreamGivesServFailAfterTheTimeout() async throws {
        let peer = try LoopbackClient.silentPeer()
        defer { close(peer.fd) }
        let ups = [DNSUpstream(address: try #require(IPAddress("127.0.0.1")), port: UInt16(peer.port))]
        try await withServer(try Self.zone(), upstreams: ups) { server in
            let start = ContinuousClock.now
            let m = try DNSMessage(parsing: try #require(await LoopbackClient.udp(Self.query("example.com", id: 9), port: server.port)))
            #expect(m.id == 9 && m.rcode == .serverFailure && m.recursionAvailable)
            #expect(ContinuousClock.now - start >= .milliseconds(1900), "it waited for the upstream")
            // Zone names are still answered while a forward waits.
            let ok = try DNSMessage(parsing: try #require(await LoopbackClient.udp(Self.query("web.default.svc.cluster.local"), port: server.port)))
            #expect(Self.addresses(ok) == ["10.96.0.20"])
        }
    }
}
