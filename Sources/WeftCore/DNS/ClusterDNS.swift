/// Service DNS for one cluster, answered as CoreDNS's kubernetes plugin answers it (and the
/// Kubernetes DNS specification describes), from services and their endpoints. Immutable: the
/// agent builds a new zone when the cluster changes and swaps it in whole.
///
/// Under `domain` (default cluster.local):
/// - `NAME.NS.svc` A/AAAA: the ClusterIPs; for a headless service the addresses of its ready
///   endpoints (no ready endpoint: NXDOMAIN, as CoreDNS). ExternalName: a CNAME to
///   `spec.externalName`, followed inside the zone when it points there.
/// - `_PORT._PROTO.NAME.NS.svc` SRV (and `NAME.NS.svc` SRV for every port): priority 0, the
///   weight 100 shared out equally; target the service, or for a headless service each ready
///   endpoint `ADDRESS-DASHED.NAME.NS.svc` on its own port, with addresses in additional.
/// - `ADDRESS-DASHED.NAME.NS.svc`: a ready endpoint of the service (CoreDNS answers these for
///   every service, not only headless ones).
/// - A headless service's endpoint whose pod sets `hostname` with `subdomain` = the service:
///   `HOSTNAME.NAME.NS.svc` instead of its dashed address.
/// - `ADDRESS-DASHED.NS.pod` A/AAAA: the address itself (CoreDNS `pods insecure`, kube-dns's way).
/// - `dns-version` TXT "1.1.0" (the specification's schema version); the apex SOA.
/// - `NS.svc` for a namespace with services, `svc` and the apex exist without records
///   (NODATA); any other name is NXDOMAIN. Negative answers carry the SOA.
///
/// Reverse (`in-addr.arpa`, `ip6.arpa`): a ClusterIP's PTR is its service; otherwise a ready
/// endpoint's PTR is its dashed name under each service that has it. Other names are
/// NXDOMAIN here, but `isAuthoritative(for:)` is false for them, so a server with an upstream
/// forwards them (CoreDNS's default `fallthrough in-addr.arpa ip6.arpa`).
///
/// Other names are REFUSED (nothing here to say about them). Query types: ANY is answered as
/// A+AAAA (a CNAME at an ExternalName): RFC 8482 lets a server return a subset, and NOTIMP
/// would wrongly say the opcode is unsupported. NS, MX and the rest are NODATA at names that
/// exist: the server's own address is not known here, so it cannot name itself as NS.
public struct ClusterDNS: Sendable {
    public let domain: DNSName
    public let ttl: UInt32
    /// Changes when the zone's content does (a stable hash of it), for the SOA.
    public let serial: UInt32

    /// Owner → its records' data, forward zone.
    let records: [DNSName: [DNSRecord.Data]]
    /// Names that exist only because records exist below them (namespaces, `svc`, the
    /// `_PROTO` level of SRV names), apex included.
    let interior: Set<DNSName>
    /// Address → the names its PTR points to.
    let pointers: [IPAddress: [DNSName]]
    /// The keys of `pointers`, sorted, to tell whether a partial reverse name has any below it.
    let reverseAddresses: [IPAddress]

    public static let inAddrArpa: DNSName = "in-addr.arpa"
    public static let ip6Arpa: DNSName = "ip6.arpa"
    static let dnsSchemaVersion = "1.1.0"

    public init(domain: DNSName = "cluster.local", services: [(ClusterService, [ServiceEndpoint])], ttl: UInt32 = 5) {
        self.domain = domain
        self.ttl = ttl
        var records: [DNSName: [DNSRecord.Data]] = [:]
        var seen: Set<DNSRecord> = []
        var interior: Set<DNSName> = [domain]
        /// `name` and every name between it and the apex exist.
        func markExists(_ name: DNSName) {
            var p = name
            while p.labels.count > domain.labels.count, interior.insert(p).inserted { p = p.parent() }
        }
        func add(_ owner: DNSName, _ d: DNSRecord.Data) {
            guard seen.insert(DNSRecord(name: owner, ttl: 0, data: d)).inserted else { return }
            records[owner, default: []].append(d)
            markExists(owner.parent())
        }
        var servicePointers: [IPAddress: [DNSName]] = [:]
        var endpointPointers: [IPAddress: [DNSName]] = [:]
        var digest = "\(domain) \(ttl)"
        let svcZone = DNSName(uncheckedLabels: [Array("svc".utf8)] + domain.labels)
        interior.insert(svcZone)
        interior.insert(DNSName(uncheckedLabels: [Array("pod".utf8)] + domain.labels))

        // Sorted so the zone (and its serial) does not depend on the order given.
        for (svc, endpoints) in services.sorted(by: { ($0.0.namespace, $0.0.name) < ($1.0.namespace, $1.0.name) }) {
            // Kubernetes names are DNS labels; one that is not cannot be named here.
            guard let nsName = try? svcZone.prepending(svc.namespace), let base = try? nsName.prepending(svc.name) else { continue }
            let ready = endpoints.filter(\.ready)
            digest += "|\(svc.namespace)/\(svc.name) \(svc.kind) \(svc.headless) \(svc.clusterIPs) \(svc.externalName ?? "")"
            digest += " \(svc.ports.map { "\($0.name ?? "") \($0.proto) \($0.port)" })"
            digest += " \(ready.map { ep in "\(ep.address) \(ep.hostname ?? "") \(svc.ports.map { p in ep.port(for: p).map(String.init) ?? "-" })" })"
            var hosts: [(ServiceEndpoint, DNSName)] = []
            for ep in ready {
                // A headless service's endpoint with a hostname goes by it; others by address.
                let label = svc.headless ? (ep.hostname ?? ClusterDNS.dashed(ep.address)) : ClusterDNS.dashed(ep.address)
                if let h = try? base.prepending(label) { hosts.append((ep, h)) }
            }

            if svc.kind == .externalName {
                guard let ext = svc.externalName, let target = try? DNSName(ext) else { continue }
                add(base, .cname(target))
                for p in svc.ports {
                    if let owner = ClusterDNS.srvName(p, base) { add(owner, .srv(priority: 0, weight: 0, port: p.port, target: target)) }
                }
                continue
            }

            if svc.headless {
                for (ep, _) in hosts { add(base, .address(ep.address)) }
            } else {
                markExists(base)   // exists even before its ClusterIP is allocated
                for ip in svc.clusterIPs {
                    add(base, .address(ip))
                    servicePointers[ip, default: []].append(base)
                }
            }
            for (ep, h) in hosts {
                add(h, .address(ep.address))
                endpointPointers[ep.address, default: []].append(h)
            }
            for p in svc.ports {
                var targets: [(DNSName, UInt16)] = []
                if svc.headless {
                    for (ep, h) in hosts { if let port = ep.port(for: p) { targets.append((h, port)) } }
                } else if !svc.clusterIPs.isEmpty {
                    targets = [(base, p.port)]
                }
                let owner = ClusterDNS.srvName(p, base)
                for (t, port) in targets {
                    let srv = DNSRecord.Data.srv(priority: 0, weight: 0, port: port, target: t)
                    if let owner { add(owner, srv) }
                    add(base, srv)
                }
            }
        }
        // CoreDNS: every record has priority 0 and the weight 100 split equally among them.
        for (owner, list) in records {
            let n = list.count(where: { $0.type == .srv })
            guard n > 0 else { continue }
            records[owner] = list.map {
                guard case let .srv(pr, _, port, target) = $0 else { return $0 }
                return .srv(priority: pr, weight: UInt16(100 / n), port: port, target: target)
            }
        }
        if let txt = try? domain.prepending("dns-version") {
            records[txt] = [.txt([Array(ClusterDNS.dnsSchemaVersion.utf8)])]
        }
        // A ClusterIP answers for its service alone; endpoint names only for other addresses.
        var pointers = servicePointers
        for (a, names) in endpointPointers where pointers[a] == nil { pointers[a] = names }
        serial = UInt32(truncatingIfNeeded: fnv1a64(digest))
        self.records = records
        self.interior = interior
        self.pointers = pointers
        reverseAddresses = pointers.keys.sorted()
    }

    /// The same, from the entries the service proxy builds.
    public init(domain: DNSName = "cluster.local", entries: [ServiceRules.Entry], ttl: UInt32 = 5) {
        self.init(domain: domain, services: entries.map { ($0.service, $0.endpoints) }, ttl: ttl)
    }

    /// `10.244.0.5` → `10-244-0-5`; `fd00::5` → `fd00--5` (CoreDNS's endpoint hostname).
    public static func dashed(_ a: IPAddress) -> String {
        String(a.description.map { $0 == "." || $0 == ":" ? "-" : $0 })
    }

    static func srvName(_ p: ClusterService.Port, _ base: DNSName) -> DNSName? {
        guard let n = p.name, !n.isEmpty else { return nil }
        return try? base.prepending("_" + p.proto.lowercased()).prepending("_" + n)
    }

    // MARK: answering

    /// The zone's SOA: CoreDNS's values, the TTL also the negative-caching time.
    public func soa(for apex: DNSName) -> DNSRecord {
        let ns = DNSName(uncheckedLabels: [Array("ns".utf8), Array("dns".utf8)] + apex.labels)
        let mbox = DNSName(uncheckedLabels: [Array("hostmaster".utf8)] + apex.labels)
        return DNSRecord(name: apex, ttl: ttl, data: .soa(DNSSOA(primary: ns, mailbox: mbox, serial: serial, refresh: 7200,
                                                                  retry: 1800, expire: 86400, minimum: ttl)))
    }

    /// True for names this zone answers with authority: everything under the domain, and
    /// reverse names that exist here. A server with an upstream forwards the rest.
    public func isAuthoritative(for name: DNSName) -> Bool {
        if name.isSubdomain(of: domain) { return true }
        guard let r = reverseName(name) else { return false }
        return exists(r)
    }

    public func answer(_ query: DNSMessage) -> DNSMessage {
        var r = query.replyHeader()
        guard query.opcode == 0 else { r.rcode = .notImplemented; return r }
        guard query.questions.count == 1 else { r.rcode = .formatError; return r }
        if let e = query.edns, e.version > 0 { r.rcode = .badVersion; return r }
        let q = query.questions[0]
        guard q.qclass == DNSClass.internet || q.qclass == DNSClass.any else { r.rcode = .refused; return r }
        switch q.type {
        case .opt: r.rcode = .formatError; return r
        case .axfr, .ixfr: r.rcode = .refused; return r   // no zone transfers
        default: break
        }
        if q.name.isSubdomain(of: domain) {
            r.authoritative = true
            answerForward(q, into: &r)
        } else if let rev = reverseName(q.name) {
            r.authoritative = true
            answerReverse(q, rev, into: &r)
        } else {
            r.rcode = .refused
        }
        return r
    }

    static func matches(_ t: DNSType, _ qtype: DNSType) -> Bool {
        qtype == .any ? (t == .a || t == .aaaa || t == .cname || t == .ptr) : t == qtype
    }

    private func negative(_ rcode: DNSResponseCode, apex: DNSName, into r: inout DNSMessage) {
        r.rcode = rcode
        r.authority = [soa(for: apex)]
    }

    /// `A-B-C-D.NAMESPACE.pod.DOMAIN` → A A.B.C.D (IPv6 with `-` for `:`): CoreDNS's `pods
    /// insecure`, the kube-dns behaviour, answered for any address without a lookup.
    func podAddress(_ name: DNSName) -> IPAddress? {
        let l = name.labels
        guard l.count == domain.labels.count + 3, String(decoding: l[2], as: UTF8.self).lowercased() == "pod",
              DNSName(uncheckedLabels: Array(l[3...])).lowercased() == domain.lowercased() else { return nil }
        let text = String(decoding: l[0], as: UTF8.self)
        if let v4 = IPAddress(String(text.map { $0 == "-" ? "." : $0 })), v4.family == .v4 { return v4 }
        return IPAddress(String(text.map { $0 == "-" ? ":" : $0 })).flatMap { $0.family == .v6 ? $0 : nil }
    }

    private func answerForward(_ q: DNSQuestion, into r: inout DNSMessage) {
        if q.type == .soa && q.name == domain {
            r.answers = [soa(for: domain)]
            return
        }
        if let a = podAddress(q.name) {
            if ClusterDNS.matches(a.family == .v4 ? .a : .aaaa, q.type) { r.answers = [DNSRecord(name: q.name, ttl: ttl, data: .address(a))] }
            else { r.authority = [soa(for: domain)] }
            return
        }
        var name = q.name
        var owner = q.name   // answers carry the name as asked (case included)
        for _ in 0..<8 {     // CNAME chain inside the zone; the bound stops loops
            guard let data = records[name] else {
                if interior.contains(name) {
                    r.authority = [soa(for: domain)]
                } else {
                    negative(.nameError, apex: domain, into: &r)
                }
                return
            }
            if q.type != .cname, let c = data.first(where: { $0.type == .cname }), case .cname(let target) = c {
                r.answers.append(DNSRecord(name: owner, ttl: ttl, data: c))
                guard target.isSubdomain(of: domain) else { return }   // the resolver follows it from here
                name = target
                owner = target
                continue
            }
            let hits = data.filter { ClusterDNS.matches($0.type, q.type) }
            if hits.isEmpty {
                r.authority = [soa(for: domain)]
                return
            }
            r.answers += hits.map { DNSRecord(name: owner, ttl: ttl, data: $0) }
            var targets: [DNSName] = []
            for case let .srv(_, _, _, t) in hits where !targets.contains(t) { targets.append(t) }
            for t in targets {
                for case let .address(a) in records[t] ?? [] { r.additional.append(DNSRecord(name: t, ttl: ttl, data: .address(a))) }
            }
            return
        }
    }

    /// A reverse name split into its zone and the address bits it spells: a full address or
    /// a prefix (fewer labels). `network` is nil when the labels spell no address (such a name
    /// cannot exist).
    struct ReverseName { var apex: DNSName; var network: IPNetwork? }

    /// Nil when `name` is in neither reverse zone.
    func reverseName(_ name: DNSName) -> ReverseName? {
        for (apex, family) in [(ClusterDNS.inAddrArpa, IPFamily.v4), (ClusterDNS.ip6Arpa, IPFamily.v6)] where name.isSubdomain(of: apex) {
            let parts = name.labels.dropLast(apex.labels.count).reversed()
            let width = family == .v4 ? 8 : 4
            guard parts.count * width <= family.bitWidth else { return ReverseName(apex: apex, network: nil) }
            var value: UInt128 = 0
            for l in parts {
                guard let digit = ClusterDNS.reverseDigit(l, family) else { return ReverseName(apex: apex, network: nil) }
                value = value << UInt128(width) | digit
            }
            let bits = parts.count * width
            let shifted = bits == 0 ? 0 : value << UInt128(family.bitWidth - bits)
            return ReverseName(apex: apex, network: IPNetwork(containing: IPAddress(family: family, value: shifted), prefixLength: bits))
        }
        return nil
    }

    /// One label of a reverse name: a decimal octet without leading zeros, or one hex nibble.
    static func reverseDigit(_ l: [UInt8], _ family: IPFamily) -> UInt128? {
        let text = String(decoding: l, as: UTF8.self)
        if family == .v6 { return l.count == 1 ? UInt8(text, radix: 16).map { UInt128($0) } : nil }
        guard (1...3).contains(l.count), l.allSatisfy({ $0 >= 48 && $0 <= 57 }), l.count == 1 || l[0] != 48 else { return nil }
        return UInt8(text).map { UInt128($0) }
    }

    private func exists(_ r: ReverseName) -> Bool {
        guard let net = r.network else { return false }
        if net.prefixLength == 0 { return true }
        if net.prefixLength == net.family.bitWidth { return pointers[net.first] != nil }
        // Any address inside the prefix: the first one at or after its start.
        var lo = 0, hi = reverseAddresses.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if reverseAddresses[mid] < net.first { lo = mid + 1 } else { hi = mid }
        }
        return lo < reverseAddresses.count && net.contains(reverseAddresses[lo])
    }

    private func answerReverse(_ q: DNSQuestion, _ rev: ReverseName, into r: inout DNSMessage) {
        guard exists(rev) else { return negative(.nameError, apex: rev.apex, into: &r) }
        if let net = rev.network, net.prefixLength == net.family.bitWidth, ClusterDNS.matches(.ptr, q.type), let names = pointers[net.first] {
            r.answers = names.map { DNSRecord(name: q.name, ttl: ttl, data: .ptr($0)) }
        } else if q.type == .soa && q.name == rev.apex {
            r.answers = [soa(for: rev.apex)]
        } else {
            r.authority = [soa(for: rev.apex)]
        }
    }
}

extension ClusterDNS {
    /// What a server does with a packet that arrived: the thin I/O shell carries it out.
    public enum Action: Sendable, Equatable {
        /// Send these bytes back to the client.
        case reply([UInt8])
        /// Ask an upstream: the name is not this zone's and forwarding is on.
        case forward(DNSMessage)
        /// The zone's reply ends in a CNAME out of the zone (an ExternalName): ask an upstream
        /// for `target` and complete the reply with `completing(_:with:)`. Stub resolvers do not
        /// follow a CNAME themselves, so without this an ExternalName would not resolve.
        case chase(reply: DNSMessage, target: DNSQuestion)
        /// Say nothing: not a query, or not even a header.
        case drop
    }

    /// Parses `packet`, answers it from the zone (or hands it on to an upstream when
    /// `forwarding` and the name is not ours), and encodes the reply within the transport's
    /// size. Unparseable queries with a readable header get FORMERR.
    public func respond(to packet: [UInt8], overTCP: Bool, forwarding: Bool) -> Action {
        let query: DNSMessage
        do {
            query = try DNSMessage(parsing: packet)
        } catch {
            return DNSMessage.formatErrorReply(to: packet).map(Action.reply) ?? .drop
        }
        guard !query.isResponse else { return .drop }
        if forwarding, query.opcode == 0, query.questions.count == 1, !isAuthoritative(for: query.questions[0].name) {
            return .forward(query)
        }
        var reply = answer(query)
        reply.recursionAvailable = forwarding
        if forwarding, reply.rcode == .noError, let qt = query.questions.first?.type, qt == .a || qt == .aaaa,
           case .cname(let target)? = reply.answers.last?.data, !isAuthoritative(for: target) {
            return .chase(reply: reply, target: DNSQuestion(name: target, type: query.questions[0].type))
        }
        return .reply(reply.encoded(limit: query.replySizeLimit(overTCP: overTCP)))
    }

    /// `reply` (ending in a CNAME out of the zone) completed with an upstream's answer for the
    /// CNAME's target: its address and CNAME records, and its rcode (NXDOMAIN then applies to
    /// the last name of the chain, RFC 6604). The upstream's other sections are not ours to
    /// vouch for, and AA no longer holds for the whole answer.
    public static func completing(_ reply: DNSMessage, with upstream: DNSMessage) -> DNSMessage {
        var r = reply
        guard upstream.rcode == .noError || upstream.rcode == .nameError else { return r }
        r.answers += upstream.answers.filter { [.a, .aaaa, .cname].contains($0.type) }
        r.rcode = upstream.rcode
        r.authoritative = false
        r.authority = []
        return r
    }
}
