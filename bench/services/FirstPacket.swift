// `weft-bench-services first-packet [N...]`: how the first packet of a connection through a
// ClusterIP fares as the table grows. Three namespaces (client, node, server) joined by veths,
// the node routing between them and holding weft's services table with N services of 10
// endpoints plus the one measured; TCP connect time (the SYN is the packet that walks the
// table: later ones follow conntrack) to the ClusterIP against straight to the server, in
// alternating blocks. Never touches the root namespace.
import Foundation
import WeftCore
import WeftOS
#if canImport(Glibc)
import Glibc
#endif

struct BenchFailure: Error, CustomStringConvertible { var description: String }

func sh(_ args: String...) throws {
    let r = try Subprocess.run("/usr/bin/env", arguments: args, environment: ["PATH": "/usr/sbin:/usr/bin:/sbin:/bin"], stdin: [])
    guard r.status == 0 else { throw BenchFailure(description: "\(args.joined(separator: " ")): \(String(decoding: r.stderr, as: UTF8.self))") }
}

/// Seconds a blocking TCP connect to ip:port takes (the server's answer is read and the
/// socket closed after the clock stops).
func connectTime(_ ip: String, _ port: UInt16) throws(BenchFailure) -> Double {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw BenchFailure(description: "socket: errno \(errno)") }
    defer { close(fd) }
    var tv = timeval(tv_sec: 2, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = port.bigEndian
    inet_pton(AF_INET, ip, &addr.sin_addr)
    let t0 = ContinuousClock.now
    let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    let d = ContinuousClock.now - t0
    guard rc == 0 else { throw BenchFailure(description: "connect \(ip):\(port): errno \(errno)") }
    // A newline, as `weft probe` sends: the test server greets a silent client only after its
    // 1 s window for an HTTP request, and a non-HTTP byte at once.
    _ = write(fd, "\n", 1)
    var buf = [UInt8](repeating: 0, count: 128)
    guard read(fd, &buf, buf.count) > 0 else { throw BenchFailure(description: "no answer from \(ip):\(port)") }
    return ms(d) / 1000
}

func firstPacket(sizes: [Int]) throws {
    let id = "wbf\(getpid())"
    let (client, node, server) = ("\(id)c", "\(id)n", "\(id)s")
    defer { for ns in [client, node, server] { _ = try? sh("ip", "netns", "del", ns) } }
    for ns in [client, node, server] { try sh("ip", "netns", "add", ns); try sh("ip", "-n", ns, "link", "set", "lo", "up") }
    for (ns, n, net) in [(client, "c", "10.250.1"), (server, "s", "10.250.2")] {
        try sh("ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "\(n)0", "netns", "/run/netns/\(node)")
        try sh("ip", "-n", ns, "addr", "add", "\(net).2/24", "dev", "eth0")
        try sh("ip", "-n", ns, "link", "set", "eth0", "up")
        try sh("ip", "-n", ns, "route", "add", "default", "via", "\(net).1")
        try sh("ip", "-n", node, "addr", "add", "\(net).1/24", "dev", "\(n)0")
        try sh("ip", "-n", node, "link", "set", "\(n)0", "up")
    }
    try sh("ip", "netns", "exec", node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    let serverNS = try NetworkNamespace(path: "/run/netns/\(server)")
    let clientNS = try NetworkNamespace(path: "/run/netns/\(client)")
    let nodeNS = try NetworkNamespace(path: "/run/netns/\(node)")
    Thread.detachNewThread { _ = try? serverNS.run { () throws(SystemError) in try EchoServer.serveTCP(port: 8080, name: "srv") } }

    // The measured service, first in the table and the same in every size.
    let spec = #"{"apiVersion":"v1","kind":"Service","metadata":{"name":"measured","namespace":"bench"},"spec":{"selector":{"app":"m"},"ports":[{"port":80,"targetPort":8080}]}}"#
    var measured = try ClusterService(KubeObject(json: JSONValue.parse(spec)))
    measured.clusterIPs = [IPAddress("10.96.255.1")!]
    let target = ServiceRules.Entry(service: measured, endpoints: [ServiceEndpoint(pod: "srv", address: IPAddress("10.250.2.2")!, ready: true, nodeName: "n", ports: ["": 8080])])
    let nft = LibNFTables(), netlink = NFTablesNetlink()
    var have = ServiceRules.model([target])
    try nodeNS.run { () throws(NFTablesError) in try nft.run(ServiceRules.fullScript(have)) }
    var loaded = 0
    let t0 = ContinuousClock.now
    while (try? clientNS.run { () throws(BenchFailure) in try connectTime("10.96.255.1", 80) }) == nil {
        guard ContinuousClock.now - t0 < .seconds(5) else { throw BenchFailure(description: "the ClusterIP does not answer") }
        usleep(50_000)
    }

    say("\nfirst packet (TCP connect) through the ClusterIP vs straight to the pod, client → node (table) → server; 6 blocks × 300 connects per path, alternating")
    say("| services in the table | pod IP connect p50 / p99 | ClusterIP connect p50 / p99 | added at p50 | table load time |")
    say("| --- | --- | --- | --- | --- |")
    var baseline: Double?
    for n in sizes.sorted() {
        // Grow the table in steps of at most 1,000 services, as incremental updates.
        let clock = ContinuousClock()
        let load = try clock.measure {
            while loaded < n {
                let step = min(n, loaded + 1000)
                if let c = have.update(with: [target] + (try entries(step))) {
                    try nodeNS.run { () throws(NFTablesError) in
                        try netlink.apply(c.ops)
                    }
                }
                loaded = step
            }
        }
        var pod: [Double] = [], vip: [Double] = []
        for b in 0..<12 {
            let viaVIP = b % 2 == 1
            let xs = try clientNS.run { () throws(BenchFailure) -> [Double] in
                var out: [Double] = []
                for _ in 0..<300 { out.append(try connectTime(viaVIP ? "10.96.255.1" : "10.250.2.2", viaVIP ? 80 : 8080)) }
                return out
            }
            if viaVIP { vip += xs } else { pod += xs }
        }
        let p = percentile(pod, 0.5), v = percentile(vip, 0.5)
        if baseline == nil { baseline = v }
        say(String(format: "| %d | %.0f / %.0f µs | %.0f / %.0f µs | %.0f µs (%.0f %%) | %.1f s |", n, p * 1e6, percentile(pod, 0.99) * 1e6,
                   v * 1e6, percentile(vip, 0.99) * 1e6, (v - p) * 1e6, (v - p) / p * 100, ms(load) / 1000))
    }
}
