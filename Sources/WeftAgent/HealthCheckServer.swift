import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization
import WeftCore

/// kube-proxy's service health checks: for each LoadBalancer service with
/// externalTrafficPolicy Local, an HTTP server on its healthCheckNodePort on every node, which
/// answers 200 while this node has a local endpoint of the service and 503 otherwise, so an
/// external load balancer sends traffic only to nodes that keep it local. The body is
/// kube-proxy's JSON.
final class HealthCheckServer: Sendable {
    private let listeners = Mutex<[UInt16: (channel: Channel, check: CheckBox)]>([:])
    private let group: EventLoopGroup
    private let logger: Logger

    /// What a listener answers; replaced in place when the endpoint count changes.
    final class CheckBox: Sendable {
        let value: Mutex<LoadBalancing.HealthCheck>
        init(_ c: LoadBalancing.HealthCheck) { value = Mutex(c) }
    }

    init(group: EventLoopGroup = MultiThreadedEventLoopGroup.singleton, logger: Logger) {
        self.group = group; self.logger = logger
    }

    /// Opens a listener per new port, closes those no longer wanted, updates the others.
    func update(_ checks: [UInt16: LoadBalancing.HealthCheck]) async {
        let current = listeners.withLock { $0 }
        for (port, l) in current where checks[port] == nil {
            try? await l.channel.close()
            _ = listeners.withLock { $0.removeValue(forKey: port) }
        }
        for (port, check) in checks {
            if let l = current[port] { l.check.value.withLock { $0 = check }; continue }
            let box = CheckBox(check)
            do {
                let channel = try await ServerBootstrap(group: group)
                    .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                    .childChannelInitializer { ch in
                        ch.pipeline.configureHTTPServerPipeline().flatMap { ch.pipeline.addHandler(Responder(box: box)) }
                    }
                    .bind(host: "0.0.0.0", port: Int(port)).get()
                listeners.withLock { $0[port] = (channel, box) }
            } catch {
                logger.error("cannot serve a health-check node port", metadata: ["port": "\(port)", "service": "\(check.service)", "error": "\(error)"])
            }
        }
    }

    func closeAll() async { await update([:]) }

    /// Answers every request with the current check, then closes the connection.
    final class Responder: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = HTTPServerRequestPart
        typealias OutboundOut = HTTPServerResponsePart
        let box: CheckBox
        init(box: CheckBox) { self.box = box }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            guard case .end = unwrapInboundIn(data) else { return }
            let check = box.value.withLock { $0 }
            let parts = check.service.split(separator: "/", maxSplits: 1).map(String.init)
            let body = JSONValue.object([
                ("service", .object([("namespace", .string(parts.first ?? "")), ("name", .string(parts.count > 1 ? parts[1] : ""))])),
                ("localEndpoints", .number(Double(check.localEndpoints))),
                ("serviceProxyHealthy", .bool(true)),
            ]).serialized()
            var headers = HTTPHeaders()
            headers.add(name: "Content-Type", value: "application/json")
            headers.add(name: "X-Content-Type-Options", value: "nosniff")
            headers.add(name: "Content-Length", value: "\(body.utf8.count)")
            headers.add(name: "Connection", value: "close")
            let status: HTTPResponseStatus = check.localEndpoints > 0 ? .ok : .serviceUnavailable
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
            var buffer = context.channel.allocator.buffer(capacity: body.utf8.count)
            buffer.writeString(body)
            context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
            context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in context.close(promise: nil) }
        }
    }
}
