/// Source NAT for pod traffic leaving the cluster, in weft's own nftables table.
///
/// One base chain per network, holding that network's fixed rules: `ip saddr <pod ranges>
/// ip daddr != <cluster ranges> masquerade`. Nothing per pod, so there is nothing to leak when
/// a DEL comes without a namespace (the reference plugins' known defect). The script is
/// idempotent and atomic (the chain is emptied and refilled in the same transaction) and never
/// touches any table but weft's.
public enum Masquerade {
    public static let table = "weft"

    /// Multicast is never masqueraded (as the reference plugins' ipMasq rules do).
    static let alwaysLocal: [IPFamily: String] = [.v4: "224.0.0.0/4", .v6: "ff00::/8"]

    public static func chain(network: String) -> String { "masquerade-\(network)" }

    /// The chain's rules, one per family with pod ranges.
    static func rules(network: String, podRanges: [IPNetwork], clusterRanges: [IPNetwork]) -> [String] {
        let c = chain(network: network)
        var rules: [String] = []
        for (fam, proto) in [(IPFamily.v4, "ip"), (.v6, "ip6")] {
            let pods = podRanges.filter { $0.family == fam }.map(\.description)
            guard !pods.isEmpty else { continue }
            let local = clusterRanges.filter { $0.family == fam }.map(\.description) + [alwaysLocal[fam]!]
            rules.append("add rule inet \(table) \(c) \(proto) saddr { \(pods.joined(separator: ", ")) } \(proto) daddr != { \(local.joined(separator: ", ")) } counter masquerade")
        }
        return rules
    }

    /// The comment each rule carries: it names the rule's content by digest, so a reader of the
    /// kernel's chain can tell it already holds exactly these rules without parsing them.
    public static func ruleComments(network: String, podRanges: [IPNetwork], clusterRanges: [IPNetwork]) -> [String] {
        rules(network: network, podRanges: podRanges, clusterRanges: clusterRanges).map(comment(for:))
    }

    static func comment(for rule: String) -> String {
        "pod traffic leaving the cluster weft:" + hex16(fnv1a64(rule))
    }

    public static func ensureScript(network: String, podRanges: [IPNetwork], clusterRanges: [IPNetwork]) -> String {
        let c = chain(network: network)
        var s = """
        add table inet \(table)
        add chain inet \(table) \(c) { type nat hook postrouting priority srcnat; policy accept; }
        flush chain inet \(table) \(c)

        """
        for rule in rules(network: network, podRanges: podRanges, clusterRanges: clusterRanges) {
            s += rule + " comment \"\(comment(for: rule))\"\n"
        }
        return s
    }
}
