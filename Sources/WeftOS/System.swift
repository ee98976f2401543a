#if canImport(Glibc)
import Glibc
#endif

/// A failed system call: what was attempted and the errno. EINTR is retried in `retrying`,
/// the one place that handles it.
public struct SystemError: Error, Sendable, CustomStringConvertible {
    public var operation: String
    public var errno: Int32
    public init(_ operation: String, errno: Int32 = Glibc.errno) { self.operation = operation; self.errno = errno }
    public var description: String { "\(operation): \(String(cString: strerror(errno)))" }
}

@inline(__always)
func retrying<T: SignedInteger>(_ call: () -> T) -> T {
    while true {
        let r = call()
        if r < 0 && errno == EINTR { continue }
        return r
    }
}

/// Small file helpers over raw descriptors (no Foundation on the CNI path).
public enum Files {
    public static func read(_ path: String) throws(SystemError) -> [UInt8] {
        let fd = retrying { open(path, O_RDONLY | O_CLOEXEC) }
        guard fd >= 0 else { throw SystemError("open \(path)") }
        defer { close(fd) }
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = chunk.withUnsafeMutableBytes { b in retrying { Glibc.read(fd, b.baseAddress, b.count) } }
            guard n >= 0 else { throw SystemError("read \(path)") }
            if n == 0 { return out }
            out += chunk[0..<n]
        }
    }

    public static func readString(_ path: String) throws(SystemError) -> String {
        String(decoding: try read(path), as: UTF8.self)
    }

    /// Writes `bytes` to an open descriptor in full.
    static func writeAll(_ fd: Int32, _ bytes: [UInt8], path: String) throws(SystemError) {
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { b in retrying { Glibc.write(fd, b.baseAddress! + off, b.count - off) } }
            guard n > 0 else { throw SystemError("write \(path)") }
            off += n
        }
    }

    /// Replaces the file's contents by writing a temporary file and renaming it over, so a
    /// reader never sees a half-written file.
    public static func writeAtomically(_ path: String, _ bytes: [UInt8], mode: mode_t = 0o644) throws(SystemError) {
        let tmp = "\(path).tmp-\(getpid())"
        let fd = retrying { open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode) }
        guard fd >= 0 else { throw SystemError("create \(tmp)") }
        do throws(SystemError) { try writeAll(fd, bytes, path: tmp) } catch { close(fd); unlink(tmp); throw error }
        close(fd)
        guard rename(tmp, path) == 0 else { let e = SystemError("rename \(tmp) to \(path)"); unlink(tmp); throw e }
    }

    /// Writes to an existing file such as a sysctl, without creating or truncating.
    public static func writeExisting(_ path: String, _ text: String) throws(SystemError) {
        let fd = retrying { open(path, O_WRONLY | O_CLOEXEC) }
        guard fd >= 0 else { throw SystemError("open \(path)") }
        defer { close(fd) }
        try writeAll(fd, Array(text.utf8), path: path)
    }

    /// Appends in one write(2) with O_APPEND, so short records from concurrent writers never
    /// interleave; the file is created if missing.
    public static func append(_ path: String, _ bytes: [UInt8], mode: mode_t = 0o644) throws(SystemError) {
        let fd = retrying { open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, mode) }
        guard fd >= 0 else { throw SystemError("open \(path)") }
        defer { close(fd) }
        try writeAll(fd, bytes, path: path)
    }

    public static func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }

    /// mkdir -p.
    public static func makeDirectories(_ path: String, mode: mode_t = 0o755) throws(SystemError) {
        var built = ""
        for part in path.split(separator: "/") {
            built += "/" + part
            if mkdir(built, mode) != 0 && errno != EEXIST { throw SystemError("create directory \(built)") }
        }
    }

    /// Names in a directory, without "." and "..".
    public static func list(_ path: String) throws(SystemError) -> [String] {
        guard let dir = opendir(path) else { throw SystemError("open directory \(path)") }
        defer { closedir(dir) }
        var names: [String] = []
        while let e = readdir(dir) {
            let name = withUnsafePointer(to: e.pointee.d_name) { $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) } }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }
}

/// Kernel parameters under /proc/sys, for the namespace of the calling thread.
public enum Sysctl {
    public static func set(_ key: String, _ value: String) throws(SystemError) {
        try Files.writeExisting("/proc/sys/" + key.replacingDots(), value)
    }
    public static func get(_ key: String) throws(SystemError) -> String {
        var s = try Files.readString("/proc/sys/" + key.replacingDots())
        while s.last == "\n" { s.removeLast() }
        return s
    }
    /// Writes only when different, so repeated ensures stay read-only and cheap.
    public static func ensure(_ key: String, _ value: String) throws(SystemError) {
        if (try? get(key)) != value { try set(key, value) }
    }
}

private extension String {
    /// "net.ipv4.ip_forward" -> "net/ipv4/ip_forward"; keys already written with '/' are kept
    /// (interface names may contain dots: "net/ipv6/conf/eth0.100/accept_dad").
    func replacingDots() -> String { contains("/") ? self : String(map { $0 == "." ? "/" : $0 }) }
}
