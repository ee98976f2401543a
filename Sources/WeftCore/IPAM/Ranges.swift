/// host-local's range model: a range set is a list of ranges of one family from which one
/// address is taken; several range sets give a pod several addresses (dual-stack).
public struct IPRange: Sendable, Equatable, CustomStringConvertible {
    public let subnet: IPNetwork
    public let rangeStart: IPAddress
    public let rangeEnd: IPAddress
    public let gateway: IPAddress?

    /// Applies host-local's defaults and checks: start defaults to the first host address, end
    /// to the last usable one (IPv4 keeps the broadcast address out), gateway to subnet + 1.
    public init(subnet: IPNetwork, rangeStart: IPAddress? = nil, rangeEnd: IPAddress? = nil,
                gateway: IPAddress? = nil, defaultGateway: Bool = true, path: String = "range") throws(CNIError) {
        let minHostBits = 2
        guard subnet.family.bitWidth - subnet.prefixLength >= minHostBits else {
            throw .invalidConfig("\(path).subnet \(subnet) is too small to allocate from; use a prefix of /\(subnet.family.bitWidth - minHostBits) or shorter")
        }
        let firstHost = subnet.first.advanced(by: 1)!
        let lastHost = subnet.family == .v4 ? subnet.last.advanced(by: -1)! : subnet.last
        for (name, a) in [("rangeStart", rangeStart), ("rangeEnd", rangeEnd), ("gateway", gateway)] {
            if let a, !subnet.contains(a) {
                throw .invalidConfig("\(path).\(name) \(a) is outside subnet \(subnet); give an address inside it or leave it out")
            }
        }
        let start = rangeStart ?? firstHost
        let end = rangeEnd ?? lastHost
        guard start <= end else {
            throw .invalidConfig("\(path).rangeStart \(start) is after rangeEnd \(end); rangeStart must not be after rangeEnd")
        }
        self.subnet = subnet
        self.rangeStart = start
        self.rangeEnd = end
        self.gateway = gateway ?? (defaultGateway ? firstHost : nil)
    }

    public var family: IPFamily { subnet.family }
    public func contains(_ a: IPAddress) -> Bool { a.family == family && a >= rangeStart && a <= rangeEnd }
    public func overlaps(_ o: IPRange) -> Bool { family == o.family && rangeStart <= o.rangeEnd && o.rangeStart <= rangeEnd }
    /// Addresses this range can hand out (the gateway does not count).
    public var capacity: UInt128 {
        let n = rangeEnd.value - rangeStart.value
        let all = n == .max ? n : n + 1
        return (gateway.map(contains) ?? false) ? all - 1 : all
    }
    public var description: String { "\(subnet) [\(rangeStart)-\(rangeEnd)]" }
}

public struct RangeSet: Sendable, Equatable {
    public let ranges: [IPRange]

    public init(_ ranges: [IPRange], path: String) throws(CNIError) {
        guard let first = ranges.first else {
            throw .invalidConfig("\(path) is empty; give at least one range, e.g. [{\"subnet\": \"10.22.0.0/24\"}]")
        }
        for (i, r) in ranges.enumerated() {
            if r.family != first.family {
                throw .invalidConfig("\(path)[\(i)] is \(r.family) but \(path)[0] is \(first.family); a range set holds one family (use a second range set for dual-stack)")
            }
            for (j, o) in ranges[..<i].enumerated() where r.overlaps(o) {
                throw .invalidConfig("\(path)[\(i)] \(r) overlaps \(path)[\(j)] \(o); ranges must not overlap")
            }
        }
        self.ranges = ranges
    }

    public var family: IPFamily { ranges[0].family }
    public func range(containing a: IPAddress) -> IPRange? { ranges.first { $0.contains(a) } }
    public var capacity: UInt128 { ranges.reduce(0) { $0 &+ $1.capacity } }
}
