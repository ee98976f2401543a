import WeftCore
import WeftOS

/// What IPAM gave a pod: addresses (with their gateways), routes to install, DNS.
struct IPAMResult {
    var addresses: [AllocatedAddress]
    /// nil: none configured, so the pod gets a default route per family.
    var routes: [CNIResult.Route]?
    var dns: CNIResult.DNS
}

/// IPAM for one invocation: weft's allocator in-process, or another plugin by the CNI protocol.
struct IPAMClient {
    let node: NodeSystem
    let env: CNIEnvironment
    let config: NetworkConfig

    var owner: AllocationOwner {
        AllocationOwner(containerID: env.containerID, ifname: env.ifname, podNamespace: env.podNamespace, podName: env.podName)
    }

    func add() throws(CNIError) -> IPAMResult {
        switch config.ipam {
        case .builtin(let w):
            let store = try node.ipamStore(dataDir: w.dataDir, network: config.name)
            let got = try Allocator(rangeSets: w.rangeSets).allocate(in: store, for: owner, requested: config.requestedIPs)
            return IPAMResult(addresses: got, routes: w.routes, dns: config.dns)
        case .delegated(let type):
            let out = try delegate(type, command: .add)
            let json: JSONValue
            do { json = try JSONValue.parse(Array(out.utf8)) } catch {
                throw .delegateFailed("IPAM plugin \(type) answered ADD with something that is not JSON: \(error)")
            }
            let r = try CNIResult(json: json, path: JSONPath("\(type) result"))
            guard !r.ips.isEmpty else { throw .delegateFailed("IPAM plugin \(type) returned no addresses") }
            return IPAMResult(addresses: r.ips.map { AllocatedAddress(address: $0.address, gateway: $0.gateway) },
                              // A result without routes means none were configured: default routes then.
                              routes: r.routes.isEmpty ? nil : r.routes, dns: r.dns.isEmpty ? config.dns : r.dns)
        }
    }

    /// Idempotent: releasing what is not held succeeds.
    func release() throws(CNIError) {
        switch config.ipam {
        case .builtin(let w):
            let store = try node.ipamStore(dataDir: w.dataDir, network: config.name)
            try Allocator(rangeSets: w.rangeSets).release(in: store, owner.attachment)
        case .delegated(let type):
            _ = try delegate(type, command: .del)
        }
    }

    /// The addresses IPAM holds for this attachment (CHECK).
    func check(expected: [IPInterfaceAddress]) throws(CNIError) {
        switch config.ipam {
        case .builtin(let w):
            let store = try node.ipamStore(dataDir: w.dataDir, network: config.name)
            let held = try store.locked { () throws(CNIError) in try store.allocations() }
                .filter { $0.owner?.attachment == owner.attachment }.map(\.address)
            guard !held.isEmpty else {
                throw .unknownContainer("IPAM holds no address for container \(env.containerID) interface \(env.ifname)")
            }
            for a in expected where !held.contains(a.address) {
                throw .checkFailed("IPAM does not hold \(a.address) for container \(env.containerID) (it holds \(held.map(\.description).joined(separator: ", ")))")
            }
        case .delegated(let type):
            _ = try delegate(type, command: .check)
        }
    }

    func status() throws(CNIError) {
        switch config.ipam {
        case .builtin(let w):
            // Ready when the store can be opened and locked (the data directory is writable).
            do {
                let store = try node.ipamStore(dataDir: w.dataDir, network: config.name)
                try store.locked { () throws(CNIError) in _ = try store.allocations() }
            } catch {
                throw .notReady("IPAM store in \(w.dataDir) is not usable: \(error.msg)")
            }
        case .delegated(let type):
            do { _ = try delegate(type, command: .status) } catch {
                throw CNIError(code: error.code == 51 ? 51 : 50, msg: "IPAM plugin \(type) is not ready: \(error.msg)")
            }
        }
    }

    func collectGarbage(valid: Set<Attachment>) throws(CNIError) {
        switch config.ipam {
        case .builtin(let w):
            let store = try node.ipamStore(dataDir: w.dataDir, network: config.name)
            try Allocator(rangeSets: w.rangeSets).collectGarbage(in: store, valid: valid)
        case .delegated(let type):
            _ = try delegate(type, command: .gc)
        }
    }

    /// Runs the IPAM plugin named `type` from CNI_PATH with our environment and the whole
    /// config on stdin, as the spec's delegation says; its error becomes ours.
    func delegate(_ type: String, command: CNICommand) throws(CNIError) -> String {
        guard !env.path.isEmpty else {
            throw .invalidEnvironment("CNI_PATH is not set; it must list the directories holding the IPAM plugin \"\(type)\" (e.g. /opt/cni/bin)")
        }
        guard let bin = env.path.map({ $0 + "/" + type }).first(where: node.isExecutable) else {
            throw .invalidConfig("ipam.type \"\(type)\": no executable named \(type) in CNI_PATH (\(env.path.joined(separator: ":"))); install it there or use ipam.type \"weft\"")
        }
        var environment: [String: String] = [
            "CNI_COMMAND": command.rawValue, "CNI_CONTAINERID": env.containerID, "CNI_NETNS": env.netns,
            "CNI_IFNAME": env.ifname, "CNI_PATH": env.path.joined(separator: ":"),
            "CNI_ARGS": env.args.map { "\($0.key)=\($0.value)" }.joined(separator: ";"),
        ]
        if command == .gc || command == .status { environment["CNI_CONTAINERID"] = nil; environment["CNI_IFNAME"] = nil; environment["CNI_NETNS"] = nil }
        let out: Subprocess.Output
        do { out = try node.exec(bin, environment: environment, stdin: Array(config.raw.serialized().utf8)) } catch {
            throw .delegateFailed("cannot run IPAM plugin \(bin): \(error)")
        }
        let text = String(decoding: out.stdout, as: UTF8.self)
        if out.status != 0 {
            if let j = try? JSONValue.parse(out.stdout), let code = j["code"]?.intValue {
                throw CNIError(code: code, msg: "IPAM plugin \(type): \(j["msg"]?.stringValue ?? "failed")", details: j["details"]?.stringValue ?? "")
            }
            let err = String(decoding: out.stderr, as: UTF8.self)
            throw .delegateFailed("IPAM plugin \(type) failed with exit status \(out.status)", details: (text + err).trimmingCharacters())
        }
        return text
    }
}

extension String {
    func trimmingCharacters() -> String {
        var s = Substring(self)
        while let f = s.first, f.isWhitespace { s.removeFirst() }
        while let l = s.last, l.isWhitespace { s.removeLast() }
        return String(s)
    }
}
