import Foundation
import Testing
import WeftCore
import WeftOS
#if canImport(Glibc)
import Glibc
#endif

/// Privileged tests need root; elsewhere they are skipped, visibly.
let isRoot = getuid() == 0

/// The package root, from this file's path (Tests/WeftKernelTests/Support/KernelLab.swift).
let packageRoot: String = {
    var parts = #filePath.split(separator: "/", omittingEmptySubsequences: false)
    parts.removeLast(4)
    return parts.joined(separator: "/")
}()

/// Built products: `swift build` puts them in .build/debug (WEFT_BIN_DIR overrides).
func product(_ name: String) -> String {
    let dir = getenv("WEFT_BIN_DIR").map { String(cString: $0) } ?? packageRoot + "/.build/debug"
    return dir + "/" + name
}

struct CommandResult {
    var status: Int32
    var stdout: String
    var stderr: String
    var json: JSONValue? { try? JSONValue.parse(stdout) }
}

/// Runs a command; one that has not finished within `timeout` is killed, so a hung command
/// fails its test instead of hanging the run.
@discardableResult
func sh(_ args: [String], stdin: String = "", env: [String: String] = [:], timeout: Duration = .seconds(180)) throws -> CommandResult {
    var environment: [String: String] = ["PATH": "/usr/sbin:/usr/bin:/sbin:/bin"]
    for (k, v) in env { environment[k] = v }
    let out = try Subprocess.run(args[0].hasPrefix("/") ? args[0] : "/usr/bin/env", arguments: args[0].hasPrefix("/") ? Array(args.dropFirst()) : args,
                                 environment: environment, stdin: Array(stdin.utf8), timeout: timeout)
    return CommandResult(status: out.status, stdout: String(decoding: out.stdout, as: UTF8.self), stderr: String(decoding: out.stderr, as: UTF8.self))
}

/// A throwaway node: its own network namespace (the "host" the plugin runs on), pod
/// namespaces, an IPAM data directory. Names carry the pid and a random suffix so parallel runs
/// never collide, and `close()` removes everything. Nothing here touches the root namespace.
final class KernelLab: @unchecked Sendable {
    let id: String
    let node: String
    let dataDir: String
    private(set) var namespaces: [String] = []
    private var children: [pid_t] = []

    init() throws {
        KernelLab.sweepStale()
        id = "wt\(getpid())-\(String(UInt32.random(in: 0..<UInt32.max), radix: 36))"
        node = id + "-node"
        dataDir = "/tmp/\(id)-ipam"
        try addNamespace(node)
        try sh(["ip", "netns", "exec", node, "ip", "link", "set", "lo", "up"])
    }

    deinit { close() }

    func addNamespace(_ name: String) throws {
        let r = try sh(["ip", "netns", "add", name])
        guard r.status == 0 else { throw LabError("ip netns add \(name): \(r.stderr)") }
        namespaces.append(name)
    }

    /// A pod namespace with its loopback up (what the runtime's loopback plugin would do).
    func pod(_ name: String) throws -> String {
        let ns = "\(id)-\(name)"
        try addNamespace(ns)
        try sh(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"])
        return ns
    }

    func deletePodNamespace(_ ns: String) throws {
        try sh(["ip", "netns", "del", ns])
        namespaces.removeAll { $0 == ns }
    }

    /// Runs the weft plugin inside the node namespace, as a runtime on that node would.
    @discardableResult
    func cni(_ command: String, config: String, containerID: String = "", netns: String? = nil, ifname: String = "eth0",
             args: String = "", plugin: String = product("weft-cni"), extraEnv: [String: String] = [:]) throws -> CommandResult {
        var env = ["CNI_COMMAND": command, "CNI_CONTAINERID": containerID, "CNI_IFNAME": ifname,
                   "CNI_NETNS": netns.map { $0.hasPrefix("/") ? $0 : "/run/netns/\($0)" } ?? "",
                   "CNI_PATH": "/usr/lib/cni", "CNI_ARGS": args]
        for (k, v) in extraEnv { env[k] = v }
        return try sh(["ip", "netns", "exec", node, plugin], stdin: config, env: env)
    }

    func inNode(_ args: [String]) throws -> CommandResult { try sh(["ip", "netns", "exec", node] + args) }
    func inNS(_ ns: String, _ args: [String]) throws -> CommandResult { try sh(["ip", "netns", "exec", ns] + args) }

    func ping(from ns: String, _ address: String) throws -> Bool {
        let v6 = address.contains(":")
        return try inNS(ns, ["ping", v6 ? "-6" : "-4", "-c", "1", "-W", "2", address]).status == 0
    }

    /// Starts a long-running process inside a namespace; stopped in `close()`.
    func spawn(in ns: String, _ args: [String]) throws {
        var pid: pid_t = 0
        let argv = (["/usr/sbin/ip", "netns", "exec", ns] + args).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        let rc = posix_spawn(&pid, "/usr/sbin/ip", nil, nil, argv, environ)
        guard rc == 0 else { throw LabError("spawn \(args): errno \(rc)") }
        children.append(pid)
    }

    /// Links in the node namespace, by name (for "nothing left behind" checks).
    func nodeLinks() throws -> Set<String> { try links(in: node) }
    func links(in ns: String) throws -> Set<String> {
        let r = try inNS(ns, ["ip", "-o", "link", "show"])
        return Set(r.stdout.split(separator: "\n").compactMap { line in
            line.split(separator: ":").dropFirst().first.map { String($0.trimmingPrefix(" ").split(separator: "@")[0]) }
        })
    }

    /// Address files in the IPAM store of `network`.
    func allocations(network: String) -> [String] {
        ((try? Files.list("\(dataDir)/\(network)")) ?? []).filter { IPAddress($0) != nil }.sorted()
    }

    func close() {
        for pid in children { kill(pid, SIGKILL); var s: Int32 = 0; waitpid(pid, &s, 0) }
        children = []
        // Each namespace's processes die with their parent `ip netns exec`; then remove it.
        for ns in namespaces.reversed() { _ = try? sh(["ip", "netns", "del", ns]) }
        namespaces = []
        _ = try? sh(["rm", "-rf", dataDir])
    }

    /// Removes namespaces left by earlier runs whose process is gone (killed test runs).
    static func sweepStale() {
        guard let r = try? sh(["ip", "netns", "list"]) else { return }
        for line in r.stdout.split(separator: "\n") {
            let name = String(line.split(separator: " ")[0])
            guard name.hasPrefix("wt"), let dash = name.firstIndex(of: "-"), let pid = pid_t(name.dropFirst(2).prefix(upTo: dash)) else { continue }
            if kill(pid, 0) != 0 && errno == ESRCH { _ = try? sh(["ip", "netns", "del", name]) }
        }
    }
}

struct LabError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

/// A weft network config for tests.
func weftConfig(name: String = "testnet", mode: String = "bridge", bridge: String = "weft0", dataDir: String,
                v4: String? = "10.22.0.0/24", v6: String? = nil, extra: String = "", version: String = "1.1.0") -> String {
    var sets: [String] = []
    if let v4 { sets.append("[{\"subnet\": \"\(v4)\"}]") }
    if let v6 { sets.append("[{\"subnet\": \"\(v6)\"}]") }
    return """
    {"cniVersion": "\(version)", "name": "\(name)", "type": "weft", "mode": "\(mode)", "bridge": "\(bridge)"\(extra.isEmpty ? "" : ", " + extra),
     "ipam": {"ranges": [\(sets.joined(separator: ", "))], "dataDir": "\(dataDir)"}}
    """
}

/// The pod addresses of an ADD result, without prefix length.
func addresses(_ r: CommandResult) -> [String] {
    r.json?["ips"]?.arrayValue?.compactMap { $0["address"]?.stringValue?.split(separator: "/").first.map(String.init) } ?? []
}

/// Polls `body` every 100 ms until it holds or `seconds` pass; its last answer. For state the
/// agents reach asynchronously (routes, rules, DNS zones) — tests assert the final state.
func eventually(_ seconds: Double, _ body: () throws -> Bool) rethrows -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if try body() { return true }
        usleep(100_000)
    }
    return try body()
}
