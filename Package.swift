// swift-tools-version: 6.0
import PackageDescription

// Layering (dependencies point down):
//   executables (weft, weft-cni, weft-bench*) -> services (WeftLab, WeftAgent, WeftCNI, WeftDatastore)
//     -> WeftOS / WeftOSFakes -> WeftCore
// WeftCore is pure: no syscalls, no Foundation file or process APIs. It holds the desired-state
// functions and the seams' protocols, among them `Dataplane` (services and policy, in Kubernetes'
// terms); its nftables implementation (`NFTablesDataplane`) is in WeftAgent, over WeftOS's
// libnftables and nf_tables netlink writers; its fake (`FakeDataplane`) in WeftOSFakes. WeftOS
// still names the services' table operations (`NFTablesNetlink` takes `ServiceRules.TableOp`s)
// until the typed nftables layer replaces them.
let package = Package(
    name: "weft",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "weft-cni", targets: ["weft-cni"]),
        .executable(name: "weft", targets: ["weft"]),
        .executable(name: "weft-bench", targets: ["weft-bench"]),
        .executable(name: "weft-bench-cluster", targets: ["weft-bench-cluster"]),
        .executable(name: "weft-bench-services", targets: ["weft-bench-services"]),
        .library(name: "WeftCore", targets: ["WeftCore"]),
        .library(name: "WeftOSFakes", targets: ["WeftOSFakes"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        // The embedded datastore: SQLite through GRDB (WAL, busy handling, typed rows).
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.0.0"),
        // etcd v3 through its JSON gateway (HTTP/1.1 with streaming watches).
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.20.0"),
        // Long-running parts (the agent, the lab's runtime) as Services with graceful shutdown.
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.0.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.5.0"),
        // Kubernetes manifests are YAML.
        .package(url: "https://github.com/jpsim/Yams", from: "5.0.0"),
        // The node's DNS server (UDP and TCP); already in the graph through async-http-client.
        .package(url: "https://github.com/apple/swift-nio", from: "2.65.0"),
        // The agent's /metrics in Prometheus' text format.
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.0.0"),
    ],
    targets: [
        .target(name: "WeftCore"),
        // Kernel headers (netlink, nf_tables) and a few libc shims. rtnetlink is written in
        // Swift in WeftOS/Netlink because its surface is small and stable; nftables tables are
        // described in WeftCore's typed layer (WeftCore/NFTables) and written by the agent as
        // nf_tables netlink batches (WeftOS/Netlink/NFTablesNetlink), by the CNI plugin as nft
        // text through libnftables (what `nft` itself uses), loaded at run time by WeftOS.
        .target(name: "CWeftLinux"),
        .target(name: "WeftOS", dependencies: [
            "WeftCore", "CWeftLinux",
        ]),
        .target(name: "WeftOSFakes", dependencies: ["WeftCore", "WeftOS"]),
        .target(name: "WeftCNI", dependencies: ["WeftCore", "WeftOS"]),
        .target(name: "WeftAgent", dependencies: [
            "WeftCore", "WeftOS",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "Prometheus", package: "swift-prometheus"),
        ]),
        .target(name: "WeftLab", dependencies: [
            "WeftCore", "WeftOS", "WeftAgent", "WeftDatastore",
            .product(name: "Yams", package: "Yams"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        .target(name: "WeftDatastore", dependencies: [
            "WeftCore",
            .product(name: "GRDB", package: "GRDB.swift"),
            .product(name: "AsyncHTTPClient", package: "async-http-client"),
        ]),
        .executableTarget(name: "weft-cni", dependencies: ["WeftCNI", "WeftOS"]),
        .executableTarget(name: "weft", dependencies: [
            "WeftCore", "WeftOS", "WeftCNI", "WeftLab", "WeftAgent", "WeftDatastore",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        .executableTarget(name: "weft-bench", dependencies: [
            "WeftCore", "WeftOS",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ], path: "bench/cni"),
        .executableTarget(name: "weft-bench-cluster", dependencies: ["WeftCore", "WeftOS", "WeftLab", "WeftDatastore", .product(name: "ArgumentParser", package: "swift-argument-parser")], path: "bench/cluster"),
        .executableTarget(name: "weft-bench-services", dependencies: ["WeftCore", "WeftOS", "WeftAgent", "WeftDatastore"], path: "bench/services"),
        .testTarget(name: "WeftCoreTests", dependencies: ["WeftCore", "WeftOSFakes"]),
        .testTarget(name: "WeftAgentTests", dependencies: ["WeftAgent", "WeftCore", "WeftOS", "WeftOSFakes", .product(name: "Logging", package: "swift-log"),
                                                            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle")]),
        .testTarget(name: "WeftCNITests", dependencies: ["WeftCNI", "WeftCore", "WeftOSFakes"]),
        .testTarget(name: "WeftKernelTests", dependencies: ["WeftCore", "WeftOS"]),
        .testTarget(name: "WeftLabTests", dependencies: ["WeftLab", "WeftCore", "WeftOSFakes"]),
        .testTarget(name: "WeftDatastoreTests", dependencies: ["WeftCore", "WeftDatastore", "WeftOSFakes"]),
    ]
)
