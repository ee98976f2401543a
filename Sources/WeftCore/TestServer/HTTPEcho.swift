/// Who answers and whom: what every answer of the test server names.
public struct TestServerContext: Sendable, Equatable {
    public var pod: String
    public var namespace: String
    public var clientAddress: IPAddress
    public var clientPort: UInt16

    public init(pod: String, namespace: String, clientAddress: IPAddress, clientPort: UInt16) {
        self.pod = pod; self.namespace = namespace; self.clientAddress = clientAddress; self.clientPort = clientPort
    }

    /// "ADDR:PORT", an IPv6 address in brackets, as Go's `RemoteAddr` (agnhost's `/clientip`) prints it.
    public var clientEndpoint: String {
        clientAddress.family == .v6 ? "[\(clientAddress)]:\(clientPort)" : "\(clientAddress):\(clientPort)"
    }

    /// The raw contract, unchanged since the first test server: "NAME CLIENT-ADDRESS\n".
    public var greeting: [UInt8] { Array("\(pod) \(clientAddress)\n".utf8) }
}

/// The test server's HTTP answers, modelled on Kubernetes' agnhost netexec and the Gateway API
/// conformance echo server (echo-basic), so tests written for those read these:
/// - `/hostname` → the pod's name; `/clientip` → "ADDR:PORT"; `/echo?msg=TEXT` → TEXT, form-decoded;
/// - any other path → 200 with the request as the server saw it, in JSON (`echo(_:context:)`);
/// - every answer carries `X-Weft-Pod`, `X-Weft-Namespace` and `X-Weft-Client` (ADDR:PORT);
/// - `X-Echo-Set-Header: Name: value, Other: value` adds those response headers, as echo-basic
///   does (gateway tests of response header filters need a backend that sets headers).
public enum HTTPEcho {
    public static let interimContinue = Array("HTTP/1.1 100 Continue\r\n\r\n".utf8)

    /// The whole response to `request` (head only for HEAD), with `Connection: close` when the
    /// request does not keep the connection.
    public static func response(to request: HTTPRequest, context: TestServerContext) -> [UInt8] {
        let reply: (contentType: String, body: [UInt8])
        switch request.path {
        case "/hostname": reply = (text, Array(context.pod.utf8))
        case "/clientip": reply = (text, Array(context.clientEndpoint.utf8))
        case "/echo": reply = (text, request.queryValue("msg") ?? [])
        default: reply = ("application/json", Array((echo(request, context: context).serialized(pretty: true) + "\n").utf8))
        }
        return encode(version: request.version, status: .ok, contentType: reply.contentType, body: reply.body, context: context,
                      extra: echoSetHeaders(request), closes: !request.keepsAlive, includeBody: request.method != "HEAD")
    }

    /// The answer to bytes that are not a request this server reads; the connection closes after it.
    public static func refusal(_ status: HTTPStatus, reason: String, context: TestServerContext) -> [UInt8] {
        encode(version: .http11, status: status, contentType: text, body: Array("\(status): \(reason)\n".utf8), context: context,
               extra: [], closes: true, includeBody: true)
    }

    /// The request as the backend saw it, in echo-basic's shape: `path` (the target as sent,
    /// query included), `host`, `method`, `proto`, `headers` (canonical name → values in
    /// order; Host is in `host`, as Go keeps it), `namespace`, `pod`, then the client as
    /// `clientAddress` and `clientPort`.
    public static func echo(_ request: HTTPRequest, context: TestServerContext) -> JSONValue {
        var names: [String] = []
        var values: [String: [JSONValue]] = [:]
        for f in request.headers {
            let name = canonicalName(f.name)
            guard name != "Host" else { continue }
            if values[name] == nil { names.append(name) }
            values[name, default: []].append(.string(f.value))
        }
        return .object([
            ("path", .string(request.target)),
            ("host", .string(request.host ?? "")),
            ("method", .string(request.method)),
            ("proto", .string(request.version.rawValue)),
            ("headers", .object(names.sorted().map { ($0, .array(values[$0]!)) })),
            ("namespace", .string(context.namespace)),
            ("pod", .string(context.pod)),
            ("clientAddress", .string(context.clientAddress.description)),
            ("clientPort", .number(Double(context.clientPort))),
        ])
    }

    /// Go's canonical header name (`content-type` → `Content-Type`), which the echo's keys use.
    public static func canonicalName(_ name: String) -> String {
        var upper = true
        return String(decoding: name.utf8.map { b -> UInt8 in
            defer { upper = b == UInt8(ascii: "-") }
            if upper, (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(b) { return b - 32 }
            if !upper, (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(b) { return b + 32 }
            return b
        }, as: UTF8.self)
    }

    private static let text = "text/plain; charset=utf-8"

    /// `X-Echo-Set-Header` values as echo-basic reads them: comma-separated `Name: value` pairs.
    static func echoSetHeaders(_ request: HTTPRequest) -> [HTTPField] {
        request.values("X-Echo-Set-Header").flatMap { $0.split(separator: ",") }.compactMap { pair in
            let parts = pair.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)
            let name = parts[0].trimmingOWS()
            guard !name.isEmpty, name.utf8.allSatisfy(isTokenByte) else { return nil }
            return HTTPField(String(name), parts.count == 2 ? String(parts[1].trimmingOWS()) : "")
        }
    }

    static func encode(version: HTTPRequest.Version, status: HTTPStatus, contentType: String, body: [UInt8], context: TestServerContext,
                       extra: [HTTPField], closes: Bool, includeBody: Bool) -> [UInt8] {
        var head = "\(version.rawValue) \(status.code) \(status.reason)\r\n"
        var fields = [HTTPField("Content-Type", contentType), HTTPField("Content-Length", "\(body.count)"),
                      HTTPField("X-Weft-Pod", context.pod), HTTPField("X-Weft-Namespace", context.namespace),
                      HTTPField("X-Weft-Client", context.clientEndpoint)] + extra
        if closes { fields.append(HTTPField("Connection", "close")) }
        for f in fields { head += "\(f.name): \(f.value)\r\n" }
        head += "\r\n"
        return Array(head.utf8) + (includeBody ? body : [])
    }
}
