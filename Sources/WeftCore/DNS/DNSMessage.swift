/// DNS messages on the wire (RFC 1035), with EDNS0 (RFC 6891). Parsing never trusts a length,
/// count or pointer: every read is bounds-checked and compression pointers must point strictly
/// backwards, so any input either parses or throws `DNSWireError`. Encoding compresses names
/// (not SRV targets, RFC 2782) and truncates to a size limit, setting TC (RFC 2181 §9).

public struct DNSWireError: Error, Sendable, Equatable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

// MARK: - Names

/// A domain name as labels (without the root). Case is kept as received, since resolvers that
/// randomise case (draft-vixie-dnsext-dns0x20) check it in the echoed question, but equality
/// and hashing ignore ASCII case as DNS does (RFC 4343).
public struct DNSName: Sendable, Hashable, CustomStringConvertible, ExpressibleByStringLiteral {
    public private(set) var labels: [[UInt8]]

    public static let root = DNSName(uncheckedLabels: [])

    init(uncheckedLabels: [[UInt8]]) { labels = uncheckedLabels }

    /// Labels of 1 to 63 bytes, at most 255 bytes on the wire.
    public init(labels: [[UInt8]]) throws(DNSWireError) {
        for l in labels where l.isEmpty || l.count > 63 {
            throw DNSWireError("label of \(l.count) bytes (must be 1 to 63)")
        }
        self.labels = labels
        guard wireLength <= 255 else { throw DNSWireError("name of \(wireLength) bytes (at most 255)") }
    }

    /// Dotted text ("web.default.svc.cluster.local", trailing dot optional; "" or "." is the
    /// root). No escapes: names from Kubernetes never need them.
    public init(_ text: String) throws(DNSWireError) {
        var t = Substring(text)
        if t.hasSuffix(".") { t = t.dropLast() }
        if t.isEmpty { self = .root; return }
        do {
            try self.init(labels: t.split(separator: ".", omittingEmptySubsequences: false).map { Array($0.utf8) })
        } catch {
            throw DNSWireError("\"\(text)\" is not a domain name: \(error.message)")
        }
    }

    /// For names written in code ("cluster.local"); a bad literal is a programming error.
    public init(stringLiteral text: String) {
        do { try self.init(text) } catch { preconditionFailure("\(error)") }
    }

    public var wireLength: Int { labels.reduce(1) { $0 + $1.count + 1 } }
    public var isRoot: Bool { labels.isEmpty }

    /// The name with its first `n` labels removed.
    public func parent(dropping n: Int = 1) -> DNSName { DNSName(uncheckedLabels: Array(labels.dropFirst(n))) }

    /// `label.self`; throws when the label or the result is too long.
    public func prepending(_ label: String) throws(DNSWireError) -> DNSName {
        try DNSName(labels: [Array(label.utf8)] + labels)
    }

    /// True when this name equals `zone` or lies below it.
    public func isSubdomain(of zone: DNSName) -> Bool {
        guard labels.count >= zone.labels.count else { return false }
        let off = labels.count - zone.labels.count
        for i in 0..<zone.labels.count where !DNSName.sameLabel(labels[off + i], zone.labels[i]) { return false }
        return true
    }

    public func lowercased() -> DNSName { DNSName(uncheckedLabels: labels.map { $0.map(DNSName.lower) }) }

    static func lower(_ b: UInt8) -> UInt8 { (b >= 65 && b <= 90) ? b + 32 : b }
    static func sameLabel(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        a.count == b.count && zip(a, b).allSatisfy { lower($0) == lower($1) }
    }

    public static func == (a: DNSName, b: DNSName) -> Bool {
        a.labels.count == b.labels.count && zip(a.labels, b.labels).allSatisfy { sameLabel($0, $1) }
    }

    public func hash(into h: inout Hasher) {
        h.combine(labels.count)
        for l in labels {
            h.combine(l.count)
            for b in l { h.combine(DNSName.lower(b)) }
        }
    }

    /// Presentation format with a trailing dot; '.', '\' and non-printable bytes escaped.
    public var description: String {
        if labels.isEmpty { return "." }
        var s = ""
        for l in labels {
            for b in l {
                switch b {
                case UInt8(ascii: "."), UInt8(ascii: "\\"): s += "\\" + String(UnicodeScalar(b))
                case 0x21...0x7e: s.unicodeScalars.append(UnicodeScalar(b))
                default:
                    let d = String(b)
                    s += "\\" + String(repeating: "0", count: 3 - d.count) + d
                }
            }
            s += "."
        }
        return s
    }

    /// A hostname as Kubernetes accepts in `spec.externalName`: a lowercase RFC 1123 subdomain
    /// (labels of lowercase letters, digits and '-', not starting or ending with '-'), at most
    /// 253 characters, an optional trailing dot.
    public static func isValidHostname(_ s: String) -> Bool {
        var t = Substring(s)
        if t.hasSuffix(".") { t = t.dropLast() }
        guard !t.isEmpty, t.utf8.count <= 253 else { return false }
        return t.split(separator: ".", omittingEmptySubsequences: false).allSatisfy { l in
            let u = Array(l.utf8)
            func ok(_ b: UInt8) -> Bool { (b >= 97 && b <= 122) || (b >= 48 && b <= 57) }
            return !u.isEmpty && u.count <= 63 && ok(u[0]) && ok(u[u.count - 1]) && u.allSatisfy { ok($0) || $0 == 45 }
        }
    }
}

// MARK: - Types, classes, codes

public struct DNSType: RawRepresentable, Sendable, Hashable, CustomStringConvertible {
    public var rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    public static let a = DNSType(rawValue: 1), ns = DNSType(rawValue: 2), cname = DNSType(rawValue: 5)
    public static let soa = DNSType(rawValue: 6), ptr = DNSType(rawValue: 12), mx = DNSType(rawValue: 15)
    public static let txt = DNSType(rawValue: 16), aaaa = DNSType(rawValue: 28), srv = DNSType(rawValue: 33)
    public static let opt = DNSType(rawValue: 41), ixfr = DNSType(rawValue: 251), axfr = DNSType(rawValue: 252)
    public static let any = DNSType(rawValue: 255)

    public var description: String {
        switch self {
        case .a: "A"
        case .ns: "NS"
        case .cname: "CNAME"
        case .soa: "SOA"
        case .ptr: "PTR"
        case .mx: "MX"
        case .txt: "TXT"
        case .aaaa: "AAAA"
        case .srv: "SRV"
        case .opt: "OPT"
        case .ixfr: "IXFR"
        case .axfr: "AXFR"
        case .any: "ANY"
        default: "TYPE\(rawValue)"
        }
    }
}

public enum DNSClass {
    public static let internet: UInt16 = 1
    public static let any: UInt16 = 255
}

/// The full 12-bit response code: the low 4 bits travel in the header, the rest in OPT.
public struct DNSResponseCode: RawRepresentable, Sendable, Hashable, CustomStringConvertible {
    public var rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue & 0xfff }
    public static let noError = DNSResponseCode(rawValue: 0), formatError = DNSResponseCode(rawValue: 1)
    public static let serverFailure = DNSResponseCode(rawValue: 2), nameError = DNSResponseCode(rawValue: 3)
    public static let notImplemented = DNSResponseCode(rawValue: 4), refused = DNSResponseCode(rawValue: 5)
    public static let badVersion = DNSResponseCode(rawValue: 16)

    public var description: String {
        switch rawValue {
        case 0: "NOERROR"
        case 1: "FORMERR"
        case 2: "SERVFAIL"
        case 3: "NXDOMAIN"
        case 4: "NOTIMP"
        case 5: "REFUSED"
        case 16: "BADVERS"
        default: "RCODE\(rawValue)"
        }
    }
}

// MARK: - Records and messages

public struct DNSQuestion: Sendable, Equatable {
    public var name: DNSName
    public var type: DNSType
    public var qclass: UInt16
    public init(name: DNSName, type: DNSType, qclass: UInt16 = DNSClass.internet) {
        self.name = name; self.type = type; self.qclass = qclass
    }
}

public struct DNSSOA: Sendable, Hashable {
    public var primary: DNSName
    public var mailbox: DNSName
    public var serial: UInt32
    public var refresh: UInt32
    public var retry: UInt32
    public var expire: UInt32
    /// The negative-caching TTL (RFC 2308).
    public var minimum: UInt32
    public init(primary: DNSName, mailbox: DNSName, serial: UInt32, refresh: UInt32, retry: UInt32, expire: UInt32, minimum: UInt32) {
        self.primary = primary; self.mailbox = mailbox; self.serial = serial
        self.refresh = refresh; self.retry = retry; self.expire = expire; self.minimum = minimum
    }
}

public struct DNSRecord: Sendable, Hashable {
    public enum Data: Sendable, Hashable {
        /// A for an IPv4 address, AAAA for IPv6.
        case address(IPAddress)
        case cname(DNSName)
        case ptr(DNSName)
        case ns(DNSName)
        case soa(DNSSOA)
        case srv(priority: UInt16, weight: UInt16, port: UInt16, target: DNSName)
        case txt([[UInt8]])
        /// Any other type, as raw RDATA. Names inside it may hold compression pointers into
        /// the message it came from, so it is only safe to re-encode for types without names.
        case other(DNSType, [UInt8])

        public var type: DNSType {
            switch self {
            case .address(let a): a.family == .v4 ? .a : .aaaa
            case .cname: .cname
            case .ptr: .ptr
            case .ns: .ns
            case .soa: .soa
            case .srv: .srv
            case .txt: .txt
            case .other(let t, _): t
            }
        }
    }

    public var name: DNSName
    public var rclass: UInt16
    public var ttl: UInt32
    public var data: Data
    public var type: DNSType { data.type }

    public init(name: DNSName, ttl: UInt32, data: Data, rclass: UInt16 = DNSClass.internet) {
        self.name = name; self.ttl = ttl; self.data = data; self.rclass = rclass
    }
}

/// The OPT pseudo-record's fields (RFC 6891 §6.1.3).
public struct EDNS: Sendable, Equatable {
    /// The largest UDP payload the sender can receive.
    public var udpPayloadSize: UInt16
    public var version: UInt8
    public var dnssecOK: Bool
    /// Options as raw (code, length, data) bytes; kept on parse, not interpreted.
    public var options: [UInt8]
    public init(udpPayloadSize: UInt16, version: UInt8 = 0, dnssecOK: Bool = false, options: [UInt8] = []) {
        self.udpPayloadSize = udpPayloadSize; self.version = version; self.dnssecOK = dnssecOK; self.options = options
    }
}

public struct DNSMessage: Sendable, Equatable {
    public var id: UInt16
    public var isResponse: Bool
    public var opcode: UInt8
    public var authoritative: Bool
    public var truncated: Bool
    public var recursionDesired: Bool
    public var recursionAvailable: Bool
    public var authenticData: Bool
    public var checkingDisabled: Bool
    public var rcode: DNSResponseCode
    public var questions: [DNSQuestion]
    public var answers: [DNSRecord]
    public var authority: [DNSRecord]
    /// Additional records other than OPT, which is `edns`.
    public var additional: [DNSRecord]
    public var edns: EDNS?

    /// The largest UDP payload this server sends and advertises: the DNS Flag Day 2020 value,
    /// which avoids IP fragmentation on any path.
    public static let maxUDPPayload = 1232

    public init(id: UInt16, isResponse: Bool = false, opcode: UInt8 = 0, authoritative: Bool = false, truncated: Bool = false,
                recursionDesired: Bool = true, recursionAvailable: Bool = false, authenticData: Bool = false,
                checkingDisabled: Bool = false, rcode: DNSResponseCode = .noError, questions: [DNSQuestion] = [],
                answers: [DNSRecord] = [], authority: [DNSRecord] = [], additional: [DNSRecord] = [], edns: EDNS? = nil) {
        self.id = id; self.isResponse = isResponse; self.opcode = opcode; self.authoritative = authoritative
        self.truncated = truncated; self.recursionDesired = recursionDesired; self.recursionAvailable = recursionAvailable
        self.authenticData = authenticData; self.checkingDisabled = checkingDisabled; self.rcode = rcode
        self.questions = questions; self.answers = answers; self.authority = authority; self.additional = additional
        self.edns = edns
    }

    /// A query for one name and type (what a stub resolver sends).
    public static func query(id: UInt16, name: DNSName, type: DNSType, edns: EDNS? = nil) -> DNSMessage {
        DNSMessage(id: id, questions: [DNSQuestion(name: name, type: type)], edns: edns)
    }

    /// The reply skeleton for this query: same ID, opcode, RD, CD and question; OPT echoed with
    /// our payload size when the query had one.
    public func replyHeader(rcode: DNSResponseCode = .noError) -> DNSMessage {
        DNSMessage(id: id, isResponse: true, opcode: opcode, recursionDesired: recursionDesired,
                   checkingDisabled: checkingDisabled, rcode: rcode, questions: questions,
                   edns: edns.map { _ in EDNS(udpPayloadSize: UInt16(DNSMessage.maxUDPPayload)) })
    }

    /// The most bytes a reply to this query may have: the 2-byte TCP length allows 65535; over
    /// UDP the client's EDNS size (at least 512, RFC 6891 §6.2.5) capped at what we advertise,
    /// 512 without EDNS.
    public func replySizeLimit(overTCP: Bool) -> Int {
        if overTCP { return 65535 }
        guard let e = edns else { return 512 }
        return min(max(512, Int(e.udpPayloadSize)), DNSMessage.maxUDPPayload)
    }
}

// MARK: - Parsing

extension DNSMessage {
    public init(parsing bytes: [UInt8]) throws(DNSWireError) {
        var r = WireReader(bytes: bytes)
        id = try r.u16()
        let flags = try r.u16()
        isResponse = flags & 0x8000 != 0
        opcode = UInt8((flags >> 11) & 0xf)
        authoritative = flags & 0x0400 != 0
        truncated = flags & 0x0200 != 0
        recursionDesired = flags & 0x0100 != 0
        recursionAvailable = flags & 0x0080 != 0
        authenticData = flags & 0x0020 != 0
        checkingDisabled = flags & 0x0010 != 0
        var code = flags & 0xf
        let qd = Int(try r.u16()), an = Int(try r.u16()), ns = Int(try r.u16()), ar = Int(try r.u16())
        // Counts are only promises: each loop below throws as soon as the bytes run out.
        var qs: [DNSQuestion] = []
        for _ in 0..<qd {
            let name = try r.name()
            qs.append(DNSQuestion(name: name, type: DNSType(rawValue: try r.u16()), qclass: try r.u16()))
        }
        questions = qs
        var sections: [[DNSRecord]] = [[], [], []]
        var opt: EDNS?
        for (s, count) in [an, ns, ar].enumerated() {
            for _ in 0..<count {
                let name = try r.name()
                let type = DNSType(rawValue: try r.u16())
                let rclass = try r.u16()
                let ttl = try r.u32()
                let length = Int(try r.u16())
                let end = r.offset + length
                guard end <= bytes.count else { throw DNSWireError("record data of \(length) bytes runs past the end") }
                if type == .opt {
                    guard s == 2 else { throw DNSWireError("OPT outside the additional section") }
                    guard opt == nil else { throw DNSWireError("more than one OPT record") }
                    guard name.isRoot else { throw DNSWireError("OPT with a name other than the root") }
                    code |= UInt16(ttl >> 24) << 4
                    opt = EDNS(udpPayloadSize: rclass, version: UInt8((ttl >> 16) & 0xff), dnssecOK: ttl & 0x8000 != 0,
                               options: Array(bytes[r.offset..<end]))
                    r.offset = end
                    continue
                }
                let data = try r.recordData(type: type, end: end)
                sections[s].append(DNSRecord(name: name, ttl: ttl, data: data, rclass: rclass))
            }
        }
        answers = sections[0]; authority = sections[1]; additional = sections[2]
        edns = opt
        rcode = DNSResponseCode(rawValue: code)
    }

    /// The reply to a message whose header could be read but not the rest: FORMERR with the
    /// query's ID, opcode and RD. Nil when there is no header or the message is itself a
    /// response (answering those could start a loop between two servers).
    public static func formatErrorReply(to bytes: [UInt8]) -> [UInt8]? {
        guard bytes.count >= 12, bytes[2] & 0x80 == 0 else { return nil }
        let m = DNSMessage(id: UInt16(bytes[0]) << 8 | UInt16(bytes[1]), isResponse: true, opcode: (bytes[2] >> 3) & 0xf,
                           recursionDesired: bytes[2] & 1 != 0, rcode: .formatError)
        return m.encoded()
    }
}

extension DNSMessage {
    /// True when `bytes` is a response with this `id` to `question` (checked without parsing
    /// the rest): a forwarder takes nothing else, so a spoofer must guess the ID and port.
    public static func isResponse(_ bytes: [UInt8], id: UInt16, to question: DNSQuestion) -> Bool {
        var r = WireReader(bytes: bytes)
        guard let got = try? r.u16(), got == id, let flags = try? r.u16(), flags & 0x8000 != 0,
              let qd = try? r.u16(), qd == 1 else { return false }
        r.offset = 12
        guard let name = try? r.name(), let type = try? r.u16(), let qclass = try? r.u16() else { return false }
        return name == question.name && type == question.type.rawValue && qclass == question.qclass
    }

    /// A TC reply with no records, for an answer from elsewhere that is too big to relay.
    public func truncatedReply(rcode: DNSResponseCode) -> DNSMessage {
        var r = replyHeader(rcode: rcode)
        r.truncated = true
        r.recursionAvailable = true
        return r
    }
}

struct WireReader {
    let bytes: [UInt8]
    var offset = 0

    mutating func u8() throws(DNSWireError) -> UInt8 {
        guard offset < bytes.count else { throw DNSWireError("message ends at byte \(offset)") }
        defer { offset += 1 }
        return bytes[offset]
    }

    mutating func u16() throws(DNSWireError) -> UInt16 {
        guard offset + 2 <= bytes.count else { throw DNSWireError("message ends at byte \(bytes.count), needed 2 more at \(offset)") }
        defer { offset += 2 }
        return UInt16(bytes[offset]) << 8 | UInt16(bytes[offset + 1])
    }

    mutating func u32() throws(DNSWireError) -> UInt32 {
        UInt32(try u16()) << 16 | UInt32(try u16())
    }

    mutating func take(_ n: Int) throws(DNSWireError) -> [UInt8] {
        guard n >= 0, offset + n <= bytes.count else { throw DNSWireError("message ends before \(n) bytes at \(offset)") }
        defer { offset += n }
        return Array(bytes[offset..<offset + n])
    }

    /// A possibly compressed name. Each pointer must point before the previous one (or before
    /// the name's start), so decoding always ends.
    mutating func name() throws(DNSWireError) -> DNSName {
        var labels: [[UInt8]] = []
        var pos = offset
        var limit = offset
        var jumped = false
        var length = 1
        while true {
            guard pos < bytes.count else { throw DNSWireError("name runs past the end") }
            let b = bytes[pos]
            switch b & 0xc0 {
            case 0:
                if b == 0 {
                    if !jumped { offset = pos + 1 }
                    return DNSName(uncheckedLabels: labels)
                }
                let n = Int(b)
                guard pos + 1 + n <= bytes.count else { throw DNSWireError("label runs past the end") }
                length += n + 1
                guard length <= 255 else { throw DNSWireError("name longer than 255 bytes") }
                labels.append(Array(bytes[pos + 1...pos + n]))
                pos += 1 + n
            case 0xc0:
                guard pos + 1 < bytes.count else { throw DNSWireError("compression pointer runs past the end") }
                let target = Int(b & 0x3f) << 8 | Int(bytes[pos + 1])
                guard target < limit else { throw DNSWireError("compression pointer to \(target) does not point backwards") }
                if !jumped { offset = pos + 2; jumped = true }
                limit = target
                pos = target
            default:
                throw DNSWireError("unsupported label type 0x\(String(b & 0xc0, radix: 16))")
            }
        }
    }

    /// RDATA of `type` ending exactly at `end`.
    mutating func recordData(type: DNSType, end: Int) throws(DNSWireError) -> DNSRecord.Data {
        let start = offset
        let data: DNSRecord.Data
        switch type {
        case .a, .aaaa:
            let n = type == .a ? 4 : 16
            guard end - start == n, let a = IPAddress(bytes: try take(n)) else {
                throw DNSWireError("\(type) record of \(end - start) bytes (must be \(n))")
            }
            data = .address(a)
        case .cname: data = .cname(try name())
        case .ptr: data = .ptr(try name())
        case .ns: data = .ns(try name())
        case .soa:
            data = .soa(DNSSOA(primary: try name(), mailbox: try name(), serial: try u32(), refresh: try u32(),
                               retry: try u32(), expire: try u32(), minimum: try u32()))
        case .srv:
            data = .srv(priority: try u16(), weight: try u16(), port: try u16(), target: try name())
        case .txt:
            var strings: [[UInt8]] = []
            while offset < end { strings.append(try take(Int(try u8()))) }
            data = .txt(strings)
        default:
            data = .other(type, try take(end - start))
        }
        guard offset == end else { throw DNSWireError("\(type) record data is \(end - start) bytes but holds \(offset - start)") }
        return data
    }
}

// MARK: - Encoding

extension DNSMessage {
    /// The message on the wire, at most `limit` bytes (at least 512 is assumed). Records that do
    /// not fit are left out, whole, from the end; TC is set when an answer or authority record
    /// had to go (additional records are optional, RFC 2181 §9). OPT is always kept.
    public func encoded(limit: Int = 65535) -> [UInt8] {
        var w = WireWriter()
        w.u16(id)
        w.u16(0)   // flags, written at the end once TC is known
        for n in [questions.count, 0, 0, 0] { w.u16(UInt16(clamping: n)) }
        for q in questions.prefix(Int(UInt16.max)) {
            w.name(q.name, compress: true)
            w.u16(q.type.rawValue)
            w.u16(q.qclass)
        }
        let optSize = edns.map { 11 + $0.options.count } ?? 0
        var counts = [0, 0, 0]
        var dropped = false
        sections: for (s, records) in [answers, authority, additional].enumerated() {
            for rr in records {
                let mark = w.mark()
                w.record(rr)
                if w.bytes.count + optSize > limit || counts[s] == Int(UInt16.max) {
                    w.rollback(to: mark)
                    if s < 2 { dropped = true }
                    break sections
                }
                counts[s] += 1
            }
        }
        if let e = edns {
            w.u8(0)
            w.u16(DNSType.opt.rawValue)
            w.u16(e.udpPayloadSize)
            w.u32(UInt32(rcode.rawValue >> 4) << 24 | UInt32(e.version) << 16 | (e.dnssecOK ? 0x8000 : 0))
            w.u16(UInt16(clamping: e.options.count))
            w.bytes += e.options.prefix(Int(UInt16.max))
            counts[2] += 1
        }
        var flags = UInt16(opcode & 0xf) << 11 | (rcode.rawValue & 0xf)
        if isResponse { flags |= 0x8000 }
        if authoritative { flags |= 0x0400 }
        if truncated || dropped { flags |= 0x0200 }
        if recursionDesired { flags |= 0x0100 }
        if recursionAvailable { flags |= 0x0080 }
        if authenticData { flags |= 0x0020 }
        if checkingDisabled { flags |= 0x0010 }
        w.set16(at: 2, flags)
        for (i, c) in counts.enumerated() { w.set16(at: 6 + 2 * i, UInt16(c)) }
        return w.bytes
    }
}

struct WireWriter {
    var bytes: [UInt8] = []
    /// Lowercased name suffix → offset of its first label, for compression pointers.
    var suffixes: [[[UInt8]]: Int] = [:]
    /// Suffixes added since the last mark, so a record that does not fit can be taken back.
    var added: [[[UInt8]]] = []

    struct Mark { let count: Int; let added: Int }

    mutating func u8(_ v: UInt8) { bytes.append(v) }
    mutating func u16(_ v: UInt16) { bytes.append(UInt8(v >> 8)); bytes.append(UInt8(v & 0xff)) }
    mutating func u32(_ v: UInt32) { u16(UInt16(v >> 16)); u16(UInt16(v & 0xffff)) }
    mutating func set16(at i: Int, _ v: UInt16) { bytes[i] = UInt8(v >> 8); bytes[i + 1] = UInt8(v & 0xff) }

    func mark() -> Mark { Mark(count: bytes.count, added: added.count) }

    mutating func rollback(to m: Mark) {
        bytes.removeLast(bytes.count - m.count)
        for key in added[m.added...] { suffixes[key] = nil }
        added.removeLast(added.count - m.added)
    }

    mutating func name(_ n: DNSName, compress: Bool) {
        let lower = n.lowercased().labels
        for i in 0..<n.labels.count {
            let key = Array(lower[i...])
            if compress, let at = suffixes[key] {
                u16(0xc000 | UInt16(at))
                return
            }
            // Pointers have 14 bits of offset.
            if bytes.count < 0x4000, suffixes[key] == nil {
                suffixes[key] = bytes.count
                added.append(key)
            }
            u8(UInt8(n.labels[i].count))
            bytes += n.labels[i]
        }
        u8(0)
    }

    mutating func record(_ rr: DNSRecord) {
        name(rr.name, compress: true)
        u16(rr.type.rawValue)
        u16(rr.rclass)
        u32(rr.ttl)
        let lengthAt = bytes.count
        u16(0)
        switch rr.data {
        case .address(let a): bytes += a.bytes
        case .cname(let n), .ptr(let n), .ns(let n): name(n, compress: true)
        case .soa(let s):
            name(s.primary, compress: true)
            name(s.mailbox, compress: true)
            for v in [s.serial, s.refresh, s.retry, s.expire, s.minimum] { u32(v) }
        case let .srv(priority, weight, port, target):
            u16(priority); u16(weight); u16(port)
            name(target, compress: false)
        case .txt(let strings):
            for s in strings {
                // A character-string holds at most 255 bytes; longer text is split.
                var rest = s[...]
                repeat {
                    let chunk = rest.prefix(255)
                    u8(UInt8(chunk.count))
                    bytes += chunk
                    rest = rest.dropFirst(chunk.count)
                } while !rest.isEmpty
            }
        case .other(_, let raw): bytes += raw.prefix(Int(UInt16.max))
        }
        set16(at: lengthAt, UInt16(clamping: bytes.count - lengthAt - 2))
    }
}
