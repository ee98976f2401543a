import WeftCore
import WeftOS

/// Carries out on one node what its `RoutingBackend` says the node needs: the mode's device
/// with its MTU, the device's addresses, the mode's sysctls. Through `NetworkControl` and an
/// injected sysctl writer, so it runs against the fake netlink in tests. Idempotent: over a node
/// that is already right it changes nothing (an agent restarted over running pods keeps them
/// flowing).
public struct RoutingSetup {
    public let backend: any RoutingBackend
    let net: NetworkControl
    let uplink: String
    let ensureSysctl: (String, String) throws -> Void

    public init(backend: any RoutingBackend, net: NetworkControl, uplink: String,
                ensureSysctl: @escaping (String, String) throws -> Void = { key, value in try Sysctl.ensure(key, value) }) {
        self.backend = backend; self.net = net; self.uplink = uplink; self.ensureSysctl = ensureSysctl
    }

    /// The uplink's MTU, 1500 when the uplink is not found (a --host-ip on another interface).
    public func uplinkMTU() throws(NetlinkError) -> Int { try net.link(named: uplink)?.mtu ?? 1500 }

    /// The MTU to give pods on this node: the backend's, for the uplink and the host address's family.
    public func podMTU(hostIP: IPAddress) throws(NetlinkError) -> Int {
        backend.podMTU(uplinkMTU: try uplinkMTU(), hostFamily: hostIP.family)
    }

    /// Makes the backend's device, up, with its MTU (set again if it drifted, e.g. the uplink's
    /// changed since the device was made); its MAC, which peers' forwarding entries name. Nil
    /// when the mode has no device.
    public func ensureDevice(hostIP: IPAddress) throws -> [UInt8]? {
        let uplinkLink = try net.link(named: uplink)
        guard let want = backend.device(hostIP: hostIP, uplinkMTU: uplinkLink?.mtu ?? 1500) else { return nil }
        if let dev = try net.link(named: want.name) {
            if dev.mtu != want.mtu { try net.setMTU(index: dev.index, mtu: want.mtu) }
            if !dev.isUp { try net.setUp(index: dev.index) }
            return dev.mac
        }
        switch want {
        case let .vxlan(name, vni, port, local, mtu):
            try net.createLink(.vxlan(name: name, vni: vni, port: port, local: local, underlayIndex: uplinkLink?.index, mtu: mtu, learning: false))
        }
        guard let dev = try net.link(named: want.name) else { throw AgentError("\(want.name) vanished after creation") }
        try net.setMAC(index: dev.index, mac: dev.mac) // pinned, so peers' FDB entries stay valid
        try net.setUp(index: dev.index)
        return dev.mac
    }

    /// The device's addresses for this node's pod blocks and the backend's sysctls.
    public func ensureNode(blocks: [IPNetwork]) throws {
        if let name = backend.deviceName, let dev = try net.link(named: name) {
            for a in backend.deviceAddresses(blocks: blocks) { try net.ensureAddress(a, index: dev.index, noDAD: true) }
        }
        for s in backend.sysctls(uplink: uplink) { try ensureSysctl(s.key, s.value) }
    }
}
