/// The CNI result in one version-independent shape; `json(for:)` writes the form each spec
/// version expects and `init(json:)` reads any of them (a prevResult, a delegated IPAM's answer).
public struct CNIResult: Sendable, Equatable {
    public struct Interface: Sendable, Equatable {
        public var name: String
        public var mac: String?
        public var mtu: Int?
        public var sandbox: String?
        public init(name: String, mac: String? = nil, mtu: Int? = nil, sandbox: String? = nil) {
            self.name = name; self.mac = mac; self.mtu = mtu; self.sandbox = sandbox
        }
    }

    public struct IPConfig: Sendable, Equatable {
        public var address: IPInterfaceAddress
        public var gateway: IPAddress?
        public var interface: Int?
        public init(address: IPInterfaceAddress, gateway: IPAddress? = nil, interface: Int? = nil) {
            self.address = address; self.gateway = gateway; self.interface = interface
        }
    }

    public struct Route: Sendable, Equatable {
        public var dst: IPNetwork
        public var gw: IPAddress?
        public var mtu: Int?
        public var advmss: Int?
        public var priority: Int?
        public var table: Int?
        public var scope: Int?
        public init(dst: IPNetwork, gw: IPAddress? = nil, mtu: Int? = nil, advmss: Int? = nil, priority: Int? = nil, table: Int? = nil, scope: Int? = nil) {
            self.dst = dst; self.gw = gw; self.mtu = mtu; self.advmss = advmss; self.priority = priority; self.table = table; self.scope = scope
        }
    }

    public struct DNS: Sendable, Equatable {
        public var nameservers: [String] = []
        public var domain: String?
        public var search: [String] = []
        public var options: [String] = []
        public init(nameservers: [String] = [], domain: String? = nil, search: [String] = [], options: [String] = []) {
            self.nameservers = nameservers; self.domain = domain; self.search = search; self.options = options
        }
        public var isEmpty: Bool { nameservers.isEmpty && domain == nil && search.isEmpty && options.isEmpty }
    }

    public var interfaces: [Interface] = []
    public var ips: [IPConfig] = []
    public var routes: [Route] = []
    public var dns = DNS()

    public init(interfaces: [Interface] = [], ips: [IPConfig] = [], routes: [Route] = [], dns: DNS = DNS()) {
        self.interfaces = interfaces; self.ips = ips; self.routes = routes; self.dns = dns
    }

    public func json(for version: CNIVersion) -> JSONValue {
        var top: [(String, JSONValue)] = [("cniVersion", .string(version.description))]
        if !interfaces.isEmpty {
            top.append(("interfaces", .array(interfaces.map { i in
                var m: [(String, JSONValue)] = [("name", .string(i.name))]
                if let mac = i.mac { m.append(("mac", .string(mac))) }
                if version.hasRouteAttributes, let mtu = i.mtu { m.append(("mtu", .number(Double(mtu)))) }
                if let s = i.sandbox { m.append(("sandbox", .string(s))) }
                return .object(m)
            })))
        }
        if !ips.isEmpty {
            top.append(("ips", .array(ips.map { ip in
                var m: [(String, JSONValue)] = []
                if version.ipsCarryVersion { m.append(("version", .string(ip.address.address.family.cniVersionString))) }
                m.append(("address", .string(ip.address.description)))
                if let g = ip.gateway { m.append(("gateway", .string(g.description))) }
                if let i = ip.interface { m.append(("interface", .number(Double(i)))) }
                return .object(m)
            })))
        }
        if !routes.isEmpty {
            top.append(("routes", .array(routes.map { r in
                var m: [(String, JSONValue)] = [("dst", .string(r.dst.description))]
                if let g = r.gw { m.append(("gw", .string(g.description))) }
                if version.hasRouteAttributes {
                    for (k, v) in [("mtu", r.mtu), ("advmss", r.advmss), ("priority", r.priority), ("table", r.table), ("scope", r.scope)] {
                        if let v { m.append((k, .number(Double(v)))) }
                    }
                }
                return .object(m)
            })))
        }
        var d: [(String, JSONValue)] = []
        if !dns.nameservers.isEmpty { d.append(("nameservers", .array(dns.nameservers.map { .string($0) }))) }
        if let dom = dns.domain { d.append(("domain", .string(dom))) }
        if !dns.search.isEmpty { d.append(("search", .array(dns.search.map { .string($0) }))) }
        if !dns.options.isEmpty { d.append(("options", .array(dns.options.map { .string($0) }))) }
        top.append(("dns", .object(d)))
        return .object(top)
    }

    /// Reads a result of any supported version. Unknown keys are ignored.
    public init(json: JSONValue, path: JSONPath = JSONPath("prevResult")) throws(CNIError) {
        guard case .object = json else { throw .decodingFailure("\(path) must be an object, found \(json.kindName)") }
        var r = CNIResult()
        let f = Fields(json, path)
        for (i, item) in try f.array("interfaces").enumerated() {
            let p = path.key("interfaces").index(i)
            let g = Fields(item, p)
            r.interfaces.append(Interface(name: try g.requiredString("name"), mac: try g.string("mac"), mtu: try g.int("mtu"), sandbox: try g.string("sandbox")))
        }
        for (i, item) in try f.array("ips").enumerated() {
            let g = Fields(item, path.key("ips").index(i))
            let addrText = try g.requiredString("address")
            guard let addr = IPInterfaceAddress(addrText) else {
                throw .decodingFailure("\(g.path.key("address")) \"\(addrText)\" is not an address with prefix length, e.g. 10.22.0.5/24")
            }
            r.ips.append(IPConfig(address: addr, gateway: try g.address("gateway"), interface: try g.int("interface")))
        }
        for (i, item) in try f.array("routes").enumerated() {
            r.routes.append(try Route(fields: Fields(item, path.key("routes").index(i))))
        }
        if let dns = json["dns"], case .object = dns {
            let g = Fields(dns, path.key("dns"))
            r.dns = DNS(nameservers: try g.strings("nameservers"), domain: try g.string("domain"), search: try g.strings("search"), options: try g.strings("options"))
        }
        self = r
    }
}

extension CNIResult.Route {
    /// Reads `{"dst": "...", "gw": "..."}` as used by results and by `ipam.routes`.
    init(fields g: Fields) throws(CNIError) {
        let dstText = try g.requiredString("dst")
        guard let dst = IPNetwork(dstText) else {
            throw g.error("\(g.path.key("dst")) \"\(dstText)\" is not a CIDR; expected e.g. 0.0.0.0/0 or 10.96.0.0/12")
        }
        let gw = try g.address("gw")
        if let gw, gw.family != dst.family {
            throw g.error("\(g.path.key("gw")) \(gw) is \(gw.family) but dst \(dst) is \(dst.family); they must be the same family")
        }
        self.init(dst: dst, gw: gw, mtu: try g.int("mtu"), advmss: try g.int("advmss"), priority: try g.int("priority"), table: try g.int("table"), scope: try g.int("scope"))
    }
}

/// Typed, path-aware reads from a JSON object, so every error names the field and the value.
struct Fields {
    let json: JSONValue
    let path: JSONPath
    /// Code for errors: 6 for results, 7 for network configuration.
    var code = 6

    init(_ json: JSONValue, _ path: JSONPath, code: Int = 6) { self.json = json; self.path = path; self.code = code }

    func error(_ m: String) -> CNIError { CNIError(code: code, msg: m) }

    func value(_ k: String) -> JSONValue? {
        guard let v = json[k], !v.isNull else { return nil }
        return v
    }

    func string(_ k: String) throws(CNIError) -> String? {
        guard let v = value(k) else { return nil }
        guard let s = v.stringValue else { throw error("\(path.key(k)) must be a string, found \(v.kindName)") }
        return s
    }

    func requiredString(_ k: String) throws(CNIError) -> String {
        guard let s = try string(k) else { throw error("\(path.key(k)) is missing") }
        return s
    }

    func int(_ k: String) throws(CNIError) -> Int? {
        guard let v = value(k) else { return nil }
        guard let i = v.intValue else { throw error("\(path.key(k)) must be a whole number, found \(v.serialized())") }
        return i
    }

    func bool(_ k: String) throws(CNIError) -> Bool? {
        guard let v = value(k) else { return nil }
        guard let b = v.boolValue else { throw error("\(path.key(k)) must be true or false, found \(v.serialized())") }
        return b
    }

    func array(_ k: String) throws(CNIError) -> [JSONValue] {
        guard let v = value(k) else { return [] }
        guard let a = v.arrayValue else { throw error("\(path.key(k)) must be an array, found \(v.kindName)") }
        return a
    }

    func strings(_ k: String) throws(CNIError) -> [String] {
        var out: [String] = []
        for (i, v) in try array(k).enumerated() {
            guard let s = v.stringValue else { throw error("\(path.key(k).index(i)) must be a string, found \(v.kindName)") }
            out.append(s)
        }
        return out
    }

    func address(_ k: String) throws(CNIError) -> IPAddress? {
        guard let s = try string(k), !s.isEmpty else { return nil }
        guard let a = IPAddress(s) else { throw error("\(path.key(k)) \"\(s)\" is not an IP address; expected e.g. 10.22.0.1 or fd00::1") }
        return a
    }

    func network(_ k: String) throws(CNIError) -> IPNetwork? {
        guard let s = try string(k), !s.isEmpty else { return nil }
        guard let n = IPNetwork(s) else { throw error("\(path.key(k)) \"\(s)\" is not a CIDR; expected e.g. 10.22.0.0/16 or fd00:10::/64") }
        return n
    }
}
