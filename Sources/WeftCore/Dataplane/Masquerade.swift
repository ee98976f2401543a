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

    public static func ensureScript(network: String, podRanges: [IPNetwork], clusterRanges: [IPNetwork]) -> String {
        let c = chain(network: network)
        var s = """
        add table inet \(table)
        add chain inet \(table) \(c) { type nat hook postrouting priority srcnat; policy accept; }
        flush chain inet \(table) \(c)

        """
        for (fam, proto) in [(IPFamily.v4, "ip"), (.v6, "ip6")] {
            let pods = podRanges.filter { $0.family == fam }.map(\.description)
            guard !pods.isEmpty else { continue }
            let local = clusterRanges.filter { $0.family == fam }.map(\.description) + [alwaysLocal[fam]!]
            s += "add rule inet \(table) \(c) \(proto) saddr { \(pods.joined(separator: ", ")) } \(proto) daddr != { \(local.joined(separator: ", ")) } counter masquerade comment \"pod traffic leaving the cluster\"\n"
        }
        return s
    }
}
