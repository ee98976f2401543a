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
    private let listeners = Mutex<[UInt16: (server: AgentHTTPServer, check: CheckBox)]>([:])
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
            await l.server.close()
            _ = listeners.withLock { $0.removeValue(forKey: port) }
        }
        for (port, check) in checks {
            if let l = current[port] { l.check.value.withLock { $0 = check }; continue }
            let box = CheckBox(check)
            do {
                let server = try await AgentHTTPServer.bind(host: "0.0.0.0", port: Int(port), group: group) { _ in Self.answer(box.value.withLock { $0 }) }
                listeners.withLock { $0[port] = (server, box) }
            } catch {
                logger.error("cannot serve a health-check node port", metadata: ["port": "\(port)", "service": "\(check.service)", "error": "\(error)"])
            }
        }
    }

    /// kube-proxy's answer: 200 with the count of local endpoints, else 503.
    static func answer(_ check: LoadBalancing.HealthCheck) -> AgentHTTPServer.Response {
        let parts = check.service.split(separator: "/", maxSplits: 1).map(String.init)
        let body = JSONValue.object([
            ("service", .object([("namespace", .string(parts.first ?? "")), ("name", .string(parts.count > 1 ? parts[1] : ""))])),
            ("localEndpoints", .number(Double(check.localEndpoints))),
            ("serviceProxyHealthy", .bool(true)),
        ]).serialized()
        return .init(status: check.localEndpoints > 0 ? .ok : .serviceUnavailable, contentType: "application/json", body: Array(body.utf8))
    }
}
