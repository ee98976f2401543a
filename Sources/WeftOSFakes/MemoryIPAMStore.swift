#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import WeftCore

/// An in-memory `IPAMStore` for the allocator's tests and for the CNI handler's tests.
///
/// Locking: one recursive pthread mutex. `locked` holds it for the whole body, and every other
/// method also takes it, so the allocator's calls made inside `locked` re-enter it on the same
/// thread without deadlocking, while direct calls from a test (inspection, seeding) are still
/// safe from any thread. Mutations made without `locked` being held are counted in
/// `mutationsOutsideLock`, so a test can check that the allocator honours the store contract.
///
/// Test hooks: `failReserveAfter` (inject an I/O failure part-way through an allocation),
/// `failRelease` (addresses whose release fails), `failSetLastReserved`, and `insertOrphan`
/// (an ownerless, i.e. unreadable, record as a crash may leave on disk).
public final class MemoryIPAMStore: IPAMStore, @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    /// How deep the current `locked` calls are nested. Only read or written with `mutex` held.
    private var lockDepth = 0

    private var records: [IPAddress: AllocationOwner?] = [:]
    private var last: [Int: IPAddress] = [:]

    private var _failReserveAfter: Int?
    private var reservesSinceArmed = 0
    private var _failRelease: Set<IPAddress> = []
    private var _failSetLastReserved = false
    private var _reserveCount = 0
    private var _releaseCount = 0
    private var _lockCount = 0
    private var _mutationsOutsideLock = 0

    public init() {
        mutex = .allocate(capacity: 1)
        var attr = pthread_mutexattr_t()
        pthread_mutexattr_init(&attr)
        pthread_mutexattr_settype(&attr, Int32(PTHREAD_MUTEX_RECURSIVE))
        pthread_mutex_init(mutex, &attr)
        pthread_mutexattr_destroy(&attr)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    private func withMutex<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }

    // MARK: IPAMStore

    public func locked<T>(_ body: () throws(CNIError) -> T) throws(CNIError) -> T {
        try withMutex { () throws(CNIError) -> T in
            lockDepth += 1
            _lockCount += 1
            defer { lockDepth -= 1 }
            return try body()
        }
    }

    public func reserve(_ address: IPAddress, owner: AllocationOwner) throws(CNIError) -> Bool {
        try withMutex { () throws(CNIError) -> Bool in
            noteMutation()
            if let n = _failReserveAfter, reservesSinceArmed >= n {
                throw .ioFailure("MemoryIPAMStore: injected failure reserving \(address) (failReserveAfter \(n))")
            }
            guard records[address] == nil else { return false }
            records[address] = .some(owner)
            reservesSinceArmed += 1
            _reserveCount += 1
            return true
        }
    }

    public func release(_ address: IPAddress) throws(CNIError) {
        try withMutex { () throws(CNIError) in
            noteMutation()
            if _failRelease.contains(address) {
                throw .ioFailure("MemoryIPAMStore: injected failure releasing \(address)")
            }
            if records.removeValue(forKey: address) != nil { _releaseCount += 1 }
        }
    }

    public func allocations() throws(CNIError) -> [Allocation] {
        withMutex {
            records.map { Allocation(address: $0.key, owner: $0.value) }.sorted { $0.address < $1.address }
        }
    }

    public func lastReserved(rangeSet: Int) throws(CNIError) -> IPAddress? {
        withMutex { last[rangeSet] }
    }

    public func setLastReserved(_ address: IPAddress, rangeSet: Int) throws(CNIError) {
        try withMutex { () throws(CNIError) in
            noteMutation()
            if _failSetLastReserved {
                throw .ioFailure("MemoryIPAMStore: injected failure recording the last reserved address \(address)")
            }
            last[rangeSet] = address
        }
    }

    private func noteMutation() {
        if lockDepth == 0 { _mutationsOutsideLock += 1 }
    }

    // MARK: test hooks and inspection

    /// When set, `reserve` throws `CNIError.ioFailure` once `n` reserves have succeeded since it
    /// was set (0: the next reserve fails). Setting it (or nil) restarts the count.
    public var failReserveAfter: Int? {
        get { withMutex { _failReserveAfter } }
        set { withMutex { _failReserveAfter = newValue; reservesSinceArmed = 0 } }
    }

    /// Addresses whose `release` throws `CNIError.ioFailure` (the record stays).
    public var failRelease: Set<IPAddress> {
        get { withMutex { _failRelease } }
        set { withMutex { _failRelease = newValue } }
    }

    /// When true, `setLastReserved` throws `CNIError.ioFailure`.
    public var failSetLastReserved: Bool {
        get { withMutex { _failSetLastReserved } }
        set { withMutex { _failSetLastReserved = newValue } }
    }

    /// Adds an ownerless record for `a`, as an unreadable (torn) allocation file would appear.
    public func insertOrphan(_ a: IPAddress) {
        withMutex { records[a] = .some(nil) }
    }

    /// Adds a record for `a` held by `owner` directly, bypassing counters and failure hooks.
    public func insert(_ a: IPAddress, owner: AllocationOwner) {
        withMutex { records[a] = .some(owner) }
    }

    /// The current owner of `a`: nil if free, `.some(nil)` if held by an orphan record.
    public func owner(of a: IPAddress) -> AllocationOwner?? {
        withMutex { records[a] }
    }

    /// Addresses currently recorded, ascending.
    public var addresses: [IPAddress] { withMutex { records.keys.sorted() } }

    /// Successful reserves over the store's life.
    public var reserveCount: Int { withMutex { _reserveCount } }
    /// Releases that removed a record, over the store's life.
    public var releaseCount: Int { withMutex { _releaseCount } }
    /// Calls to `locked`.
    public var lockCount: Int { withMutex { _lockCount } }
    /// `reserve`/`release`/`setLastReserved` calls made while `locked` was not held.
    public var mutationsOutsideLock: Int { withMutex { _mutationsOutsideLock } }
}
