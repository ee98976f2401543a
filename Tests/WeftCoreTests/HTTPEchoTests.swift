import Testing
import WeftCore

/// A response as a client reads it: status line, header fields, body framed by Content-Length.
struct ReadResponse {
    var statusLine: String
    var headers: [(String, String)]
    var body: [UInt8]
    func header(_ name: String) -> String? { headers.first { $0.0.lowercased() == name.lowercased() }?.1 }
    var text: String { String(decoding: body, as: UTF8.self) }
    var json: JSONValue? { try? JSONValue.parse(body) }
}

/// Splits `bytes` into the responses they hold, in order; `headOnly` for answers to HEAD.
func readResponses(_ bytes: [UInt8], headOnly: Bool = false) -> [ReadResponse] {
    var rest = bytes[...]
    var out: [ReadResponse] = []
    while let end = rest.firstRange(of: Array("\r\n\r\n".utf8)) {
        let lines = String(decoding: rest[..<end.lowerBound], as: UTF8.self).split(separator: "\r\n", omittingEmptySubsequences: false).map(String.init)
        let headers = lines.dropFirst().map { l -> (String, String) in
            let i = l.firstIndex(of: ":")!
            return (String(l[..<i]), String(l[l.index(after: i)...].drop { $0 == " " }))
        }
        rest = rest[end.upperBound...]
        let length = headOnly ? 0 : Int(headers.first { $0.0 == "Content-Length" }?.1 ?? "0") ?? 0
        out.append(ReadResponse(statusLine: lines[0], headers: headers, body: Array(rest.prefix(length))))
        rest = rest.dropFirst(length)
    }
    return out
}

let webContext = TestServerContext(pod: "web-0", namespace: "shop", clientAddress: ip("10.22.1.5"), clientPort: 43210)

func session() -> TestServerSession { TestServerSession(context: webContext) }

extension TestServerSession {
    mutating func received(_ text: String) -> Output { received(Array(text.utf8)) }
}

@Suite struct HTTPRequestParserTests {
    @Test func aRequestArrivingByteByByteIsReadOnceWhole() {
        var p = HTTPRequestParser()
        let bytes = Array("GET /a?b=c HTTP/1.1\r\nHost: web\r\nUser-Agent: curl/8\r\nAccept:  */* \r\n\r\n".utf8)
        var events: [HTTPRequestParser.Event] = []
        for (i, b) in bytes.enumerated() {
            let got = p.receive([b])
            if i < bytes.count - 1 { #expect(got.isEmpty, "nothing before the last byte, got \(got) at \(i)") }
            events += got
        }
        let expected = HTTPRequest(method: "GET", target: "/a?b=c", version: .http11,
                                   headers: [HTTPField("Host", "web"), HTTPField("User-Agent", "curl/8"), HTTPField("Accept", "*/*")])
        #expect(events == [.request(expected)])
    }

    @Test func bareLineFeedsAndLeadingEmptyLinesAreAccepted() {
        var p = HTTPRequestParser()
        #expect(p.receive(Array("\r\n\nGET / HTTP/1.0\nX: 1\n\n".utf8)) == [.request(HTTPRequest(method: "GET", target: "/", version: .http10, headers: [HTTPField("X", "1")]))])
    }

    @Test func contentLengthBodiesAreReadAndDroppedAcrossPieces() {
        var p = HTTPRequestParser()
        #expect(p.receive(Array("POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n0123".utf8)).isEmpty)
        let events = p.receive(Array("456789GET /next HTTP/1.1\r\nHost: h\r\n\r\n".utf8))
        guard events.count == 2, case .request(let post) = events[0], case .request(let next) = events[1] else {
            Issue.record("two requests expected: \(events)"); return
        }
        #expect(post.bodyLength == 10 && post.target == "/up")
        #expect(next.target == "/next" && next.bodyLength == 0)
    }

    @Test func chunkedBodiesWithExtensionsAndTrailersByteByByte() {
        var p = HTTPRequestParser()
        let wire = "POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5;name=x\r\nhello\r\nA\r\n0123456789\r\n0\r\nTrailer: t\r\n\r\nGET /after HTTP/1.1\r\nHost: h\r\n\r\n"
        var events: [HTTPRequestParser.Event] = []
        for b in wire.utf8 { events += p.receive([b]) }
        guard events.count == 2, case .request(let post) = events[0], case .request(let after) = events[1] else {
            Issue.record("two requests expected: \(events)"); return
        }
        #expect(post.bodyLength == 15)
        #expect(after.target == "/after")
    }

    @Test func expectContinueAsksForTheBodyFirst() {
        var p = HTTPRequestParser()
        #expect(p.receive(Array("PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n".utf8)) == [.continueExpected])
        guard case .request(let r)? = p.receive(Array("ok".utf8)).first else { Issue.record("the request after its body"); return }
        #expect(r.bodyLength == 2)
    }

    @Test(arguments: [
        ("GET /\r\n\r\n", 400, "request line"),                                   // HTTP/0.9
        ("GET  / HTTP/1.1\r\nHost: h\r\n\r\n", 400, "request line"),
        ("GET / HTTP/2.0\r\nHost: h\r\n\r\n", 505, "HTTP/2.0"),
        ("GET / HTTX/1.1\r\n\r\n", 400, "HTTX/1.1"),
        ("GET / HTTP/1.1\r\n\r\n", 400, "Host"),
        ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "2 Host"),
        ("GET / HTTP/1.1\r\nHost: h\r\nBad Name: x\r\n\r\n", 400, "Bad Name"),
        ("GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n folded\r\n\r\n", 400, "folded"),
        ("GET / HTTP/1.1\r\nHost: h\r\nX: a\u{01}b\r\n\r\n", 400, "control"),
        ("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400, "both"),
        ("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n", 400, "Content-Length \"-1\""),
        ("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", 400, "Content-Length \"3, 4\""),
        ("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n", 400, "gzip"),
        ("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400, "zz"),
        ("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n", 400, "past its size"),
    ])
    func badRequestsAreRefusedWithAReason(wire: String, code: Int, mentioning: String) {
        var p = HTTPRequestParser()
        let events = p.receive(Array(wire.utf8))
        guard events.count == 1, case .invalid(let status, let reason) = events[0] else { Issue.record("one refusal expected: \(events)"); return }
        #expect(status.code == code)
        #expect(reason.contains(mentioning), "\(reason)")
        #expect(p.receive(Array("GET / HTTP/1.1\r\nHost: h\r\n\r\n".utf8)).isEmpty, "nothing is read after a refusal")
    }

    @Test func anOversizedHeadIsRefusedWithoutWaitingForItsEnd() {
        var p = HTTPRequestParser()
        #expect(p.receive(Array("GET / HTTP/1.1\r\nHost: h\r\nX-Big: ".utf8)).isEmpty)
        let events = p.receive([UInt8](repeating: UInt8(ascii: "a"), count: HTTPRequestParser.maxHeadBytes))
        #expect(events.count == 1)
        if case .invalid(let status, _)? = events.first { #expect(status.code == 431) } else { Issue.record("\(events)") }
    }

    @Test func queryValuesAreFormDecoded() {
        let r = HTTPRequest(method: "GET", target: "/echo?a=1&msg=hello%20world+again%21&msg=second&pct=100%", version: .http11, headers: [])
        #expect(r.queryValue("msg") == Array("hello world again!".utf8), "the first value, as Go's FormValue")
        #expect(r.queryValue("pct") == Array("100%".utf8), "a lone % stays")
        #expect(r.queryValue("none") == nil)
        #expect(r.path == "/echo")
        #expect(HTTPRequest(method: "GET", target: "http://web.shop:8080/hostname?x", version: .http11, headers: []).path == "/hostname", "absolute form")
    }
}

@Suite struct TestServerSessionTests {
    @Test func theFirstBytesDecideTheProtocol() {
        #expect(TestServerSession.classify(Array("GET / HTTP/1.1".utf8)) == .http)
        #expect(TestServerSession.classify(Array("OPTIONS ".utf8)) == .http)
        #expect(TestServerSession.classify(Array("GE".utf8)) == .undecided)
        #expect(TestServerSession.classify([]) == .undecided)
        #expect(TestServerSession.classify(Array("\n".utf8)) == .raw)
        #expect(TestServerSession.classify(Array("ping 0\n".utf8)) == .raw)
        #expect(TestServerSession.classify(Array("get / HTTP/1.1".utf8)) == .raw)
        #expect(TestServerSession.classify(Array(" GET".utf8)) == .raw)
        #expect(TestServerSession.classify(Array(String(repeating: "A", count: 40).utf8)) == .raw, "no method is that long")
    }

    @Test func aSilentClientGetsTheGreetingWhenTheWindowClosesThenEcho() {
        var s = session()
        #expect(s.isWaiting)
        #expect(s.windowClosed() == .init(bytes: Array("web-0 10.22.1.5\n".utf8)))
        #expect(!s.isWaiting)
        #expect(s.received("GET / HTTP/1.1\r\n") == .init(bytes: Array("GET / HTTP/1.1\r\n".utf8)), "after the greeting, everything is echo")
        #expect(s.inputEnded() == .init(close: true))
    }

    @Test func nonHTTPBytesGetTheGreetingAtOnceAndTheirEcho() {
        var s = session()
        #expect(s.received("\n") == .init(bytes: Array("web-0 10.22.1.5\n\n".utf8)), "weft probe's newline")
        #expect(s.received("ping 0\n") == .init(bytes: Array("ping 0\n".utf8)))
    }

    @Test func aMethodCutShortIsEchoedAfterTheGreeting() {
        var s = session()
        #expect(s.received("PI") == .init())
        #expect(s.isWaiting)
        #expect(s.windowClosed() == .init(bytes: Array("web-0 10.22.1.5\nPI".utf8)))
        var t = session()
        #expect(t.received("AB") == .init())
        #expect(t.inputEnded() == .init(bytes: Array("web-0 10.22.1.5\nAB".utf8), close: true), "a client that closed still gets its greeting")
        var u = session()
        #expect(u.received("PI") == .init())
        #expect(u.received("NG\n") == .init(bytes: Array("web-0 10.22.1.5\nPING\n".utf8)))
    }

    @Test func keepAliveAnswersEachRequestOnOneConnection() {
        var s = session()
        var out = s.received("GET /hostname HTTP/1.1\r\nHost: web\r\n\r\n")
        #expect(!out.close)
        #expect(readResponses(out.bytes).map(\.text) == ["web-0"])
        out = s.received("GET /clientip HTTP/1.1\r\nHost: web\r\n\r\n")
        #expect(!out.close)
        let r = readResponses(out.bytes)
        #expect(r.map(\.statusLine) == ["HTTP/1.1 200 OK"])
        #expect(r.map(\.text) == ["10.22.1.5:43210"])
        #expect(r.first?.header("Content-Type") == "text/plain; charset=utf-8")
        #expect(r.first?.header("Connection") == nil)
        #expect(s.inputEnded() == .init(close: true))
    }

    @Test func pipelinedRequestsAreAnsweredInOrderUntilOneCloses() {
        var s = session()
        let wire = ["/echo?msg=one", "/echo?msg=two", "/hostname"].map { "GET \($0) HTTP/1.1\r\nHost: web\r\n\r\n" }.joined()
            + "GET /echo?msg=last HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\nGET /echo?msg=never HTTP/1.1\r\nHost: web\r\n\r\n"
        let out = s.received(wire)
        let r = readResponses(out.bytes)
        #expect(r.map(\.text) == ["one", "two", "web-0", "last"])
        #expect(r.last?.header("Connection") == "close")
        #expect(out.close)
        #expect(s.received("GET / HTTP/1.1\r\nHost: web\r\n\r\n") == .init(), "nothing after the close")
    }

    @Test func http10IsAnsweredInKindAndClosed() {
        var s = session()
        let out = s.received("GET /hostname HTTP/1.0\r\n\r\n")
        #expect(out.close)
        let r = readResponses(out.bytes)
        #expect(r.map(\.statusLine) == ["HTTP/1.0 200 OK"])
        #expect(r.first?.header("Connection") == "close")
        #expect(r.first?.header("Content-Length") == "5")
        #expect(r.map(\.text) == ["web-0"])
    }

    @Test func everyAnswerNamesThePodAndTheClient() {
        var s = session()
        for path in ["/", "/hostname", "/echo?msg=x", "/anything/else"] {
            let r = readResponses(s.received("GET \(path) HTTP/1.1\r\nHost: web\r\n\r\n").bytes)
            #expect(r.first?.header("X-Weft-Pod") == "web-0", "\(path)")
            #expect(r.first?.header("X-Weft-Namespace") == "shop", "\(path)")
            #expect(r.first?.header("X-Weft-Client") == "10.22.1.5:43210", "\(path)")
        }
        var six = TestServerSession(context: TestServerContext(pod: "p", namespace: "default", clientAddress: ip("fd00::5"), clientPort: 8))
        let r = readResponses(six.received("GET /clientip HTTP/1.1\r\nHost: h\r\n\r\n").bytes)
        #expect(r.map(\.text) == ["[fd00::5]:8"], "IPv6 in brackets, as Go's RemoteAddr")
    }

    @Test func theJSONEchoShowsTheRequestAsTheBackendSawIt() throws {
        var s = session()
        let out = s.received("POST /some/path?q=%20x HTTP/1.1\r\nHost: web.shop:8080\r\nx-forwarded-for: 1.2.3.4\r\nAccept: a\r\nACCEPT: b\r\nContent-Length: 2\r\n\r\nhi")
        let r = try #require(readResponses(out.bytes).first)
        #expect(r.header("Content-Type") == "application/json")
        #expect(r.header("Content-Length") == "\(r.body.count)")
        let json = try #require(r.json)
        #expect(json == .object([
            ("path", .string("/some/path?q=%20x")),
            ("host", .string("web.shop:8080")),
            ("method", .string("POST")),
            ("proto", .string("HTTP/1.1")),
            ("headers", .object([("Accept", .array([.string("a"), .string("b")])), ("Content-Length", .array([.string("2")])),
                                 ("X-Forwarded-For", .array([.string("1.2.3.4")]))])),
            ("namespace", .string("shop")),
            ("pod", .string("web-0")),
            ("clientAddress", .string("10.22.1.5")),
            ("clientPort", .number(43210)),
        ]))
        // Keys in echo-basic's order, headers sorted as Go's encoder writes a map.
        #expect(json.objectMembers?.map(\.0) == ["path", "host", "method", "proto", "headers", "namespace", "pod", "clientAddress", "clientPort"])
        #expect(json["headers"]?.objectMembers?.map(\.0) == ["Accept", "Content-Length", "X-Forwarded-For"])
    }

    @Test func headGetsTheHeadersOfGetWithoutTheBody() {
        var s = session()
        let get = readResponses(s.received("GET /hostname HTTP/1.1\r\nHost: web\r\n\r\n").bytes)
        let out = s.received("HEAD /hostname HTTP/1.1\r\nHost: web\r\n\r\nGET /echo?msg=after HTTP/1.1\r\nHost: web\r\n\r\n")
        let head = readResponses(out.bytes, headOnly: true)
        #expect(head.first?.header("Content-Length") == get.first?.header("Content-Length"))
        #expect(head.first?.statusLine == "HTTP/1.1 200 OK")
        let text = String(decoding: out.bytes, as: UTF8.self)
        #expect(text.split(separator: "\r\n\r\n").dropFirst().first?.hasPrefix("HTTP/1.1 200 OK") == true, "the next response follows the head at once: \(text)")
        #expect(text.hasSuffix("\r\n\r\nafter"))
    }

    @Test func aBadRequestGets400AndTheConnectionCloses() {
        var s = session()
        let out = s.received("GET /\r\n\r\n")
        #expect(out.close)
        let r = readResponses(out.bytes)
        #expect(r.map(\.statusLine) == ["HTTP/1.1 400 Bad Request"])
        #expect(r.first?.header("Connection") == "close")
        #expect(r.first?.header("X-Weft-Pod") == "web-0")
        #expect(r.first?.text.contains("request line") == true)
    }

    @Test func expectContinueGetsAnInterimAnswerThenTheResponse() {
        var s = session()
        let first = s.received("PUT /x HTTP/1.1\r\nHost: web\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
        #expect(first == .init(bytes: Array("HTTP/1.1 100 Continue\r\n\r\n".utf8)))
        let r = readResponses(s.received("abc").bytes)
        #expect(r.first?.json?["method"] == .string("PUT"))
    }

    @Test func echoSetHeaderAddsResponseHeadersAsEchoBasicDoes() {
        var s = session()
        let r = readResponses(s.received("GET / HTTP/1.1\r\nHost: web\r\nX-Echo-Set-Header: X-One: 1, X-Two:two\r\n\r\n").bytes)
        #expect(r.first?.header("X-One") == "1")
        #expect(r.first?.header("X-Two") == "two")
    }

    @Test func echoWithoutMsgIsEmptyAndDecodesUTF8() {
        var s = session()
        let r = readResponses(s.received("GET /echo HTTP/1.1\r\nHost: web\r\n\r\nGET /echo?msg=%E2%9C%93+ok HTTP/1.1\r\nHost: web\r\n\r\n").bytes)
        #expect(r.map(\.text) == ["", "✓ ok"])
        #expect(r.first?.header("Content-Length") == "0")
    }

    @Test func canonicalHeaderNamesFollowGo() {
        #expect(HTTPEcho.canonicalName("content-type") == "Content-Type")
        #expect(HTTPEcho.canonicalName("X-FORWARDED-FOR") == "X-Forwarded-For")
        #expect(HTTPEcho.canonicalName("x-b3-traceid") == "X-B3-Traceid")
    }
}
