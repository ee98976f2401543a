/// CNI spec versions and what each one changes in the result format.
public struct CNIVersion: Sendable, Hashable, Comparable, CustomStringConvertible {
    public let major: Int, minor: Int, patch: Int

    public init?(_ text: String) {
        let p = text.split(separator: ".", omittingEmptySubsequences: false)
        guard p.count == 3, let a = Int(p[0]), let b = Int(p[1]), let c = Int(p[2]), a >= 0, b >= 0, c >= 0 else { return nil }
        major = a; minor = b; patch = c
    }

    public static func < (l: CNIVersion, r: CNIVersion) -> Bool {
        (l.major, l.minor, l.patch) < (r.major, r.minor, r.patch)
    }

    public var description: String { "\(major).\(minor).\(patch)" }

    public static let supported: [CNIVersion] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"].map { CNIVersion($0)! }
    public static let latest = CNIVersion("1.1.0")!

    public var isSupported: Bool { CNIVersion.supported.contains(self) }
    /// 0.3.x and 0.4.0 results carry `ips[].version`; 1.0.0 dropped it.
    public var ipsCarryVersion: Bool { major == 0 }
    /// 1.1.0 added interface `mtu` and route `mtu/advmss/priority/table/scope`.
    public var hasRouteAttributes: Bool { self >= CNIVersion("1.1.0")! }
    /// CHECK exists from 0.4.0.
    public var supportsCheck: Bool { self >= CNIVersion("0.4.0")! }
    /// STATUS and GC exist from 1.1.0.
    public var supportsStatusAndGC: Bool { self >= CNIVersion("1.1.0")! }
}

/// Validates a config's `cniVersion`, the first thing every verb does.
public func requireSupportedVersion(_ raw: String?, field: String = "cniVersion") throws(CNIError) -> CNIVersion {
    let list = CNIVersion.supported.map(\.description).joined(separator: ", ")
    guard let raw, !raw.isEmpty else {
        throw .incompatibleVersion("\(field) is missing; this plugin supports \(list)")
    }
    guard let v = CNIVersion(raw), v.isSupported else {
        throw .incompatibleVersion("\(field) \"\(raw)\" is not supported; this plugin supports \(list)")
    }
    return v
}
