/// The CNI_* environment of one invocation, validated.
public enum CNICommand: String, Sendable, CaseIterable {
    case add = "ADD", del = "DEL", check = "CHECK", version = "VERSION", status = "STATUS", gc = "GC"
}

public struct CNIEnvironment: Sendable, Equatable {
    public var command: CNICommand
    public var containerID: String
    public var netns: String
    public var ifname: String
    /// CNI_ARGS pairs in order (`IgnoreUnknown=1;K8S_POD_NAMESPACE=..`).
    public var args: [(key: String, value: String)]
    public var path: [String]

    public static func == (a: CNIEnvironment, b: CNIEnvironment) -> Bool {
        a.command == b.command && a.containerID == b.containerID && a.netns == b.netns && a.ifname == b.ifname
            && a.args.map { "\($0.key)=\($0.value)" } == b.args.map { "\($0.key)=\($0.value)" } && a.path == b.path
    }

    public init(command: CNICommand, containerID: String = "", netns: String = "", ifname: String = "",
                args: [(key: String, value: String)] = [], path: [String] = []) {
        self.command = command
        self.containerID = containerID
        self.netns = netns
        self.ifname = ifname
        self.args = args
        self.path = path
    }

    public func arg(_ key: String) -> String? { args.first { $0.key == key }?.value }
    public var podNamespace: String? { arg("K8S_POD_NAMESPACE") }
    public var podName: String? { arg("K8S_POD_NAME") }

    /// Reads and checks the variables each verb needs (the spec's table). Runtimes may export
    /// empty strings for what a verb does not need, so "empty" and "unset" are the same here.
    public static func parse(_ env: [String: String]) throws(CNIError) -> CNIEnvironment {
        let verbs = CNICommand.allCases.map(\.rawValue).joined(separator: ", ")
        guard let raw = env["CNI_COMMAND"], !raw.isEmpty else {
            throw .invalidEnvironment("CNI_COMMAND is not set; expected one of \(verbs)")
        }
        guard let command = CNICommand(rawValue: raw) else {
            throw .invalidEnvironment("CNI_COMMAND \"\(raw)\" is not a CNI verb; expected one of \(verbs)")
        }
        var e = CNIEnvironment(command: command)
        e.path = (env["CNI_PATH"] ?? "").split(separator: ":").map(String.init).filter { !$0.isEmpty }
        if command == .version { return e }

        e.containerID = env["CNI_CONTAINERID"] ?? ""
        e.netns = env["CNI_NETNS"] ?? ""
        e.ifname = env["CNI_IFNAME"] ?? ""
        e.args = try parseArgs(env["CNI_ARGS"] ?? "")

        switch command {
        case .add, .check:
            try requireContainerID(e.containerID)
            guard !e.netns.isEmpty else { throw .invalidEnvironment("CNI_NETNS is not set; \(raw) needs the path of the container's network namespace, e.g. /var/run/netns/NAME") }
            try requireInterfaceName(e.ifname, field: "CNI_IFNAME")
        case .del:
            try requireContainerID(e.containerID)
            try requireInterfaceName(e.ifname, field: "CNI_IFNAME")
        case .gc, .status, .version:
            break
        }
        return e
    }

    public static func parseArgs(_ raw: String) throws(CNIError) -> [(key: String, value: String)] {
        var out: [(key: String, value: String)] = []
        for pair in raw.split(separator: ";", omittingEmptySubsequences: true) {
            guard let eq = pair.firstIndex(of: "="), eq != pair.startIndex else {
                throw .invalidEnvironment("CNI_ARGS entry \"\(pair)\" is not KEY=VALUE; expected e.g. K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0")
            }
            out.append((String(pair[..<eq]), String(pair[pair.index(after: eq)...])))
        }
        return out
    }

    /// The spec's container ID rule: starts with an alphanumeric, then alphanumerics, `_`, `.`, `-`.
    static func requireContainerID(_ id: String) throws(CNIError) {
        guard !id.isEmpty else { throw .invalidEnvironment("CNI_CONTAINERID is not set; expected the container's ID") }
        let ok = id.unicodeScalars.enumerated().allSatisfy { i, c in
            let alnum = (c >= "a" && c <= "z") || (c >= "A" && c <= "Z") || (c >= "0" && c <= "9")
            return i == 0 ? alnum : (alnum || c == "_" || c == "." || c == "-")
        }
        guard ok else {
            throw .invalidEnvironment("CNI_CONTAINERID \"\(id)\" is invalid; it must start with a letter or digit and hold only letters, digits, '_', '.' and '-'")
        }
    }
}

/// Linux interface name rules (IFNAMSIZ 16 with the NUL): 1-15 bytes, not "." or "..",
/// no '/', ':' or whitespace.
public func requireInterfaceName(_ name: String, field: String) throws(CNIError) {
    guard !name.isEmpty else { throw .invalidEnvironment("\(field) is not set; expected an interface name such as eth0") }
    let bad = name.unicodeScalars.first { $0 == "/" || $0 == ":" || $0 == " " || $0 == "\t" || $0 == "\n" || $0.value < 0x20 }
    guard name.utf8.count <= 15, name != ".", name != "..", bad == nil else {
        throw .invalidEnvironment("\(field) \"\(name)\" is not a valid interface name; use at most 15 bytes with no '/', ':' or whitespace, e.g. eth0")
    }
}
