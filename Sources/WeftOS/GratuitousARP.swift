#if canImport(Glibc)
import Glibc
#endif
import CWeftLinux
import WeftCore

/// Announces that `address` is now at `mac` on the link with index `ifindex`, so neighbours
/// update a cached entry at once: a gratuitous ARP for IPv4, an unsolicited neighbour
/// advertisement for IPv6. Linux sends neither when an address is added without DAD; a load
/// balancer address that moves to another node needs one, or clients keep sending to the old
/// node until their entry goes stale.
public func announceAddress(ifindex: Int32, mac: [UInt8], address: IPAddress) throws(SystemError) {
    switch address.family {
    case .v4: try sendGratuitousARP(ifindex: ifindex, mac: mac, address: address)
    case .v6: try sendUnsolicitedNeighbourAdvertisement(ifindex: ifindex, mac: mac, address: address)
    }
}

/// An unsolicited neighbour advertisement (RFC 4861 §7.2.6): ICMPv6 136 to all nodes (ff02::1)
/// with the Override flag and the target's link-layer address, hop limit 255 (receivers drop
/// neighbour discovery from further away). The kernel fills in the checksum and the source.
/// Neighbours holding an entry for `address` take the new link-layer address.
public func sendUnsolicitedNeighbourAdvertisement(ifindex: Int32, mac: [UInt8], address: IPAddress) throws(SystemError) {
    guard address.family == .v6, mac.count == 6 else { return }
    let fd = socket(AF_INET6, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue), Int32(IPPROTO_ICMPV6))
    guard fd >= 0 else { throw SystemError("socket(AF_INET6, SOCK_RAW, IPPROTO_ICMPV6)") }
    defer { close(fd) }
    var hops: Int32 = 255, index = ifindex
    guard setsockopt(fd, Int32(IPPROTO_IPV6), IPV6_MULTICAST_HOPS, &hops, socklen_t(MemoryLayout<Int32>.size)) == 0,
          setsockopt(fd, Int32(IPPROTO_IPV6), IPV6_MULTICAST_IF, &index, socklen_t(MemoryLayout<Int32>.size)) == 0 else {
        throw SystemError("setsockopt(IPV6_MULTICAST_HOPS/IF)")
    }
    // type 136, code 0, checksum (kernel), flags R=0 S=0 O=1, target, option 2 (target link-layer address, 8 bytes).
    let packet: [UInt8] = [136, 0, 0, 0, 0x20, 0, 0, 0] + address.bytes + [2, 1] + mac
    var to = sockaddr_in6()
    to.sin6_family = sa_family_t(AF_INET6)
    to.sin6_scope_id = UInt32(ifindex)
    withUnsafeMutableBytes(of: &to.sin6_addr) { b in
        for (i, v) in [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01].enumerated() { b[i] = UInt8(v) }
    }
    let sent = packet.withUnsafeBytes { buf in
        withUnsafePointer(to: &to) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            sendto(fd, buf.baseAddress, buf.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in6>.size))
        } }
    }
    guard sent == packet.count else { throw SystemError("sendto(unsolicited neighbour advertisement for \(address))") }
}

/// A gratuitous ARP (an unsolicited reply announcing `address` at `mac`), broadcast on the link.
public func sendGratuitousARP(ifindex: Int32, mac: [UInt8], address: IPAddress) throws(SystemError) {
    guard address.family == .v4, mac.count == 6 else { return }
    let ethPARP: UInt16 = 0x0806
    let fd = socket(AF_PACKET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), Int32(ethPARP.bigEndian))
    guard fd >= 0 else { throw SystemError("socket(AF_PACKET)") }
    defer { close(fd) }
    let ip = address.bytes
    // htype 1 (Ethernet), ptype 0x0800, hlen 6, plen 4, op 2 (reply); sender = target = the address.
    var packet: [UInt8] = [0, 1, 0x08, 0x00, 6, 4, 0, 2]
    packet += mac + ip + [0xff, 0xff, 0xff, 0xff, 0xff, 0xff] + ip
    var to = sockaddr_ll()
    to.sll_family = UInt16(AF_PACKET)
    to.sll_protocol = ethPARP.bigEndian
    to.sll_ifindex = ifindex
    to.sll_halen = 6
    withUnsafeMutableBytes(of: &to.sll_addr) { for i in 0..<6 { $0[i] = 0xff } }
    let sent = packet.withUnsafeBytes { buf in
        withUnsafePointer(to: &to) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            sendto(fd, buf.baseAddress, buf.count, 0, $0, socklen_t(MemoryLayout<sockaddr_ll>.size))
        } }
    }
    guard sent == packet.count else { throw SystemError("sendto(gratuitous ARP for \(address))") }
}
