import Foundation
import Testing
import WeftCore
import WeftOS

/// DEL, CHECK, GC, STATUS, parallel ADDs and a plugin killed mid-ADD, on a real kernel.
@Suite(.serialized, .enabled(if: isRoot, "needs root to create network namespaces"))
struct LifecycleTests {
    @Test("DEL releases, is idempotent, and works with the namespace gone or CNI_NETNS empty")
    func delete() throws {
        let lab = try KernelLab()
        defer { lab.close() }
        let config = weftConfig(dataDir: lab.dataDir, v6: "fd00:22::/64")
        let before = try lab.nodeLinks()
        var pods: [String] = []
        for i in 0..<3 {
            let ns = try lab.pod("p\(i)")
            try #require(try lab.cni("ADD", config: config, containerID: "c\(i)", netns: ns).status == 0)
            pods.append(ns)
        }
        #expect(lab.allocations(network: "testnet").count == 6)

        // 1: normal DEL, then again.
        #expect(try lab.cni("DEL", config: config, containerID: "c0", netns: pods[0]).status == 0)
        #expect(try lab.cni("DEL", config: config, containerID: "c0", netns: pods[0]).status == 0)
        #expect(!(try lab.links(in: pods[0])).contains("eth0"))
        // 2: the pod's namespace is already gone.
        try lab.deletePodNamespace(pods[1])
        #expect(try lab.cni("DEL", config: config, containerID: "c1", netns: pods[1]).status == 0)
        // 3: CNI_NETNS empty (containerd after the sandbox closed).
        let r = try lab.cni("DEL", config: config, containerID: "c2", netns: "")
        #expect(r.status == 0, "\(r.stdout)")

        #expect(lab.allocations(network: "testnet").isEmpty)
        let after = try lab.nodeLinks()
        #expect(after.subtracting(before) == ["weft0"], "only the node bridge stays: \(after.subtracting(before))")
    }

    @Test("CHECK passes on a healthy pod and fails when its address is removed")
    func check() throws {
        let lab = try KernelLab()
        defer { lab.close() }
        let config = weftConfig(dataDir: lab.dataDir)
        let ns = try lab.pod("p0")
        let add = try lab.cni("ADD", config: config, containerID: "c0", netns: ns)
        try #require(add.status == 0)
        let withPrev = try #require(JSONValue.parse(config).setting("prevResult", to: add.json).serialized())
        let ok = try lab.cni("CHECK", config: withPrev, containerID: "c0", netns: ns)
        #expect(ok.status == 0, "\(ok.stdout)")

        try lab.inNS(ns, ["ip", "addr", "flush", "dev", "eth0"])
        let bad = try lab.cni("CHECK", config: withPrev, containerID: "c0", netns: ns)
        #expect(bad.status != 0)
        #expect(bad.json?["code"]?.intValue == 104)
        #expect(bad.json?["msg"]?.stringValue?.contains("missing") == true)

        let unknown = try lab.cni("CHECK", config: withPrev, containerID: "c0", netns: "/run/netns/\(lab.id)-nope")
        #expect(unknown.json?["code"]?.intValue == 3)
    }

    @Test("GC releases what the runtime no longer lists; STATUS reports ready")
    func gcAndStatus() throws {
        let lab = try KernelLab()
        defer { lab.close() }
        let config = weftConfig(dataDir: lab.dataDir)
        for i in 0..<4 {
            let ns = try lab.pod("p\(i)")
            try #require(try lab.cni("ADD", config: config, containerID: "c\(i)", netns: ns).status == 0)
        }
        let gcConfig = try JSONValue.parse(config).setting("cni.dev/valid-attachments", to: .array([
            .object([("containerID", .string("c1")), ("ifname", .string("eth0"))]),
            .object([("containerID", .string("c3")), ("ifname", .string("eth0"))]),
        ])).serialized()
        let r = try lab.cni("GC", config: gcConfig)
        #expect(r.status == 0, "\(r.stdout)")
        let left = lab.allocations(network: "testnet").map { try? Files.readString("\(lab.dataDir)/testnet/\($0)") }
        #expect(left.compactMap { $0?.split(separator: "\r\n").first.map(String.init) }.sorted() == ["c1", "c3"])
        #expect(try lab.cni("STATUS", config: config).status == 0)
    }

    @Test("16 parallel ADDs all succeed with unique addresses")
    func parallelAdds() throws {
        let lab = try KernelLab()
        defer { lab.close() }
        let config = weftConfig(dataDir: lab.dataDir, v6: "fd00:22::/64")
        let pods = try (0..<16).map { try lab.pod("p\($0)") }
        nonisolated(unsafe) var results = [CommandResult?](repeating: nil, count: 16)
        DispatchQueue.concurrentPerform(iterations: 16) { i in
            results[i] = try? lab.cni("ADD", config: config, containerID: "c\(i)", netns: pods[i])
        }
        let ok = results.compactMap { $0 }.filter { $0.status == 0 }
        #expect(ok.count == 16, "\(results.compactMap { $0?.stdout }.filter { $0.contains("code") })")
        let all = ok.flatMap(addresses)
        #expect(all.count == 32 && Set(all).count == 32)
        #expect(lab.allocations(network: "testnet").count == 32)
        // And they all talk to each other over the one bridge.
        #expect(try lab.ping(from: pods[0], addresses(ok.last!)[0]))
    }

    @Test("a plugin killed mid-ADD loses no address for good")
    func killedMidAdd() throws {
        let lab = try KernelLab()
        defer { lab.close() }
        let config = weftConfig(dataDir: lab.dataDir, v6: "fd00:22::/64")
        // Kill at a spread of moments; the runtime's answer to a failed ADD is DEL, then retry.
        let delays: [useconds_t] = [0, 500, 1000, 2000, 3000, 5000, 8000, 12000]
        for (i, delay) in delays.enumerated() {
            let ns = try lab.pod("k\(i)")
            let env = ["CNI_COMMAND": "ADD", "CNI_CONTAINERID": "k\(i)", "CNI_NETNS": "/run/netns/\(ns)", "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni"]
            let cfgPath = "\(lab.dataDir)-k\(i).json"
            try config.write(toFile: cfgPath, atomically: true, encoding: .utf8)
            defer { try? FileManager.default.removeItem(atPath: cfgPath) }
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/usr/sbin/ip")
            p.arguments = ["netns", "exec", lab.node, product("weft-cni")]
            p.environment = env
            p.standardInput = FileHandle(forReadingAtPath: cfgPath)
            p.standardOutput = FileHandle.nullDevice
            try p.run()
            usleep(delay)
            kill(p.processIdentifier, SIGKILL)
            p.waitUntilExit()
            // `ip netns exec` execs the plugin in place, so the kill reaches the plugin itself.
            let del = try lab.cni("DEL", config: config, containerID: "k\(i)", netns: ns)
            #expect(del.status == 0, "DEL after kill at \(delay)us: \(del.stdout)")
            let add = try lab.cni("ADD", config: config, containerID: "k\(i)", netns: ns)
            #expect(add.status == 0, "retried ADD after kill at \(delay)us: \(add.stdout)")
        }
        // Exactly one IPv4 and one IPv6 address per pod, nothing stranded.
        let allocs = lab.allocations(network: "testnet")
        #expect(allocs.count == delays.count * 2, "\(allocs)")
        let owners = allocs.compactMap { try? Files.readString("\(lab.dataDir)/testnet/\($0)").split(separator: "\r\n").first.map(String.init) }
        #expect(Set(owners).count == delays.count)
        // GC with the live attachments frees nothing; with none, frees everything.
        let valid = JSONValue.array((0..<delays.count).map { .object([("containerID", .string("k\($0)")), ("ifname", .string("eth0"))]) })
        #expect(try lab.cni("GC", config: try JSONValue.parse(config).setting("cni.dev/valid-attachments", to: valid).serialized()).status == 0)
        #expect(lab.allocations(network: "testnet").count == delays.count * 2)
        #expect(try lab.cni("GC", config: try JSONValue.parse(config).setting("cni.dev/valid-attachments", to: .array([])).serialized()).status == 0)
        #expect(lab.allocations(network: "testnet").isEmpty)
    }

    @Test("results are written in the version the config asks for")
    func versions() throws {
        let lab = try KernelLab()
        defer { lab.close() }
        for (i, v) in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"].enumerated() {
            let ns = try lab.pod("v\(i)")
            let r = try lab.cni("ADD", config: weftConfig(dataDir: lab.dataDir, version: v), containerID: "v\(i)", netns: ns)
            try #require(r.status == 0, "\(v): \(r.stdout)")
            #expect(r.json?["cniVersion"]?.stringValue == v)
            let ip = r.json?["ips"]?.arrayValue?.first
            #expect((ip?["version"]?.stringValue == "4") == v.hasPrefix("0."), "\(v): ips[].version only before 1.0.0")
        }
        let ver = try lab.cni("VERSION", config: "{\"cniVersion\": \"1.0.0\"}")
        #expect(ver.json?["supportedVersions"]?.arrayValue?.compactMap(\.stringValue) == ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    }
}
