#if canImport(Glibc)
import Glibc
#endif
import CWeftLinux
import WeftCore

/// A gratuitous ARP (an unsolicited reply announcing `address` at `mac`), broadcast on the link
/// with index `ifindex`, so neighbours update a cached entry at once. Linux sends none when an
/// address is added; a load balancer address that moves to another node needs one, or clients
/// keep sending to the old node until their entry goes stale. IPv4 only: the unsolicited
/// neighbour advertisement that would do the same for IPv6 is not sent yet.
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
