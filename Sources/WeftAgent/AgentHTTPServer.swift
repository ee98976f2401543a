import Logging
import NIOCore
import NIOHTTP1
import NIOPosix

/// The agent's own HTTP endpoint (`--metrics-port`): `/metrics` for Prometheus, `/flows` for
/// `weft observe`, `/dataplane` for `weft trace` and `weft doctor`, `/healthz`. Plain HTTP/1.1,
/// one response per request; handlers are quick reads of state kept up to date elsewhere (the
/// dataplane's answers read a few kernel objects, under its locks).
final class AgentHTTPServer: Sendable {
    struct Request: Sendable {
        var path: String
        var query: [String: String]
        /// The client's address (nil when unknown).
        var remote: String? = nil
        var fromLoopback: Bool { remote == "127.0.0.1" || remote == "::1" || remote == "::ffff:127.0.0.1" }
    }
    struct Response: Sendable {
        var status: HTTPResponseStatus = .ok
        var contentType = "text/plain; charset=utf-8"
        var body: [UInt8]
    }
    typealias Handler = @Sendable (Request) -> Response

    let channel: Channel

    private init(channel: Channel) { self.channel = channel }

    static func bind(host: String, port: Int, group: EventLoopGroup = MultiThreadedEventLoopGroup.singleton, handler: @escaping Handler) async throws -> AgentHTTPServer {
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { ch in
                ch.pipeline.configureHTTPServerPipeline().flatMap { ch.pipeline.addHandler(Responder(handler: handler)) }
            }
            .bind(host: host, port: port).get()
        return AgentHTTPServer(channel: channel)
    }

    var port: Int? { channel.localAddress?.port }

    func close() async { try? await channel.close() }

    static func parse(_ uri: String) -> Request {
        let parts = uri.split(separator: "?", maxSplits: 1)
        var query: [String: String] = [:]
        if parts.count == 2 {
            for pair in parts[1].split(separator: "&") {
                let kv = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false).map { String($0).removingPercentEncoding() }
                guard let key = kv.first, !key.isEmpty else { continue }
                query[key] = kv.count == 2 ? kv[1] : ""
            }
        }
        return Request(path: parts.first.map(String.init) ?? "/", query: query)
    }

    final class Responder: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = HTTPServerRequestPart
        typealias OutboundOut = HTTPServerResponsePart
        let handler: Handler
        var head: HTTPRequestHead?
        init(handler: @escaping Handler) { self.handler = handler }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch unwrapInboundIn(data) {
            case .head(let h): head = h
            case .body: break
            case .end:
                guard let h = head else { return }
                var req = AgentHTTPServer.parse(h.uri)
                req.remote = context.remoteAddress?.ipAddress
                let r = h.method == .GET ? handler(req)
                    : Response(status: .methodNotAllowed, body: Array("only GET\n".utf8))
                var headers = HTTPHeaders()
                headers.add(name: "Content-Type", value: r.contentType)
                headers.add(name: "Content-Length", value: "\(r.body.count)")
                let keepAlive = h.isKeepAlive
                if !keepAlive { headers.add(name: "Connection", value: "close") }
                context.write(wrapOutboundOut(.head(HTTPResponseHead(version: h.version, status: r.status, headers: headers))), promise: nil)
                var buffer = context.channel.allocator.buffer(capacity: r.body.count)
                buffer.writeBytes(r.body)
                context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
                context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in if !keepAlive { context.close(promise: nil) } }
                head = nil
            }
        }
    }
}

extension String {
    /// `%41` → `A`, `+` → space (query strings as curl and browsers send them).
    func removingPercentEncoding() -> String {
        var out: [UInt8] = []
        var bytes = Array(utf8)[...]
        while let b = bytes.popFirst() {
            if b == 37, bytes.count >= 2, let v = UInt8(String(decoding: bytes.prefix(2), as: UTF8.self), radix: 16) {
                out.append(v); bytes = bytes.dropFirst(2)
            } else {
                out.append(b == 43 ? 32 : b)
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}
