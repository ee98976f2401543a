import Foundation
import Testing
import CWeftLinux
@testable import WeftOS

/// `deleteLinkReturningWhenGone`: the request goes out from a detached helper process and the
/// call returns on the kernel's announcements, so what it promises is checked at the moment it
/// returns, with no waiting: both ends gone, the bridge port released, the names free again.
struct LinkDeletionTests {
    /// Two namespaces joined by a veth whose far end is a bridge port, as a pod and its node.
    private func pair(_ lab: KernelLab) throws -> (pod: String, node: String, podNet: Rtnetlink, nodeNet: Rtnetlink) {
        let pod = try lab.pod("p"), node = try lab.pod("n")
        for args in [["ip", "link", "add", "br0", "type", "bridge"], ["ip", "link", "set", "br0", "up"]] {
            try #require(try lab.inNS(node, args).status == 0)
        }
        try #require(try lab.inNS(pod, ["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "vhost", "netns", node]).status == 0)
        try #require(try lab.inNS(node, ["ip", "link", "set", "vhost", "master", "br0", "up"]).status == 0)
        try #require(try lab.inNS(pod, ["ip", "addr", "add", "10.9.0.2/24", "dev", "eth0"]).status == 0)
        try #require(try lab.inNS(pod, ["ip", "link", "set", "eth0", "up"]).status == 0)
        return (pod, node, try NetworkNamespace(path: "/run/netns/\(pod)").control(), try NetworkNamespace(path: "/run/netns/\(node)").control())
    }

    private func watch(_ ns: String) throws -> NetlinkSocket {
        let socket = try NetworkNamespace(path: "/run/netns/\(ns)").run { () throws(NetlinkError) in try NetlinkSocket() }
        try socket.join(group: Int32(RTNLGRP_LINK.rawValue), "link announcements")
        return socket
    }

    @Test func bothEndsAreGoneWhenItReturns() throws {
        let lab = try KernelLab()
        defer { lab.close() }
        let (pod, node, podNet, nodeNet) = try pair(lab)
        // Lookups alone would not tell: they queue behind the RTNL lock the deletion holds. The
        // kernel's own announcements are queued by the time the call returns.
        let podWatch = try watch(pod), nodeWatch = try watch(node)
        let eth0 = try #require(try podNet.link(named: "eth0"))
        try podNet.deleteLinkReturningWhenGone(index: eth0.index, peer: (nodeNet, "vhost"))
        #expect(try podWatch.pending().contains { Rtnetlink.announcesRemoval($0, name: "eth0") }, "eth0's removal announced")
        #expect(try nodeWatch.pending().contains { Rtnetlink.announcesRemoval($0, name: "vhost") }, "vhost's removal announced")
        #expect(try podNet.link(named: "eth0") == nil)
        #expect(try nodeNet.link(named: "vhost") == nil)
        #expect(try lab.inNS(node, ["bridge", "link", "show"]).stdout.isEmpty, "the bridge port is released")
        #expect(!(try lab.inNS(pod, ["ip", "-4", "addr", "show"]).stdout.contains("10.9.0.2")))
        // The names are free at once: a new pair under them is made (and deleted) right away.
        let again = try lab.inNS(pod, ["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "vhost", "netns", node])
        #expect(again.status == 0, "recreate the pair: \(again.stderr)")
        let eth0Again = try #require(try podNet.link(named: "eth0"))
        try podNet.deleteLinkReturningWhenGone(index: eth0Again.index, peer: (nodeNet, "vhost"))
        #expect(try nodeNet.link(named: "vhost") == nil)
    }

    /// A peer that is never announced (another plugin named it) does not hang the call: the
    /// kernel's answer ends it.
    @Test func anUnannouncedPeerWaitsForTheKernelsAnswer() throws {
        let lab = try KernelLab()
        defer { lab.close() }
        let (_, _, podNet, nodeNet) = try pair(lab)
        let eth0 = try #require(try podNet.link(named: "eth0"))
        try podNet.deleteLinkReturningWhenGone(index: eth0.index, peer: (nodeNet, "not-its-peer"))
        #expect(try podNet.link(named: "eth0") == nil)
        #expect(try nodeNet.link(named: "vhost") == nil)
    }

    /// The kernel's refusals come back as from `deleteLink`, with nothing removed.
    @Test func refusalsAreThrown() throws {
        let lab = try KernelLab()
        defer { lab.close() }
        let (_, _, podNet, nodeNet) = try pair(lab)
        let missing = #expect(throws: NetlinkError.self) { try podNet.deleteLinkReturningWhenGone(index: 99_999, peer: (nodeNet, "vhost")) }
        #expect(missing?.errno == ENODEV, "\(String(describing: missing))")
        let lo = try #require(try podNet.link(named: "lo"))
        let refused = #expect(throws: NetlinkError.self) { try podNet.deleteLinkReturningWhenGone(index: lo.index, peer: nil) }
        #expect(refused?.errno == EOPNOTSUPP, "\(String(describing: refused))")
        #expect(try podNet.link(named: "eth0") != nil)
        #expect(try nodeNet.link(named: "vhost") != nil)
    }
}
