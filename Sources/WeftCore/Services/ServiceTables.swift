/// The services tables whole: their fixed part, and the full replace (the model's fragments
/// merged into it).
extension ServiceRules {
    static let dstnat: Int32 = -100, srcnat: Int32 = 100

    /// `meta l4proto tcp reject with tcp reset`, then `reject`.
    static let rejectRules = [NFT.Rule(.l4proto(.tcp), .rejectWithTCPReset), NFT.Rule(.reject)]

    /// Lookups of the three service maps' keys (`names(family)` for the address maps) in a chain.
    static func lookups(_ names: (IPFamily) -> String, nodePorts: String) -> [NFT.Rule] {
        [NFT.Rule(.lookup(.destinationProtoPort(.v4), map: names(.v4))),
         NFT.Rule(.lookup(.destinationProtoPort(.v6), map: names(.v6))),
         NFT.Rule(.toLocalAddress, .lookup(.protoPort, map: nodePorts))]
    }

    static func addressMaps(_ names: (IPFamily) -> String, nodePorts: String) -> [String: NFT.NamedSet] {
        [names(.v4): NFT.NamedSet(key: .addressProtoPort(.v4), isMap: true),
         names(.v6): NFT.NamedSet(key: .addressProtoPort(.v6), isMap: true),
         nodePorts: NFT.NamedSet(key: .protoPort, isMap: true)]
    }

    /// The front table without elements: the no-endpoint maps checked in the filter hooks for
    /// new connections, and the masquerade of marked traffic.
    static var fixedFront: NFT.Table {
        var t = NFT.Table()
        t.sets = addressMaps(noEndpointServices, nodePorts: noEndpointNodePorts)
        t.chains["nat-postrouting"] = NFT.Chain(hook: .init(.nat, .postrouting, priority: srcnat),
                                                rules: [NFT.Rule(.markHas(masqMarkBit), .flipMarkBits(masqMarkBit), .masquerade)])
        t.chains[rejectChain] = NFT.Chain(rules: rejectRules)
        t.chains["endpoints-check"] = NFT.Chain(rules: lookups(noEndpointServices, nodePorts: noEndpointNodePorts))
        for point in [NFT.Hook.Point.input, .forward, .output] {
            t.chains["filter-\(point.rawValue)"] = NFT.Chain(hook: .init(.filter, point, priority: -110),
                                                             rules: [NFT.Rule(.ctState([.new]), .verdict(.jump("endpoints-check")))])
        }
        return t
    }

    /// A shard without its services: the service maps looked up from the NAT hooks.
    static var fixedShard: NFT.Table {
        var t = NFT.Table()
        t.sets = addressMaps(serviceIPs, nodePorts: serviceNodePorts)
        t.chains["services"] = NFT.Chain(rules: lookups(serviceIPs, nodePorts: serviceNodePorts))
        t.chains["nat-prerouting"] = NFT.Chain(hook: .init(.nat, .prerouting, priority: dstnat), rules: [NFT.Rule(.verdict(.jump("services")))])
        t.chains["nat-output"] = NFT.Chain(hook: .init(.nat, .output, priority: dstnat), rules: [NFT.Rule(.verdict(.jump("services")))])
        t.chains[markForMasquerade] = NFT.Chain(rules: [NFT.Rule(.setMarkBits(masqMarkBit))])
        t.chains[rejectChain] = NFT.Chain(rules: rejectRules)
        t.chains[dropChain] = NFT.Chain(rules: [NFT.Rule(.verdict(.drop))])
        return t
    }

    /// Every table of the services dataplane as `m` describes it.
    public static func ruleset(_ m: Model) -> NFT.Ruleset {
        var r = m.fragments
        r[frontTable].merge(fixedFront)
        for i in 0..<shardCount { r[shardTable(i)].merge(fixedShard) }
        return r
    }

    /// The whole tables, replacing whatever is there, in one transaction.
    /// - replacing: the namespace's `inet` tables; shards of another layout among them (an agent
    ///   of another version ran here) are deleted in the same transaction.
    public static func fullSync(_ m: Model, replacing existing: [String] = []) -> [NFT.Op] {
        NFT.replacing(ruleset(m), deleting: existing.filter { $0.hasPrefix(frontTable + "-") && !tables.contains($0) })
    }

    /// `fullSync` as one nft script (for libnftables).
    public static func fullScript(_ m: Model, replacing existing: [String] = []) -> String { NFT.text(fullSync(m, replacing: existing)) }

    /// The whole tables for `entries`, as one nft script.
    public static func script(_ entries: [Entry]) -> String { fullScript(model(entries)) }
}
