import Synchronization
import WeftCore

/// A `Dataplane` in memory: keeps the services and policy it is given, as the seam describes
/// them, and dumps them in the format every dataplane's logical dump has (`DataplaneView.dump`),
/// so the agent's loops are tested without root against golden files. `failNext` fails the next
/// program call of a part once (after storing what it was given, as a real write failure would
/// leave it); `writes` records each call ("services all 3", "services change +1 -0",
/// "policy resync").
public final class FakeDataplane: Dataplane {
    public let kind = DataplaneKind.fake
    public let node: String

    struct State {
        var services: [String: ServiceRules.Entry] = [:]
        var policy: PolicyRules.Input?
        var writes: [String] = []
        var failNext: Set<DataplanePart> = []
        var drops: [DropReason: UInt64] = [:]
    }
    let state = Mutex(State())

    public struct Injected: Error, CustomStringConvertible {
        public var description: String { "dataplane write failed (injected)" }
    }

    public init(node: String) { self.node = node }

    public var writes: [String] { state.withLock { $0.writes } }
    public var services: [ServiceRules.Entry] { state.withLock { $0.services.values.sorted { $0.key < $1.key } } }
    public var policy: PolicyRules.Input? { state.withLock { $0.policy } }
    public func failNext(_ part: DataplanePart) { state.withLock { _ = $0.failNext.insert(part) } }
    public func setDrops(_ d: [DropReason: UInt64]) { state.withLock { $0.drops = d } }

    public func programServices(_ update: ServiceUpdate) throws -> DataplaneWrite {
        try state.withLock { s throws(Injected) in
            switch update {
            case .all(let all):
                s.services = [:]
                for e in all { s.services[e.key] = e }
                s.writes.append("services all \(all.count)")
            case .change(let changed, let removed):
                for k in removed { s.services[k] = nil }
                for e in changed { s.services[e.key] = e }
                s.writes.append("services change +\(changed.count) -\(removed.count)")
            }
            if s.failNext.remove(.services) != nil { throw Injected() }
            if case .change(let changed, let removed) = update { return changed.isEmpty && removed.isEmpty ? .unchanged : .updated }
            return .replaced
        }
    }

    public func programPolicy(_ input: PolicyRules.Input, resync: Bool) throws -> DataplaneWrite {
        try state.withLock { s throws(Injected) in
            let same = s.policy == input
            s.policy = input
            s.writes.append(resync ? "policy resync" : "policy")
            if s.failNext.remove(.policy) != nil { throw Injected() }
            return resync ? .replaced : (same ? .unchanged : .updated)
        }
    }

    public func dump() -> String {
        let (services, policy) = state.withLock { ($0.services.values.map { $0 }, $0.policy) }
        return DataplaneView.dump(services: services, policy: policy, node: node)
    }

    public func traceService(address: IPAddress, port: UInt16, proto: String) -> ServiceTrace? {
        let services = state.withLock { Array($0.services.values) }
        return DataplaneView.frontend(services, node: node, address: address, port: port, proto: proto).map { ServiceTrace(frontend: $0) }
    }

    public func tracePolicy(_ d: NetworkPolicy.Direction, pod: IPAddress, peer: IPAddress, port: UInt16?, proto: String) -> PolicyTrace {
        guard let input = policy else { return PolicyTrace(pod: nil, allowed: true, isolatedBy: [], allowedBy: []) }
        return DataplaneView.policyTrace(input, node: node, d, pod: pod, peer: peer, port: port, proto: proto)
    }

    /// One logical count per part: frontends (as rules) and backends (as elements) for
    /// services; isolated pods and allowing rules for policy.
    public func counts(_ part: DataplanePart) -> [DataplaneCount] {
        let (services, policy) = state.withLock { ($0.services.values.map { $0 }, $0.policy) }
        switch part {
        case .services:
            let fronts = services.flatMap { DataplaneView.frontends($0, node: node) }
            let backends = fronts.reduce(0) { n, f in if case .forward(let b) = f.action { return n + b.count }; return n }
            return [DataplaneCount(part: .services, name: "fake-services", rules: fronts.count, elements: backends)]
        case .policy:
            guard let policy else { return [] }
            let local = policy.pods.filter { $0.node == node && $0.selectable }
            let isolated = local.filter { p in NetworkPolicy.Direction.allCases.contains { !policy.isolating(p, $0).isEmpty } }
            return [DataplaneCount(part: .policy, name: "fake-policy", rules: policy.policies.reduce(0) { $0 + $1.ingress.count + $1.egress.count }, elements: isolated.count)]
        }
    }

    public func drops() throws -> [DropReason: UInt64] { state.withLock { $0.drops } }

    /// Nothing to drift from: the fake is its own kernel.
    public func check() throws -> [DataplaneDrift] { [] }
}
