import WeftCore
import WeftOS
#if canImport(Glibc)
import Glibc
#endif

/// Talks to the agents' HTTP endpoint from the CLI: each agent listens in its node's namespace,
/// which the CLI enters to connect (the socket stays in that namespace).
public enum AgentClient {
    public static let port: UInt16 = 9464

    /// GET `path` on 127.0.0.1:`port` in the calling thread's namespace; nil when it does not
    /// answer within `timeoutSeconds`.
    public static func get(port: UInt16, path: String, timeoutSeconds: Int = 2) -> (status: Int, body: [UInt8])? {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var tv = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = port.bigEndian
        addr.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
        let ok = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard ok == 0 else { return nil }
        let req = Array("GET \(path) HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".utf8)
        guard req.withUnsafeBytes({ send(fd, $0.baseAddress, $0.count, 0) }) == req.count else { return nil }
        var response: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { break }
            response += buf[0..<n]
        }
        // Status line, headers, a blank line, then the body (Content-Length; the server closes).
        guard let headEnd = response.firstRange(of: [13, 10, 13, 10]) else { return nil }
        let head = String(decoding: response[..<headEnd.lowerBound], as: UTF8.self)
        guard let status = head.split(separator: " ").dropFirst().first.flatMap({ Int($0) }) else { return nil }
        return (status, Array(response[headEnd.upperBound...]))
    }

    /// The flows node `netns`'s agent kept after `since`, and the cursor for the next call.
    public static func flows(netns: String, since: UInt64) throws -> (flows: [Flow], next: UInt64)? {
        let ns = try NetworkNamespace(path: "/run/netns/\(netns)")
        let answer = try ns.run { () -> (status: Int, body: [UInt8])? in get(port: port, path: "/flows?since=\(since)") }
        guard let answer, answer.status == 200, let j = try? JSONValue.parse(answer.body) else { return nil }
        return ((j["flows"]?.arrayValue ?? []).compactMap(Flow.init(json:)), UInt64(j["next"]?.intValue ?? Int(since)))
    }

    /// What node `netns`'s dataplane answers at `path` (see the agent's `/dataplane`): nil when
    /// the agent does not answer, else the status and the body.
    static func dataplane(netns: String, _ path: String) throws -> (status: Int, body: [UInt8])? {
        let ns = try NetworkNamespace(path: "/run/netns/\(netns)")
        return try ns.run { () -> (status: Int, body: [UInt8])? in get(port: port, path: path) }
    }

    /// A new connection to `address`:`port` as node `netns`'s dataplane treats it: `.success(nil)`
    /// when it has no such frontend, `.failure` with why when the agent cannot be asked.
    static func serviceTrace(netns: String, address: IPAddress, port: UInt16, proto: String) -> Result<ServiceTrace?, LabError> {
        answer(netns: netns, "/dataplane/service?address=\(address)&port=\(port)&protocol=\(proto)", ServiceTrace.init(json:))
    }

    static func policyTrace(netns: String, _ d: NetworkPolicy.Direction, pod: IPAddress, peer: IPAddress, port: UInt16?, proto: String) -> Result<PolicyTrace?, LabError> {
        answer(netns: netns, "/dataplane/policy?direction=\(d.word)&pod=\(pod)&peer=\(peer)\(port.map { "&port=\($0)" } ?? "")&protocol=\(proto)", PolicyTrace.init(json:))
    }

    /// The differences node `netns`'s dataplane finds between what it means to hold and the kernel.
    static func dataplaneDrift(netns: String) -> Result<[DataplaneDrift]?, LabError> {
        answer(netns: netns, "/dataplane/check") { j in (j["drift"]?.arrayValue ?? []).compactMap(DataplaneDrift.init(json:)) }
    }

    /// 404: `.success(nil)` (no such frontend; an agent without the endpoint).
    private static func answer<T>(netns: String, _ path: String, _ decode: (JSONValue) -> T?) -> Result<T?, LabError> {
        let reply: (status: Int, body: [UInt8])?
        do { reply = try dataplane(netns: netns, path) } catch { return .failure(LabError("cannot enter \(netns): \(error)")) }
        guard let reply else { return .failure(LabError("its agent does not answer on port \(port)")) }
        if reply.status == 404 { return .success(nil) }
        guard reply.status == 200, let j = try? JSONValue.parse(reply.body), let v = decode(j) else {
            return .failure(LabError("its agent answered \(reply.status): \(String(decoding: reply.body.prefix(200), as: UTF8.self))"))
        }
        return .success(v)
    }
}
