import Foundation
import Testing
import WeftCore
import WeftOS
#if canImport(Glibc)
import Glibc
#endif

/// The pods' test server (`weft serve`) with real clients between two pods wired by the plugin:
/// curl and an HTTP/1.0 client that reads to the end get HTTP naming the pod and the client's
/// own address; a client that says nothing still gets the raw greeting and its echo.
@Suite(.serialized, .enabled(if: isRoot, "needs root to create network namespaces"))
struct TestServerTests {
    @Test("HTTP for curl and HTTP/1.0 clients, the raw greeting and echo for silent ones, UDP as before")
    func httpAndRawOnOnePort() throws {
        let lab = try KernelLab()
        defer { lab.close() }
        let config = weftConfig(mode: "bridge", dataDir: lab.dataDir, v4: "10.22.0.0/24", v6: "fd00:22::/64")
        var pods: [(ns: String, v4: String, v6: String)] = []
        for name in ["web", "client"] {
            let ns = try lab.pod(name)
            let r = try lab.cni("ADD", config: config, containerID: name, netns: ns, args: "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=\(name)")
            let ips = addresses(r)
            try #require(r.status == 0 && ips.count == 2, "ADD \(name): \(r.stdout)")
            pods.append((ns, ips[0], ips[1]))
        }
        let (web, client) = (pods[0], pods[1])
        try lab.spawn(in: web.ns, [product("weft"), "serve", "--name", "web-0", "--namespace", "shop", "--tcp", "8080", "--udp", "8080"])
        let target = "\(web.v4):8080"
        #expect(try waitForReply { try lab.inNS(client.ns, [product("weft"), "probe", target]) } == "web-0 \(client.v4)", "the raw greeting for weft probe")

        func curl(_ args: [String]) throws -> CommandResult { try lab.inNS(client.ns, ["curl", "-s", "-m", "10"] + args) }

        // Any path: 200 and a JSON echo of the request as the pod saw it.
        let echo = try curl(["-w", "\n%{http_code}", "-H", "X-Test: one", "-H", "X-Test: two", "http://\(target)/some/path?q=1"])
        let lines = echo.stdout.split(separator: "\n")
        #expect(lines.last == "200", "\(echo.stdout) \(echo.stderr)")
        let json = try #require(try? JSONValue.parse(lines.dropLast().joined(separator: "\n")), "JSON: \(echo.stdout)")
        #expect(json["pod"]?.stringValue == "web-0")
        #expect(json["namespace"]?.stringValue == "shop")
        #expect(json["clientAddress"]?.stringValue == client.v4, "the client's own address: \(json.serialized())")
        #expect(json["path"]?.stringValue == "/some/path?q=1")
        #expect(json["method"]?.stringValue == "GET")
        #expect(json["proto"]?.stringValue == "HTTP/1.1")
        #expect(json["host"]?.stringValue == target)
        #expect(json["headers"]?["X-Test"] == .array([.string("one"), .string("two")]))
        #expect(json["headers"]?["User-Agent"]?.arrayValue?.first?.stringValue?.hasPrefix("curl/") == true)
        let six = try curl(["-g", "http://[\(web.v6)]:8080/"])
        #expect((try? JSONValue.parse(six.stdout))?["clientAddress"]?.stringValue == client.v6, "over IPv6: \(six.stdout)")

        // agnhost's endpoints.
        #expect(try curl(["http://\(target)/hostname"]).stdout == "web-0")
        #expect(try curl(["http://\(target)/echo?msg=hello%20weft"]).stdout == "hello weft")
        let clientip = try curl(["http://\(target)/clientip"]).stdout
        #expect(clientip.hasPrefix("\(client.v4):") && UInt16(clientip.split(separator: ":").last ?? "") != nil, "ADDR:PORT: \(clientip)")
        let head = try curl(["-I", "http://\(target)/hostname"])
        #expect(head.stdout.contains("Content-Length: 5\r\n") && head.stdout.contains("X-Weft-Pod: web-0\r\n"), "HEAD: \(head.stdout)")
        #expect(head.stdout.contains("X-Weft-Client: \(client.v4):"), "\(head.stdout)")

        // Keep-alive: two requests, one connection — the same client port answers both.
        let twice = try curl(["-v", "-w", "\n", "http://\(target)/clientip", "http://\(target)/clientip"])
        let ends = twice.stdout.split(separator: "\n")
        #expect(ends.count == 2 && ends[0] == ends[1], "one connection, one client port: \(twice.stdout)")
        #expect(twice.stderr.contains("Re-using existing connection"), "\(twice.stderr)")

        // HTTP/1.0, read to the end: the server answers and closes, so the read ends.
        let old = try exchange(in: client.ns, web.v4, 8080, send: "GET /hostname HTTP/1.0\r\n\r\n")
        #expect(old.closed, "the server closed after answering HTTP/1.0")
        #expect(old.text.hasPrefix("HTTP/1.0 200 OK\r\n") && old.text.hasSuffix("\r\n\r\nweb-0"), "\(old.text)")
        let closing = try exchange(in: client.ns, web.v4, 8080, send: "GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
        #expect(closing.closed && closing.text.hasPrefix("HTTP/1.1 200 OK\r\n"), "\(closing.text)")
        #expect(try curl(["--http1.0", "http://\(target)/hostname"]).stdout == "web-0")
        // Pipelined: answered in order on one connection.
        let piped = try exchange(in: client.ns, web.v4, 8080, send: "GET /echo?msg=1 HTTP/1.1\r\nHost: w\r\n\r\nGET /echo?msg=2 HTTP/1.1\r\nHost: w\r\nConnection: close\r\n\r\n")
        #expect(piped.closed && piped.text.hasSuffix("\r\n\r\n2") && piped.text.contains("\r\n\r\n1HTTP/1.1 200 OK"), "\(piped.text)")
        // Not HTTP/1.x: 400, then closed.
        let bad = try exchange(in: client.ns, web.v4, 8080, send: "GET /\r\n\r\n")
        #expect(bad.closed && bad.text.hasPrefix("HTTP/1.1 400 Bad Request\r\n"), "\(bad.text)")

        // The raw contract: a client that sends nothing gets the greeting (once the window
        // has passed), then its bytes echoed; non-HTTP bytes get the greeting at once.
        let silent = try exchange(in: client.ns, web.v4, 8080, send: nil, thenSend: "still here\n", until: "still here\n")
        #expect(silent.text == "web-0 \(client.v4)\nstill here\n", "\(silent.text)")
        let raw = try exchange(in: client.ns, web.v4, 8080, send: "ping 0\n", until: "ping 0\n")
        #expect(raw.text == "web-0 \(client.v4)\nping 0\n", "\(raw.text)")
        let held = try lab.inNS(client.ns, [product("weft"), "probe", target, "--hold", "1", "--interval", "100"])
        #expect(held.status == 0 && held.stdout.contains("none lost"), "held flow: \(held.stdout)\(held.stderr)")
        let udp = try lab.inNS(client.ns, [product("weft"), "probe", "--udp", target])
        #expect(udp.stdout.trimmingSuffixNewlines() == "web-0 \(client.v4)", "UDP: \(udp.stdout)\(udp.stderr)")
    }

    @Test("weft serve refuses names that would break its answers")
    func badNamesAreRefused() throws {
        let r = try sh([product("weft"), "serve", "--name", "two words", "--tcp", "1"])
        #expect(r.status != 0 && r.stderr.contains("--name \"two words\"") && r.stderr.contains("without spaces"), "\(r.stderr)")
    }
}

struct Exchange {
    var bytes: [UInt8]
    /// The server closed the connection (the read reached its end) rather than the wait timing out.
    var closed: Bool
    var text: String { String(decoding: bytes, as: UTF8.self) }
}

/// A raw TCP client inside namespace `ns`: sends `send` (nil: nothing), then reads until the
/// server closes, or — with `until` — until what was read ends with it (then `thenSend` is
/// sent once the first line has arrived). Gives up after 10 s, which the result shows.
func exchange(in ns: String, _ host: String, _ port: UInt16, send: String?, thenSend: String? = nil, until: String? = nil) throws -> Exchange {
    let fd = try NetworkNamespace(path: "/run/netns/\(ns)").run { () throws(SystemError) -> Int32 in
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw SystemError("socket") }
        return fd
    }
    defer { close(fd) }
    var tv = timeval(tv_sec: 10, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = port.bigEndian
    withUnsafeMutableBytes(of: &addr.sin_addr) { $0.copyBytes(from: IPAddress(host)!.bytes) }
    let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    guard rc == 0 else { throw SystemError("connect \(host) port \(port)") }
    func write(_ s: String) { _ = Array(s.utf8).withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) } }
    if let send { write(send) }
    var got: [UInt8] = []
    var pendingSend = thenSend
    var buf = [UInt8](repeating: 0, count: 4096)
    while true {
        if let until, got.count > until.utf8.count, got.suffix(until.utf8.count).elementsEqual(until.utf8) { return Exchange(bytes: got, closed: false) }
        let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if n == 0 { return Exchange(bytes: got, closed: true) }
        if n < 0 { return Exchange(bytes: got, closed: false) }
        got += buf[0..<n]
        if let s = pendingSend, got.contains(UInt8(ascii: "\n")) { write(s); pendingSend = nil }
    }
}
