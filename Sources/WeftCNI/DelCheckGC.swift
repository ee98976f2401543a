import WeftCore
import WeftOS

/// DEL: must succeed when repeated, with the namespace gone, or with CNI_NETNS empty.
/// Interfaces go first and the address last, so an address is never handed to a new pod
/// while an old interface still carries it.
struct DelCommand {
    let node: NodeSystem
    let env: CNIEnvironment
    let config: NetworkConfig

    func run() throws(CNIError) {
        var removedPair = false
        if !env.netns.isEmpty, let ns = try? node.openNamespace(env.netns), let pod = try? ns.control(),
           let link = try? pod.link(named: env.ifname) {
            if link.kind == "veth" {
                // Deleting one end of a veth deletes its peer, the host end, in the same call.
                // DEL answers once both are gone; the kernel's wait before it frees them (most
                // of a deletion's time) is left to a helper process.
                let host = try kernel("open netlink on the node") { try node.hostNetwork() }
                let hostName = hostVethName(containerID: env.containerID, ifname: env.ifname)
                do { try pod.deleteLinkReturningWhenGone(index: link.index, peer: (host, hostName)) } catch where error.isNotFound {
                    // Deleted meanwhile by someone else (a DEL repeated at once): gone, as asked.
                } catch {
                    throw .kernel("delete \(env.ifname) in the pod: \(error)")
                }
                removedPair = true
            } else {
                try kernel("delete \(env.ifname) in the pod") { try pod.deleteLink(index: link.index) }
            }
        }
        if !removedPair {
            // The namespace is gone (its veth went with it) or was never reached: make sure
            // no host end of this attachment is left.
            let host = try kernel("open netlink on the node") { try node.hostNetwork() }
            let hostName = hostVethName(containerID: env.containerID, ifname: env.ifname)
            if let link = try kernel("look up \(hostName)", { try host.link(named: hostName) }) {
                do { try host.deleteLink(index: link.index) } catch where error.isNotFound {} catch {
                    throw .kernel("delete \(hostName): \(error)")
                }
            }
        }
        try IPAMClient(node: node, env: env, config: config).release()
    }
}

/// CHECK: the pod's interface, addresses and routes, the host end, and IPAM all still match
/// the ADD result passed in as prevResult.
struct CheckCommand {
    let node: NodeSystem
    let env: CNIEnvironment
    let config: NetworkConfig

    func run() throws(CNIError) {
        guard let prev = config.prevResult else {
            throw .invalidConfig("CHECK needs prevResult (the result of ADD) in the configuration")
        }
        let ns = try openPodNamespace(node, env.netns, code: 3)
        let pod = try kernel("open netlink in \(env.netns)") { try ns.control() }
        guard let link = try kernel("look up \(env.ifname)", { try pod.link(named: env.ifname) }) else {
            throw .checkFailed("interface \(env.ifname) is missing in \(env.netns)")
        }
        guard let podIndex = prev.interfaces.firstIndex(where: { $0.name == env.ifname && ($0.sandbox ?? "") != "" }) else {
            throw .checkFailed("prevResult lists no interface \(env.ifname) inside a sandbox")
        }
        if let mac = prev.interfaces[podIndex].mac, mac.lowercased() != formatMAC(link.mac) {
            throw .checkFailed("\(env.ifname) has MAC \(formatMAC(link.mac)), prevResult says \(mac)")
        }
        let have = try kernel("list addresses in the pod") { try pod.addresses() }.filter { $0.linkIndex == link.index }.map(\.address)
        let mine = prev.ips.filter { $0.interface == nil || $0.interface == podIndex }.map(\.address)
        for a in mine where !have.contains(a) {
            throw .checkFailed("address \(a) is missing on \(env.ifname)")
        }
        for r in prev.routes {
            let routes = try kernel("list routes in the pod") { try pod.routes(family: r.dst.family) }
            guard routes.contains(where: { $0.destination == r.dst && (r.gw == nil || $0.gateway == r.gw) }) else {
                throw .checkFailed("route \(r.dst)\(r.gw.map { " via \($0)" } ?? "") is missing in the pod")
            }
        }
        let host = try kernel("open netlink on the node") { try node.hostNetwork() }
        let hostName = hostVethName(containerID: env.containerID, ifname: env.ifname)
        guard let hostLink = try kernel("look up \(hostName)", { try host.link(named: hostName) }) else {
            throw .checkFailed("host end \(hostName) of the pod's veth is missing")
        }
        if config.mode == .bridge {
            let bridge = try kernel("look up \(config.bridge)") { try host.link(named: config.bridge) }
            guard let bridge, hostLink.masterIndex == bridge.index else {
                throw .checkFailed("\(hostName) is not attached to bridge \(config.bridge)")
            }
        }
        try IPAMClient(node: node, env: env, config: config).check(expected: mine)
    }
}

/// GC: release every allocation of this network whose attachment the runtime no longer lists.
struct GCCommand {
    let node: NodeSystem
    let env: CNIEnvironment
    let config: NetworkConfig

    func run() throws(CNIError) {
        let raw = config.raw["cni.dev/valid-attachments"] ?? config.raw["cni.dev/attachments"]
        guard let list = raw?.arrayValue else {
            throw .invalidConfig("GC needs cni.dev/valid-attachments: a list of {\"containerID\", \"ifname\"} still in use")
        }
        var valid = Set<Attachment>()
        for (i, item) in list.enumerated() {
            guard let id = item["containerID"]?.stringValue, let ifname = item["ifname"]?.stringValue else {
                throw .invalidConfig("cni.dev/valid-attachments[\(i)] needs string fields containerID and ifname")
            }
            valid.insert(Attachment(containerID: id, ifname: ifname))
        }
        try IPAMClient(node: node, env: env, config: config).collectGarbage(valid: valid)
    }
}
