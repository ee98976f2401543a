import WeftCore
#if canImport(Glibc)
import Glibc
#endif

/// Allocations on disk, in host-local's layout so its users find their way around:
/// `DATADIR/NETWORK/IP` holds "containerID\r\nifname\r\nnamespace/pod", one file per address;
/// `last_reserved_ip.N` remembers where round-robin stopped; `lock` is flocked around every
/// change. A file appears by `link(2)` of a finished temporary file, so a crash at any point
/// leaves an address either fully claimed or free, never claimed by an empty record.
public final class DiskIPAMStore: IPAMStore {
    public let directory: String
    static let lockTimeoutMicroseconds = 20_000_000

    public init(dataDir: String, network: String) throws(CNIError) {
        directory = dataDir + "/" + network
        do { try Files.makeDirectories(directory) } catch {
            throw .ioFailure("cannot create IPAM data directory \(directory): \(error); check ipam.dataDir")
        }
    }

    public func locked<T>(_ body: () throws(CNIError) -> T) throws(CNIError) -> T {
        let path = directory + "/lock"
        let fd = retrying { open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600) }
        guard fd >= 0 else { throw .ioFailure("cannot open IPAM lock \(path): \(SystemError("open"))") }
        // Wait for the lock, but not forever: a wedged holder turns into "try again later"
        // (code 11) rather than a runtime timeout with no answer.
        var waited = 0
        while retrying({ flock(fd, LOCK_EX | LOCK_NB) }) != 0 {
            let e = SystemError("flock \(path)")
            guard e.errno == EWOULDBLOCK, waited < DiskIPAMStore.lockTimeoutMicroseconds else {
                close(fd)
                if e.errno == EWOULDBLOCK { throw .tryAgainLater("the IPAM store \(directory) stayed locked for \(waited / 1_000_000) s; try again") }
                throw .ioFailure("cannot lock IPAM store: \(e)")
            }
            usleep(500)
            waited += 500
        }
        defer { close(fd) } // closing releases the lock
        return try body()
    }

    public func reserve(_ address: IPAddress, owner: AllocationOwner) throws(CNIError) -> Bool {
        let final = directory + "/" + address.description
        let tmp = directory + "/.tmp-\(getpid())-" + address.description
        var record = owner.containerID + "\r\n" + owner.ifname
        if let ns = owner.podNamespace, let pod = owner.podName { record += "\r\n\(ns)/\(pod)" }
        let fd = retrying { open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644) }
        guard fd >= 0 else { throw .ioFailure("cannot write IPAM record \(tmp): \(SystemError("open"))") }
        defer { unlink(tmp) }
        do { try Files.writeAll(fd, Array(record.utf8), path: tmp) } catch {
            close(fd)
            throw .ioFailure("cannot write IPAM record: \(error)")
        }
        close(fd)
        if link(tmp, final) == 0 { return true }
        if errno == EEXIST { return false }
        throw .ioFailure("cannot claim \(final): \(SystemError("link"))")
    }

    public func release(_ address: IPAddress) throws(CNIError) {
        let path = directory + "/" + address.description
        if unlink(path) != 0 && errno != ENOENT { throw .ioFailure("cannot release \(path): \(SystemError("unlink"))") }
    }

    public func allocations() throws(CNIError) -> [Allocation] {
        let names: [String]
        do { names = try Files.list(directory) } catch { throw .ioFailure("cannot list IPAM store: \(error)") }
        var out: [Allocation] = []
        for name in names {
            if name.hasPrefix(".tmp-") { removeIfStale(name); continue }
            guard let ip = IPAddress(name) else { continue }
            let text = (try? Files.readString(directory + "/" + name)) ?? ""
            let lines = text.split(separator: "\r\n", omittingEmptySubsequences: false).map(String.init)
            var owner: AllocationOwner?
            if lines.count >= 2, !lines[0].isEmpty, !lines[1].isEmpty {
                owner = AllocationOwner(containerID: lines[0], ifname: lines[1])
                if lines.count >= 3, let slash = lines[2].firstIndex(of: "/") {
                    owner?.podNamespace = String(lines[2][..<slash])
                    owner?.podName = String(lines[2][lines[2].index(after: slash)...])
                }
            }
            out.append(Allocation(address: ip, owner: owner))
        }
        return out
    }

    /// A temporary record whose writer died before linking it claims nothing; remove it.
    private func removeIfStale(_ name: String) {
        let pidText = name.dropFirst(5).prefix { $0 != "-" }
        if let pid = pid_t(pidText), kill(pid, 0) != 0 && errno == ESRCH { unlink(directory + "/" + name) }
    }

    public func lastReserved(rangeSet: Int) throws(CNIError) -> IPAddress? {
        guard let text = try? Files.readString(directory + "/last_reserved_ip.\(rangeSet)") else { return nil }
        return IPAddress(text.filter { !$0.isWhitespace })
    }

    /// Overwritten in place, not replaced by rename: it is only a hint for where round-robin
    /// resumes, read under the same lock, and a torn write reads as no hint (start from the
    /// range's beginning), never as a wrong claim. Saves a file creation per ADD.
    public func setLastReserved(_ address: IPAddress, rangeSet: Int) throws(CNIError) {
        let path = directory + "/last_reserved_ip.\(rangeSet)"
        let fd = retrying { open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0o644) }
        guard fd >= 0 else { throw .ioFailure("cannot record last reserved address in \(path): \(SystemError("open"))") }
        defer { close(fd) }
        let bytes = Array(address.description.utf8)
        let n = bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
        guard n == bytes.count, ftruncate(fd, off_t(bytes.count)) == 0 else {
            throw .ioFailure("cannot record last reserved address in \(path): \(SystemError("write"))")
        }
    }
}
