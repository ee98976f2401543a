import ArgumentParser
import Foundation
import WeftCore
import WeftLab
import WeftOS
#if canImport(Glibc)
import Glibc
#endif

/// Through a ClusterIP against straight to the pod, in the same run on the same lab: TCP
/// throughput (iperf3) and request latency (connect, answer, close), and the cluster DNS
/// resolver's queries per second and latency.
struct ServicePath: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "services",
        abstract: "ClusterIP vs pod IP: throughput and request latency; cluster DNS: queries per second and p99.")

    @Option(help: "native or vxlan.") var mode = "native"
    @Option(help: "Throughput measurements per path, interleaved (at least 3).") var repeats = 3
    @Option(help: "Seconds per iperf3 run (-t).") var duration = 5
    @Option(help: "Requests per path in each latency block (the paths alternate request by request).") var requests = 500
    @Option(help: "Latency blocks.") var blocks = 6
    @Option(help: "Seconds of DNS load.") var dnsSeconds = 5
    @Option(help: "DNS queries in flight at once.") var dnsInFlight = 16
    @Option(help: "Lab name (starts with \"bench\").") var lab = "benchsvc"
    @Option(help: "The weft binary (default: next to this one; weft-cni must sit beside it).") var weft: String?

    func validate() throws {
        guard mode == "native" || mode == "vxlan" else { throw ValidationError("--mode \(mode): expected native or vxlan") }
        guard repeats >= 3, blocks >= 2, requests >= 10 else { throw ValidationError("use --repeats ≥ 3, --blocks ≥ 2, --requests ≥ 10") }
    }

    func run() throws {
        installSignalHandlers()
        guard (try? sh(["which", "iperf3"])) != nil else { throw BenchError("iperf3 is missing: apt-get install -y iperf3") }
        let bin = try Binaries(weft: weft)
        printHeader("services --mode \(mode)")
        let labHandle = try LabHandle(name: lab, nodes: 2, mode: mode, datastore: "sqlite", leaseTTL: nil, bin: bin)
        defer { labHandle.down() }
        _ = try labHandle.waitForFullMesh(timeout: 60)

        // The client on node0, the server on node1, a ClusterIP in front of the server.
        let manifest = "\(labHandle.state.dir)/bench-services.yaml"
        try Files.writeAtomically(manifest, Array("""
            apiVersion: v1
            kind: Pod
            metadata: {name: client}
            spec: {nodeName: node0, containers: [{name: c, image: agnhost}]}
            ---
            apiVersion: v1
            kind: Pod
            metadata: {name: server, labels: {app: server}}
            spec: {nodeName: node1, containers: [{name: s, image: agnhost, ports: [{containerPort: 8080, name: http}]}]}
            ---
            apiVersion: v1
            kind: Service
            metadata: {name: server}
            spec: {selector: {app: server}, ports: [{name: http, port: 80, targetPort: http}, {name: iperf, port: 5201, targetPort: 5201}]}
            """.utf8))
        print("$ weft apply -f \(manifest) --lab \(lab)")
        print(try labHandle.weft(["apply", "-f", manifest]).split(separator: "\n").map { "  " + $0 }.joined(separator: "\n"))
        let pods = try JSONValue.parse(try labHandle.weft(["get", "pods", "-o", "json"]))["items"]?.arrayValue ?? []
        guard let serverIP = pods.first(where: { $0["metadata"]?["name"]?.stringValue == "server" })?["status"]?["podIP"]?.stringValue else {
            throw BenchError("the server pod has no IP")
        }
        let svcs = try JSONValue.parse(try labHandle.weft(["get", "services", "-o", "json"]))["items"]?.arrayValue ?? []
        guard let vip = svcs.first(where: { $0["metadata"]?["name"]?.stringValue == "server" })?["spec"]?["clusterIP"]?.stringValue else {
            throw BenchError("the service has no ClusterIP")
        }
        let clientNS = NodeRuntime.netnsName(labID: labHandle.state.id, namespace: "default", pod: "client")
        let serverNS = NodeRuntime.netnsName(labID: labHandle.state.id, namespace: "default", pod: "server")
        print("  client in \(clientNS) on node0; server \(serverIP) on node1; ClusterIP \(vip)")
        let client = try NetworkNamespace(path: "/run/netns/\(clientNS)")
        // The agents program the service shortly after the apply.
        let t0 = now()
        while (try? client.run { () throws(SocketError) in try request(vip, 80) }) == nil {
            guard now() - t0 < 30 else { throw BenchError("\(vip):80 does not answer after 30 s") }
            usleep(100_000)
        }

        // Throughput, interleaved.
        let tp = try Throughput.parse(["--mode", mode, "--duration", "\(duration)"])
        var pod: [Double] = [], svc: [Double] = []
        print("\nthroughput: \(repeats) rounds × 2 paths × \(duration) s, order alternating")
        for round in 0..<repeats {
            for k in 0..<2 {
                try checkInterrupted()
                let viaService = (k + round) % 2 == 1
                let m = try tp.iperf(client: clientNS, server: serverNS, ip: viaService ? vip : serverIP)
                if viaService { svc.append(m.bps) } else { pod.append(m.bps) }
                print("  round \(round + 1) \(viaService ? "ClusterIP" : "pod IP   "): \(fmt(m.bps / 1e9, 2)) Gbit/s (retransmits \(m.retransmits), sender CPU \(fmt(m.senderCPU, 0)) %)")
            }
        }

        // Request latency: connect, read the server's answer, close. The paths alternate request
        // by request (pod, ClusterIP, pod, …), so drift on a shared 2-vCPU machine (other
        // processes, frequency) falls on both alike; blocks of the two would each catch their own.
        print("\nrequest latency: \(blocks) × \(requests) requests per path (connect, answer, close), alternating request by request")
        var podLat: [Double] = [], svcLat: [Double] = []
        for _ in 0..<blocks {
            try checkInterrupted()
            try client.run { () throws(SocketError) in
                for _ in 0..<requests {
                    for viaService in [false, true] {
                        let s = now()
                        try request(viaService ? vip : serverIP, viaService ? 80 : 8080)
                        if viaService { svcLat.append(now() - s) } else { podLat.append(now() - s) }
                    }
                }
            }
        }
        // Round trips on held connections (keep-alive), one per path, alternating round trip by
        // round trip: the NAT was set up by each connection's first packet; later ones follow
        // conntrack.
        print("keep-alive round trips: \(blocks) × \(requests) per path on one connection each, alternating")
        var podRTT: [Double] = [], svcRTT: [Double] = []
        for _ in 0..<blocks {
            try checkInterrupted()
            let (p, v) = try client.run { () throws(SocketError) in try interleavedRoundTrips([(serverIP, 8080), (vip, 80)], count: requests) }
            podRTT += p
            svcRTT += v
        }

        // DNS: the client's resolver (its node's, through 10.96.0.10), a mix of names.
        print("\nDNS: \(dnsSeconds) s, \(dnsInFlight) queries in flight, from the client pod to 10.96.0.10")
        let names: [(String, UInt16)] = [("server.default.svc.cluster.local", 1), ("server.default.svc.cluster.local", 28),
                                         ("_http._tcp.server.default.svc.cluster.local", 33), ("nope.default.svc.cluster.local", 1)]
        let dns = try client.run { () throws(SocketError) in
            try DNSLoad.run(server: "10.96.0.10", names: names, seconds: Double(dnsSeconds), inFlight: dnsInFlight)
        }

        let r = median(svc) / median(pod)
        let p50p = percentile(podLat, 50), p50s = percentile(svcLat, 50)
        let added = (p50s - p50p) / p50p
        print("\n## services data path, mode \(mode)\n")
        print(table(["measure", "pod IP", "ClusterIP", "ratio / added", "target", "met"], [
            ["throughput, median Gbit/s (\(repeats) runs)", fmt(median(pod) / 1e9, 2), fmt(median(svc) / 1e9, 2), fmt(r, 3) + "×", "≥ 0.95×", r >= 0.95 ? "yes" : "NO"],
            ["new connection + answer p50 (µs)", fmt(p50p * 1e6, 0), fmt(p50s * 1e6, 0), fmt(added * 100, 1) + " %", "< 5 %", added < 0.05 ? "yes" : "NO"],
            ["new connection + answer p99 (µs)", fmt(percentile(podLat, 99) * 1e6, 0), fmt(percentile(svcLat, 99) * 1e6, 0),
             fmt((percentile(svcLat, 99) / percentile(podLat, 99) - 1) * 100, 1) + " %", "", ""],
            ["keep-alive round trip p50 (µs)", fmt(percentile(podRTT, 50) * 1e6, 0), fmt(percentile(svcRTT, 50) * 1e6, 0),
             fmt((percentile(svcRTT, 50) / percentile(podRTT, 50) - 1) * 100, 1) + " %", "< 5 %",
             percentile(svcRTT, 50) / percentile(podRTT, 50) - 1 < 0.05 ? "yes" : "NO"],
            ["keep-alive round trip p99 (µs)", fmt(percentile(podRTT, 99) * 1e6, 0), fmt(percentile(svcRTT, 99) * 1e6, 0),
             fmt((percentile(svcRTT, 99) / percentile(podRTT, 99) - 1) * 100, 1) + " %", "", ""],
        ]))
        print("")
        print(table(["DNS (A, AAAA, SRV, NXDOMAIN mix)", "value"], [
            ["queries answered", "\(dns.answered) (\(dns.lost) lost)"],
            ["queries per second", fmt(Double(dns.answered) / dns.seconds, 0)],
            ["latency p50 / p99", "\(fmt(percentile(dns.latencies, 50) * 1e6, 0)) / \(fmt(percentile(dns.latencies, 99) * 1e6, 0)) µs"],
        ]))
        print("\nmachine at end: \(machineLine())")
    }
}

struct SocketError: Error, CustomStringConvertible {
    var description: String
}

/// An IPv4 socket connected to ip:port (receive timeout 3 s); the caller closes it.
func connectedSocket(_ ip: String, _ port: UInt16, udp: Bool = false, noDelay: Bool = false) throws(SocketError) -> Int32 {
    let fd = socket(AF_INET, Int32((udp ? SOCK_DGRAM : SOCK_STREAM).rawValue), 0)
    guard fd >= 0 else { throw SocketError(description: "socket: \(errno)") }
    var tv = timeval(tv_sec: 3, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    var one: Int32 = 1
    if noDelay { setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size)) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = port.bigEndian
    inet_pton(AF_INET, ip, &addr.sin_addr)
    let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    guard rc == 0 else { close(fd); throw SocketError(description: "connect \(ip):\(port): errno \(errno)") }
    return fd
}

/// One request to the lab's test server: connect, a newline (as `weft probe` sends: the server
/// greets a silent client only after its 1 s window for HTTP, a non-HTTP byte at once), read
/// its one-line answer, close.
func request(_ ip: String, _ port: UInt16) throws(SocketError) {
    let fd = try connectedSocket(ip, port)
    defer { close(fd) }
    _ = write(fd, "\n", 1)
    var buf = [UInt8](repeating: 0, count: 256)
    guard read(fd, &buf, buf.count) > 0 else { throw SocketError(description: "no answer from \(ip):\(port)") }
}

/// The greeting of a raw connection, asked for by a newline: reads until the greeting line and
/// the newline's echo are both in.
func greeting(_ fd: Int32, _ ip: String, _ port: UInt16) throws(SocketError) {
    _ = write(fd, "\n", 1)
    var got: [UInt8] = [], buf = [UInt8](repeating: 0, count: 256)
    while got.filter({ $0 == 0x0a }).count < 2 {
        let n = read(fd, &buf, buf.count)
        guard n > 0 else { throw SocketError(description: "no greeting from \(ip):\(port)") }
        got += buf[0..<n]
    }
}

/// `count` round trips (a line out, the echo back) on each of two connections to the lab's test
/// server, taking turns.
func interleavedRoundTrips(_ ends: [(String, UInt16)], count: Int) throws(SocketError) -> ([Double], [Double]) {
    var fds: [Int32] = []
    defer { for fd in fds { close(fd) } }
    var buf = [UInt8](repeating: 0, count: 256)
    for (ip, port) in ends {
        let fd = try connectedSocket(ip, port, noDelay: true)
        fds.append(fd)
        try greeting(fd, ip, port)
    }
    let line = Array("ping\n".utf8)
    var out: [[Double]] = [[], []]
    for _ in 0..<count {
        for i in 0..<2 {
            let s = now()
            _ = line.withUnsafeBytes { write(fds[i], $0.baseAddress, $0.count) }
            guard read(fds[i], &buf, buf.count) > 0 else { throw SocketError(description: "the held connection to \(ends[i].0):\(ends[i].1) broke") }
            out[i].append(now() - s)
        }
    }
    return (out[0], out[1])
}

/// A closed-loop DNS load: `inFlight` queries outstanding on one UDP socket, each answer
/// sending the next; latency from send to answer per query id.
enum DNSLoad {
    struct Result { var answered: Int; var lost: Int; var seconds: Double; var latencies: [Double] }

    static func query(id: UInt16, name: String, type: UInt16) -> [UInt8] {
        var q: [UInt8] = [UInt8(id >> 8), UInt8(id & 0xff), 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]
        for label in name.split(separator: ".") { q.append(UInt8(label.utf8.count)); q += Array(label.utf8) }
        q += [0, UInt8(type >> 8), UInt8(type & 0xff), 0, 1]
        return q
    }

    static func run(server: String, names: [(String, UInt16)], seconds: Double, inFlight: Int) throws(SocketError) -> Result {
        let fd = try connectedSocket(server, 53, udp: true)
        defer { close(fd) }
        var tv = timeval(tv_sec: 0, tv_usec: 200_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var sent: [UInt16: Double] = [:]
        var next: UInt16 = 1, k = 0
        var latencies: [Double] = [], lost = 0
        func send() {
            let (name, type) = names[k % names.count]; k += 1
            let q = query(id: next, name: name, type: type)
            sent[next] = now()
            _ = q.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            next = next == UInt16.max ? 1 : next + 1
        }
        let start = now()
        for _ in 0..<inFlight { send() }
        var buf = [UInt8](repeating: 0, count: 4096)
        while now() - start < seconds {
            let n = read(fd, &buf, buf.count)
            if n >= 12 {
                let id = UInt16(buf[0]) << 8 | UInt16(buf[1])
                if let t = sent.removeValue(forKey: id) { latencies.append(now() - t); send() }
            } else {
                // A read timeout: whatever is outstanding is lost; start them again.
                lost += sent.count
                sent.removeAll()
                for _ in 0..<inFlight { send() }
            }
        }
        return Result(answered: latencies.count, lost: lost, seconds: now() - start, latencies: latencies)
    }
}
