/// The `weft` plugin's network configuration, read from stdin and validated in full before
/// anything touches the kernel, so bad input fails with nothing to undo.
public struct NetworkConfig: Sendable {
    public enum Mode: String, Sendable {
        /// A node bridge holds the gateway; pods on one node talk at L2.
        case bridge
        /// No bridge: a host route per pod and a link-local gateway (Calico/Cilium style).
        case routed
    }

    public enum IPAM: Sendable {
        /// Weft's own allocator, inside the plugin (no second process on the ADD path).
        case builtin(WeftIPAM)
        /// Another IPAM plugin found on CNI_PATH, called by the spec's protocol.
        case delegated(type: String)
    }

    public struct WeftIPAM: Sendable {
        public var rangeSets: [RangeSet]
        /// nil when the config gave no `routes`: then each family gets a default route.
        public var routes: [CNIResult.Route]?
        public var dataDir: String
    }

    public var cniVersion: CNIVersion
    public var name: String
    public var type: String
    public var mode: Mode
    public var bridge: String
    public var mtu: Int?
    public var hairpinMode: Bool
    public var ipMasq: Bool
    public var clusterCIDRs: [IPNetwork]
    public var ipam: IPAM
    public var dns: CNIResult.DNS
    public var prevResult: CNIResult?
    /// runtimeConfig `ips` and CNI_ARGS `IP`: addresses the runtime asks for.
    public var requestedIPs: [IPAddress]
    /// runtimeConfig `mac`, CNI_ARGS `MAC`.
    public var requestedMAC: String?
    /// The raw document, forwarded as-is to a delegated IPAM plugin.
    public var raw: JSONValue

    public static let defaultBridge = "weft0"
    public static let defaultDataDir = "/var/lib/cni/networks"
    /// The pod-side gateway in routed mode: answered by the host end of each veth.
    public static let routedGatewayV4 = IPAddress("169.254.1.1")!
    public static let routedGatewayV6 = IPAddress("fe80::1")!

    public static func parse(_ bytes: [UInt8], env: CNIEnvironment? = nil) throws(CNIError) -> NetworkConfig {
        let json: JSONValue
        do { json = try JSONValue.parse(bytes) } catch {
            throw .decodingFailure("the network configuration on stdin is not valid JSON: \(error)")
        }
        return try parse(json, env: env)
    }

    public static func parse(_ json: JSONValue, env: CNIEnvironment? = nil) throws(CNIError) -> NetworkConfig {
        guard case .object = json else {
            throw .decodingFailure("the network configuration must be a JSON object, found \(json.kindName)")
        }
        let f = Fields(json, JSONPath(), code: 7)
        let version = try requireSupportedVersion(try f.string("cniVersion"))

        let name = try f.string("name") ?? ""
        guard !name.isEmpty else { throw .invalidConfig("name is missing; give the network a name, e.g. \"name\": \"weft\"") }
        guard name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "-_.".contains($0)) }), name != ".", name != "..", name.utf8.count <= 200 else {
            throw .invalidConfig("name \"\(name)\" may hold only ASCII letters, digits, '-', '_' and '.' (it names a directory of allocations)")
        }
        let type = try f.string("type") ?? "weft"

        let modeText = try f.string("mode") ?? Mode.bridge.rawValue
        guard let mode = Mode(rawValue: modeText) else {
            throw .invalidConfig("mode \"\(modeText)\" is not known; expected \"bridge\" or \"routed\"")
        }
        let bridge = try f.string("bridge") ?? defaultBridge
        do { try requireInterfaceName(bridge, field: "bridge") } catch { throw .invalidConfig(error.msg) }

        let mtu = try f.int("mtu")
        if let mtu, !(68...65535).contains(mtu) {
            throw .invalidConfig("mtu \(mtu) is out of range; expected 68 to 65535 (1280 or more for IPv6)")
        }

        // clusterCIDR: a string or a list (one per family).
        var clusterCIDRs: [IPNetwork] = []
        if let v = f.value("clusterCIDR") {
            let texts: [(String, String)]
            switch v {
            case .string(let s): texts = [("clusterCIDR", s)]
            case .array(let a):
                texts = try a.enumerated().map { (i, e) throws(CNIError) -> (String, String) in
                    guard let s = e.stringValue else { throw .invalidConfig("clusterCIDR[\(i)] must be a string, found \(e.kindName)") }
                    return ("clusterCIDR[\(i)]", s)
                }
            default: throw .invalidConfig("clusterCIDR must be a CIDR string or a list of them, found \(v.kindName)")
            }
            for (field, s) in texts {
                guard let n = IPNetwork(s) else { throw .invalidConfig("\(field) \"\(s)\" is not a CIDR; expected e.g. 10.244.0.0/16") }
                clusterCIDRs.append(n)
            }
        }

        guard let ipamJSON = f.value("ipam") else {
            throw .invalidConfig("ipam is missing; give e.g. \"ipam\": {\"ranges\": [[{\"subnet\": \"10.22.0.0/24\"}]]}")
        }
        guard case .object = ipamJSON else { throw .invalidConfig("ipam must be an object, found \(ipamJSON.kindName)") }
        let ipamFields = Fields(ipamJSON, JSONPath("ipam"), code: 7)
        let ipamType = try ipamFields.string("type") ?? "weft"
        let ipam: IPAM
        if ipamType == "weft" || ipamType.isEmpty {
            ipam = .builtin(try parseWeftIPAM(ipamFields, mode: mode))
        } else {
            guard !ipamType.contains("/"), ipamType != ".", ipamType != ".." else {
                throw .invalidConfig("ipam.type \"\(ipamType)\" must be a plugin name, not a path")
            }
            ipam = .delegated(type: ipamType)
        }

        if case .builtin(let w) = ipam {
            for (i, set) in w.rangeSets.enumerated() {
                let cluster = clusterCIDRs.filter { $0.family == set.family }
                for r in set.ranges where !cluster.isEmpty && !cluster.contains(where: { $0.prefixLength <= r.subnet.prefixLength && $0.contains(r.subnet.address) }) {
                    throw .invalidConfig("ipam.ranges[\(i)] subnet \(r.subnet) lies outside clusterCIDR \(cluster.map(\.description).joined(separator: ", ")); pod ranges must be inside the cluster range, or their traffic to other pods would be masqueraded")
                }
            }
        }

        var dns = CNIResult.DNS()
        if let d = f.value("dns") {
            let g = Fields(d, JSONPath("dns"), code: 7)
            dns = CNIResult.DNS(nameservers: try g.strings("nameservers"), domain: try g.string("domain"), search: try g.strings("search"), options: try g.strings("options"))
        }

        var prev: CNIResult?
        if let p = f.value("prevResult") { prev = try CNIResult(json: p) }

        // Runtime-provided capabilities. Go runtimes may capitalise keys: lookups are case-insensitive.
        var requested: [IPAddress] = []
        var mac: String?
        if let rc = f.value("runtimeConfig") {
            let g = Fields(rc, JSONPath("runtimeConfig"), code: 7)
            for (i, s) in try g.strings("ips").enumerated() {
                let text = s.split(separator: "/").first.map(String.init) ?? s
                guard let a = IPAddress(text) else { throw .invalidConfig("runtimeConfig.ips[\(i)] \"\(s)\" is not an IP address") }
                requested.append(a)
            }
            mac = try g.string("mac")
        }
        if let env {
            if let ips = env.arg("IP") {
                for s in ips.split(separator: ",") {
                    guard let a = IPAddress(s) else { throw .invalidEnvironment("CNI_ARGS IP=\(ips): \"\(s)\" is not an IP address") }
                    if !requested.contains(a) { requested.append(a) }
                }
            }
            if mac == nil { mac = env.arg("MAC") }
        }
        if let m = mac, parseMAC(m) == nil {
            throw .invalidConfig("mac \"\(m)\" is not a MAC address; expected six hex pairs like 0a:58:0a:16:00:05")
        }

        return NetworkConfig(cniVersion: version, name: name, type: type, mode: mode, bridge: bridge, mtu: mtu,
                             hairpinMode: try f.bool("hairpinMode") ?? true, ipMasq: try f.bool("ipMasq") ?? false,
                             clusterCIDRs: clusterCIDRs, ipam: ipam, dns: dns, prevResult: prev,
                             requestedIPs: requested, requestedMAC: mac, raw: json)
    }

    static func parseWeftIPAM(_ f: Fields, mode: Mode) throws(CNIError) -> WeftIPAM {
        var sets: [RangeSet] = []
        let rangesJSON = try f.array("ranges")
        func range(_ g: Fields, path: String) throws(CNIError) -> IPRange {
            guard let subnet = try g.network("subnet") else {
                throw .invalidConfig("\(path).subnet is missing; give a CIDR such as 10.22.0.0/24")
            }
            return try IPRange(subnet: subnet, rangeStart: try g.address("rangeStart"), rangeEnd: try g.address("rangeEnd"),
                               gateway: try g.address("gateway"), path: path)
        }
        if !rangesJSON.isEmpty {
            for (i, setJSON) in rangesJSON.enumerated() {
                let p = "ipam.ranges[\(i)]"
                guard let items = setJSON.arrayValue else {
                    throw .invalidConfig("\(p) must be a list of ranges (ranges is a list of range sets), found \(setJSON.kindName)")
                }
                var rs: [IPRange] = []
                for (j, r) in items.enumerated() {
                    guard case .object = r else { throw .invalidConfig("\(p)[\(j)] must be an object, found \(r.kindName)") }
                    rs.append(try range(Fields(r, JSONPath(p).index(j), code: 7), path: "\(p)[\(j)]"))
                }
                sets.append(try RangeSet(rs, path: p))
            }
        } else if f.value("subnet") != nil {
            // host-local's older single-range form.
            sets.append(try RangeSet([range(f, path: "ipam")], path: "ipam"))
        } else {
            throw .invalidConfig("ipam.ranges is missing; give e.g. \"ranges\": [[{\"subnet\": \"10.22.0.0/24\"}], [{\"subnet\": \"fd00:22::/64\"}]]")
        }
        for (i, s) in sets.enumerated() {
            for (j, o) in sets[..<i].enumerated() {
                for r in s.ranges where o.ranges.contains(where: { $0.subnet.overlaps(r.subnet) }) {
                    throw .invalidConfig("ipam.ranges[\(i)] subnet \(r.subnet) overlaps ipam.ranges[\(j)]; range sets must not overlap")
                }
            }
        }
        var routes: [CNIResult.Route]?
        if f.value("routes") != nil {
            routes = []
            for (i, item) in try f.array("routes").enumerated() {
                routes!.append(try CNIResult.Route(fields: Fields(item, JSONPath("ipam.routes").index(i), code: 7)))
            }
            for r in routes! where !sets.contains(where: { $0.family == r.dst.family }) {
                throw .invalidConfig("ipam.routes: \(r.dst) is \(r.dst.family) but no range set of that family is configured")
            }
        }
        let dataDir = try f.string("dataDir") ?? defaultDataDir
        guard dataDir.hasPrefix("/") else { throw .invalidConfig("ipam.dataDir \"\(dataDir)\" must be an absolute path") }
        return WeftIPAM(rangeSets: sets, routes: routes, dataDir: dataDir)
    }

    /// Destinations not masqueraded, per family: the cluster range of that family, or the
    /// pod subnets of that family when no cluster range was given for it.
    public var noMasqueradeDestinations: [IPNetwork] {
        var podSubnets: [IPNetwork] = []
        if case .builtin(let w) = ipam { podSubnets = w.rangeSets.flatMap { $0.ranges.map(\.subnet) } }
        return [IPFamily.v4, .v6].flatMap { fam in
            let cluster = clusterCIDRs.filter { $0.family == fam }
            return cluster.isEmpty ? podSubnets.filter { $0.family == fam } : cluster
        }
    }
}

public func parseMAC(_ s: String) -> [UInt8]? {
    let parts = s.split(separator: ":", omittingEmptySubsequences: false)
    guard parts.count == 6 else { return nil }
    var out: [UInt8] = []
    for p in parts {
        guard p.count == 2, p.allSatisfy(\.isHexDigit), let b = UInt8(p, radix: 16) else { return nil }
        out.append(b)
    }
    return out
}

public func formatMAC(_ b: [UInt8]) -> String {
    b.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined(separator: ":")
}

/// The host end of a pod's veth: a stable name derived from the attachment, so DEL can find it
/// without the pod's namespace and a retried ADD finds what a crashed one left.
public func hostVethName(containerID: String, ifname: String) -> String {
    "weft" + String(hex16(fnv1a64("\(containerID)/\(ifname)")).prefix(11))
}
