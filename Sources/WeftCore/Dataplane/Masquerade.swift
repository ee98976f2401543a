/// Source NAT for pod traffic leaving the cluster, in weft's own nftables table.
///
/// One base chain per network, holding that network's fixed rules: `ip saddr <pod ranges>
/// ip daddr != <cluster ranges> masquerade`. Nothing per pod, so there is nothing to leak when
/// a DEL comes without a namespace (the reference plugins' known defect). The transaction is
/// idempotent and atomic (the chain is emptied and refilled in it) and never touches any table
/// but weft's.
public enum Masquerade {
    public static let table = "weft"

    /// Multicast is never masqueraded (as the reference plugins' ipMasq rules do).
    static let alwaysLocal: [IPFamily: IPNetwork] = [.v4: IPNetwork("224.0.0.0/4")!, .v6: IPNetwork("ff00::/8")!]

    public static func chain(network: String) -> String { "masquerade-\(network)" }

    /// The chain's rules, one per pod range (no anonymous sets: the netlink encoder writes
    /// every rule), each with its comment.
    public static func rules(podRanges: [IPNetwork], clusterRanges: [IPNetwork]) -> [NFT.Rule] {
        var rules: [NFT.Rule] = []
        for family in [IPFamily.v4, .v6] {
            let local = clusterRanges.filter { $0.family == family } + [alwaysLocal[family]!]
            for pods in podRanges where pods.family == family {
                var r = NFT.Rule(.networks(.source, [pods], negated: false), .networks(.destination, local, negated: true), .counter, .masquerade)
                r.comment = comment(for: r)
                rules.append(r)
            }
        }
        return rules
    }

    /// The comment each rule carries: it names the rule's content by digest, so a reader of the
    /// kernel's chain can tell it already holds exactly these rules without parsing them.
    public static func ruleComments(podRanges: [IPNetwork], clusterRanges: [IPNetwork]) -> [String] {
        rules(podRanges: podRanges, clusterRanges: clusterRanges).compactMap(\.comment)
    }

    static func comment(for rule: NFT.Rule) -> String {
        "pod traffic leaving the cluster weft:" + hex16(fnv1a64(NFT.text(rule)))
    }

    /// Makes the table and the network's chain if missing and refills the chain.
    public static func ensure(network: String, podRanges: [IPNetwork], clusterRanges: [IPNetwork]) -> NFT.Transaction {
        let c = chain(network: network)
        let ops: [NFT.Op] = [.addTable(table), .addChain(table: table, c, .init(.nat, .postrouting, priority: 100)), .flushChain(table: table, c)]
        return NFT.Transaction(update: ops + rules(podRanges: podRanges, clusterRanges: clusterRanges).map { .addRule(table: table, chain: c, $0) })
    }

    public static func ensureScript(network: String, podRanges: [IPNetwork], clusterRanges: [IPNetwork]) -> String {
        ensure(network: network, podRanges: podRanges, clusterRanges: clusterRanges).scripts.update
    }
}
