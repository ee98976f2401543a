import Testing
import WeftCore

/// A small deterministic generator, so a fuzz failure can be replayed.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9e37_79b9_7f4a_7c15
        var z = state
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }
}

struct DNSCodecTests {
    static func sampleResponse() -> DNSMessage {
        let svc: DNSName = "web.default.svc.cluster.local"
        let soa = DNSSOA(primary: "ns.dns.cluster.local", mailbox: "hostmaster.cluster.local", serial: 42,
                         refresh: 7200, retry: 1800, expire: 86400, minimum: 5)
        return DNSMessage(id: 0xbeef, isResponse: true, authoritative: true, recursionDesired: true, rcode: .noError,
                          questions: [DNSQuestion(name: svc, type: .any)],
                          answers: [
                              DNSRecord(name: svc, ttl: 5, data: .address(ip("10.96.0.20"))),
                              DNSRecord(name: svc, ttl: 5, data: .address(ip("fd00::20"))),
                              DNSRecord(name: svc, ttl: 5, data: .cname("db.example.com")),
                              DNSRecord(name: "20.0.96.10.in-addr.arpa", ttl: 5, data: .ptr(svc)),
                              DNSRecord(name: "_http._tcp.web.default.svc.cluster.local", ttl: 5,
                                        data: .srv(priority: 0, weight: 100, port: 80, target: svc)),
                              DNSRecord(name: "dns-version.cluster.local", ttl: 5, data: .txt([Array("1.1.0".utf8), []])),
                              DNSRecord(name: "cluster.local", ttl: 5, data: .ns("ns.dns.cluster.local")),
                              DNSRecord(name: "x.cluster.local", ttl: 5, data: .other(DNSType(rawValue: 99), [1, 2, 3])),
                          ],
                          authority: [DNSRecord(name: "cluster.local", ttl: 5, data: .soa(soa))],
                          additional: [DNSRecord(name: svc, ttl: 5, data: .address(ip("10.96.0.21")))],
                          edns: EDNS(udpPayloadSize: 1232))
    }

    @Test func everyRecordTypeRoundTrips() throws {
        let m = Self.sampleResponse()
        let bytes = m.encoded()
        #expect(try DNSMessage(parsing: bytes) == m)
    }

    @Test func namesAreCompressedAndStillDecode() throws {
        let m = Self.sampleResponse()
        let bytes = m.encoded()
        // web.default.svc.cluster.local is the name of 5 records and the data of 1 more, yet
        // spelled out only twice: in the question, and as the SRV target, which is never
        // compressed (RFC 2782).
        let spelled: [UInt8] = [3] + Array("web".utf8) + [7] + Array("default".utf8)
        var count = 0
        var rest = bytes[...]
        while let r = rest.firstRange(of: spelled) { count += 1; rest = rest[r.upperBound...] }
        #expect(count == 2)
        let srvData: [UInt8] = [0, 0, 0, 100, 0, 80] + spelled
        #expect(bytes.firstRange(of: srvData) != nil)
    }

    @Test func parsesAQueryAsDigSendsIt() throws {
        // dig +noadflag web.default.svc.cluster.local A (with EDNS 1232, DO clear)
        var q: [UInt8] = [0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1]
        for l in ["web", "default", "svc", "cluster", "local"] { q += [UInt8(l.count)] + Array(l.utf8) }
        q += [0, 0, 1, 0, 1]
        q += [0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]
        let m = try DNSMessage(parsing: q)
        #expect(m.id == 0x1234 && !m.isResponse && m.recursionDesired && m.opcode == 0)
        #expect(m.questions == [DNSQuestion(name: "web.default.svc.cluster.local", type: .a)])
        #expect(m.edns == EDNS(udpPayloadSize: 1232))
        #expect(m.additional.isEmpty)
    }

    @Test func namesCompareWithoutCaseButKeepIt() throws {
        let a: DNSName = "Web.Default.SVC.cluster.local"
        #expect(a == "web.default.svc.cluster.local")
        #expect(Set([a, "web.default.svc.cluster.LOCAL"]).count == 1)
        #expect(a.description == "Web.Default.SVC.cluster.local.")
        #expect(a.isSubdomain(of: "CLUSTER.local") && !a.isSubdomain(of: "local.cluster"))
        #expect(throws: DNSWireError.self) { try DNSName(String(repeating: "a", count: 64) + ".com") }
        #expect(throws: DNSWireError.self) { try DNSName(Array(repeating: "abcdefghi", count: 26).joined(separator: ".")) }
        let emptyLabel = "a..b"   // a variable: a literal would pick the trapping literal initializer
        #expect(throws: DNSWireError.self) { try DNSName(emptyLabel) }
    }

    @Test(arguments: [
        ([0x12, 0x34, 0x01], "header cut short"),
        ([0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 3, 0x61, 0x62], "name cut short"),
        ([0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1], "pointer to itself"),
        ([0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 14, 0, 0, 1, 0, 1], "pointer forwards"),
        ([0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0x41, 0, 0, 1, 0, 1], "extended label type"),
        ([0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1], "question cut short"),
        ([0, 1, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0, 0, 0, 5, 0, 9, 1, 2, 3, 4], "rdlength past the end"),
        ([0, 1, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0, 0, 0, 5, 0, 3, 1, 2, 3], "A record of 3 bytes"),
        ([0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 41, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 41, 4, 0, 0, 0, 0, 0, 0, 0], "two OPT records"),
        ([0, 1, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 41, 4, 0, 0, 0, 0, 0, 0, 0], "OPT among answers"),
        ([0, 1, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 5, 0, 1, 0, 0, 0, 5, 0, 4, 1, 0x61, 0, 0], "CNAME data longer than its name"),
        ([0, 1, 1, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0], "65535 questions promised, none sent"),
    ] as [([UInt8], String)])
    func malformedInputThrows(bytes: [UInt8], what: String) {
        #expect(throws: DNSWireError.self, "\(what)") { try DNSMessage(parsing: bytes) }
    }

    @Test func nameLongerThan255BytesThrows() {
        var q: [UInt8] = [0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0]
        for _ in 0..<5 { q += [63] + Array(repeating: 0x61, count: 63) }
        q += [0, 0, 1, 0, 1]
        #expect(throws: DNSWireError.self) { try DNSMessage(parsing: q) }
    }

    @Test func randomBytesNeverCrashTheParserOrTheZone() throws {
        var rng = SplitMix64(state: 0x5eed)
        let zone = ZoneFixture.zone()
        let valid = DNSMessage.query(id: 7, name: "_http._tcp.web.default.svc.cluster.local", type: .srv,
                                     edns: EDNS(udpPayloadSize: 4096)).encoded()
        var parsed = 0
        for i in 0..<6000 {
            var bytes: [UInt8]
            if i % 2 == 0 {
                bytes = (0..<Int.random(in: 0...300, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
                if i % 4 == 0, bytes.count >= 12 { bytes[2] &= 0x7f; bytes[4] = 0; bytes[5] = 1 }   // look like a query
            } else {
                bytes = valid
                for _ in 0..<Int.random(in: 1...4, using: &rng) {
                    let at = Int.random(in: 0..<bytes.count, using: &rng)
                    bytes[at] = UInt8.random(in: 0...255, using: &rng)
                }
                if Bool.random(using: &rng) { bytes = Array(bytes.prefix(Int.random(in: 0...bytes.count, using: &rng))) }
            }
            if (try? DNSMessage(parsing: bytes)) != nil { parsed += 1 }
            for tcp in [false, true] {
                if case .reply(let reply) = zone.respond(to: bytes, overTCP: tcp, forwarding: false) {
                    let m = try DNSMessage(parsing: reply)
                    #expect(m.isResponse)
                    #expect(reply.count <= (tcp ? 65535 : 1232))
                }
            }
        }
        #expect(parsed > 100, "the mutations should leave some messages parseable")
    }

    @Test func formErrForReadableHeadersDropOtherwise() throws {
        let zone = ZoneFixture.zone()
        let garbage: [UInt8] = [0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12]
        guard case .reply(let bytes) = zone.respond(to: garbage, overTCP: false, forwarding: false) else {
            Issue.record("no reply"); return
        }
        let m = try DNSMessage(parsing: bytes)
        #expect(m.id == 0xabcd && m.isResponse && m.rcode == .formatError && m.recursionDesired)
        #expect(zone.respond(to: [0xab, 0xcd, 1], overTCP: false, forwarding: false) == .drop)
        var response = garbage
        response[2] |= 0x80
        #expect(zone.respond(to: response, overTCP: false, forwarding: false) == .drop, "never answer a response")
    }

    @Test func repliesAreTruncatedToTheClientsSizeWithTC() throws {
        let zone = ZoneFixture.zone(bigHeadless: 100)
        let name: DNSName = "big.default.svc.cluster.local"
        func reply(_ edns: EDNS?, tcp: Bool) throws -> (DNSMessage, Int) {
            guard case .reply(let b) = zone.respond(to: DNSMessage.query(id: 1, name: name, type: .a, edns: edns).encoded(),
                                                    overTCP: tcp, forwarding: false) else { throw DNSWireError("no reply") }
            return (try DNSMessage(parsing: b), b.count)
        }
        let (plain, plainSize) = try reply(nil, tcp: false)
        #expect(plain.truncated && plainSize <= 512 && plain.answers.count < 100 && plain.edns == nil)
        let (big, bigSize) = try reply(EDNS(udpPayloadSize: 4096), tcp: false)
        #expect(big.truncated && bigSize <= 1232, "capped at the 1232 we advertise")
        #expect(big.edns?.udpPayloadSize == 1232, "OPT echoed with our size")
        let (small, smallSize) = try reply(EDNS(udpPayloadSize: 100), tcp: false)
        #expect(small.truncated && smallSize <= 512 && small.answers.count >= 25, "sizes under 512 count as 512")
        let (tcp, _) = try reply(nil, tcp: true)
        #expect(!tcp.truncated && tcp.answers.count == 100)
    }
}

/// A cluster: services of each kind, with endpoints from pods, as the agent would build them.
enum ZoneFixture {
    static func service(_ spec: String, name: String, namespace: String = "default") throws -> ClusterService {
        let j = try JSONValue.parse(Array(#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"\#(name)","namespace":"\#(namespace)"},"spec":\#(spec)}"#.utf8))
        return try ClusterService(KubeObject(json: j))
    }

    static func pod(_ name: String, ip: String, app: String, phase: String = "Running") throws -> KubeObject {
        let j = try JSONValue.parse(Array(#"""
        {"apiVersion":"v1","kind":"Pod","metadata":{"name":"\#(name)","namespace":"default","labels":{"app":"\#(app)"}},
         "spec":{"nodeName":"node0","containers":[{"name":"c","ports":[{"name":"http","containerPort":8080}]}]},
         "status":{"phase":"\#(phase)","podIP":"\#(ip)"}}
        """#.utf8))
        return KubeObject(json: j)
    }

    static func services(bigHeadless: Int = 0) throws -> [(ClusterService, [ServiceEndpoint])] {
        var pods = [try pod("web-a", ip: "10.244.0.5", app: "web"), try pod("web-b", ip: "10.244.1.5", app: "web"),
                    try pod("db-0", ip: "10.244.0.7", app: "db"), try pod("db-1", ip: "10.244.1.7", app: "db"),
                    try pod("db-2", ip: "10.244.2.7", app: "db", phase: "Pending"),
                    try pod("v6-0", ip: "fd00:10:244::9", app: "v6"), try pod("gone-0", ip: "10.244.3.3", app: "gone", phase: "Pending")]
        for i in 0..<bigHeadless { pods.append(try pod("big-\(i)", ip: "10.245.\(i / 200).\(i % 200 + 1)", app: "big")) }
        var web = try service(#"{"selector":{"app":"web"},"ports":[{"name":"http","port":80,"targetPort":"http"},{"name":"metrics","port":9090,"targetPort":9090}]}"#, name: "web")
        web.clusterIPs = [ip("10.96.0.20")]
        var dual = try service(#"{"ipFamilyPolicy":"PreferDualStack","selector":{"app":"web"},"ports":[{"port":443}]}"#, name: "dual")
        dual.clusterIPs = [ip("10.96.0.30"), ip("fd00:96::30")]
        var dns = try service(#"{"ports":[{"name":"dns","port":53,"protocol":"UDP"},{"name":"dns-tcp","port":53,"protocol":"TCP"}]}"#, name: "kube-dns", namespace: "kube-system")
        dns.clusterIPs = [ip("10.96.0.10")]
        let db = try service(#"{"clusterIP":"None","selector":{"app":"db"},"ports":[{"name":"http","port":80,"targetPort":"http"}]}"#, name: "db")
        let v6 = try service(#"{"clusterIP":"None","selector":{"app":"v6"},"ports":[{"name":"http","port":80,"targetPort":"http"}]}"#, name: "v6")
        let gone = try service(#"{"clusterIP":"None","selector":{"app":"gone"}}"#, name: "gone")
        let ext = try service(#"{"type":"ExternalName","externalName":"db.example.com","ports":[{"name":"pg","port":5432}]}"#, name: "ext")
        let alias = try service(#"{"type":"ExternalName","externalName":"web.default.svc.cluster.local"}"#, name: "alias")
        let pending = try service(#"{"ports":[{"port":80}]}"#, name: "pending", namespace: "later")
        let big = try service(#"{"clusterIP":"None","selector":{"app":"big"}}"#, name: "big")
        return [web, dual, dns, db, v6, gone, ext, alias, pending, big].map { ($0, $0.endpoints(from: pods)) }
    }

    static func zone(bigHeadless: Int = 0) -> ClusterDNS {
        do { return ClusterDNS(domain: "cluster.local", services: try services(bigHeadless: bigHeadless), ttl: 5) } catch {
            fatalError("fixture: \(error)")
        }
    }
}

struct ClusterDNSTests {
    let zone = ZoneFixture.zone()

    /// Through the wire both ways, as a client sees it.
    func ask(_ name: String, _ type: DNSType, forwarding: Bool = false, in z: ClusterDNS? = nil) throws -> DNSMessage {
        let q = DNSMessage.query(id: 99, name: try DNSName(name), type: type, edns: EDNS(udpPayloadSize: 1232))
        guard case .reply(let bytes) = (z ?? zone).respond(to: q.encoded(), overTCP: true, forwarding: forwarding) else {
            throw DNSWireError("no reply for \(name)")
        }
        let m = try DNSMessage(parsing: bytes)
        #expect(m.id == 99 && m.isResponse && m.questions == q.questions)
        return m
    }

    func addresses(_ m: DNSMessage) -> [String] {
        m.answers.compactMap { if case .address(let a) = $0.data { "\(a)" } else { nil } }
    }

    func expectNoData(_ m: DNSMessage, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(m.rcode == .noError && m.answers.isEmpty, "\(m.rcode) \(m.answers)", sourceLocation: sourceLocation)
        #expect(m.authority.first?.type == .soa, sourceLocation: sourceLocation)
    }

    func expectNXDomain(_ m: DNSMessage, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(m.rcode == .nameError && m.answers.isEmpty, "\(m.rcode) \(m.answers)", sourceLocation: sourceLocation)
        #expect(m.authoritative && m.authority.first?.type == .soa, sourceLocation: sourceLocation)
    }

    @Test func clusterIPServiceAnswersItsAddressesByFamily() throws {
        let a = try ask("web.default.svc.cluster.local", .a)
        #expect(a.rcode == .noError && a.authoritative && addresses(a) == ["10.96.0.20"])
        #expect(a.answers[0].ttl == 5 && a.answers[0].name == "web.default.svc.cluster.local")
        expectNoData(try ask("web.default.svc.cluster.local", .aaaa))
        #expect(addresses(try ask("dual.default.svc.cluster.local", .a)) == ["10.96.0.30"])
        #expect(addresses(try ask("dual.default.svc.cluster.local", .aaaa)) == ["fd00:96::30"])
        #expect(Set(addresses(try ask("dual.default.svc.cluster.local", .any))) == ["10.96.0.30", "fd00:96::30"], "ANY is A+AAAA")
    }

    @Test func namesAreCaseInsensitiveAndEchoedAsAsked() throws {
        let m = try ask("WEB.Default.Svc.CLUSTER.local", .a)
        #expect(addresses(m) == ["10.96.0.20"])
        #expect(m.answers[0].name.description == "WEB.Default.Svc.CLUSTER.local.")
    }

    @Test func negativeAnswersCarryTheSOA() throws {
        let m = try ask("missing.default.svc.cluster.local", .a)
        expectNXDomain(m)
        guard case .soa(let soa)? = m.authority.first?.data else { Issue.record("no SOA"); return }
        #expect(m.authority[0].name == "cluster.local" && m.authority[0].ttl == 5)
        #expect(soa.primary == "ns.dns.cluster.local" && soa.mailbox == "hostmaster.cluster.local")
        #expect(soa.refresh == 7200 && soa.retry == 1800 && soa.expire == 86400 && soa.minimum == 5)
    }

    @Test func headlessServiceAnswersReadyEndpoints() throws {
        #expect(addresses(try ask("db.default.svc.cluster.local", .a)).sorted() == ["10.244.0.7", "10.244.1.7"], "db-2 is not ready")
        expectNoData(try ask("db.default.svc.cluster.local", .aaaa))
        #expect(addresses(try ask("v6.default.svc.cluster.local", .aaaa)) == ["fd00:10:244::9"])
        expectNoData(try ask("v6.default.svc.cluster.local", .a))
        expectNXDomain(try ask("gone.default.svc.cluster.local", .a))   // no ready endpoint: as CoreDNS
    }

    @Test func endpointNamesResolveByDashedAddress() throws {
        #expect(addresses(try ask("10-244-0-7.db.default.svc.cluster.local", .a)) == ["10.244.0.7"])
        #expect(addresses(try ask("fd00-10-244--9.v6.default.svc.cluster.local", .aaaa)) == ["fd00:10:244::9"])
        #expect(addresses(try ask("10-244-1-5.web.default.svc.cluster.local", .a)) == ["10.244.1.5"], "any service, as CoreDNS")
        expectNXDomain(try ask("10-244-2-7.db.default.svc.cluster.local", .a))   // not ready
        expectNXDomain(try ask("10-244-0-7.web.default.svc.cluster.local", .a))  // not this service's
    }

    @Test func podRecordsAnswerTheAddressTheyName() throws {
        #expect(addresses(try ask("10-244-0-5.default.pod.cluster.local", .a)) == ["10.244.0.5"])
        #expect(addresses(try ask("10-9-9-9.anywhere.pod.cluster.local", .a)) == ["10.9.9.9"], "pods insecure: no lookup, as kube-dns")
        #expect(addresses(try ask("fd00-10-244--9.default.pod.cluster.local", .aaaa)) == ["fd00:10:244::9"])
        expectNoData(try ask("10-244-0-5.default.pod.cluster.local", .aaaa))
        expectNoData(try ask("pod.cluster.local", .a))
        expectNXDomain(try ask("not-an-address.default.pod.cluster.local", .a))
    }

    @Test func aPodsHostnameNamesItUnderTheHeadlessServiceThatIsItsSubdomain() throws {
        let j = try JSONValue.parse(Array(#"""
        {"apiVersion":"v1","kind":"Pod","metadata":{"name":"db-0","namespace":"default","labels":{"app":"db"}},
         "spec":{"nodeName":"node0","hostname":"primary","subdomain":"db","containers":[{"name":"c"}]},
         "status":{"phase":"Running","podIP":"10.244.0.7"}}
        """#.utf8))
        let db = try ZoneFixture.service(#"{"clusterIP":"None","selector":{"app":"db"},"ports":[{"name":"http","port":80}]}"#, name: "db")
        let other = try ZoneFixture.service(#"{"clusterIP":"None","selector":{"app":"db"},"ports":[{"name":"http","port":80}]}"#, name: "other")
        let eps = db.endpoints(from: [KubeObject(json: j)])
        #expect(eps.first?.hostname == "primary")
        #expect(other.endpoints(from: [KubeObject(json: j)]).first?.hostname == nil, "only under the service that is its subdomain")
        // Through an EndpointSlice and back, as the proxy reads it.
        let slices = EndpointSlices.desired(for: db, endpoints: eps)
        #expect(EndpointSlices.endpoints(for: db, in: slices).first?.hostname == "primary")
        let z = ClusterDNS(domain: "cluster.local", services: [(db, eps), (other, other.endpoints(from: [KubeObject(json: j)]))], ttl: 5)
        #expect(addresses(try ask("primary.db.default.svc.cluster.local", .a, in: z)) == ["10.244.0.7"])
        #expect(addresses(try ask("10-244-0-7.other.default.svc.cluster.local", .a, in: z)) == ["10.244.0.7"])
        expectNXDomain(try ask("10-244-0-7.db.default.svc.cluster.local", .a, in: z))
    }

    @Test func srvForNamedPortsOfAService() throws {
        let m = try ask("_http._tcp.web.default.svc.cluster.local", .srv)
        #expect(m.rcode == .noError)
        #expect(m.answers.map(\.data) == [.srv(priority: 0, weight: 100, port: 80, target: "web.default.svc.cluster.local")])
        #expect(m.additional.map(\.data) == [.address(ip("10.96.0.20"))])
        #expect(m.additional.first?.name == "web.default.svc.cluster.local")
        let dns = try ask("_dns._udp.kube-dns.kube-system.svc.cluster.local", .srv)
        #expect(dns.answers.map(\.data) == [.srv(priority: 0, weight: 100, port: 53, target: "kube-dns.kube-system.svc.cluster.local")])
        let all = try ask("web.default.svc.cluster.local", .srv)
        #expect(Set(all.answers.map(\.data)) == [.srv(priority: 0, weight: 50, port: 80, target: "web.default.svc.cluster.local"),
                                                .srv(priority: 0, weight: 50, port: 9090, target: "web.default.svc.cluster.local")],
                "every port, weight shared")
        #expect(all.additional.count == 1, "one address record per target")
        expectNXDomain(try ask("_http._udp.web.default.svc.cluster.local", .srv))
        expectNXDomain(try ask("_nope._tcp.web.default.svc.cluster.local", .srv))
        expectNoData(try ask("_tcp.web.default.svc.cluster.local", .srv))   // exists: names below it do
        expectNoData(try ask("_http._tcp.web.default.svc.cluster.local", .a))
    }

    @Test func srvForHeadlessServiceNamesEachReadyEndpoint() throws {
        let m = try ask("_http._tcp.db.default.svc.cluster.local", .srv)
        #expect(Set(m.answers.map(\.data)) == [
            .srv(priority: 0, weight: 50, port: 8080, target: "10-244-0-7.db.default.svc.cluster.local"),
            .srv(priority: 0, weight: 50, port: 8080, target: "10-244-1-7.db.default.svc.cluster.local"),
        ], "the endpoint's own port (the named targetPort)")
        #expect(Set(m.additional.map { "\($0.name) \($0.data)" }) == [
            "10-244-0-7.db.default.svc.cluster.local. \(DNSRecord.Data.address(ip("10.244.0.7")))",
            "10-244-1-7.db.default.svc.cluster.local. \(DNSRecord.Data.address(ip("10.244.1.7")))",
        ])
    }

    @Test func externalNameIsACNAME() throws {
        let m = try ask("ext.default.svc.cluster.local", .a)
        #expect(m.rcode == .noError && m.answers.map(\.data) == [.cname("db.example.com")], "the resolver follows it")
        #expect(try ask("ext.default.svc.cluster.local", .cname).answers.map(\.data) == [.cname("db.example.com")])
        #expect(try ask("_pg._tcp.ext.default.svc.cluster.local", .srv).answers.map(\.data)
                == [.srv(priority: 0, weight: 100, port: 5432, target: "db.example.com")])
        // Pointing into the zone: followed here.
        let alias = try ask("alias.default.svc.cluster.local", .a)
        #expect(alias.answers.map(\.data) == [.cname("web.default.svc.cluster.local"), .address(ip("10.96.0.20"))])
        #expect(alias.answers[1].name == "web.default.svc.cluster.local")
    }

    @Test func externalNameOutsideTheZoneIsChasedWhenForwarding() throws {
        let q = DNSMessage.query(id: 3, name: "ext.default.svc.cluster.local", type: .a)
        guard case .chase(let reply, let target) = zone.respond(to: q.encoded(), overTCP: false, forwarding: true) else {
            Issue.record("expected a chase"); return
        }
        #expect(target == DNSQuestion(name: "db.example.com", type: .a))
        var upstream = DNSMessage.query(id: 0, name: "db.example.com", type: .a).replyHeader()
        upstream.answers = [DNSRecord(name: "db.example.com", ttl: 60, data: .cname("rds.example.net")),
                            DNSRecord(name: "rds.example.net", ttl: 60, data: .address(ip("192.0.2.9")))]
        upstream.authority = [DNSRecord(name: "example.net", ttl: 60, data: .ns("ns1.example.net"))]
        let done = ClusterDNS.completing(reply, with: upstream)
        #expect(done.answers.map(\.data) == [.cname("db.example.com"), .cname("rds.example.net"), .address(ip("192.0.2.9"))])
        #expect(done.authority.isEmpty && !done.authoritative && done.recursionAvailable && done.id == 3)
        var nx = upstream
        nx.answers = []
        nx.rcode = .nameError
        #expect(ClusterDNS.completing(reply, with: nx).rcode == .nameError)
    }

    @Test func namespacesAndTheDomainExistWithoutRecords() throws {
        expectNoData(try ask("default.svc.cluster.local", .a))
        expectNoData(try ask("kube-system.svc.cluster.local", .a))
        expectNoData(try ask("svc.cluster.local", .a))
        expectNoData(try ask("cluster.local", .a))
        expectNoData(try ask("cluster.local", .ns))
        expectNXDomain(try ask("nowhere.svc.cluster.local", .a))
        expectNoData(try ask("pod.cluster.local", .a))   // pod records live below it
        expectNXDomain(try ask("a.b.web.default.svc.cluster.local", .a))
        // A service not yet given its ClusterIP exists (and so does its namespace).
        expectNoData(try ask("pending.later.svc.cluster.local", .a))
        expectNoData(try ask("later.svc.cluster.local", .a))
        let soa = try ask("cluster.local", .soa)
        #expect(soa.answers.first?.type == .soa && soa.rcode == .noError)
        let txt = try ask("dns-version.cluster.local", .txt)
        #expect(txt.answers.map(\.data) == [.txt([Array("1.1.0".utf8)])])
    }

    @Test func reverseLookups() throws {
        #expect(try ask("20.0.96.10.in-addr.arpa", .ptr).answers.map(\.data) == [.ptr("web.default.svc.cluster.local")])
        let v6 = "0.3.0.0." + String(repeating: "0.", count: 20) + "6.9.0.0.0.0.d.f.ip6.arpa"
        #expect(try ask(v6, .ptr).answers.map(\.data) == [.ptr("dual.default.svc.cluster.local")])
        #expect(try ask("7.0.244.10.in-addr.arpa", .ptr).answers.map(\.data) == [.ptr("10-244-0-7.db.default.svc.cluster.local")])
        // web-a backs both web and dual: one name under each.
        #expect(Set(try ask("5.0.244.10.in-addr.arpa", .ptr).answers.map(\.data))
                == [.ptr("10-244-0-5.web.default.svc.cluster.local"), .ptr("10-244-0-5.dual.default.svc.cluster.local")])
        expectNXDomain(try ask("99.0.96.10.in-addr.arpa", .ptr))
        expectNXDomain(try ask("010.0.96.10.in-addr.arpa", .ptr))
        expectNXDomain(try ask("1.2.3.4.5.in-addr.arpa", .ptr))
        expectNoData(try ask("96.10.in-addr.arpa", .ptr))   // holds a known address
        expectNoData(try ask("20.0.96.10.in-addr.arpa", .a))
        #expect(try ask("in-addr.arpa", .soa).answers.first?.name == "in-addr.arpa")
        #expect(zone.isAuthoritative(for: "20.0.96.10.in-addr.arpa") && !zone.isAuthoritative(for: "8.8.8.8.in-addr.arpa"))
    }

    @Test func namesOutsideAreRefusedOrForwarded() throws {
        let m = try ask("example.com", .a)
        #expect(m.rcode == .refused && !m.authoritative && m.answers.isEmpty)
        expectNXDomain(try ask("8.8.8.8.in-addr.arpa", .ptr))
        for name: DNSName in ["example.com", "8.8.8.8.in-addr.arpa"] {
            let q = DNSMessage.query(id: 5, name: name, type: .a)
            #expect(zone.respond(to: q.encoded(), overTCP: false, forwarding: true) == .forward(q))
        }
        let q = DNSMessage.query(id: 5, name: "web.default.svc.cluster.local", type: .a)
        guard case .reply(let b) = zone.respond(to: q.encoded(), overTCP: false, forwarding: true) else { Issue.record("no reply"); return }
        #expect(try DNSMessage(parsing: b).recursionAvailable, "RA when there is an upstream")
    }

    @Test func unusualQueries() throws {
        func reply(_ q: DNSMessage) throws -> DNSMessage {
            guard case .reply(let b) = zone.respond(to: q.encoded(), overTCP: false, forwarding: false) else { throw DNSWireError("no reply") }
            return try DNSMessage(parsing: b)
        }
        var status = DNSMessage.query(id: 1, name: "cluster.local", type: .soa)
        status.opcode = 2
        #expect(try reply(status).rcode == .notImplemented)
        var two = DNSMessage.query(id: 1, name: "cluster.local", type: .soa)
        two.questions.append(two.questions[0])
        #expect(try reply(two).rcode == .formatError)
        #expect(try reply(DNSMessage(id: 1)).rcode == .formatError, "no question")
        let v1 = try reply(DNSMessage.query(id: 1, name: "cluster.local", type: .soa, edns: EDNS(udpPayloadSize: 1232, version: 1)))
        #expect(v1.rcode == .badVersion && v1.edns != nil, "BADVERS needs its OPT")
        var chaos = DNSMessage.query(id: 1, name: "version.bind", type: .txt)
        chaos.questions[0].qclass = 3
        #expect(try reply(chaos).rcode == .refused)
        #expect(try reply(DNSMessage.query(id: 1, name: "cluster.local", type: .axfr)).rcode == .refused)
        expectNoData(try ask("web.default.svc.cluster.local", .mx))
    }

    @Test func serialFollowsContent() throws {
        let s = try ZoneFixture.services()
        #expect(ClusterDNS(services: s).serial == ClusterDNS(services: Array(s.reversed())).serial)
        var changed = s
        changed[0].0.clusterIPs = [ip("10.96.0.99")]
        #expect(ClusterDNS(services: changed).serial != ClusterDNS(services: s).serial)
        #expect(addresses(try ask("web.default.svc.cluster.local", .a, in: ClusterDNS(services: changed))) == ["10.96.0.99"])
    }

    @Test func otherDomains() throws {
        let z = ClusterDNS(domain: "corp.example", services: try ZoneFixture.services(), ttl: 30)
        let m = try ask("web.default.svc.corp.example", .a, in: z)
        #expect(addresses(m) == ["10.96.0.20"] && m.answers[0].ttl == 30)
        #expect(try ask("web.default.svc.cluster.local", .a, in: z).rcode == .refused)
    }

    @Test(arguments: [
        (#"{"type":"ExternalName"}"#, "spec.externalName (missing) must be a DNS name for type ExternalName"),
        (#"{"type":"ExternalName","externalName":"Not_A.Name"}"#, "spec.externalName \"Not_A.Name\" must be a DNS name"),
        (#"{"type":"ExternalName","externalName":"-a.example.com"}"#, "lowercase letters, digits"),
        (#"{"type":"ExternalName","externalName":""}"#, "spec.externalName \"\" must be a DNS name"),
    ])
    func externalNameIsValidated(spec: String, says: String) {
        do {
            _ = try ZoneFixture.service(spec, name: "x")
            Issue.record("accepted \(spec)")
        } catch {
            #expect("\(error)".contains(says), "\(error)")
            #expect("\(error)".contains("service default/x"), "\(error)")
        }
    }

    @Test func externalNameIsParsed() throws {
        #expect(try ZoneFixture.service(#"{"type":"ExternalName","externalName":"db.example.com."}"#, name: "x").externalName == "db.example.com.")
        #expect(try ZoneFixture.service(#"{"ports":[{"port":80}]}"#, name: "x").externalName == nil)
    }
}
