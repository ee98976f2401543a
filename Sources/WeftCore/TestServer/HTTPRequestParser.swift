/// One header field as it arrived: the name as spelt, the value without surrounding spaces.
public struct HTTPField: Sendable, Equatable {
    public var name: String
    public var value: String
    public init(_ name: String, _ value: String) { self.name = name; self.value = value }
}

public struct HTTPStatus: Sendable, Equatable, CustomStringConvertible {
    public var code: Int
    public var reason: String
    public init(_ code: Int, _ reason: String) { self.code = code; self.reason = reason }
    public var description: String { "\(code) \(reason)" }

    public static let `continue` = HTTPStatus(100, "Continue")
    public static let ok = HTTPStatus(200, "OK")
    public static let badRequest = HTTPStatus(400, "Bad Request")
    public static let headersTooLarge = HTTPStatus(431, "Request Header Fields Too Large")
    public static let versionNotSupported = HTTPStatus(505, "HTTP Version Not Supported")
}

/// One HTTP/1.x request as the server read it. The body is read and dropped; its length is kept.
public struct HTTPRequest: Sendable, Equatable {
    public enum Version: String, Sendable { case http10 = "HTTP/1.0", http11 = "HTTP/1.1" }
    public var method: String
    /// The request target exactly as sent: path and query, not decoded (Go's `RequestURI`).
    public var target: String
    public var version: Version
    public var headers: [HTTPField]
    public var bodyLength = 0

    public init(method: String, target: String, version: Version, headers: [HTTPField], bodyLength: Int = 0) {
        self.method = method; self.target = target; self.version = version; self.headers = headers; self.bodyLength = bodyLength
    }

    /// Every value of the fields named `name` (case-insensitively), in order.
    public func values(_ name: String) -> [String] {
        let lower = name.lowercased()
        return headers.filter { $0.name.lowercased() == lower }.map(\.value)
    }

    /// The comma-separated tokens of every field named `name`, lowercased.
    func tokens(_ name: String) -> [String] {
        values(name).flatMap { $0.split(separator: ",") }.map { $0.trimmingOWS().lowercased() }
    }

    /// HTTP/1.1 keeps the connection unless the client says `Connection: close`; HTTP/1.0 is
    /// answered and closed (this server does not offer 1.0 keep-alive).
    public var keepsAlive: Bool { version == .http11 && !tokens("Connection").contains("close") }

    public var host: String? { values("Host").first }

    /// The target's path, without the query; the path of an absolute-form target
    /// (`http://host/path`, as sent to proxies).
    public var path: Substring {
        var t = target[...]
        if let scheme = t.firstRange(of: "://"), !t.hasPrefix("/") {
            t = t[scheme.upperBound...]
            t = t.firstIndex(of: "/").map { t[$0...] } ?? "/"
        }
        return t.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
    }

    /// The first value of query parameter `name`, decoded as a form is (`%41` → `A`, `+` →
    /// space), as Go's `FormValue` (agnhost's `/echo?msg=`) reads it; nil when absent.
    public func queryValue(_ name: String) -> [UInt8]? {
        guard let q = target.firstIndex(of: "?") else { return nil }
        for pair in target[target.index(after: q)...].split(separator: "&") {
            let kv = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            if HTTPRequest.formDecoded(kv[0]) == Array(name.utf8) { return kv.count == 2 ? HTTPRequest.formDecoded(kv[1]) : [] }
        }
        return nil
    }

    /// `%XX` → that byte, `+` → space; a `%` not followed by two hex digits stays as it is.
    public static func formDecoded(_ s: Substring) -> [UInt8] {
        var out: [UInt8] = []
        var bytes = Array(s.utf8)[...]
        while let b = bytes.popFirst() {
            if b == UInt8(ascii: "%"), bytes.count >= 2, let hi = hexValue(bytes[bytes.startIndex]), let lo = hexValue(bytes[bytes.startIndex + 1]) {
                out.append(hi << 4 | lo)
                bytes = bytes.dropFirst(2)
            } else {
                out.append(b == UInt8(ascii: "+") ? UInt8(ascii: " ") : b)
            }
        }
        return out
    }
}

func hexValue(_ b: UInt8) -> UInt8? {
    switch b {
    case UInt8(ascii: "0")...UInt8(ascii: "9"): b - UInt8(ascii: "0")
    case UInt8(ascii: "a")...UInt8(ascii: "f"): b - UInt8(ascii: "a") + 10
    case UInt8(ascii: "A")...UInt8(ascii: "F"): b - UInt8(ascii: "A") + 10
    default: nil
    }
}

/// RFC 9110 `tchar`: what a method or a field name is made of.
func isTokenByte(_ b: UInt8) -> Bool {
    switch b {
    case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"): true
    default: Array("!#$%&'*+-.^_`|~".utf8).contains(b)
    }
}

extension StringProtocol {
    /// Without leading and trailing spaces and tabs (HTTP's optional whitespace).
    func trimmingOWS() -> Substring {
        let s = Substring(self)
        guard let first = s.firstIndex(where: { $0 != " " && $0 != "\t" }) else { return s[s.endIndex...] }
        let last = s.lastIndex(where: { $0 != " " && $0 != "\t" })!
        return s[first...last]
    }
}

/// An incremental HTTP/1.x request reader: bytes go in as they arrive, in pieces of any size,
/// and complete requests come out in order (pipelined requests included). Bodies are framed by
/// Content-Length or chunked transfer coding, read and dropped. No I/O: the caller reads the
/// socket and carries out what the events say.
public struct HTTPRequestParser: Sendable {
    public enum Event: Sendable, Equatable {
        case request(HTTPRequest)
        /// The head asked `Expect: 100-continue` and announced a body: the client may wait for
        /// an interim 100 before sending it.
        case continueExpected
        /// Not a request this server can read: answer `status` and close (the framing of
        /// whatever follows is unknown). Nothing more is read after it.
        case invalid(HTTPStatus, reason: String)
    }

    /// The most a request line with its header fields (or a chunked body's trailer) may take.
    public static let maxHeadBytes = 64 * 1024

    private enum Stage: Sendable {
        case head
        case fixedBody(remaining: Int)
        case chunkSize
        case chunkData(remaining: Int)
        case chunkDataEnd
        case trailers
        case failed
    }

    private var stage = Stage.head
    /// Received bytes not consumed yet: at most one incomplete line, since body bytes are
    /// dropped as they arrive.
    private var buffer: [UInt8] = []
    /// How far `buffer` is known to hold no line end, so that a line arriving byte by byte is
    /// scanned once.
    private var scanned = 0
    private var headLines: [[UInt8]] = []
    private var headBytes = 0
    private var pending: HTTPRequest?

    public init() {}

    public mutating func receive(_ bytes: some Sequence<UInt8>) -> [Event] {
        buffer.append(contentsOf: bytes)
        var at = 0
        var events: [Event] = []
        parsing: while true {
            switch stage {
            case .failed:
                buffer = []; scanned = 0
                return events
            case .head, .chunkSize, .chunkDataEnd, .trailers:
                guard let line = nextLine(at: &at) else {
                    if headBytes + buffer.count - at > Self.maxHeadBytes { events.append(fail(.headersTooLarge, "the request head is over \(Self.maxHeadBytes) bytes")); continue }
                    break parsing
                }
                if let e = take(line) { events.append(e) }
            case .fixedBody(let remaining):
                let n = min(remaining, buffer.count - at)
                at += n
                pending?.bodyLength += n
                guard n == remaining else { stage = .fixedBody(remaining: remaining - n); break parsing }
                events.append(complete())
            case .chunkData(let remaining):
                let n = min(remaining, buffer.count - at)
                at += n
                pending?.bodyLength += n
                guard n == remaining else { stage = .chunkData(remaining: remaining - n); break parsing }
                stage = .chunkDataEnd
            }
        }
        buffer.removeFirst(at)
        scanned = max(0, scanned - at)
        return events
    }

    /// The next complete line from `at` (without its LF or CRLF), or nil until it has arrived.
    private mutating func nextLine(at: inout Int) -> ArraySlice<UInt8>? {
        guard let lf = buffer[max(at, scanned)...].firstIndex(of: UInt8(ascii: "\n")) else {
            scanned = buffer.count
            return nil
        }
        var line = buffer[at..<lf]
        headBytes += lf + 1 - at
        at = lf + 1
        scanned = at
        if line.last == UInt8(ascii: "\r") { line = line.dropLast() }
        return line
    }

    /// One line of the head, of a chunked body's framing, or of its trailer.
    private mutating func take(_ line: ArraySlice<UInt8>) -> Event? {
        if headBytes > Self.maxHeadBytes { return fail(.headersTooLarge, "the request head is over \(Self.maxHeadBytes) bytes") }
        switch stage {
        case .head:
            if !line.isEmpty { headLines.append(Array(line)); return nil }
            // Empty lines before a request line are skipped (RFC 9112 §2.2: a client may send
            // an extra CRLF after a body).
            if headLines.isEmpty { headBytes = 0; return nil }
            return headComplete()
        case .chunkSize:
            let digits = line.prefix { $0 != UInt8(ascii: ";") }.trimmingOWSBytes()
            guard !digits.isEmpty, digits.count <= 15, digits.allSatisfy({ hexValue($0) != nil }), let size = Int(String(decoding: digits, as: UTF8.self), radix: 16) else {
                return fail(.badRequest, "chunk size \"\(String(decoding: line, as: UTF8.self))\" is not hexadecimal")
            }
            headBytes = 0
            stage = size == 0 ? .trailers : .chunkData(remaining: size)
            return nil
        case .chunkDataEnd:
            guard line.isEmpty else { return fail(.badRequest, "chunk data runs past its size") }
            headBytes = 0
            stage = .chunkSize
            return nil
        case .trailers:
            return line.isEmpty ? complete() : nil
        case .fixedBody, .chunkData, .failed:
            return nil
        }
    }

    /// The head is in: a refusal, the request (no body), or the body's framing set up.
    private mutating func headComplete() -> Event? {
        let head: HTTPRequest
        switch Self.parseHead(headLines) {
        case .success(let h): head = h
        case .failure(let refusal): return fail(refusal.status, refusal.reason)
        }
        pending = head
        let lengths = head.values("Content-Length").flatMap { $0.split(separator: ",", omittingEmptySubsequences: false) }.map { $0.trimmingOWS() }
        if !head.values("Transfer-Encoding").isEmpty {
            // Both framings at once is how requests are smuggled past proxies (RFC 9112 §6.3).
            guard lengths.isEmpty else { return fail(.badRequest, "both Transfer-Encoding and Content-Length") }
            guard head.tokens("Transfer-Encoding").last == "chunked" else {
                return fail(.badRequest, "Transfer-Encoding \"\(head.values("Transfer-Encoding").joined(separator: ", "))\" does not end in chunked")
            }
            stage = .chunkSize
        } else if let first = lengths.first {
            guard lengths.allSatisfy({ $0 == first }), !first.isEmpty, first.count <= 18, first.utf8.allSatisfy({ (48...57).contains($0) }), let n = Int(first) else {
                return fail(.badRequest, "Content-Length \"\(head.values("Content-Length").joined(separator: ", "))\" is not one decimal length")
            }
            guard n > 0 else { return complete() }
            stage = .fixedBody(remaining: n)
        } else {
            return complete()
        }
        return head.version == .http11 && head.tokens("Expect").contains("100-continue") ? .continueExpected : nil
    }

    private mutating func complete() -> Event {
        let r = pending!
        pending = nil
        headLines = []
        headBytes = 0
        stage = .head
        return .request(r)
    }

    private mutating func fail(_ status: HTTPStatus, _ reason: String) -> Event {
        stage = .failed
        pending = nil
        headLines = []
        return .invalid(status, reason: reason)
    }

    struct Refusal: Error { var status: HTTPStatus; var reason: String }

    /// The request line and header fields (RFC 9112 §3, §5).
    static func parseHead(_ lines: [[UInt8]]) -> Result<HTTPRequest, Refusal> {
        let parts = lines[0].split(separator: UInt8(ascii: " "), omittingEmptySubsequences: false)
        let text = String(decoding: lines[0].prefix(200), as: UTF8.self)
        guard parts.count == 3, !parts[0].isEmpty, parts[0].allSatisfy(isTokenByte),
              !parts[1].isEmpty, parts[1].allSatisfy({ $0 > 0x20 && $0 != 0x7f }) else {
            return .failure(Refusal(status: .badRequest, reason: "request line \"\(text)\" is not METHOD TARGET HTTP/1.x"))
        }
        let versionText = String(decoding: parts[2], as: UTF8.self)
        guard let version = HTTPRequest.Version(rawValue: versionText) else {
            let looksLikeVersion = versionText.hasPrefix("HTTP/") && versionText.count == 8
            return .failure(Refusal(status: looksLikeVersion ? .versionNotSupported : .badRequest, reason: "version \"\(versionText)\": HTTP/1.0 and HTTP/1.1 are served"))
        }
        var fields: [HTTPField] = []
        for line in lines.dropFirst() {
            let shown = String(decoding: line.prefix(200), as: UTF8.self)
            guard line.first != UInt8(ascii: " "), line.first != UInt8(ascii: "\t") else {
                return .failure(Refusal(status: .badRequest, reason: "header line \"\(shown)\" is folded (obsolete line folding is refused)"))
            }
            guard let colon = line.firstIndex(of: UInt8(ascii: ":")), colon > 0, line[..<colon].allSatisfy(isTokenByte) else {
                return .failure(Refusal(status: .badRequest, reason: "header line \"\(shown)\" is not NAME: VALUE"))
            }
            let value = line[(colon + 1)...].trimmingOWSBytes()
            guard value.allSatisfy({ $0 >= 0x20 && $0 != 0x7f || $0 == UInt8(ascii: "\t") }) else {
                return .failure(Refusal(status: .badRequest, reason: "header \(String(decoding: line[..<colon], as: UTF8.self)) holds a control character"))
            }
            fields.append(HTTPField(String(decoding: line[..<colon], as: UTF8.self), String(decoding: value, as: UTF8.self)))
        }
        let request = HTTPRequest(method: String(decoding: parts[0], as: UTF8.self), target: String(decoding: parts[1], as: UTF8.self), version: version, headers: fields)
        // RFC 9112 §3.2: an HTTP/1.1 request without exactly one Host is answered 400.
        let hosts = request.values("Host").count
        if hosts > 1 || (hosts == 0 && version == .http11) {
            return .failure(Refusal(status: .badRequest, reason: hosts == 0 ? "an HTTP/1.1 request needs a Host header" : "\(hosts) Host headers"))
        }
        return .success(request)
    }
}

extension ArraySlice<UInt8> {
    func trimmingOWSBytes() -> ArraySlice<UInt8> {
        let ows: (UInt8) -> Bool = { $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\t") }
        guard let first = firstIndex(where: { !ows($0) }) else { return self[endIndex...] }
        return self[first...lastIndex(where: { !ows($0) })!]
    }
}
