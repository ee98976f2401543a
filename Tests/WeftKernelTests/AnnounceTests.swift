import Foundation
import Testing
import WeftCore
import WeftOS

/// A load balancer address that moves to another node is announced there, so neighbours that
/// cached the old holder switch at once: gratuitous ARP for IPv4, an unsolicited neighbour
/// advertisement for IPv6. Two namespaces on a veth; the receiver starts with a stale entry
/// pointing at a MAC that is nowhere.
struct AnnounceTests {
    @Test func neighboursTakeTheAnnouncedLinkLayerAddress() throws {
        let lab = try KernelLab()
        defer { lab.close() }
        let a = try lab.pod("a"), b = try lab.pod("b")
        for ns in [a, b] {
            // No duplicate address detection in these namespaces: addresses usable at once.
            try lab.inNS(ns, ["sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"])
        }
        try #require(try lab.inNS(a, ["ip", "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", b]).status == 0)
        for (ns, dev, v4, v6) in [(a, "va", "10.9.0.1/24", "fd00:9::1/64"), (b, "vb", "10.9.0.2/24", "fd00:9::2/64")] {
            try lab.inNS(ns, ["ip", "addr", "add", v4, "dev", dev])
            try lab.inNS(ns, ["ip", "-6", "addr", "add", v6, "dev", dev, "nodad"])
            try lab.inNS(ns, ["ip", "link", "set", dev, "up"])
        }
        // The moved addresses, now held by a; b still believes them at 02:00:00:00:00:99.
        try lab.inNS(a, ["ip", "addr", "add", "10.9.0.100/32", "dev", "va"])
        try lab.inNS(a, ["ip", "-6", "addr", "add", "fd00:9::100/128", "dev", "va", "nodad"])
        for ip in ["10.9.0.100", "fd00:9::100"] {
            try #require(try lab.inNS(b, ["ip", "neigh", "replace", ip, "lladdr", "02:00:00:00:00:99", "dev", "vb", "nud", "stale"]).status == 0)
        }
        // ARP ignores a reply within locktime (1 s) of the entry's last update; real entries are older.
        usleep(1_200_000)
        let link = try #require(try lab.inNS(a, ["ip", "-j", "link", "show", "va"]).stdout.data(using: .utf8).flatMap { try? JSONValue.parse(Array($0)) }?.arrayValue?.first)
        let ifindex = try #require(link["ifindex"]?.intValue), macText = try #require(link["address"]?.stringValue)
        let mac = macText.split(separator: ":").compactMap { UInt8($0, radix: 16) }
        let nsA = try NetworkNamespace(path: "/run/netns/\(a)")
        func entry(_ ip: String) throws -> String { try lab.inNS(b, ["ip", "neigh", "show", ip, "dev", "vb"]).stdout }
        for ip in ["10.9.0.100", "fd00:9::100"] {
            let before = try entry(ip)
            #expect(before.contains("02:00:00:00:00:99"), "the stale entry is there first: \(before)")
            try nsA.run { () throws(SystemError) in try announceAddress(ifindex: Int32(ifindex), mac: mac, address: IPAddress(ip)!) }
            #expect(try eventually(5) { try entry(ip).contains(macText) }, "\(ip) now at \(macText): \((try? entry(ip)) ?? "")")
        }
    }
}
