// weft: the command-line tool. Wiring only; the work lives in the libraries.
import ArgumentParser
import WeftCore
import WeftLab
import WeftOS
#if canImport(Glibc)
import Glibc
#endif

@main
struct Weft: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Weft: Kubernetes pod networking.",
        subcommands: [LabCommand.self, Apply.self, Get.self, Delete.self, ConnectivityCommand.self, DoctorCommand.self, TraceCommand.self, ObserveCommand.self, PictureCommand.self, Agent.self, Runtime.self,
                       Demo.self, Serve.self, Probe.self])
}

struct Demo: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "One emulated node with a few pods wired by the real weft CNI plugin: addresses, pings, clean-up.")

    @Option(help: "How many pods.") var pods = 3
    @Option(help: "bridge or routed.") var mode = "bridge"
    @Option(help: "The weft-cni binary (default: next to this one).") var plugin: String?

    func run() throws {
        let bin = plugin ?? siblingExecutable("weft-cni")
        let demo = try DemoRun(pods: pods, mode: mode, plugin: bin)
        try demo.run { print($0) }
    }
}

struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "The pods' test server: HTTP for clients that send a request, NAME and the client's address for the rest.",
        discussion: """
        TCP: a client that sends an HTTP request gets HTTP/1.1 (keep-alive; HTTP/1.0 and \
        Connection: close are answered and closed): /hostname, /clientip, /echo?msg=TEXT, and \
        for any other path a JSON echo of the request (pod, namespace, path, method, host, proto, \
        headers, clientAddress, clientPort). A client that sends nothing for a second, or \
        anything that is not HTTP, gets "NAME CLIENT-ADDRESS" and then its bytes echoed until it \
        closes. UDP: every datagram is answered with "NAME CLIENT-ADDRESS".
        """)
    @Option(help: "The name to answer with (the pod's).") var name = "weft"
    @Option(help: "The namespace the HTTP echo names (the pod's).") var namespace = "default"
    @Option(help: "TCP port.") var tcp: UInt16?
    @Option(help: "UDP port.") var udp: UInt16?

    func validate() throws {
        guard tcp != nil || udp != nil else { throw ValidationError("give --tcp PORT and/or --udp PORT") }
        // Both go out in header values and the greeting's "NAME ADDRESS" line.
        for (option, value) in [("--name", name), ("--namespace", namespace)] where value.isEmpty || value.unicodeScalars.contains(where: { $0.value <= 0x20 || $0.value == 0x7f }) {
            throw ValidationError("\(option) \"\(value)\" must be non-empty, without spaces or control characters")
        }
    }

    func run() throws {
        if let udp, let tcp {
            // Set before the thread starts, which reads it at once (set after, the thread could
            // read the default "weft" first).
            ProcessInfoName.value = name
            var t = pthread_t()
            _ = pthread_create(&t, nil, { arg in
                let port = UInt16(Int(bitPattern: arg))
                try? EchoServer.serveUDP(port: port, name: ProcessInfoName.value)
                return nil
            }, UnsafeMutableRawPointer(bitPattern: Int(udp)))
            try EchoServer.serveTCP(port: tcp, name: name, namespace: namespace)
        }
        if let tcp { try EchoServer.serveTCP(port: tcp, name: name, namespace: namespace) }
        if let udp { try EchoServer.serveUDP(port: udp, name: name) }
    }
}

/// The server name, shared with the UDP thread (set once before it reads it).
enum ProcessInfoName { nonisolated(unsafe) static var value = "weft" }

struct Probe: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Connect to ADDRESS:PORT and print the answer of a `weft serve`.",
        discussion: "TCP: sends a newline (not HTTP, so the server greets at once) and prints the greeting line.")
    @Argument(help: "ADDRESS:PORT, IPv6 as [ADDRESS]:PORT.") var target: String
    @Flag(help: "Use UDP instead of TCP.") var udp = false
    @Option(help: "Timeout in milliseconds.") var timeout: Int32 = 2000
    @Option(help: "Hold one TCP connection this many seconds, echoing a line every --interval ms; fails if the flow breaks.") var hold: Double?
    @Option(help: "With --hold: milliseconds between round trips.") var interval = 100
    @Option(help: "Send from this local port (0: any); successive UDP probes are then one flow, as a long-lived client's.") var sourcePort: UInt16 = 0

    func run() throws {
        guard let colon = target.lastIndex(of: ":"), let port = UInt16(target[target.index(after: colon)...]),
              let host = IPAddress(target[..<colon].trimmingPrefix("[").split(separator: "]").first ?? "") else {
            throw ValidationError("target \"\(target)\" is not ADDRESS:PORT (e.g. 10.22.0.5:8080 or [fd00::5]:8080)")
        }
        if let hold {
            let n = try EchoServer.hold(host: host, port: port, seconds: hold, intervalMs: interval, timeoutMilliseconds: timeout)
            print("held \(hold) s: \(n) round trips, none lost")
            return
        }
        print(try EchoServer.probe(host: host, port: port, udp: udp, timeoutMilliseconds: timeout, sourcePort: sourcePort))
    }
}

func siblingExecutable(_ name: String) -> String {
    var buf = [CChar](repeating: 0, count: 4096)
    let n = readlink("/proc/self/exe", &buf, buf.count - 1)
    let me = n > 0 ? String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) : ""
    return String(me[..<(me.lastIndex(of: "/") ?? me.startIndex)]) + "/" + name
}

/// A failure at run time (not a usage mistake): printed without the usage text.
struct CLIError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}
