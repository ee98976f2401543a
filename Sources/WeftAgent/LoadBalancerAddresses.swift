import Logging
import WeftCore
import WeftOS

/// Holds on the uplink exactly the load balancer addresses this node announces (host-length
/// prefixes inside the cluster's load balancer ranges, so nothing else on the interface is
/// ever touched): a held address makes the kernel answer ARP/NDP for it on the host network,
/// and the services table, which matches it like an external IP, takes the traffic.
/// `@unchecked`: its netlink socket is used by the services loop alone, one request at a time.
struct LoadBalancerAddresses: @unchecked Sendable {
    let net: NetworkControl
    let uplink: String
    let ranges: [IPNetwork]
    let logger: Logger

    func reconcile(_ wanted: Set<IPAddress>) throws {
        guard !ranges.isEmpty, let link = try net.link(named: uplink) else { return }
        let held = try net.addresses().filter { a in
            a.linkIndex == link.index && a.address.prefixLength == a.address.address.family.bitWidth
                && ranges.contains { $0.contains(a.address.address) }
        }
        for ip in wanted where !held.contains(where: { $0.address.address == ip }) {
            try net.ensureAddress(IPInterfaceAddress(address: ip, prefixLength: ip.family.bitWidth), index: link.index, noDAD: true)
            // Neighbours that cached the address at the node announcing it before learn the move now.
            do { try announceAddress(ifindex: link.index, mac: link.mac, address: ip) } catch {
                logger.warning("gratuitous ARP / unsolicited neighbour advertisement failed; neighbours learn the new holder when their entry goes stale",
                               metadata: ["address": "\(ip)", "error": "\(error)"])
            }
            logger.info("announcing a load balancer address", metadata: ["address": "\(ip)", "uplink": "\(uplink)"])
        }
        for a in held where !wanted.contains(a.address.address) {
            try net.deleteAddress(a.address, index: link.index)
            logger.info("no longer announcing a load balancer address", metadata: ["address": "\(a.address.address)"])
        }
    }
}
