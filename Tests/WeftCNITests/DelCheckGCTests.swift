import Testing
import WeftCNI
import WeftCore
import WeftOS
import WeftOSFakes
#if canImport(Glibc)
import Glibc
#endif

@Suite("DEL") struct DelTests {
    @Test(arguments: ["bridge", "routed"])
    func delIsIdempotent(mode: String) throws {
        var c = Conf()
        c.mode = mode
        let h = Harness(c)
        expectSuccess(h.add("pod-a"))
        expectSuccess(h.add("pod-b"))
        for _ in 0..<2 {
            let r = h.del("pod-a")
            expectSuccess(r)
            #expect(r.outcome.stdout.isEmpty)
            h.expectNothingLeft("pod-a")
        }
        #expect(h.host.allRoutes.allSatisfy { $0.destination != net("10.22.0.2/32") }, "routed host route goes with the veth")
        // The other pod is untouched.
        #expect(h.hostVeth("pod-b") != nil)
        #expect(h.held("pod-b") == [ip("10.22.0.3")])
        #expect(h.podNet("pod-b")?.addresses(on: "eth0").isEmpty == false)
        if mode == "bridge" { #expect(h.host.find("weft0") != nil, "the shared bridge stays") }
    }

    @Test func delWithoutAddSucceeds() {
        let h = Harness()
        h.node.addNamespace(path: Harness.netnsPath("pod-a"))
        expectSuccess(h.del("pod-a"))
        expectSuccess(h.del("never-added", netns: ""))
    }

    @Test func delWithEmptyNetns() throws {
        let h = Harness()
        expectSuccess(h.add("pod-a"))
        let r = h.del("pod-a", netns: "")
        expectSuccess(r)
        #expect(h.hostVeth("pod-a") == nil)
        #expect(h.held("pod-a").isEmpty)
        // Deleting the host end took the pod end with it (a veth pair dies together).
        #expect(h.podNet("pod-a")?.linkNames == ["lo"])
    }

    @Test func delAfterNamespaceMountIsGone() throws {
        // The bind mount is gone but the namespace lives on (a process holds it): DEL must
        // still remove the host end and release the address.
        let h = Harness()
        expectSuccess(h.add("pod-a"))
        let ns = try #require(h.pod("pod-a"))
        h.node.removeNamespace(path: Harness.netnsPath("pod-a"), destroyLinks: false)
        #expect(h.hostVeth("pod-a") != nil)
        let r = h.del("pod-a")
        expectSuccess(r)
        #expect(h.hostVeth("pod-a") == nil)
        #expect(h.held("pod-a").isEmpty)
        #expect(ns.network.linkNames == ["lo"])
        expectSuccess(h.del("pod-a"))
    }

    @Test func delAfterNamespaceIsDestroyed() throws {
        let h = Harness()
        expectSuccess(h.add("pod-a"))
        h.node.removeNamespace(path: Harness.netnsPath("pod-a"))
        #expect(h.hostVeth("pod-a") == nil, "the kernel takes the host end with the namespace")
        let r = h.del("pod-a")
        expectSuccess(r)
        #expect(h.held("pod-a").isEmpty)
    }

    @Test func delReportsAHostFailure() {
        let h = Harness()
        expectSuccess(h.add("pod-a"))
        h.node.removeNamespace(path: Harness.netnsPath("pod-a"), destroyLinks: false)
        h.host.failNext["deleteLink"] = EBUSY
        let r = h.del("pod-a")
        expectError(r, code: 103, mentioning: [hostVethName(containerID: "pod-a", ifname: "eth0")])
        #expect(h.held("pod-a") == [ip("10.22.0.2")], "the address is kept while an interface may still carry it")
        expectSuccess(h.del("pod-a"))
        h.expectNothingLeft("pod-a")
    }
}

@Suite("CHECK") struct CheckTests {
    @Test(arguments: ["bridge", "routed"])
    func checkAfterAdd(mode: String) throws {
        var c = Conf()
        c.mode = mode
        c.ranges = [["10.22.0.0/24"], ["fd00:22::/64"]]
        let h = Harness(c)
        let add = h.add("pod-a")
        expectSuccess(add)
        let r = h.check("pod-a", prevResult: add.json)
        expectSuccess(r)
        #expect(r.outcome.stdout.isEmpty)
    }

    @Test func checkWithOldResultVersion() throws {
        var c = Conf()
        c.cniVersion = "0.4.0"
        let h = Harness(c)
        let add = h.add("pod-a")
        expectSuccess(add)
        expectSuccess(h.check("pod-a", prevResult: add.json))
    }

    @Test func checkFailsWhenThePodAddressIsGone() throws {
        let h = Harness()
        let add = h.add("pod-a")
        expectSuccess(add)
        let pod = try #require(h.podNet("pod-a"))
        let eth0 = try #require(pod.find("eth0"))
        try pod.deleteAddress(ifaddr("10.22.0.2/24"), index: eth0.index)
        let r = h.check("pod-a", prevResult: add.json)
        expectError(r, code: 104, mentioning: ["10.22.0.2/24", "eth0"])
    }

    @Test func checkFailsWhenTheRouteIsGone() throws {
        let h = Harness()
        let add = h.add("pod-a")
        expectSuccess(add)
        let pod = try #require(h.podNet("pod-a"))
        try pod.deleteRoute(RouteEntry(destination: .defaultV4))
        expectError(h.check("pod-a", prevResult: add.json), code: 104, mentioning: ["0.0.0.0/0"])
    }

    @Test func checkFailsWhenTheHostEndIsDetached() throws {
        let h = Harness()
        let add = h.add("pod-a")
        expectSuccess(add)
        let hv = try #require(h.hostVeth("pod-a"))
        try h.host.setMaster(index: hv.index, master: nil)
        expectError(h.check("pod-a", prevResult: add.json), code: 104, mentioning: ["weft0"])
    }

    @Test func checkFailsWhenIPAMLostTheAddress() throws {
        let h = Harness()
        let add = h.add("pod-a")
        expectSuccess(add)
        try h.store.release(ip("10.22.0.2"))
        expectError(h.check("pod-a", prevResult: add.json), code: 3, mentioning: ["pod-a"])
    }

    @Test func checkFailsWhenTheInterfaceIsGone() throws {
        let h = Harness()
        let add = h.add("pod-a")
        expectSuccess(add)
        let pod = try #require(h.podNet("pod-a"))
        try pod.deleteLink(index: try #require(pod.find("eth0")).index)
        expectError(h.check("pod-a", prevResult: add.json), code: 104, mentioning: ["eth0"])
    }

    @Test func checkWithTheNetnsGone() throws {
        let h = Harness()
        let add = h.add("pod-a")
        expectSuccess(add)
        h.node.removeNamespace(path: Harness.netnsPath("pod-a"))
        expectError(h.check("pod-a", prevResult: add.json), code: 3, mentioning: [Harness.netnsPath("pod-a")])
    }

    @Test func checkNeedsPrevResult() {
        let h = Harness()
        expectSuccess(h.add("pod-a"))
        expectError(h.check("pod-a", prevResult: nil), code: 7, mentioning: ["prevResult"])
    }

    @Test func checkNeedsVersion040() throws {
        var c = Conf()
        c.cniVersion = "0.3.1"
        let h = Harness(c)
        let add = h.add("pod-a")
        expectSuccess(add)
        expectError(h.check("pod-a", prevResult: add.json), code: 1, mentioning: ["CHECK", "0.3.1"])
    }
}

@Suite("GC and STATUS") struct GCStatusTests {
    static func conf() -> Conf {
        var c = Conf()
        c.cniVersion = "1.1.0"
        return c
    }

    @Test func gcReleasesUnlistedAttachments() throws {
        let h = Harness(Self.conf())
        for id in ["pod-a", "pod-b", "pod-c"] { expectSuccess(h.add(id)) }
        h.store.insertOrphan(ip("10.22.0.200"))
        let r = h.gc(valid: [("pod-a", "eth0"), ("pod-c", "eth0")])
        expectSuccess(r)
        #expect(r.outcome.stdout.isEmpty)
        #expect(h.held("pod-a") == [ip("10.22.0.2")])
        #expect(h.held("pod-b").isEmpty)
        #expect(h.held("pod-c") == [ip("10.22.0.4")])
        #expect(h.store.addresses == [ip("10.22.0.2"), ip("10.22.0.4")], "the unreadable record is reclaimed too")
    }

    @Test func gcKeepsAttachmentsByInterfaceName() {
        let h = Harness(Self.conf())
        expectSuccess(h.add("pod-a"))
        let r = h.gc(valid: [("pod-a", "net1")])
        expectSuccess(r)
        #expect(h.held("pod-a").isEmpty, "an attachment is containerID and ifname together")
    }

    @Test func gcNeedsTheList() {
        let h = Harness(Self.conf())
        expectError(h.run(["CNI_COMMAND": "GC"], Self.conf().bytes), code: 7, mentioning: ["cni.dev/valid-attachments"])
    }

    @Test func gcNeedsVersion110() {
        let h = Harness()
        expectError(h.gc(valid: []), code: 1, mentioning: ["GC"])
    }

    @Test func statusOK() {
        let h = Harness(Self.conf())
        let r = h.status()
        expectSuccess(r)
        #expect(r.outcome.stdout.isEmpty)
    }

    @Test func statusNotReadyWhenTheStoreIsUnusable() {
        let h = Harness(Self.conf())
        h.node.ipamStoreError = .ioFailure("/var/lib/cni/networks/weftnet: read-only file system")
        expectError(h.status(), code: 50, mentioning: ["read-only"])
    }

    @Test func statusNeedsVersion110() {
        let h = Harness()
        expectError(h.status(), code: 1, mentioning: ["STATUS"])
    }
}
