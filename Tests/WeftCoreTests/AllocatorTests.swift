import Testing
import WeftCore
import WeftOSFakes

private func range(_ subnet: String, start: String? = nil, end: String? = nil, gateway: String? = nil) throws -> IPRange {
    try IPRange(subnet: net(subnet), rangeStart: start.map { ip($0) }, rangeEnd: end.map { ip($0) }, gateway: gateway.map { ip($0) })
}

private func rangeSet(_ ranges: IPRange...) throws -> RangeSet { try RangeSet(ranges, path: "test") }

private func owner(_ c: String, _ ifname: String = "eth0") -> AllocationOwner {
    AllocationOwner(containerID: c, ifname: ifname, podNamespace: "default", podName: "pod-\(c)")
}

private func addresses(_ a: [AllocatedAddress]) -> [IPAddress] { a.map(\.address.address) }

/// Addresses held by `o`'s attachment in `store`.
private func held(by o: AllocationOwner, in store: MemoryIPAMStore) throws -> [IPAddress] {
    try store.allocations().filter { $0.owner?.attachment == o.attachment }.map(\.address)
}

@Suite struct AllocatorSequentialTests {
    @Test func sequentialSkipsNetworkGatewayAndBroadcast() throws {
        let store = MemoryIPAMStore()
        let alloc = Allocator(rangeSets: [try rangeSet(try range("10.0.0.0/29"))])
        var got: [IPAddress] = []
        for i in 1...5 {
            let r = try alloc.allocate(in: store, for: owner("c\(i)"))
            #expect(r.count == 1)
            #expect(r.first?.address.prefixLength == 29)
            #expect(r.first?.gateway == ip("10.0.0.1"))
            got += addresses(r)
        }
        #expect(got == ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"].map { ip($0) })
        #expect(try store.lastReserved(rangeSet: 0) == ip("10.0.0.6"))
        // Each address is recorded with its owner.
        #expect(store.owner(of: ip("10.0.0.4")) == .some(owner("c3")))
        expectCNIError(code: 100) { _ = try alloc.allocate(in: store, for: owner("c6")) }
        #expect(store.addresses.count == 5)
        #expect(!store.addresses.contains(ip("10.0.0.0")))
        #expect(!store.addresses.contains(ip("10.0.0.1")))
        #expect(!store.addresses.contains(ip("10.0.0.7")))
    }

    @Test func gatewayInsideTheRangeIsSkipped() throws {
        let store = MemoryIPAMStore()
        let alloc = Allocator(rangeSets: [try rangeSet(try range("10.0.0.0/29", gateway: "10.0.0.3"))])
        var got: [IPAddress] = []
        for i in 1...5 { got += addresses(try alloc.allocate(in: store, for: owner("c\(i)"))) }
        #expect(got == ["10.0.0.1", "10.0.0.2", "10.0.0.4", "10.0.0.5", "10.0.0.6"].map { ip($0) })
        expectCNIError(code: 100, mentioning: ["all 5 are allocated"]) { _ = try alloc.allocate(in: store, for: owner("x")) }
    }

    @Test func rangeBoundsAreRespected() throws {
        let store = MemoryIPAMStore()
        let alloc = Allocator(rangeSets: [try rangeSet(try range("10.0.0.0/24", start: "10.0.0.10", end: "10.0.0.12"))])
        var got: [IPAddress] = []
        for i in 1...3 { got += addresses(try alloc.allocate(in: store, for: owner("c\(i)"))) }
        #expect(got == ["10.0.0.10", "10.0.0.11", "10.0.0.12"].map { ip($0) })
        let e = expectCNIError(code: 100, mentioning: ["IPv4", "range set 0", "10.0.0.0/24", "all 3 are allocated"]) {
            _ = try alloc.allocate(in: store, for: owner("c4"))
        }
        #expect(e?.msg.contains("10.0.0.10") == true)
    }

    @Test func ipv6Allocation() throws {
        let store = MemoryIPAMStore()
        let alloc = Allocator(rangeSets: [try rangeSet(try range("fd00:22::/64"))])
        let a = try alloc.allocate(in: store, for: owner("a"))
        let b = try alloc.allocate(in: store, for: owner("b"))
        #expect(a == [AllocatedAddress(address: ifaddr("fd00:22::2/64"), gateway: ip("fd00:22::1"))])
        #expect(addresses(b) == [ip("fd00:22::3")])
    }

    @Test func ipv6RangeReachesTheLastAddress() throws {
        let store = MemoryIPAMStore()
        let alloc = Allocator(rangeSets: [try rangeSet(try range("fd00::/126"))])
        #expect(addresses(try alloc.allocate(in: store, for: owner("a"))) == [ip("fd00::2")])
        #expect(addresses(try alloc.allocate(in: store, for: owner("b"))) == [ip("fd00::3")])
        expectCNIError(code: 100, mentioning: ["IPv6", "all 2 are allocated"]) { _ = try alloc.allocate(in: store, for: owner("c")) }
    }
}

@Suite struct AllocatorRoundRobinTests {
    @Test func continuesAfterTheLastReservedAddress() throws {
        let store = MemoryIPAMStore()
        let alloc = Allocator(rangeSets: [try rangeSet(try range("10.0.0.0/29"))])
        #expect(addresses(try alloc.allocate(in: store, for: owner("c1"))) == [ip("10.0.0.2")])
        #expect(addresses(try alloc.allocate(in: store, for: owner("c2"))) == [ip("10.0.0.3")])
        try alloc.release(in: store, owner("c1").attachment)
        // .2 is free again but the next pod gets .4: freed addresses are not reused at once.
        #expect(addresses(try alloc.allocate(in: store, for: owner("c3"))) == [ip("10.0.0.4")])
    }

    @Test func wrapsToTheStart() throws {
        let store = MemoryIPAMStore()
        let alloc = Allocator(rangeSets: [try rangeSet(try range("10.0.0.0/29"))])
        for i in 1...3 { _ = try alloc.allocate(in: store, for: owner("c\(i)")) } // .2 .3 .4
        try alloc.release(in: store, owner("c1").attachment)
        try alloc.release(in: store, owner("c2").attachment)
        #expect(addresses(try alloc.allocate(in: store, for: owner("c4"))) == [ip("10.0.0.5")])
        #expect(addresses(try alloc.allocate(in: store, for: owner("c5"))) == [ip("10.0.0.6")])
        // At the end of the range: wrap, and skip the gateway .1.
        #expect(addresses(try alloc.allocate(in: store, for: owner("c6"))) == [ip("10.0.0.2")])
        #expect(addresses(try alloc.allocate(in: store, for: owner("c7"))) == [ip("10.0.0.3")])
        expectCNIError(code: 100) { _ = try alloc.allocate(in: store, for: owner("c8")) }
    }

    @Test func wrapsPastTakenAddressesToTheOnlyFreeOne() throws {
        let store = MemoryIPAMStore()
        let alloc = Allocator(rangeSets: [try rangeSet(try range("10.0.0.0/29"))])
        for i in 1...5 { _ = try alloc.allocate(in: store, for: owner("c\(i)")) } // .2 ... .6, last = .6
        try alloc.release(in: store, owner("c4").attachment) // .5
        #expect(addresses(try alloc.allocate(in: store, for: owner("c6"))) == [ip("10.0.0.5")])
        #expect(try store.lastReserved(rangeSet: 0) == ip("10.0.0.5"))
        try alloc.release(in: store, owner("c2").attachment) // .3
        #expect(addresses(try alloc.allocate(in: store, for: owner("c7"))) == [ip("10.0.0.3")])
    }

    @Test func lastReservedOutsideTheRangesStartsAtTheBeginning() throws {
        let store = MemoryIPAMStore()
        let alloc = Allocator(rangeSets: [try rangeSet(try range("10.0.0.0/29"))])
        try store.locked { () throws(CNIError) in try store.setLastReserved(ip("192.168.9.9"), rangeSet: 0) }
        #expect(addresses(try alloc.allocate(in: store, for: owner("a"))) == [ip("10.0.0.2")])
        // Another family's address (a config changed from IPv6 to IPv4) is ignored too.
        let store2 = MemoryIPAMStore()
        try store2.locked { () throws(CNIError) in try store2.setLastReserved(ip("fd00::5"), rangeSet: 0) }
        #expect(addresses(try alloc.allocate(in: store2, for: owner("a"))) == [ip("10.0.0.2")])
    }

    @Test func lastReservedIsTrackedPerRangeSet() throws {
        let store = MemoryIPAMStore()
        let alloc = Allocator(rangeSets: [try rangeSet(try range("10.0.0.0/24")), try rangeSet(try range("fd00::/120"))])
        _ = try alloc.allocate(in: store, for: owner("a"))
        _ = try alloc.allocate(in: store, for: owner("b"))
        #expect(try store.lastReserved(rangeSet: 0) == ip("10.0.0.3"))
        #expect(try store.lastReserved(rangeSet: 1) == ip("fd00::3"))
        try store.locked { () throws(CNIError) in try store.setLastReserved(ip("fd00::80"), rangeSet: 1) }
        #expect(addresses(try alloc.allocate(in: store, for: owner("c"))) == [ip("10.0.0.4"), ip("fd00::81")])
    }
}

@Suite struct AllocatorMultiRangeTests {
    /// Range A: 10.0.0.10-12 (gateway 10.0.0.1 outside it), range B: 10.0.1.10-11.
    static func twoRanges() throws -> Allocator {
        Allocator(rangeSets: [try rangeSet(try range("10.0.0.0/24", start: "10.0.0.10", end: "10.0.0.12"),
                                           try range("10.0.1.0/24", start: "10.0.1.10", end: "10.0.1.11"))])
    }

    @Test func fillsOneRangeThenTheNext() throws {
        let store = MemoryIPAMStore()
        let alloc = try Self.twoRanges()
        var got: [AllocatedAddress] = []
        for i in 1...5 { got += try alloc.allocate(in: store, for: owner("c\(i)")) }
        #expect(addresses(got) == ["10.0.0.10", "10.0.0.11", "10.0.0.12", "10.0.1.10", "10.0.1.11"].map { ip($0) })
        // Each address carries its own range's gateway and prefix.
        #expect(got.map(\.gateway) == [ip("10.0.0.1"), ip("10.0.0.1"), ip("10.0.0.1"), ip("10.0.1.1"), ip("10.0.1.1")])
        #expect(got.allSatisfy { $0.address.prefixLength == 24 })
        expectCNIError(code: 100, mentioning: ["all 5 are allocated", "10.0.0.0/24", "10.0.1.0/24"]) {
            _ = try alloc.allocate(in: store, for: owner("c6"))
        }
        // Wrap from the end of the last range to the head of the first.
        try alloc.release(in: store, owner("c1").attachment)
        #expect(addresses(try alloc.allocate(in: store, for: owner("c7"))) == [ip("10.0.0.10")])
    }

    @Test func visitsTheTailThenOtherRangesThenTheHead() throws {
        let store = MemoryIPAMStore()
        let alloc = try Self.twoRanges()
        _ = try alloc.allocate(in: store, for: owner("x")) // 10.0.0.10
        _ = try alloc.allocate(in: store, for: owner("y")) // 10.0.0.11
        try alloc.release(in: store, owner("x").attachment)
        // Cursor is after .11 in range A: the tail .12 first, then range B, then A's head .10.
        #expect(addresses(try alloc.allocate(in: store, for: owner("c1"))) == [ip("10.0.0.12")])
        #expect(addresses(try alloc.allocate(in: store, for: owner("c2"))) == [ip("10.0.1.10")])
        #expect(addresses(try alloc.allocate(in: store, for: owner("c3"))) == [ip("10.0.1.11")])
        #expect(addresses(try alloc.allocate(in: store, for: owner("c4"))) == [ip("10.0.0.10")])
        expectCNIError(code: 100) { _ = try alloc.allocate(in: store, for: owner("c5")) }
    }

    @Test func lastAtTheEndOfARangeMovesToTheNextRange() throws {
        let store = MemoryIPAMStore()
        let alloc = try Self.twoRanges()
        try store.locked { () throws(CNIError) in try store.setLastReserved(ip("10.0.0.12"), rangeSet: 0) }
        #expect(addresses(try alloc.allocate(in: store, for: owner("a"))) == [ip("10.0.1.10")])
        try store.locked { () throws(CNIError) in try store.setLastReserved(ip("10.0.1.11"), rangeSet: 0) }
        #expect(addresses(try alloc.allocate(in: store, for: owner("b"))) == [ip("10.0.0.10")])
    }
}

@Suite struct AllocatorDualStackTests {
    static func dual() throws -> Allocator {
        Allocator(rangeSets: [try rangeSet(try range("10.22.0.0/24")), try rangeSet(try range("fd00:22::/64"))])
    }

    @Test func oneAddressPerSetWithGatewayAndPrefix() throws {
        let store = MemoryIPAMStore()
        let r = try Self.dual().allocate(in: store, for: owner("a"))
        #expect(r == [
            AllocatedAddress(address: ifaddr("10.22.0.2/24"), gateway: ip("10.22.0.1")),
            AllocatedAddress(address: ifaddr("fd00:22::2/64"), gateway: ip("fd00:22::1")),
        ])
        #expect(try held(by: owner("a"), in: store) == [ip("10.22.0.2"), ip("fd00:22::2")])
    }

    @Test func exhaustionInOneSetLeavesNothingInTheOthers() throws {
        let store = MemoryIPAMStore()
        // Set 0 is large, set 1 has a single address, so set 0 succeeds before set 1 fails.
        let alloc = Allocator(rangeSets: [try rangeSet(try range("fd00:22::/64")), try rangeSet(try range("10.22.0.0/30"))])
        _ = try alloc.allocate(in: store, for: owner("a"))
        let before = store.addresses
        expectCNIError(code: 100, mentioning: ["range set 1", "IPv4", "10.22.0.0/30", "all 1 are allocated"]) {
            _ = try alloc.allocate(in: store, for: owner("b"))
        }
        #expect(store.addresses == before)
        #expect(try held(by: owner("b"), in: store).isEmpty)
    }

    @Test func storeFailureMidWayLeavesNothing() throws {
        let store = MemoryIPAMStore()
        let alloc = Allocator(rangeSets: [try rangeSet(try range("10.22.0.0/24")), try rangeSet(try range("fd00:22::/64")),
                                          try rangeSet(try range("10.23.0.0/24"))])
        for n in 0..<3 {
            store.failReserveAfter = n
            expectCNIError(code: 5) { _ = try alloc.allocate(in: store, for: owner("a")) }
            #expect(store.addresses.isEmpty, "failReserveAfter \(n)")
        }
        store.failReserveAfter = nil
        let r = try alloc.allocate(in: store, for: owner("a"))
        #expect(r.count == 3)
        #expect(Set(store.addresses) == Set(addresses(r)))
        #expect(try held(by: owner("a"), in: store).count == 3)
    }

    @Test func storeFailureOnARequestedAddressLeavesNothing() throws {
        let store = MemoryIPAMStore()
        let alloc = try Self.dual()
        store.failReserveAfter = 1
        expectCNIError(code: 5) { _ = try alloc.allocate(in: store, for: owner("a"), requested: [ip("fd00:22::50")]) }
        #expect(store.addresses.isEmpty)
        store.failReserveAfter = 0
        expectCNIError(code: 5) { _ = try alloc.allocate(in: store, for: owner("a"), requested: [ip("10.22.0.50")]) }
        #expect(store.addresses.isEmpty)
    }

    @Test func storeFailureRecordingLastReservedLeavesNothing() throws {
        let store = MemoryIPAMStore()
        store.failSetLastReserved = true
        expectCNIError(code: 5) { _ = try Self.dual().allocate(in: store, for: owner("a")) }
        #expect(store.addresses.isEmpty)
    }

    @Test func failureDoesNotReleaseWhatTheOwnerAlreadyHeld() throws {
        let store = MemoryIPAMStore()
        let alloc = Allocator(rangeSets: [try rangeSet(try range("10.22.0.0/24")), try rangeSet(try range("fd00:22::/126"))])
        store.insert(ip("10.22.0.9"), owner: owner("a"))
        store.insert(ip("fd00:22::2"), owner: owner("x"))
        store.insert(ip("fd00:22::3"), owner: owner("y"))
        expectCNIError(code: 100) { _ = try alloc.allocate(in: store, for: owner("a")) }
        #expect(try held(by: owner("a"), in: store) == [ip("10.22.0.9")])
    }
}

@Suite struct AllocatorRequestedTests {
    @Test func requestedAddressIsHonoured() throws {
        let store = MemoryIPAMStore()
        let alloc = try AllocatorDualStackTests.dual()
        let r = try alloc.allocate(in: store, for: owner("a"), requested: [ip("10.22.0.42")])
        #expect(r == [
            AllocatedAddress(address: ifaddr("10.22.0.42/24"), gateway: ip("10.22.0.1")),
            AllocatedAddress(address: ifaddr("fd00:22::2/64"), gateway: ip("fd00:22::1")),
        ])
        // Given in any order, results follow the range sets.
        let both = try alloc.allocate(in: store, for: owner("b"), requested: [ip("fd00:22::99"), ip("10.22.0.99")])
        #expect(addresses(both) == [ip("10.22.0.99"), ip("fd00:22::99")])
        #expect(store.owner(of: ip("fd00:22::99")) == .some(owner("b")))
    }

    @Test func requestedGatewayIsRefused() throws {
        let store = MemoryIPAMStore()
        let alloc = try AllocatorDualStackTests.dual()
        expectCNIError(code: 101, mentioning: ["10.22.0.1", "gateway"]) {
            _ = try alloc.allocate(in: store, for: owner("a"), requested: [ip("10.22.0.1")])
        }
        // In the second set, after the first set reserved: rolled back.
        expectCNIError(code: 101, mentioning: ["fd00:22::1", "gateway"]) {
            _ = try alloc.allocate(in: store, for: owner("a"), requested: [ip("fd00:22::1")])
        }
        #expect(store.addresses.isEmpty)
    }

    @Test func requestedTakenAddressIsRefused() throws {
        let store = MemoryIPAMStore()
        let alloc = try AllocatorDualStackTests.dual()
        _ = try alloc.allocate(in: store, for: owner("a"), requested: [ip("fd00:22::7")])
        let before = store.addresses
        expectCNIError(code: 101, mentioning: ["fd00:22::7", "already allocated"]) {
            _ = try alloc.allocate(in: store, for: owner("b"), requested: [ip("fd00:22::7")])
        }
        #expect(store.addresses == before)
        #expect(store.owner(of: ip("fd00:22::7")) == .some(owner("a")))
    }

    @Test(arguments: ["10.99.0.5", "10.22.0.0", "10.22.0.255", "fd01::5", "fd00:22:0:1::5"])
    func requestedOutsideEveryRangeIsRefused(address: String) throws {
        let store = MemoryIPAMStore()
        expectCNIError(code: 101, mentioning: [address, "none of the configured ranges", "10.22.0.0/24"]) {
            _ = try AllocatorDualStackTests.dual().allocate(in: store, for: owner("a"), requested: [ip(address)])
        }
        #expect(store.addresses.isEmpty)
    }

    @Test func requestedInSubnetButOutsideTheRangeIsRefused() throws {
        let store = MemoryIPAMStore()
        let alloc = Allocator(rangeSets: [try rangeSet(try range("10.0.0.0/24", start: "10.0.0.100", end: "10.0.0.200"))])
        expectCNIError(code: 101, mentioning: ["10.0.0.50"]) { _ = try alloc.allocate(in: store, for: owner("a"), requested: [ip("10.0.0.50")]) }
        #expect(addresses(try alloc.allocate(in: store, for: owner("a"), requested: [ip("10.0.0.150")])) == [ip("10.0.0.150")])
    }

    @Test func twoRequestsInOneSetAreRefused() throws {
        let store = MemoryIPAMStore()
        expectCNIError(code: 101, mentioning: ["10.22.0.5", "10.22.0.6", "same range set"]) {
            _ = try AllocatorDualStackTests.dual().allocate(in: store, for: owner("a"), requested: [ip("10.22.0.5"), ip("10.22.0.6")])
        }
        #expect(store.addresses.isEmpty)
    }
}

@Suite struct AllocatorRetryAndReleaseTests {
    @Test func retryForTheSameAttachmentReturnsTheSameAddresses() throws {
        let store = MemoryIPAMStore()
        let alloc = try AllocatorDualStackTests.dual()
        let first = try alloc.allocate(in: store, for: owner("a"))
        let reserves = store.reserveCount
        let snapshot = try store.allocations()
        let again = try alloc.allocate(in: store, for: owner("a"))
        #expect(again == first)
        #expect(store.reserveCount == reserves)
        #expect(try store.allocations() == snapshot)
        // Pod metadata does not matter: the attachment (container + ifname) is the key.
        let bare = AllocationOwner(containerID: "a", ifname: "eth0")
        #expect(try alloc.allocate(in: store, for: bare) == first)
        #expect(store.reserveCount == reserves)
    }

    @Test func retryWithTheSameRequestedAddress() throws {
        let store = MemoryIPAMStore()
        let alloc = try AllocatorDualStackTests.dual()
        let first = try alloc.allocate(in: store, for: owner("a"), requested: [ip("10.22.0.42")])
        let reserves = store.reserveCount
        #expect(try alloc.allocate(in: store, for: owner("a"), requested: [ip("10.22.0.42")]) == first)
        #expect(store.reserveCount == reserves)
    }

    @Test func retryAfterAPartialAllocationCompletesIt() throws {
        let store = MemoryIPAMStore()
        let alloc = try AllocatorDualStackTests.dual()
        store.insert(ip("10.22.0.77"), owner: owner("a")) // a crash left only the IPv4 address
        let r = try alloc.allocate(in: store, for: owner("a"))
        #expect(addresses(r) == [ip("10.22.0.77"), ip("fd00:22::2")])
        #expect(store.reserveCount == 1)
    }

    @Test func anotherInterfaceOfTheSameContainerGetsItsOwnAddress() throws {
        let store = MemoryIPAMStore()
        let alloc = try AllocatorDualStackTests.dual()
        let eth0 = try alloc.allocate(in: store, for: owner("a", "eth0"))
        let net1 = try alloc.allocate(in: store, for: owner("a", "net1"))
        #expect(Set(addresses(eth0)).isDisjoint(with: addresses(net1)))
        #expect(store.addresses.count == 4)
    }

    @Test func releaseByAttachmentIsIdempotent() throws {
        let store = MemoryIPAMStore()
        let alloc = try AllocatorDualStackTests.dual()
        let a = try alloc.allocate(in: store, for: owner("a"))
        let b = try alloc.allocate(in: store, for: owner("b"))
        let released = try alloc.release(in: store, owner("a").attachment)
        #expect(Set(released) == Set(addresses(a)))
        #expect(Set(store.addresses) == Set(addresses(b)))
        #expect(try alloc.release(in: store, owner("a").attachment).isEmpty)
        #expect(try alloc.release(in: store, Attachment(containerID: "never", ifname: "eth0")).isEmpty)
        // Only the exact attachment: same container, other interface, is untouched.
        let n = try alloc.allocate(in: store, for: owner("b", "net1"))
        try alloc.release(in: store, owner("b", "eth0").attachment)
        #expect(Set(store.addresses) == Set(addresses(n)))
    }

    @Test func releaseDoesNotTouchOrphans() throws {
        let store = MemoryIPAMStore()
        store.insertOrphan(ip("10.22.0.9"))
        #expect(try Allocator(rangeSets: []).release(in: store, Attachment(containerID: "a", ifname: "eth0")).isEmpty)
        #expect(store.owner(of: ip("10.22.0.9")) == .some(nil))
    }

    @Test func orphanRecordsAreNotReallocated() throws {
        let store = MemoryIPAMStore()
        store.insertOrphan(ip("10.0.0.2"))
        let alloc = Allocator(rangeSets: [try rangeSet(try range("10.0.0.0/29"))])
        #expect(addresses(try alloc.allocate(in: store, for: owner("a"))) == [ip("10.0.0.3")])
    }

    @Test func garbageCollection() throws {
        let store = MemoryIPAMStore()
        let alloc = try AllocatorDualStackTests.dual()
        let keep = try alloc.allocate(in: store, for: owner("keep"))
        let gone = try alloc.allocate(in: store, for: owner("gone"))
        let otherIf = try alloc.allocate(in: store, for: owner("keep", "net1"))
        store.insertOrphan(ip("10.22.0.200"))
        let freed = try alloc.collectGarbage(in: store, valid: [owner("keep").attachment, Attachment(containerID: "absent", ifname: "eth0")])
        #expect(Set(freed) == Set(addresses(gone) + addresses(otherIf) + [ip("10.22.0.200")]))
        #expect(Set(store.addresses) == Set(addresses(keep)))
        // Nothing more to collect.
        #expect(try alloc.collectGarbage(in: store, valid: [owner("keep").attachment]).isEmpty)
        // An empty valid set frees everything.
        #expect(Set(try alloc.collectGarbage(in: store, valid: [])) == Set(addresses(keep)))
        #expect(store.addresses.isEmpty)
    }

    @Test func garbageCollectionContinuesPastFailures() throws {
        let store = MemoryIPAMStore()
        let alloc = try AllocatorDualStackTests.dual()
        let a = try alloc.allocate(in: store, for: owner("a"))
        let b = try alloc.allocate(in: store, for: owner("b"))
        store.failRelease = [a[0].address.address]
        let freed = try alloc.collectGarbage(in: store, valid: [])
        #expect(Set(freed) == Set([a[1].address.address] + addresses(b)))
        #expect(store.addresses == [a[0].address.address])
    }

    @Test func everyStoreCallHappensUnderTheLock() throws {
        let store = MemoryIPAMStore()
        let alloc = try AllocatorDualStackTests.dual()
        _ = try alloc.allocate(in: store, for: owner("a"), requested: [ip("fd00:22::9")])
        _ = try alloc.allocate(in: store, for: owner("b"))
        _ = try alloc.allocate(in: store, for: owner("b"))
        try alloc.release(in: store, owner("a").attachment)
        try alloc.collectGarbage(in: store, valid: [])
        #expect(store.lockCount == 5)
        #expect(store.mutationsOutsideLock == 0)
    }

    @Test func concurrentAllocationsNeverCollide() async throws {
        let store = MemoryIPAMStore()
        let alloc = Allocator(rangeSets: [try rangeSet(try range("10.0.0.0/24"))])
        let results = await withTaskGroup(of: [IPAddress].self) { group in
            for i in 0..<200 {
                group.addTask { (try? alloc.allocate(in: store, for: owner("c\(i)")).map(\.address.address)) ?? [] }
            }
            var all: [IPAddress] = []
            for await r in group { all += r }
            return all
        }
        #expect(results.count == 200)
        #expect(Set(results).count == 200)
        #expect(store.addresses.count == 200)
    }
}

@Suite struct RangeModelTests {
    @Test func capacityAndContains() throws {
        let r = try range("10.0.0.0/29")
        #expect(r.rangeStart == ip("10.0.0.1") && r.rangeEnd == ip("10.0.0.6"))
        #expect(r.capacity == 5)
        #expect(r.contains(ip("10.0.0.1")) && r.contains(ip("10.0.0.6")))
        #expect(!r.contains(ip("10.0.0.0")) && !r.contains(ip("10.0.0.7")) && !r.contains(ip("::a00:3")))
        #expect(try range("10.0.0.0/24", start: "10.0.0.10", end: "10.0.0.19").capacity == 10)
        #expect(try IPRange(subnet: net("10.0.0.0/29"), defaultGateway: false).gateway == nil)
        #expect(try IPRange(subnet: net("10.0.0.0/29"), defaultGateway: false).capacity == 6)
        #expect(try range("fd00::/64").capacity == (UInt128(1) << 64) - 2)
        #expect(try range("10.0.0.0/29").description == "10.0.0.0/29 [10.0.0.1-10.0.0.6]")
    }

    @Test func overlaps() throws {
        let a = try range("10.0.0.0/24", start: "10.0.0.10", end: "10.0.0.20")
        #expect(a.overlaps(try range("10.0.0.0/24", start: "10.0.0.20", end: "10.0.0.30")))
        #expect(a.overlaps(try range("10.0.0.0/24", start: "10.0.0.12", end: "10.0.0.13")))
        #expect(!a.overlaps(try range("10.0.0.0/24", start: "10.0.0.21", end: "10.0.0.30")))
        #expect(!a.overlaps(try range("fd00::/64")))
    }

    @Test func rangeSetLookups() throws {
        let s = try rangeSet(try range("10.0.0.0/24", start: "10.0.0.10", end: "10.0.0.20"), try range("10.0.1.0/24"))
        #expect(s.family == .v4)
        #expect(s.range(containing: ip("10.0.1.5"))?.subnet == net("10.0.1.0/24"))
        #expect(s.range(containing: ip("10.0.0.5")) == nil)
        #expect(s.capacity == 11 + 253)
        expectCNIError(code: 7, mentioning: ["test", "empty"]) { _ = try RangeSet([], path: "test") }
    }
}
