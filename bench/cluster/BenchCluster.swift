import ArgumentParser

/// weft-bench-cluster: the lab as a cluster under measurement — data-plane throughput against
/// the physical floor, route convergence on join and leave, and an agent's footprint.
/// Everything happens in the lab's namespaces (and two throwaway ones for the veth floor);
/// every lab is taken down with `weft lab down` on every way out.
@main
struct BenchCluster: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "weft-bench-cluster",
        abstract: "Cluster benchmarks on weft's lab: throughput, convergence, footprint.",
        subcommands: [Throughput.self, Convergence.self, Footprint.self, ServicePath.self, PolicyBench.self, ObservabilityBench.self])
}
