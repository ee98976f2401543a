import WeftCore
import WeftOS

/// The `weft` CNI plugin: one invocation in, one answer out. `weft-cni` only wires the
/// process's environment, stdin and stdout to `run`.
public struct Plugin {
    let node: NodeSystem

    public init(node: NodeSystem) { self.node = node }

    public struct Outcome: Equatable {
        public var stdout: String
        public var exitCode: Int32
        /// The CNI error code; 0 on success.
        public var errorCode: Int = 0
        /// The command (ADD, DEL, …), when the environment named a valid one.
        public var command: String?
        /// Where the config asks each invocation to be recorded (`eventLog`), for the agent's metrics.
        public var eventLog: String?
    }

    public func run(environment: [String: String], stdin: [UInt8]) -> Outcome {
        // The error JSON carries the config's cniVersion when it can be read.
        // Parsed once; nil when stdin is not JSON (NetworkConfig.parse then says why).
        let json = try? JSONValue.parse(stdin)
        var replyVersion = CNIVersion.latest.description
        if let v = json?["cniVersion"]?.stringValue, let cv = CNIVersion(v), cv.isSupported {
            replyVersion = v
        }
        // Read apart from the full parse, so invocations with a bad config are recorded too.
        let eventLog = json?["eventLog"]?.stringValue
        let command = environment["CNI_COMMAND"]
        do throws(CNIError) {
            let env = try CNIEnvironment.parse(environment)
            if env.command == .version { return Outcome(stdout: versionReply(json), exitCode: 0) }
            let config = if let json { try NetworkConfig.parse(json, env: env) } else { try NetworkConfig.parse(stdin, env: env) }
            let out = try dispatch(env, config)
            return Outcome(stdout: out, exitCode: 0, command: command, eventLog: eventLog)
        } catch {
            return Outcome(stdout: error.json(cniVersion: replyVersion).serialized(pretty: true) + "\n", exitCode: 1,
                           errorCode: error.code, command: command, eventLog: eventLog)
        }
    }

    func dispatch(_ env: CNIEnvironment, _ config: NetworkConfig) throws(CNIError) -> String {
        let v = config.cniVersion
        switch env.command {
        case .add:
            let result = try AddCommand(node: node, env: env, config: config).run()
            return result.json(for: v).serialized(pretty: true) + "\n"
        case .del:
            try DelCommand(node: node, env: env, config: config).run()
            return ""
        case .check:
            guard v.supportsCheck else { throw .incompatibleVersion("CHECK needs cniVersion 0.4.0 or later; the config says \(v)") }
            try CheckCommand(node: node, env: env, config: config).run()
            return ""
        case .status:
            guard v.supportsStatusAndGC else { throw .incompatibleVersion("STATUS needs cniVersion 1.1.0; the config says \(v)") }
            try IPAMClient(node: node, env: env, config: config).status()
            return ""
        case .gc:
            guard v.supportsStatusAndGC else { throw .incompatibleVersion("GC needs cniVersion 1.1.0; the config says \(v)") }
            try GCCommand(node: node, env: env, config: config).run()
            return ""
        case .version:
            return ""
        }
    }

    func versionReply(_ config: JSONValue?) -> String {
        var v = CNIVersion.latest.description
        if let asked = config?["cniVersion"]?.stringValue, CNIVersion(asked)?.isSupported == true { v = asked }
        return JSONValue.object([
            ("cniVersion", .string(v)),
            ("supportedVersions", .array(CNIVersion.supported.map { .string($0.description) })),
        ]).serialized(pretty: true) + "\n"
    }
}

/// Turns OS-layer failures into CNI errors that say what was being done.
func kernel<T>(_ what: @autoclosure () -> String, _ body: () throws -> T) throws(CNIError) -> T {
    do { return try body() } catch let e as CNIError { throw e } catch {
        throw .kernel("\(what()): \(error)")
    }
}
