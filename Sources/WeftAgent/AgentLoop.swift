import Logging
import ServiceLifecycle
import WeftCore

/// One long-running loop of the agent as a service of its `ServiceGroup`: it ends when the
/// group shuts down gracefully (the loop is cancelled, and that counts as a clean end), and
/// says what its own end means for the agent. A best-effort loop that fails can be restarted
/// here (after a pause) instead of ending anything.
struct AgentLoop: Service, CustomStringConvertible {
    let description: String
    var restartAfter: Duration?
    let logger: Logger
    let body: @Sendable () async throws -> Void

    init(_ name: String, restartAfter: Duration? = nil, logger: Logger, _ body: @escaping @Sendable () async throws -> Void) {
        description = name; self.restartAfter = restartAfter; self.logger = logger; self.body = body
    }

    func run() async throws {
        do {
            try await cancelWhenGracefulShutdown {
                while true {
                    do {
                        try await body()
                        return
                    } catch let error where !(error is CancellationError) {
                        guard let pause = restartAfter else {
                            logger.error("\(description) ended", metadata: ["error": "\(error)"])
                            throw error
                        }
                        logger.warning("\(description) failed; restarting it", metadata: ["error": "\(error)"])
                        try await Task.sleep(for: pause)
                    }
                }
            }
        } catch is CancellationError {
            // Shut down with the group.
        }
    }

    /// Ends the agent when it ends: on an error at once (the error is the agent's), and when it
    /// returns by a graceful shutdown of the others.
    func essential() -> ServiceGroupConfiguration.ServiceConfiguration {
        .init(service: self, successTerminationBehavior: .gracefullyShutdownGroup, failureTerminationBehavior: .cancelGroup)
    }

    /// Its end is logged and the agent goes on without it.
    func bestEffort() -> ServiceGroupConfiguration.ServiceConfiguration {
        .init(service: self, successTerminationBehavior: .ignore, failureTerminationBehavior: .ignore)
    }
}

/// For best-effort work that gives up (a reader whose socket failed): waits here until
/// cancelled rather than end early.
func waitForCancellation() async {
    while !Task.isCancelled { try? await Task.sleep(for: .seconds(3600)) }
}

/// Renews `lease` at a third of its TTL while `holds()` is true; returns when it is not, and
/// throws `.leaseNotFound` once the lease is lost. For the keys an agent keeps alive with a
/// lease of their own (the EndpointSlice controller's leadership, the DNS endpoint).
func renewLease(_ store: any Datastore, _ lease: Int64, ttl: Int64, while holds: @Sendable () async throws -> Bool = { true }) async throws {
    let period = max(Double(ttl) / 3, 0.5)
    while !Task.isCancelled {
        try await Task.sleep(for: .milliseconds(Int(period * 1000)))
        try await store.keepAlive(lease: lease)
        guard try await holds() else { return }
    }
}
