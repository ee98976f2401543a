/// Who holds an address: enough for DEL/GC to release it and for tools to say which pod it is.
public struct AllocationOwner: Sendable, Hashable {
    public var containerID: String
    public var ifname: String
    public var podNamespace: String?
    public var podName: String?
    public init(containerID: String, ifname: String, podNamespace: String? = nil, podName: String? = nil) {
        self.containerID = containerID; self.ifname = ifname; self.podNamespace = podNamespace; self.podName = podName
    }
    public var attachment: Attachment { Attachment(containerID: containerID, ifname: ifname) }
}

/// The key the runtime uses for one network attachment (GC's `cni.dev/valid-attachments`).
public struct Attachment: Sendable, Hashable {
    public var containerID: String
    public var ifname: String
    public init(containerID: String, ifname: String) { self.containerID = containerID; self.ifname = ifname }
}

public struct Allocation: Sendable, Hashable {
    public var address: IPAddress
    /// nil when the record on disk is unreadable (e.g. torn by a crash): GC may reclaim it.
    public var owner: AllocationOwner?
    public init(address: IPAddress, owner: AllocationOwner?) { self.address = address; self.owner = owner }
}

/// Where allocations live. `DiskIPAMStore` (WeftOS) keeps one file per address under a lock;
/// `MemoryIPAMStore` (WeftOSFakes) drives the allocator's tests.
public protocol IPAMStore {
    /// Runs `body` holding the store's exclusive lock; every other call happens inside it.
    func locked<T>(_ body: () throws(CNIError) -> T) throws(CNIError) -> T
    /// Claims `address` for `owner`; false when someone already holds it. Must be atomic: after
    /// a crash at any point the address is either fully claimed or free.
    func reserve(_ address: IPAddress, owner: AllocationOwner) throws(CNIError) -> Bool
    func release(_ address: IPAddress) throws(CNIError)
    func allocations() throws(CNIError) -> [Allocation]
    func lastReserved(rangeSet: Int) throws(CNIError) -> IPAddress?
    func setLastReserved(_ address: IPAddress, rangeSet: Int) throws(CNIError)
}

/// One address handed out, with what the result needs about it.
public struct AllocatedAddress: Sendable, Equatable {
    public var address: IPInterfaceAddress
    public var gateway: IPAddress?
    public init(address: IPInterfaceAddress, gateway: IPAddress?) { self.address = address; self.gateway = gateway }
}

/// host-local's allocation policy, with no I/O of its own: one address from each range set,
/// round-robin from the last one reserved, never the gateway, all-or-nothing across sets.
public struct Allocator: Sendable {
    public let rangeSets: [RangeSet]
    public init(rangeSets: [RangeSet]) { self.rangeSets = rangeSets }

    /// Allocates for `owner`. If `owner` already holds addresses in these ranges (an ADD retried
    /// after a crash or a timeout) they are returned instead, so a retry never leaks.
    /// `requested` addresses (runtimeConfig `ips`, CNI_ARGS `IP`) must each fall in some set.
    public func allocate(in store: some IPAMStore, for owner: AllocationOwner, requested: [IPAddress] = []) throws(CNIError) -> [AllocatedAddress] {
        try store.locked { () throws(CNIError) -> [AllocatedAddress] in
            // Read once: under the lock only this call changes the store, and it keeps what it
            // reserves in `done`.
            let held = try store.allocations()
            let taken = Set(held.map(\.address))
            let existing = held.filter { $0.owner?.attachment == owner.attachment }.map(\.address)
            var placed: [Int: IPAddress] = [:]
            for a in requested {
                guard let i = rangeSets.firstIndex(where: { $0.range(containing: a) != nil }) else {
                    let all = rangeSets.flatMap(\.ranges).map(\.description).joined(separator: ", ")
                    throw .addressUnavailable("requested address \(a) is in none of the configured ranges (\(all))")
                }
                guard placed[i] == nil else {
                    throw .addressUnavailable("requested addresses \(placed[i]!) and \(a) fall in the same range set; request one address per range set")
                }
                placed[i] = a
            }

            var done: [(Int, IPAddress)] = []
            func rollback() { for (_, a) in done where !existing.contains(a) { try? store.release(a) } }

            for (i, set) in rangeSets.enumerated() {
                if let mine = existing.first(where: { set.range(containing: $0) != nil }), placed[i] == nil || placed[i] == mine {
                    done.append((i, mine))
                    continue
                }
                if let want = placed[i] {
                    if set.range(containing: want)?.gateway == want {
                        rollback()
                        throw .addressUnavailable("requested address \(want) is the gateway of its range")
                    }
                    let reserved: Bool
                    do throws(CNIError) { reserved = try store.reserve(want, owner: owner) } catch { rollback(); throw error }
                    guard reserved else {
                        rollback()
                        throw .addressUnavailable("requested address \(want) is already allocated")
                    }
                    done.append((i, want))
                    continue
                }
                do throws(CNIError) {
                    let got = try next(in: set, index: i, store: store, owner: owner, taken: taken)
                    done.append((i, got))
                } catch {
                    rollback()
                    throw error
                }
            }
            return done.map { i, a in
                let r = rangeSets[i].range(containing: a)!
                return AllocatedAddress(address: IPInterfaceAddress(address: a, prefixLength: r.subnet.prefixLength), gateway: r.gateway)
            }
        }
    }

    private func next(in set: RangeSet, index: Int, store: some IPAMStore, owner: AllocationOwner, taken: Set<IPAddress>) throws(CNIError) -> IPAddress {
        // Walk from the address after the last reserved one, wrapping through every range once.
        let last = try store.lastReserved(rangeSet: index)
        var startRange = 0
        var cursor = set.ranges[0].rangeStart
        if let last, let ri = set.ranges.firstIndex(where: { $0.contains(last) }) {
            startRange = ri
            if last < set.ranges[ri].rangeEnd, let n = last.advanced(by: 1) {
                cursor = n
            } else {
                startRange = (ri + 1) % set.ranges.count
                cursor = set.ranges[startRange].rangeStart
            }
        }
        // Visit each range once, and the starting range's head (before cursor) last.
        var order: [(IPRange, IPAddress, IPAddress)] = []
        let first = set.ranges[startRange]
        order.append((first, cursor, first.rangeEnd))
        for k in 1..<set.ranges.count { let r = set.ranges[(startRange + k) % set.ranges.count]; order.append((r, r.rangeStart, r.rangeEnd)) }
        if cursor > first.rangeStart, let headEnd = cursor.advanced(by: -1) { order.append((first, first.rangeStart, headEnd)) }

        for (range, from, to) in order {
            var a = from
            while true {
                if a != range.gateway && !taken.contains(a) {
                    if try store.reserve(a, owner: owner) {
                        // `a` is not yet in the caller's rollback list: release it here if this fails.
                        do throws(CNIError) { try store.setLastReserved(a, rangeSet: index) } catch { try? store.release(a); throw error }
                        return a
                    }
                }
                guard a < to, let n = a.advanced(by: 1) else { break }
                a = n
            }
        }
        let desc = set.ranges.map(\.description).joined(separator: ", ")
        throw .rangeExhausted("no \(set.family) address left in range set \(index) (\(desc)): all \(set.capacity) are allocated; release some with DEL or GC, or widen the range")
    }

    /// Releases what `attachment` holds. Idempotent: releasing nothing is not an error.
    @discardableResult
    public func release(in store: some IPAMStore, _ attachment: Attachment) throws(CNIError) -> [IPAddress] {
        try store.locked { () throws(CNIError) -> [IPAddress] in
            let mine = try store.allocations().filter { $0.owner?.attachment == attachment }.map(\.address)
            for a in mine { try store.release(a) }
            return mine
        }
    }

    /// Releases every allocation whose attachment is not in `valid`, and unreadable records.
    /// Continues past individual failures, as GC must.
    @discardableResult
    public func collectGarbage(in store: some IPAMStore, valid: Set<Attachment>) throws(CNIError) -> [IPAddress] {
        try store.locked { () throws(CNIError) -> [IPAddress] in
            var freed: [IPAddress] = []
            for a in try store.allocations() where a.owner.map({ !valid.contains($0.attachment) }) ?? true {
                if (try? store.release(a.address)) != nil { freed.append(a.address) }
            }
            return freed
        }
    }
}
