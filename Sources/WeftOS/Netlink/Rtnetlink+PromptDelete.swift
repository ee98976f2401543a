import CWeftLinux
import WeftCore
#if canImport(Glibc)
import Glibc
#endif

/// Deleting a veth takes 15–35 ms on a 2-vCPU VM, and almost none of it is the deletion: the
/// kernel unlists both ends, runs their notifiers (addresses, routes, neighbours, the bridge
/// port go) and announces RTM_DELLINK within about 1 ms; the rest is `netdev_run_todo` waiting
/// for an RCU grace period (`rcu_barrier`) before it frees the devices' memory, in the context
/// of whoever sent the request. Nothing observable changes during that wait, and any other
/// change to links, addresses or routes queues behind the RTNL lock the deletion took first.
extension Rtnetlink {
    /// Deletes link `index` and returns once the kernel has removed it and, when named, its veth
    /// peer `peer.name` in `peer.control`'s namespace: both unlisted (their names free), their
    /// notifiers run, RTM_DELLINK announced. The request is sent from a detached helper process,
    /// which waits out the kernel's grace period and exits by itself; the kernel's answer, if it
    /// comes first, decides (an error is thrown as from `deleteLink`). Without a helper (no
    /// process could be made) this is `deleteLink`.
    public func deleteLinkReturningWhenGone(index: Int32, peer: (control: any NetworkControl, name: String)?) throws(NetlinkError) {
        let operation = "delete link #\(index)"
        let peerSocket = (peer?.control as? Rtnetlink)?.socket
        guard peer == nil || peerSocket != nil else { return try deleteLink(index: index) }

        // Subscribed before the request goes out, so its announcements cannot be missed.
        let group = Int32(RTNLGRP_LINK.rawValue)
        do throws(NetlinkError) {
            try socket.join(group: group, "link announcements (RTNLGRP_LINK)")
            try peerSocket?.join(group: group, "link announcements (RTNLGRP_LINK)")
        } catch {
            socket.leave(group: group)
            return try deleteLink(index: index)
        }
        defer { socket.leave(group: group); peerSocket?.leave(group: group) }

        var hangup: [Int32] = [-1, -1]
        guard weft_pipe2_cloexec(&hangup) == 0 else { return try deleteLink(index: index) }
        defer { close(hangup[0]) }
        let (wire, seq) = socket.numbered(linkMessage(RTM_DELLINK, index: index))
        let started = wire.withUnsafeBytes { weft_send_detached(socket.fd, $0.baseAddress, $0.count, hangup[1]) }
        close(hangup[1])
        guard started == 0 else { return try deleteLink(index: index) }

        var gone = false
        var peerGone = peer == nil
        var helperDone = false
        var answer: Result<Void, NetlinkError>?
        while true {
            // The kernel's answer (an error, or the ACK once everything is done) or the announcement.
            for m in try socket.pending() {
                if m.type == UInt16(NLMSG_ERROR), m.seq == seq { answer = socket.error(in: m, operation).map { .failure($0) } ?? .success(()) }
                if Rtnetlink.announcesRemoval(m, index: index) { gone = true }
            }
            if let answer {
                // Gone all the same when another deleter beat the helper to it.
                if case .failure(let failure) = answer, !(failure.isNotFound && gone) { throw failure }
                return
            }
            if let peerSocket, let peer {
                for m in try peerSocket.pending() where Rtnetlink.announcesRemoval(m, name: peer.name) { peerGone = true }
            }
            if gone && peerGone { return }
            if helperDone {
                // A request it sent was answered before it exited, so the answer is queued by
                // now, unless the socket overran and lost it: then the link itself tells. Still
                // there: the helper never sent (not made, or killed first); delete it here.
                guard try link(index: index) == nil else { return try deleteLink(index: index) }
                return
            }
            var fds = [pollfd(fd: socket.fd, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: hangup[0], events: Int16(POLLIN), revents: 0)]
            if let peerSocket { fds.append(pollfd(fd: peerSocket.fd, events: Int16(POLLIN), revents: 0)) }
            if poll(&fds, nfds_t(fds.count), -1) < 0, Glibc.errno != EINTR {
                throw NetlinkError(operation: "wait for \(operation)", errno: Glibc.errno)
            }
            if fds[1].revents != 0 { helperDone = true }
        }
    }

    /// An RTM_DELLINK of the link itself (not the bridge's AF_BRIDGE one about its port).
    static func announcesRemoval(_ m: NetlinkMessage, index: Int32? = nil, name: String? = nil) -> Bool {
        guard m.type == UInt16(RTM_DELLINK), let h = m.header(ifinfomsg.self), h.ifi_family == UInt8(AF_UNSPEC) else { return false }
        if let index, h.ifi_index != index { return false }
        if let name, m.attributes(after: ifinfomsg.self).string(k(IFLA_IFNAME)) != name { return false }
        return true
    }
}
