import WeftCore
import WeftOS

/// Makes the kernel match a `RoutingState`: adds what is missing, replaces what differs,
/// removes what weft programmed that is no longer wanted. Level-based and idempotent, so the
/// same call serves the first sync, every change and the periodic drift repair, and an agent
/// restarted over a running node changes nothing that is already right (flows keep going).
public final class RouteReconciler {
    let net: NetworkControl

    public init(net: NetworkControl) { self.net = net }

    public struct Report: Sendable, Equatable {
        public var added = 0
        public var removed = 0
        public var isEmpty: Bool { added == 0 && removed == 0 }
    }

    @discardableResult
    public func reconcile(_ want: RoutingState) throws(NetlinkError) -> Report {
        var report = Report()
        let links = try net.links()
        func index(_ name: String) -> Int32? { links.first { $0.name == name }?.index }
        // FDB and neighbour entries live on the mode's own device (vxlan's), if it has one.
        let device = want.device.flatMap(index)

        // Add: forwarding entries first, then neighbours, then the routes that use them.
        if let device {
            let haveFDB = try net.fdb(index: device)
            for e in want.fdb where !haveFDB.contains(FDBEntry(linkIndex: device, mac: e.mac, remote: e.remote)) {
                try net.ensureFDB(FDBEntry(linkIndex: device, mac: e.mac, remote: e.remote)); report.added += 1
            }
            let haveNeigh = try net.neighbors(family: .v4) + net.neighbors(family: .v6)
            for n in want.neighbors where !haveNeigh.contains(where: { $0.linkIndex == device && $0.address == n.address && $0.mac == n.mac && $0.permanent }) {
                try net.ensureNeighbor(NeighborEntry(linkIndex: device, address: n.address, mac: n.mac)); report.added += 1
            }
        }
        let haveRoutes = try (net.routes(family: .v4) + net.routes(family: .v6)).filter { $0.protocolID == RouteEntry.weftProtocol && $0.table == 254 }
        var wanted: [RouteEntry] = []
        for r in want.routes {
            guard let dev = index(r.device) else { continue } // device not there yet: next pass
            wanted.append(RouteEntry(destination: r.destination, gateway: r.gateway, linkIndex: dev, onLink: r.onLink, protocolID: RouteEntry.weftProtocol))
        }
        for r in wanted where !haveRoutes.contains(where: { same($0, r) }) {
            try net.ensureRoute(r); report.added += 1
        }
        // Remove: routes, then neighbours and forwarding entries nothing routes through.
        for r in haveRoutes where !wanted.contains(where: { same($0, r) }) && !wanted.contains(where: { $0.destination == r.destination }) {
            do { try net.deleteRoute(r); report.removed += 1 } catch where error.isNotFound {}
        }
        if let device {
            for n in try net.neighbors(family: .v4) + net.neighbors(family: .v6) where n.linkIndex == device && n.permanent {
                if !want.neighbors.contains(DesiredNeighbor(address: n.address, mac: n.mac)) {
                    do { try net.deleteNeighbor(n); report.removed += 1 } catch where error.isNotFound {}
                }
            }
            for e in try net.fdb(index: device) where !want.fdb.contains(DesiredFDB(mac: e.mac, remote: e.remote)) {
                do { try net.deleteFDB(e); report.removed += 1 } catch where error.isNotFound {}
            }
        }
        return report
    }

    private func same(_ a: RouteEntry, _ b: RouteEntry) -> Bool {
        a.destination == b.destination && a.gateway == b.gateway && a.linkIndex == b.linkIndex
    }
}
