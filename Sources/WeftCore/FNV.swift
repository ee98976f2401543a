/// FNV-1a, 64-bit: a stable hash (the same in every process and run, unlike Swift's seeded
/// Hasher) for names derived from other names: veth names, rule digests, block offsets.
public func fnv1a64(_ s: String) -> UInt64 {
    var h: UInt64 = 0xcbf2_9ce4_8422_2325
    for b in s.utf8 { h = (h ^ UInt64(b)) &* 0x0000_0100_0000_01b3 }
    return h
}

/// `v` as 16 lowercase hex digits.
public func hex16(_ v: UInt64) -> String {
    let hex = String(v, radix: 16)
    return String(repeating: "0", count: 16 - hex.count) + hex
}
